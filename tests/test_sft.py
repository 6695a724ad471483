import copy
import json
import random

import pytest
import torch

import data
import sft
from checkpoint import load_checkpoint, save_checkpoint
from model import Transformer, make_config
from data import pad_token_id, stop_token_ids
from sample import generate

STOP = stop_token_ids()[0]  # "</answer>"


def tiny_model(seed=0):
    torch.manual_seed(seed)
    return Transformer(make_config("tiny"))


def float64_model():
    """tiny_model in float64, for the tests of two ways to compute the same thing: in float32 they round
    differently by CPU (the kernels PyTorch picks for each shape); in float64 they agree to the float32 of the
    logits model.py returns."""
    return tiny_model().double()


def random_examples(lengths, seed=0):
    """(prompt, completion) token-id pairs of the given (prompt, completion) lengths; completions end in a stop."""
    rng = random.Random(seed)
    return [([rng.randrange(450) for _ in range(p)], [rng.randrange(450) for _ in range(c - 1)] + [STOP])
            for p, c in lengths]


def countdown_examples():
    # short prompts (a later turn of a corpus document) keep the test cheap; the layout test uses the template
    problems = [([3, 7, 2], 23, "3 * 7 + 2"), ([12, 4, 5], 8, "12 / 4 + 5"), ([6, 9, 1], 55, "6 * 9 + 1")]
    return [sft.example_from_text(f"User: {data.countdown_question(nums, target)} Assistant: <think>",
                                  f" Guess: {expr}. </think> <answer> {expr} </answer>")
            for nums, target, expr in problems]


def test_layout_matches_rl_rollouts():
    prompt_text = data.make_prompt(data.countdown_question([3, 7, 2], 23))
    turn = "<think> Try 3 * 7 + 2: 3 * 7 = 21, 21 + 2 = 23. </think> <answer> 3 * 7 + 2 </answer>"
    prompt, completion = sft.example_from_text(prompt_text, turn)  # the whole turn, as rewards.py scores it
    # the RL prompt (grpo.py) and the text GRPO scores, "<think>" + decode(completion)
    assert prompt == data.encode(prompt_text) and prompt[-1] == data.encode("<think>")[0]
    assert "<think>" + data.get_tokenizer().decode(completion) == turn
    assert completion[-1] == STOP and sft.example_from_text(prompt_text, turn[len("<think>"):]) == (prompt, completion)


def test_loss_is_mean_cross_entropy_over_completion_tokens_only():
    model = float64_model()
    examples = random_examples([(5, 3), (2, 6), (9, 1)])
    rows = sft.pack([sft.example_length(e) for e in examples], 20)
    tokens, targets, segment_ids = sft.make_batch(examples, rows, 20, pad_token_id())
    logits = model(tokens, segment_ids=segment_ids).requires_grad_()
    loss = sft.sft_loss(logits, targets)
    # by hand: each example alone, -log p of its completion tokens, summed, over the number of completion tokens
    nll, count = 0.0, 0
    for prompt, completion in examples:
        ids = torch.tensor(prompt + completion)
        logp = torch.log_softmax(model(ids[None, :-1])[0], -1)
        for k in range(len(prompt) - 1, len(ids) - 1):  # position k predicts token k + 1, a completion token
            nll -= logp[k, ids[k + 1]].item()
            count += 1
    assert count == 10 == (targets != sft.IGNORE).sum()
    # the loss is float32 (so are the logits): ~6.2, whose float32 spacing is 5e-7; the sum by hand is float64
    assert abs(loss.item() - nll / count) < 1e-5
    # only completion positions carry gradient: prompt and padding positions are masked out
    (grad,) = torch.autograd.grad(loss, logits)
    counted = targets != sft.IGNORE
    assert grad[~counted].abs().max() == 0 and (grad[counted].abs().sum(-1) > 0).all()
    assert (segment_ids == -1).any()  # the batch did hold padding


