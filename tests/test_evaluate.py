from fractions import Fraction

import torch

import data
from evaluate import answer_key, evaluate
from model import Transformer, make_config

COUNTDOWN = data.countdown_row([3, 7, 11], 54)
NUMERIC = data.arithmetic_row("What is 6 * 7?", "42")


def test_answer_key_is_the_exact_value_of_a_well_formed_answer():
    assert answer_key("<think> x </think> <answer> 11 * 7 - 3 * 7 </answer>", COUNTDOWN) is None  # 7 twice
    assert answer_key("<think> x </think> <answer> (7 - 3) * 11 + 10 </answer>", COUNTDOWN) is None
    assert answer_key("<think> x </think> <answer> 11 * 3 + 7 </answer>", COUNTDOWN) == Fraction(40)
    assert answer_key("<think> x </think> <answer> 42.0 </answer>", NUMERIC) == Fraction(42)
    assert answer_key("<answer> 42 </answer>", NUMERIC) is None  # no think block: not the format


def test_evaluate_reports_r1s_metrics_over_k_samples():
    torch.manual_seed(0)
    model = Transformer(make_config("tiny"))
    result = evaluate(model, [COUNTDOWN, NUMERIC], k=3, max_new_tokens=8, temperature=1.0, top_p=0.95)
    assert (result["problems"], result["samples_per_problem"]) == (2, 3)
    for key in ("pass@1", "cons@3", "language_consistency"):
        assert 0 <= result[key] <= 1, key
    assert result["mean_response_tokens"] > 1 and result["example"].startswith("<think>")



def test_evaluate_counts_the_format_rate_and_the_vote_on_known_answers(monkeypatch):
    """With the decoder's answers fixed, the metrics are exact: 4 answers to one Countdown problem (target 54),
    two right, one wrong (12), one without an answer block."""
    import evaluate as evaluate_module
    import rewards
    from sample import Rollouts

    answers = ["<think> Try (11 + 7) * 3. </think> <answer> (11 + 7) * 3 </answer>",
               "<think> Try 3 * (7 + 11). </think> <answer> 3 * (7 + 11) </answer>",
               "<think> Try (11 - 7) * 3. </think> <answer> (11 - 7) * 3 </answer>",
               "<think> I give up </think>"]

    def fixed(decoder, rows, k, *args, **kwargs):
        return Rollouts([], [], answers, [rewards.score(t, rows[0]) for t in answers])
    monkeypatch.setattr(evaluate_module, "rollouts", fixed)
    result = evaluate(Transformer(make_config("tiny")), [COUNTDOWN], k=4, max_new_tokens=8, temperature=1.0,
                      top_p=0.95)
    assert (result["format_rate"], result["pass@1"], result["cons@4"]) == (0.75, 0.5, 1.0)
    assert result["verify_precision"] is None and result["false_reject_rate"] is None  # no checks in these
    answers[:2] = ["<think> Try (11 - 7) * 3: 11 - 7 = 4, 4 * 3 = 12. Let me verify: 12 = 12. </think> "
                   "<answer> (11 - 7) * 3 </answer>",
                   "<think> Try 3 * 7 + 11: 3 * 7 = 21, 21 + 11 = 32. Wait, 32 is not 54. Try (11 + 7) * 3: "
                   "11 + 7 = 18, 18 * 3 = 54. Let me verify: 54 = 54. </think> <answer> (11 + 7) * 3 </answer>"]
    result = evaluate(Transformer(make_config("tiny")), [COUNTDOWN], k=4, max_new_tokens=8, temperature=1.0,
                      top_p=0.95)
    assert (result["verify_precision"], result["false_reject_rate"]) == (0.5, 0.0)


def test_evaluate_says_why_answers_do_not_finish(monkeypatch):
    """Of 4 fixed answers: one cut at the budget while trying a candidate again (a loop), one finished with a
    repeat, one finished with a true summary, one finished plain."""
    import evaluate as evaluate_module
    import rewards
    from sample import Rollouts

    loop = "<think> Try 3 * 7 + 11: 3 * 7 = 21, 21 + 11 = 32. Wait, 32 is not 54. Try 3 * 7 + 11: 3 * 7 = 21,"
    answers = [loop,
               loop + " 21 + 11 = 32. Wait. </think> <answer> 3 * 7 + 11 </answer>",
               "<think> Try (11 + 7) * 3: 11 + 7 = 18, 18 * 3 = 54. Let me verify: 54 = 54. "
               "Summary: (11 + 7) * 3 = 54. </think> <answer> (11 + 7) * 3 </answer>",
               "<think> Guess: (11 + 7) * 3. </think> <answer> (11 + 7) * 3 </answer>"]
    stop = data.stop_token_ids()[0]
    completions = [[1, 2], [1, stop], [1, stop], [stop]]  # only their last tokens matter here

    def fixed(decoder, rows, k, *args, **kwargs):
        return Rollouts([], completions, answers, [rewards.score(t, rows[0]) for t in answers])
    monkeypatch.setattr(evaluate_module, "rollouts", fixed)
    result = evaluate(Transformer(make_config("tiny")), [COUNTDOWN], k=4, max_new_tokens=8, temperature=1.0,
                      top_p=0.95)
    assert (result["truncated_rate"], result["repeat_rate"], result["truncated_repeat_rate"]) == (0.25, 0.5, 1.0)
    assert result["summary_rate"] == 0.25 and result["pass@1"] == 0.5
