import random
from dataclasses import replace

import pytest

import data
import readable
import rewards
from languages import LEXICONS, WORD_RE
from template import THINK

ROW = data.countdown_row([5, 9, 10], 85)
# R1-Zero's style after RL at HEAD (results/r1/README.md): German reflection, a switch into English midway, a right
# candidate rejected ("Wait, 85 is not 85"), a repeated miss with its arithmetic wrong the second time, a candidate
# that breaks the rules (9 twice), and a guess in German
MESSY = ("<think> Versuche 9 * 5 + 10: 9 * 5 = 45, 45 + 10 = 55. Warte, 55 ist nicht 85. Versuche 5 + 10 * 9: "
         "10 * 9 = 90, 5 + 90 = 95. Warte, 95 ist nicht 85. Versuche 9 * 5 + 10: 9 * 5 = 45, 45 + 10 = 56. Warte, 56 "
         "ist nicht 85. Versuche 10 * 9 - 5: 10 * 9 = 90, 90 - 5 = 85. Wait, 85 is not 85. Try 9 * 10 + 5: "
         "9 * 10 = 90, 90 + 5 = 95. Wait, 95 is not 85. Try 9 * 9: 9 * 9 = 81. Wait, 81 is not 85. Ich rate: "
         "10 + 9 + 5. Try 10 * 9 - 5: 10 * 9 = 90, 90 - 5 = 85. Let me verify: 85 = 85. </think> "
         "<answer> 10 * 9 - 5 </answer>")
READABLE = (" Try 9 * 5 + 10: 9 * 5 = 45, 45 + 10 = 55. Wait, 55 is not 85. Try 5 + 10 * 9: 10 * 9 = 90, 5 + 90 = 95. "
            "Wait, 95 is not 85. Try 9 * 10 + 5: 9 * 10 = 90, 90 + 5 = 95. Wait, 95 is not 85. Try 10 + 9 + 5: "
            "10 + 9 = 19, 19 + 5 = 24. Wait, 24 is not 85. Try 10 * 9 - 5: 10 * 9 = 90, 90 - 5 = 85. "
            "Let me verify: 85 = 85. Summary: 10 * 9 - 5 = 85. </think> <answer> 10 * 9 - 5 </answer>")


def test_messy_r1_zero_answer_becomes_readable_english_with_a_summary_and_the_same_answer():
    out = readable.readable_answer(MESSY, ROW)
    assert out == READABLE
    text = THINK + out
    before, after = rewards.score(MESSY, ROW), rewards.score(text, ROW)
    assert before.language_consistency < 0.6 and after.language_consistency == 1.0  # the mixing is gone
    assert not {w.lower() for w in WORD_RE.findall(out)} & LEXICONS["de"]
    assert rewards.extract_answer(text) == rewards.extract_answer(MESSY) == "10 * 9 - 5"  # the answer unchanged
    assert (after.format, after.accuracy) == (before.format, before.accuracy) == (1.0, 1.0)
    assert readable.summary_ok(text, ROW) and not readable.summary_ok(MESSY, ROW)
    assert readable.repeated_candidates(MESSY) == 2 and readable.repeated_candidates(text) == 0
    # every check in the rewrite is true: the hit rejected in the original ("Wait, 85 is not 85") is gone
    assert rewards.check_outcomes(MESSY, 85)["false_reject"] == 1
    assert rewards.check_outcomes(text, 85) == {"true_verify": 1, "false_verify": 0, "true_reject": 4,
                                               "false_reject": 0}


def test_repeated_share_is_the_share_of_candidates_tried_before():
    assert readable.repeated_share(MESSY) == 2 / 8  # 8 candidates, the guess among them; 2 tried before
    assert readable.repeated_share(THINK + READABLE) == 0.0
    assert readable.repeated_share("<think> 7 * 3 = 21. </think> <answer> 21 </answer>") == 0.0  # no candidate
    loop = THINK + " Try 5 * 7: 5 * 7 = 35. Wait, 35 is not 50." * 40  # cut at the budget: no "</think>"
    assert readable.repeated_share(loop) == 39 / 40


