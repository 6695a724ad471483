"""Data parallelism on CPU: 2 processes over gloo must reproduce one process on the combined batch."""
import json
import os
import random
import re
import socket
import subprocess
import sys

import pytest
import torch
import torch.multiprocessing as mp

import distributed
import pretrain
import sft
import train
from checkpoint import load_checkpoint, save_checkpoint
from config import TrainConfig
from grpo import LOSS_AGG_MODES, GRPOConfig, GRPOTrainer
from model import Transformer, make_config
from data import stop_token_ids

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PRETRAIN = TrainConfig(preset="tiny", device="cpu", pretrain_steps=2, pretrain_batch_size=8, pretrain_seq_len=32,
                       pretrain_lr=1e-2, pretrain_warmup=0, log_every=1)
N_PROMPTS, G = 4, 4
# no clipping: gradients are compared as they are, scale included (AdamW would hide a wrong scale)
GRPO = GRPOConfig(group_size=G, max_new_tokens=12, lr=1e-3, epochs=2, minibatches=2, kl_beta=0.01,
                  max_grad_norm=1e9)
SFT = sft.SFTConfig(epochs=1, batch_size=4, seq_len=24, lr=1e-3, warmup=0, max_grad_norm=1e9, log_every=1)


def fresh_model():
    torch.manual_seed(0)
    return Transformer(make_config("tiny"))


# Ranks and one process sum the same numbers in other orders, which AdamW magnifies where a gradient is near zero
# (its update is g / |g| there): in float32 the weights after a step differed by 1e-5 on one CPU and not another.
# So the comparisons run in float64. What stays in float32 (the logits, hence the losses; model.py's RMSNorm and
# router) leaves differences of ~1e-8 in weights and gradients, the float64 rounding ~1e-15; a bug (the wrong
# rows, a gradient not all-reduced, a router bias left behind) moves weights by the learning rate, >= 1e-3.
WEIGHTS = dict(rtol=0, atol=1e-5)
GRADS = dict(rtol=1e-4, atol=1e-6)
# the losses are float32 (the logits leave the model in float32): a mean of <= 256 token losses <= 7 rounds by
# <= log2(256) * 2**-24 * 7 = 3e-6 in any order of summation
LOSS = 1e-5


def float64_model():
    return fresh_model().double()


def rollouts():
    """Fixed prompts, completions (ragged, as sampled ones are) and rewards for N_PROMPTS groups of G."""
    g = torch.Generator().manual_seed(1)
    prompts, completions = [], []
    for _ in range(N_PROMPTS):
        prompt = torch.randint(0, 400, (int(torch.randint(3, 9, (1,), generator=g)),), generator=g).tolist()
        for _ in range(G):
            prompts.append(prompt)
            length = int(torch.randint(1, GRPO.max_new_tokens + 1, (1,), generator=g))
            completions.append(torch.randint(0, 400, (length,), generator=g).tolist())
    return prompts, completions, torch.rand(N_PROMPTS, G, generator=g).round()


def sft_examples():
    """Ragged examples packed in 5 rows: a full batch of 4, then a last batch of 1 row (one rank gets none)."""
    rng, stop = random.Random(1), stop_token_ids()[0]
    return [([rng.randrange(450) for _ in range(rng.randint(2, 12))],
             [rng.randrange(450) for _ in range(rng.randint(0, 10))] + [stop]) for _ in range(8)]


