import json
import os
import re
import subprocess
import sys

import pytest
import torch

import data
import rejection
import rewards
import sft
from checkpoint import save_checkpoint
from model import Transformer, make_config
from rejection import RejectionConfig, rejection_sample
from engine.decoder import Decoder

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_model(seed=0):
    torch.manual_seed(seed)
    return Transformer(make_config("tiny"))


class ScriptedDecoder:
    """Stands in for the model's sampling: answers the i-th time a prompt is asked with its script's i-th text
    (after the prefilled "<think>"), as token ids; records how it was called."""

    def __init__(self, scripts):
        self.scripts = {data.encode(data.make_prompt(q)).__repr__(): list(texts) for q, texts in scripts.items()}
        self.calls = []

    def generate(self, prompts, max_new_tokens, temperature=1.0, top_p=1.0):
        self.calls.append((len(prompts), max_new_tokens, temperature, top_p))
        return [data.encode(self.scripts[repr(p)].pop(0)) for p in prompts]


A = data.countdown_row([3, 7, 2], 23)
B = data.countdown_row([12, 4, 5], 8)
CORRECT_A = " Try 3 * 7 + 2: 3 * 7 = 21, 21 + 2 = 23. </think> <answer> 3 * 7 + 2 </answer>"
CORRECT_A2 = " Try 7 * 3 + 2: 7 * 3 = 21, 21 + 2 = 23. Let me verify: 23 = 23. </think> <answer> 7 * 3 + 2 </answer>"
MIXED_A = (" Try 3 + 7 * 2: 7 * 2 = 14, 3 + 14 = 17. Warte, 17 ist nicht 23. Try 3 * 7 + 2: 3 * 7 = 21, "
           "21 + 2 = 23. </think> <answer> 3 * 7 + 2 </answer>")
LONG_A = " Try 3 * 7 + 2: " + "3 * 7 = 21, 21 + 2 = 23, " * 8 + "23. </think> <answer> 3 * 7 + 2 </answer>"
SCRIPT_A = [
    CORRECT_A,                                                       # kept
    CORRECT_A,                                                       # duplicate
    " Guess: 3 + 7 + 2. </think> <answer> 3 + 7 + 2 </answer>",      # wrong
    " Try 3 * 7 + 2: 3 * 7 = 21, 21",                                # truncated: no stop token
    MIXED_A,                                                         # mixed_language
    " Try 3 * 7 + 2. </think> 3 * 7 + 2 </answer>",                  # bad_format: no <answer>
    LONG_A,                                                          # too_long
    CORRECT_A2,                                                      # kept
]
CORRECT_B = [f" Guess: {e}. </think> <answer> {e} </answer>" for e in ("12 / 4 + 5", "5 + 12 / 4", "(12 / 4) + 5")]
SCRIPT_B = [
    CORRECT_B[0],                                                    # kept
    " Guess: 12 + 4 + 5. </think> <answer> 12 + 4 + 5 </answer>",    # wrong
    CORRECT_B[1],                                                    # kept
    CORRECT_B[0],                                                    # duplicate
    CORRECT_B[2],                                                    # over_keep_per_prompt (2 kept already)
    " Guess: 12 / 4 + 5. </think> <answer> 12 / 4 + 5 </answer> <answer> 8 </answer>",  # bad_format
    " Guess:",                                                       # truncated
    " Guess: 12 - 4 - 5. </think> <answer> 12 - 4 - 5 </answer>",    # wrong
]
MAX_TOKENS = 100  # CORRECT_A2 takes 50 tokens, LONG_A 141


def completion_tokens(row, text):
    return len(sft.example_from_text(data.make_prompt(row["question"]), "<think>" + text)[1])


def run(cfg, scripts=None):
    decoder = ScriptedDecoder(scripts or {A["question"]: SCRIPT_A, B["question"]: SCRIPT_B})
    return (*rejection_sample(tiny_model(), [A, B], cfg, decoder.generate), decoder)