def test_packing_keeps_examples_whole_and_each_computed_as_if_alone():
    rng = random.Random(0)
    lengths = [rng.randint(2, 40) for _ in range(200)] + [40, 1]
    rows = sft.pack(lengths, 40)
    assert sorted(i for row in rows for i in row) == list(range(len(lengths)))  # none lost, none twice
    assert all(sum(lengths[i] for i in row) <= 40 for row in rows)
    assert len(rows) <= sum(lengths) / 40 * 1.1 + 1  # best-fit decreasing leaves little room unused

    model = float64_model()
    examples = random_examples([(6, 4), (1, 2), (10, 8), (3, 3), (7, 5)], seed=1)
    rows = sft.pack([sft.example_length(e) for e in examples], 24)
    assert len(rows) < len(examples)  # some rows do hold several examples
    tokens, targets, segment_ids = sft.make_batch(examples, rows, 24, pad_token_id())
    packed = model(tokens, segment_ids=segment_ids)
    for r, row in enumerate(rows):
        start = 0
        for segment, i in enumerate(row):
            prompt, completion = examples[i]
            n = sft.example_length(examples[i])
            assert (segment_ids[r, start:start + n] == segment).all()
            assert tokens[r, start:start + n].tolist() == (prompt + completion)[:-1]
            alone = model(torch.tensor([(prompt + completion)[:-1]]))[0]
            assert torch.allclose(packed[r, start:start + n], alone, atol=1e-5)
            start += n
        assert (segment_ids[r, start:] == -1).all() and (targets[r, start:] == sft.IGNORE).all()


def test_epochs_visit_every_packed_row_once_per_epoch_in_a_seeded_order():
    cfg = sft.SFTConfig(epochs=2, batch_size=4, seed=3)
    seen = [r for step in range(5) for r in sft.rows_of_step(step, 10, cfg)]  # ceil(2 * 10 / 4) = 5 steps
    assert sorted(seen[:10]) == sorted(seen[10:]) == list(range(10))  # the last batch is short: 2 rows
    assert seen[:10] != seen[10:] and seen[:10] != list(range(10))  # reshuffled every epoch
    other_seed = [r for step in range(5) for r in sft.rows_of_step(step, 10, sft.SFTConfig(epochs=2, batch_size=4))]
    assert other_seed != seen


def test_tiny_sft_run_memorises_its_completions():
    model = tiny_model()
    examples = countdown_examples()
    rows = []
    cfg = sft.SFTConfig(steps=50, batch_size=1, seq_len=168, lr=1e-2, warmup=5, log_every=1)
    summary = sft.sft(model, examples, cfg, torch.device("cpu"), log=rows.append)
    losses = [r["loss"] for r in rows if r["stage"] == "sft"]
    assert summary["rows"] == 1 and summary["dropped_too_long"] == 0 and len(losses) == 50
    assert losses[-1] < 0.05 * losses[0], (losses[0], losses[-1])
    got = generate(model, [p for p, _ in examples], max_new_tokens=24, temperature=0)
    assert got == [c for _, c in examples]