def test_an_answer_that_gives_up_keeps_its_wrong_answer_and_summarises_its_value():
    text = ("<think> Versuche 9 * 5 + 10: 9 * 5 = 45, 45 + 10 = 55. Warte, 55 ist nicht 85. Versuche 9 * 10 + 5: "
            "9 * 10 = 90, 90 + 5 = 95. Warte, 95 ist nicht 85. </think> <answer> 9 * 10 + 5 </answer>")
    out = THINK + readable.readable_answer(text, ROW)
    assert out.endswith("Try 9 * 10 + 5: 9 * 10 = 90, 90 + 5 = 95. Wait, 95 is not 85. Summary: 9 * 10 + 5 = 95. "
                        "</think> <answer> 9 * 10 + 5 </answer>")
    score = rewards.score(out, ROW)
    assert (score.format, score.accuracy, score.language_consistency) == (1.0, 0.0, 1.0)
    assert readable.summary_ok(out, ROW)


def test_the_corpus_writers_readable_answers_only_gain_the_summary():
    style = replace(data.CorpusConfig(), p_try=0.0, p_reflect=1.0, p_second_language_reflect=0.0)
    rng = random.Random(0)
    for numbers, target in rng.sample(data.countdown_problems("pretrain"), 40):
        row = data.countdown_row(numbers, target, rng)
        response = data.countdown_response(rng, (numbers, target), style)
        cot, _, rest = response.partition(" </think>")
        answer = rewards.extract_answer(THINK + response)
        value = rewards.countdown_value(answer, row["numbers"])
        assert readable.readable_answer(THINK + response, row) == f"{cot} Summary: {answer} = {value}. </think>{rest}"


def test_steps_are_the_corpus_steps_in_exact_arithmetic():
    for numbers in ((5, 9, 10), (2, 3, 12), (1, 1, 7)):
        for e in data.clean_expressions(numbers):
            assert readable.expression_steps(e.text) == data.render_steps(e), e.text
    assert readable.expression_steps("8 / (3 - 8 / 3)") == "8 / 3 = 8/3, 3 - (8/3) = 1/3, 8 / (1/3) = 24"
    assert readable.expression_steps("7 / (3 - 3)") is None and readable.expression_steps("7 +") is None


def test_translate_replaces_whole_phrases_only():
    assert readable.translate("Warte, 55 ist nicht 85. Lass mich pruefen: 85 = 85.", "de") == \
        "Wait, 55 is not 85. Let me verify: 85 = 85."
    assert readable.translate("Wartezeit: Versuchen", "de") == "Wartezeit: Versuchen"  # no whole phrase
    assert readable.to_english("Ich rate: 3 + 4. Zusammenfassung: 3 + 4 = 7.") == "Guess: 3 + 4. Summary: 3 + 4 = 7."


@pytest.mark.parametrize("text, row", [
    ("<think> Try 9 * 10 - 5. </think>", ROW),                                         # no answer block
    ("<think> x </think> <answer> 10 * 9 - 5 - 5 </answer>", ROW),                     # 5 twice: no valid answer
    ("<think> 80 + 5 = 85. </think> <answer> 85 </answer>", data.arithmetic_row("Compute 80 + 5.", 85)),
])
def test_nothing_to_rewrite_is_none(text, row):
    assert readable.readable_answer(text, row) is None


def test_summary_is_checked_by_rule():
    good = "<think> Summary: 10 * 9 - 5 = 85. </think> <answer> 10 * 9 - 5 </answer>"
    assert readable.summary_ok(good, ROW)
    assert not readable.summary_ok(good.replace("= 85.", "= 86."), ROW)                    # not its value
    assert not readable.summary_ok(good.replace("Summary: 10 * 9", "Summary: 9 * 10"), ROW)  # not the answer
    assert not readable.summary_ok(good.replace("Summary", "Summary: x. And"), ROW)
    assert not readable.summary_ok(good.replace("85. </think>", "85. Wait. </think>"), ROW)  # not the last sentence
    assert rewards.language_consistency(good) == 1.0  # "Summary" is an English word of the phrase tables
