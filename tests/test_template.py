import data
import rewards
from template import ANSWER_END, EOT, PAD, TAGS, TEMPLATE, THINK


def test_prompts_end_in_the_prefilled_think_and_tags_are_single_tokens():
    assert TEMPLATE.endswith("Assistant: " + THINK) and data.make_prompt("Q?").endswith(THINK)
    enc = data.get_tokenizer()
    for tag in (*TAGS, EOT, PAD):
        assert len(data.encode(tag)) == 1 and enc.decode(data.encode(tag)) == tag
    assert data.stop_token_ids() == [enc.encode_single_token(ANSWER_END), enc.encode_single_token(EOT)]


def test_an_answer_turn_has_the_format_the_rewards_check():
    for reasoning in ("", "Try 3 * 7: 3 * 7 = 21."):
        turn = THINK + data.answer_turn("21", reasoning)
        assert rewards.extract_answer(turn) == "21" and rewards.format_reward(turn) == 1.0
    assert data.answer_turn(42) == " </think> <answer> 42 </answer>"  # an empty think: R1's non-reasoning data