def train_steps():
    """One pretraining run of 2 steps (with and without gradient accumulation), one GRPO update per loss mode and
    an SFT run of 2 steps, on this rank's share of each batch."""
    out = {}
    # micro-batches of 2 windows: 2 per step on each of 2 ranks, 4 in one process
    for key, micro in (("pretrain", 0), ("pretrain_micro", 2)):
        model, losses = float64_model(), []
        pretrain.pretrain(model, TrainConfig(**{**vars(PRETRAIN), "pretrain_micro_batch_size": micro}),
                          torch.device("cpu"), log=lambda row: losses.append(row["loss"]), save=lambda step, opt: None)
        out[key] = (losses, model.state_dict(), [p.grad.clone() for p in model.parameters()])
    W, r = distributed.world_size(), distributed.rank()
    prompts, completions, reward = rollouts()
    n = N_PROMPTS // W  # this rank's groups
    for mode in LOSS_AGG_MODES:
        model = float64_model()
        trainer = GRPOTrainer(model, GRPOConfig(**{**vars(GRPO), "loss_agg_mode": mode}), torch.device("cpu"))
        stats = trainer.update(prompts[r * n * G:(r + 1) * n * G], completions[r * n * G:(r + 1) * n * G],
                               reward[r * n:(r + 1) * n])
        out[mode] = (stats["loss"], model.state_dict(), [p.grad.clone() for p in model.parameters()])
    # gradient accumulation over micro-batches of 3 rows (ranks: 3 + 1 per minibatch; one process: 3 + 3 + 2)
    model = float64_model()
    trainer = GRPOTrainer(model, GRPOConfig(**{**vars(GRPO), "micro_batch_rows": 3}), torch.device("cpu"))
    stats = trainer.update(prompts[r * n * G:(r + 1) * n * G], completions[r * n * G:(r + 1) * n * G],
                           reward[r * n:(r + 1) * n])
    out["micro"] = (stats["loss"], model.state_dict(), [p.grad.clone() for p in model.parameters()])
    model, rows = float64_model(), []
    assert sft.sft(model, sft_examples(), SFT, torch.device("cpu"), log=rows.append)["rows"] == 5
    out["sft"] = ([row["loss"] for row in rows if row["stage"] == "sft"], model.state_dict(),
                  [p.grad.clone() for p in model.parameters()])
    return out


def worker(rank, world, port, out_dir):
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    distributed.setup("cpu", "gloo")
    torch.save(train_steps(), os.path.join(out_dir, f"rank{rank}.pt"))
    distributed.finish()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def assert_same(a, b):
    for key in a:
        torch.testing.assert_close(a[key], b[key], **WEIGHTS, msg=key)


def test_two_ranks_match_one_process_on_the_combined_batch(tmp_path):
    mp.spawn(worker, args=(2, free_port(), str(tmp_path)), nprocs=2)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the workers: on a shared 2-core machine more threads only contend
    try:
        single = train_steps()  # this process: no process group, world size 1, the whole batch
    finally:
        torch.set_num_threads(threads)
    assert len(single["sft"][0]) == 2
    assert single["micro"][0] == pytest.approx(single[GRPO.loss_agg_mode][0], abs=LOSS)  # as without micro-batches
    # gradient accumulation as one pass over the whole batch
    assert single["pretrain_micro"][0] == pytest.approx(single["pretrain"][0], abs=LOSS)
    assert_same(single["pretrain_micro"][1], single["pretrain"][1])
    for a, b in zip(single["pretrain_micro"][2], single["pretrain"][2]):
        torch.testing.assert_close(a, b, **GRADS)
    for key in ["pretrain", "pretrain_micro", *LOSS_AGG_MODES, "micro", "sft"]:
        loss, weights, grads = single[key]
        assert weights["head.weight"].dtype == torch.float64
        for rank in ranks:
            assert rank[key][0] == pytest.approx(loss, abs=LOSS), key
            assert_same(rank[key][1], weights)  # router biases included: they are buffers of the state_dict
        # each rank's final gradient is the all-reduced one: the whole batch's, scale included
        for g_rank, g_single in zip(ranks[0][key][2], grads):
            torch.testing.assert_close(g_rank, g_single, **GRADS, msg=key)
    # the update did something: a test of equal weights must not pass on weights that never moved
    for key in ("token-mean", "sft"):
        assert not torch.equal(single[key][1]["head.weight"], float64_model().state_dict()["head.weight"])


ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}  # torchrun's own default for several processes per machine


def torchrun(args, nproc=2, timeout=240, script="train.py"):
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
                           str(nproc), script, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env=ONE_THREAD)