def test_keeps_exactly_the_finished_correct_single_language_short_distinct_answers():
    # the script's samples are what their comments say, by the checkers themselves
    assert rewards.language_consistency("<think>" + MIXED_A) < 0.99 <= rewards.language_consistency("<think>" + CORRECT_A2)
    assert completion_tokens(A, LONG_A) > MAX_TOKENS >= max(completion_tokens(A, CORRECT_A2),
                                                           completion_tokens(B, CORRECT_B[2]))
    cfg = RejectionConfig(samples_per_prompt=8, max_new_tokens=200, temperature=0.7, top_p=0.9, max_tokens=MAX_TOKENS,
                          keep_per_prompt=2, batch_size=6)
    examples, stats, decoder = run(cfg)
    assert examples == [{"question": A["question"], "completion": "<think>" + CORRECT_A},
                        {"question": A["question"], "completion": "<think>" + CORRECT_A2},
                        {"question": B["question"], "completion": "<think>" + CORRECT_B[0]},
                        {"question": B["question"], "completion": "<think>" + CORRECT_B[1]}]
    assert stats["rejected"] == {"truncated": 2, "bad_format": 2, "wrong": 3, "mixed_language": 1, "too_long": 1,
                                 "duplicate": 2, "over_keep_per_prompt": 1}
    assert stats["sampled"] == 16 and stats["kept"] == 4 and stats["kept_fraction"] == 4 / 16
    assert stats["correct"] == 9 and stats["prompts"] == stats["prompts_kept"] == 2
    assert stats["mean_kept_tokens"] == sum(completion_tokens(r, t) for r, t in
                                            ((A, CORRECT_A), (A, CORRECT_A2), (B, CORRECT_B[0]), (B, CORRECT_B[1]))) / 4
    assert stats["mean_kept_reflections"] == 1 / 4  # CORRECT_A2's "Let me verify"
    # the decoder got the settings, in batches of batch_size rows
    assert decoder.calls == [(6, 200, 0.7, 0.9), (6, 200, 0.7, 0.9), (4, 200, 0.7, 0.9)]


def test_each_filter_is_what_rejects_its_samples():
    loose = RejectionConfig(samples_per_prompt=8, max_new_tokens=200, max_tokens=200, keep_per_prompt=8,
                            min_language_consistency=0.0)
    examples, stats, _ = run(loose)
    texts = [e["completion"][len("<think>"):] for e in examples]
    assert texts == [CORRECT_A, MIXED_A, LONG_A, CORRECT_A2] + CORRECT_B
    assert stats["rejected"] == {"truncated": 2, "bad_format": 2, "wrong": 3, "mixed_language": 0, "too_long": 0,
                                 "duplicate": 2, "over_keep_per_prompt": 0}


def test_kept_examples_round_trip_through_sft(tmp_path):
    cfg = RejectionConfig(samples_per_prompt=8, max_new_tokens=200, max_tokens=MAX_TOKENS, keep_per_prompt=2)
    examples, _, _ = run(cfg)
    path = tmp_path / "rejection.jsonl"
    path.write_text("".join(json.dumps(e) + "\n" for e in examples))
    loaded = sft.load_examples(str(path))
    assert len(loaded) == len(examples) == 4
    for (prompt, completion), example in zip(loaded, examples):
        assert (prompt, completion) == sft.example_from_text(data.make_prompt(example["question"]),
                                                             example["completion"])
        # SFT trains on exactly the tokens that were sampled, after the prompt's "<think>"
        assert prompt == data.encode(data.make_prompt(example["question"]))
        assert completion == data.encode(example["completion"][len("<think>"):])
        assert completion[-1] in data.stop_token_ids()
    sft.check_examples(loaded, seq_len=640, vocab_size=make_config("tiny").vocab_size)


def test_nothing_kept_is_an_error_that_names_the_counts():
    cfg = RejectionConfig(samples_per_prompt=4, max_new_tokens=200, max_tokens=200)
    wrong = " Guess: 3 + 7 + 2. </think> <answer> 3 + 7 + 2 </answer>"
    scripts = {A["question"]: [wrong, wrong, " Try", MIXED_A]}
    with pytest.raises(ValueError, match=r"no sample survived rejection: 1 of 4 correct \(1 prompts x 4 samples\); "
                                         r"rejected: 1 truncated, 2 wrong, 1 mixed language\."):
        rejection_sample(tiny_model(), [A], cfg, ScriptedDecoder(scripts).generate)
    with pytest.raises(ValueError, match="empty"):
        rejection_sample(tiny_model(), [], cfg, ScriptedDecoder({}).generate)


@pytest.mark.parametrize("bad", [{"samples_per_prompt": 0}, {"max_new_tokens": 0}, {"keep_per_prompt": 0},
                                 {"batch_size": 0}, {"max_tokens": 0}, {"max_tokens": 65, "max_new_tokens": 64},
                                 {"temperature": -1.0}, {"temperature": float("nan")}, {"top_p": 0.0},
                                 {"top_p": 1.5}, {"min_language_consistency": 1.01}])