def test_resume_at_step_k_equals_the_uninterrupted_run():
    examples = random_examples([(random.Random(i).randint(2, 20), random.Random(-i).randint(1, 12))
                                for i in range(12)])
    cfg = sft.SFTConfig(steps=7, batch_size=2, seq_len=32, lr=1e-3, warmup=2, checkpoint_every=3,
                        weight_decay=0.1)
    saved = {}

    def save(step, opt):  # what the CLI writes to sft.pt, copied: later steps update these tensors in place
        saved[step] = copy.deepcopy((model.state_dict(), opt.state_dict()))

    model = tiny_model()
    summary = sft.sft(model, examples, cfg, torch.device("cpu"), log=lambda row: None, save=save)
    assert summary["rows"] > 2 * cfg.batch_size and sorted(saved) == [3, 6, 7]  # batches span several epochs
    resumed = tiny_model(seed=1)
    resumed.load_state_dict(saved[3][0])
    sft.sft(resumed, examples, cfg, torch.device("cpu"), log=lambda row: None, start_step=3,
            opt_state=saved[3][1])
    for (name, a), b in zip(model.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name


def test_cli_interrupted_and_resumed_equals_uninterrupted(tmp_path, monkeypatch):
    init = str(tmp_path / "base.pt")
    save_checkpoint(init, tiny_model(), stage="base")
    path = tmp_path / "sft.jsonl"
    problems = [([3, 7, 2], "3 * 7 + 2"), ([12, 4, 5], "12 / 4 + 5"), ([6, 9, 1], "6 * 9 + 1")]
    path.write_text("".join(json.dumps({"question": data.countdown_question(nums, 1),
                                        "completion": f"<think> Guess: {e}. </think> <answer> {e} </answer>"}) + "\n"
                            for nums, e in problems))
    args = ["--init", init, "--data", str(path), "--device", "cpu", "--steps", "5", "--batch-size", "1",
            "--seq-len", "160", "--checkpoint-every", "2", "--log-every", "1"]
    sft.main(args + ["--out-dir", str(tmp_path / "a")])

    lr_at = sft.lr_at

    def crash_at_step_3(step, total, cfg):
        if step == 3:
            raise KeyboardInterrupt  # killed after the step-2 checkpoint, mid step 3
        return lr_at(step, total, cfg)

    monkeypatch.setattr(sft, "lr_at", crash_at_step_3)
    with pytest.raises(KeyboardInterrupt):
        sft.main(args + ["--out-dir", str(tmp_path / "b")])
    monkeypatch.setattr(sft, "lr_at", lr_at)
    assert load_checkpoint(str(tmp_path / "b" / "sft.pt"))["step"] == 2
    sft.main(args + ["--out-dir", str(tmp_path / "b"), "--resume"])

    a, b = (load_checkpoint(str(tmp_path / run / "sft.pt")) for run in ("a", "b"))
    assert a["step"] == b["step"] == 5
    for (name, x), y in zip(a["model"].state_dict().items(), b["model"].state_dict().values()):
        assert torch.equal(x, y), name
    rows = [json.loads(line) for line in open(tmp_path / "b" / "metrics.jsonl")]
    assert [r["stage"] for r in rows[:2]] == ["config", "sft_data"] and rows[1]["examples"] == 3
    assert [r["step"] for r in rows if r["stage"] == "sft"] == list(range(5))  # each step once, in order
    # resuming with other settings is refused
    with pytest.raises(SystemExit, match="lr"):
        sft.main(args + ["--out-dir", str(tmp_path / "b"), "--resume", "--lr", "1e-3"])


def test_bad_input_fails_clearly(tmp_path):
    model, cpu = tiny_model(), torch.device("cpu")
    cfg = sft.SFTConfig(steps=1, batch_size=1, seq_len=32)
    with pytest.raises(ValueError, match="empty"):
        sft.sft(model, [], cfg, cpu)
    with pytest.raises(ValueError, match="none of the 2 SFT examples fits"):
        sft.sft(model, random_examples([(30, 5), (20, 20)]), cfg, cpu)
    with pytest.raises(ValueError, match="stop token"):
        sft.sft(model, [([1, 2], [3, 4])], cfg, cpu)
    with pytest.raises(ValueError, match="at least one token"):
        sft.sft(model, [([], [STOP])], cfg, cpu)
    with pytest.raises(ValueError, match="max_seq_len"):
        sft.sft(model, random_examples([(3, 3)]), sft.SFTConfig(seq_len=10_000), cpu)
    for bad in ({"lr": 0}, {"steps": -1}, {"batch_size": 0}, {"min_lr_frac": 2.0}):
        with pytest.raises(ValueError):
            sft.SFTConfig(**bad).validate()
    with torch.no_grad():
        model.head.weight.fill_(float("nan"))
    with pytest.raises(FloatingPointError, match="lower --lr"):
        sft.sft(model, random_examples([(3, 3)]), cfg, cpu, log=lambda row: None)

    good = json.dumps({"question": "Compute 2 + 3.", "completion": " 2 + 3 = 5. </think> <answer> 5 </answer>"})
    for lines, match in (([], "no examples"), ([good, "{oops"], ":2: not valid JSON"), (["[1, 2]"], ":1: expected"),
                         ([json.dumps({"question": "q"})], ":1: expected"),
                         ([json.dumps({"question": "q", "prompt": "p", "completion": "c"})], ":1: expected"),
                         ([good, json.dumps({"question": "q", "completion": " no answer"})], ":2: .*must end"),
                         ([json.dumps({"prompt": "", "completion": "</answer>"})], ":1: .*non-empty")):
        path = tmp_path / "bad.jsonl"
        path.write_text("".join(line + "\n" for line in lines))
        with pytest.raises(ValueError, match=match):
            sft.load_examples(str(path))
        with pytest.raises(SystemExit):  # the CLI turns it into an argparse error
            sft.main(["--init", "unused.pt", "--data", str(path), "--out-dir", str(tmp_path / "out")])
    path.write_text(good + "\n")
    assert len(sft.load_examples(str(path))) == 1