def in_float64(tmp_path, script):
    """A file that runs the project's `script` with float64 as torch's default dtype (torchrun runs files)."""
    path = tmp_path / f"float64_{script}"
    path.write_text(f"import runpy, sys\nimport torch\ntorch.set_default_dtype(torch.float64)\n"
                    f"sys.path.insert(0, {ROOT!r})\nsys.argv[0] = {script!r}\n"
                    f"runpy.run_path({os.path.join(ROOT, script)!r}, run_name='__main__')\n")
    return str(path)


TINY = ["--preset", "tiny", "--device", "cpu", "--pretrain-steps", "10", "--pretrain-batch-size", "4",
        "--pretrain-seq-len", "64", "--pretrain-unique-tokens", "20000", "--log-every", "1",
        "--rl-prompts-per-step", "2", "--rl-group-size", "4", "--rl-max-new-tokens", "16",
        "--eval-problems", "3", "--eval-samples", "2", "--checkpoint-every", "1"]


def test_two_ranks_resume_a_one_rank_run(tmp_path):
    out = str(tmp_path / "run")
    one = subprocess.run([sys.executable, "train.py", *TINY, "--out-dir", out, "--rl-steps", "1"], cwd=ROOT,
                         capture_output=True, text=True, timeout=240, env=ONE_THREAD)
    assert one.returncode == 0, one.stdout + one.stderr
    two = torchrun([*TINY, "--out-dir", out, "--rl-steps", "3", "--resume"])
    assert two.returncode == 0, two.stdout + two.stderr
    assert two.stdout.count("resumed RL at step 1") == 1  # rank 0 alone prints
    assert two.stdout.count("done in") == 1  # printed before distributed.finish ends the process, and flushed
    rows = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]
    assert [r["step"] for r in rows if r["stage"] == "rl"] == [0, 1, 2]  # rank 0 alone writes: each step once
    assert [r["step"] for r in rows if r["stage"] == "pretrain"] == list(range(10))
    evals = json.load(open(os.path.join(out, "eval.json")))
    assert evals["rl"]["problems"] == 3 and 0 <= evals["rl"]["pass@1"] <= 1
    ckpt = torch.load(os.path.join(out, "rl.pt"), weights_only=True)
    assert ckpt["step"] == 3 and not any(k.startswith("module.") for k in ckpt["model"])


def test_two_ranks_resume_a_one_rank_sft_run(tmp_path, monkeypatch):
    init, path = str(tmp_path / "base.pt"), tmp_path / "sft.jsonl"
    save_checkpoint(init, fresh_model(), stage="base")
    path.write_text("".join(json.dumps({"prompt": f"User: {a} + {b}? Assistant: <think>",
                                        "completion": f" {a} + {b} = {a + b}. </think> <answer> {a + b} </answer>"})
                            + "\n" for a, b in [(2, 3), (17, 4), (120, 35), (9, 9), (41, 8), (6, 250)]))
    args = ["--init", init, "--data", str(path), "--device", "cpu", "--steps", "4", "--batch-size", "2",
            "--seq-len", "40", "--lr", "1e-3", "--warmup", "0", "--checkpoint-every", "2", "--log-every", "1"]
    # in float64 (see WEIGHTS), the float32 checkpoint loaded into float64 models: here, and under torchrun
    threads, dtype = torch.get_num_threads(), torch.get_default_dtype()
    torch.set_num_threads(1)
    torch.set_default_dtype(torch.float64)
    try:
        sft.main(args + ["--out-dir", str(tmp_path / "a")])  # one process, uninterrupted
        lr_at = sft.lr_at

        def crash_at_step_2(step, total, cfg):
            if step == 2:
                raise KeyboardInterrupt  # killed after the step-2 checkpoint
            return lr_at(step, total, cfg)

        monkeypatch.setattr(sft, "lr_at", crash_at_step_2)
        with pytest.raises(KeyboardInterrupt):
            sft.main(args + ["--out-dir", str(tmp_path / "b")])  # one process, interrupted
        assert load_checkpoint(str(tmp_path / "b" / "sft.pt"))["step"] == 2
        two = torchrun([*args, "--out-dir", str(tmp_path / "b"), "--resume"], script=in_float64(tmp_path, "sft.py"))
        assert two.returncode == 0, two.stdout + two.stderr
        assert two.stdout.count("resumed SFT at step 2") == 1  # rank 0 alone prints
        a, b = (load_checkpoint(str(tmp_path / run / "sft.pt")) for run in ("a", "b"))
    finally:
        torch.set_num_threads(threads)
        torch.set_default_dtype(dtype)
    assert a["step"] == b["step"] == 4 and a["sft_config"] == b["sft_config"]
    assert a["model"].embed.weight.dtype == b["model"].embed.weight.dtype == torch.float64
    assert_same(b["model"].state_dict(), a["model"].state_dict())
    rows = [json.loads(line) for line in open(tmp_path / "b" / "metrics.jsonl")]
    assert [r["step"] for r in rows if r["stage"] == "sft"] == [0, 1, 2, 3]  # rank 0 alone writes: each step once
    rows_a = [json.loads(line) for line in open(tmp_path / "a" / "metrics.jsonl")]
    assert [r["loss"] for r in rows if r["stage"] == "sft"] == pytest.approx(
        [r["loss"] for r in rows_a if r["stage"] == "sft"], abs=LOSS)