def test_bad_config_is_refused(bad):
    with pytest.raises(ValueError, match="--"):
        RejectionConfig(**bad).validate()


def test_seeded_draws_repeat_and_leave_the_callers_rng_alone():
    model = tiny_model()

    class Recording(Decoder):
        def generate(self, *args, **kwargs):
            self.out = super().generate(*args, **kwargs)
            return self.out

    def sample(seed):
        decoder = Recording(model)
        with pytest.raises(ValueError, match="no sample survived"):  # an untrained model answers nothing right
            rejection_sample(model, [A, B], RejectionConfig(samples_per_prompt=2, max_new_tokens=6, max_tokens=6,
                                                            seed=seed), decoder.generate)
        return decoder.out

    state = torch.get_rng_state()
    assert sample(0) == sample(0) != sample(1)
    assert torch.equal(torch.get_rng_state(), state)


class OracleDecoder:
    """Answers every Countdown prompt correctly (the same text each time), like a perfect policy."""

    def generate(self, prompts, max_new_tokens, temperature=1.0, top_p=1.0):
        out = []
        for p in prompts:
            m = re.search(r"numbers \[(.*?)\], create an equation that equals (\d+)\.", data.get_tokenizer().decode(p))
            numbers, target = tuple(int(n) for n in m.group(1).split(", ")), int(m.group(2))
            e = next(e for e in data.clean_expressions(numbers) if e.value == target)
            out.append(data.encode(f" Try {e.text}: {data.render_steps(e)}. </think> <answer> {e.text} </answer>"))
        return out


def test_cli_writes_what_sft_reads(tmp_path, monkeypatch, capsys):
    ckpt, out = str(tmp_path / "rl.pt"), str(tmp_path / "sub" / "rejection.jsonl")
    save_checkpoint(ckpt, tiny_model(), stage="rl")
    monkeypatch.setattr(rejection.engine, "decoder_for", lambda model: OracleDecoder().generate)
    rejection.main(["--ckpt", ckpt, "--problems", "3", "--out", out, "--device", "cpu", "--samples-per-prompt", "2",
                    "--max-new-tokens", "64", "--max-tokens", "64"])
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["stats"]["kept"] == 3 and line["stats"]["rejected"]["duplicate"] == 3  # one distinct answer each
    assert line["config"]["samples_per_prompt"] == 2 and line["split"] == "train"
    assert len(sft.load_examples(out)) == 3
    questions = [json.loads(l)["question"] for l in open(out)]
    assert questions == [r["question"] for r in data.countdown_dataset("train", 3, seed=0)]


def test_cli_on_a_tiny_model_stops_clearly_when_nothing_is_kept(tmp_path):
    ckpt, out = str(tmp_path / "rl.pt"), str(tmp_path / "rejection.jsonl")
    save_checkpoint(ckpt, tiny_model(), stage="rl")
    result = subprocess.run([sys.executable, "rejection.py", "--ckpt", ckpt, "--problems", "2", "--out", out,
                             "--device", "cpu", "--samples-per-prompt", "2", "--max-new-tokens", "8",
                             "--max-tokens", "8"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 1, result.stderr
    assert re.search(r"no sample survived rejection: 0 of 4 correct \(2 prompts x 2 samples\); rejected: \d",
                     result.stderr), result.stderr
    assert not os.path.exists(out)


def test_bad_cli_values_are_argparse_errors(tmp_path, capsys):
    ckpt = str(tmp_path / "rl.pt")
    save_checkpoint(ckpt, tiny_model(), stage="rl")
    base = ["--ckpt", ckpt, "--out", str(tmp_path / "r.jsonl"), "--device", "cpu"]
    for extra, message in ((["--samples-per-prompt", "0"], "--samples-per-prompt must be >= 1"),
                           (["--problems", "0"], "--problems must be >= 1"),
                           (["--split", "nope"], "invalid choice"),
                           (["--max-tokens", "600"], "--max-tokens 600 must be <= --max-new-tokens 512"),
                           (["--top-p", "0"], "--top-p must be in"),
                           (["--temperature", "warm"], "invalid float value")):
        with pytest.raises(SystemExit) as exit_info:
            rejection.main(base + extra)
        assert exit_info.value.code == 2 and message in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        rejection.main(["--ckpt", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "r.jsonl")])
    assert exit_info.value.code == 2 and "no checkpoint at" in capsys.readouterr().err