def test_bad_batch_stops_every_rank_with_a_clear_message():
    # each rank refuses the batch before any process group; the first to exit makes torchrun stop the other,
    # often before that one has printed, so the message appears once or twice
    run = torchrun([*TINY, "--pretrain-batch-size", "7", "--out-dir", "unused"], timeout=120)
    assert run.returncode != 0
    assert run.stderr.count("--pretrain-batch-size = 7 must be divisible by the number of processes (2)") >= 1
    assert re.search(r"exitcode\s*:\s*2\b", run.stderr)  # the root cause is argparse's refusal, not a crash


def test_bad_world_settings_are_refused_before_any_process_group(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    for bad in (["--rl-prompts-per-step", "3"], ["--pretrain-batch-size", "5"], ["--dist-backend", "mpi"]):
        with pytest.raises(SystemExit):
            train.parse_args(bad)
    with pytest.raises(ValueError, match=r"--batch-size = 3 must be divisible by the number of processes \(2\)"):
        sft.SFTConfig(batch_size=3).validate()
    with pytest.raises(SystemExit):  # before any process group, before reading --data
        sft.main(["--data", "unused.jsonl", "--batch-size", "3"])
    with pytest.raises(ValueError, match="nccl needs CUDA"):
        distributed.check_backend("nccl", "cpu")
    with pytest.raises(ValueError, match="pins one GPU"):
        distributed.check_backend("auto", "cuda:1")
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert train.parse_args(["--rl-prompts-per-step", "3"]).rl_prompts_per_step == 3
    assert distributed.world_size() == 1 and distributed.wrap(model := fresh_model()) is model


def test_only_the_last_micro_batch_all_reduces():
    """gradient_sync: in gradient accumulation DDP communicates once per step, at the last micro-batch, and the
    gradient is the sum over all micro-batches; also through torch.compile's wrapper, as pretraining runs it."""
    import torch.distributed as dist
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        torch.manual_seed(0)
        net = torch.nn.Linear(4, 1)
        ddp = distributed.wrap(net)
        calls = []

        def counting_all_reduce(state, bucket):
            calls.append(bucket.index())
            return dist.all_reduce(bucket.buffer(), async_op=True).get_future().then(lambda fut: fut.value()[0])
        ddp.register_comm_hook(None, counting_all_reduce)
        xs = torch.randn(3, 2, 4)
        for wrapper in (ddp, torch.compile(ddp, backend="eager")):  # eager backend: no C++ compiler needed
            net.zero_grad(set_to_none=True)
            calls.clear()
            for k, x in enumerate(xs):
                with distributed.gradient_sync(wrapper, last=k == len(xs) - 1):
                    wrapper(x).sum().backward()
            assert calls == [0]  # one bucket, all-reduced once
            torch.testing.assert_close(net.weight.grad, xs.sum((0, 1))[None])
    finally:
        dist.destroy_process_group()
