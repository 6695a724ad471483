import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

import data
import train
from checkpoint import load_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--preset", "tiny", "--device", "cpu", "--pretrain-steps", "30", "--pretrain-batch-size", "8",
        "--pretrain-seq-len", "128", "--pretrain-unique-tokens", "50000", "--pretrain-warmup", "5",
        "--log-every", "5", "--rl-prompts-per-step", "4", "--rl-group-size", "4", "--rl-max-new-tokens", "24",
        "--eval-problems", "3", "--eval-samples", "4", "--checkpoint-every", "2", "--corpus-p-reflect", "0.2"]


def run_train(args, **kw):
    return subprocess.Popen([sys.executable, "train.py", *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **kw)


def test_bad_cli_values_fail_clearly():
    for bad in (["--preset", "huge"], ["--rl-group-size", "1"], ["--pretrain-lr", "-1"],
                ["--rl-loss-agg-mode", "mean"], ["--rl-temperature", "0"], ["--pretrain-steps", "abc"],
                ["--corpus-p-reflect", "1.5"], ["--corpus-p-try", "0.6", "--corpus-p-reflect", "0.5"],
                ["--corpus-max-attempts", "0"], ["--corpus-p-second-language-reflect", "1.5"],
                ["--corpus-p-second-language-other", "-0.5"], ["--rl-language-weight", "-1"],
                ["--rl-language-weight", "nan"]):
        with pytest.raises(SystemExit):
            train.parse_args(bad)
    cfg = train.parse_args(["--setup", "gpu", "--rl-lr", "1e-4", "--rl-kl-beta", "0", "--corpus-p-correct", "0.2"])
    assert cfg.grpo.lr == 1e-4 and cfg.grpo.kl_beta == 0 and cfg.preset == "small"
    assert cfg.corpus.p_correct == 0.2 and cfg.corpus.p_reflect == data.CorpusConfig().p_reflect
    cfg = train.parse_args(["--corpus-p-second-language-reflect", "0.8", "--corpus-p-second-language-other",
                            "0.05", "--rl-language-weight", "0.1"])
    assert (cfg.corpus.p_second_language_reflect, cfg.corpus.p_second_language_other) == (0.8, 0.05)
    assert cfg.grpo.language_weight == 0.1 and train.parse_args([]).grpo.language_weight == 0.0


def test_setup_auto_picks_cpu_without_gpu_and_explicit_flags_win(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cfg = train.parse_args([])
    assert "setup: cpu (no CUDA device found" in capsys.readouterr().out
    assert (cfg.setup, cfg.preset, cfg.rl_steps, cfg.eval_samples) == ("cpu", "cpu", train.CPU_SETUP["rl_steps"],
                                                                      train.CPU_SETUP["eval_samples"])
    assert cfg.grpo.lr == train.CPU_SETUP["rl_lr"] and cfg.corpus.p_reflect == train.CPU_SETUP["corpus_p_reflect"]
    assert cfg.grpo.group_size == train.GRPOConfig().group_size  # not in CPU_SETUP: the GPU recipe's value
    cfg = train.parse_args(["--rl-steps", "7", "--preset", "tiny", "--corpus-p-reflect", "0.1"])
    assert (cfg.setup, cfg.rl_steps, cfg.preset, cfg.corpus.p_reflect) == ("cpu", 7, "tiny", 0.1)
    assert cfg.pretrain_steps == train.CPU_SETUP["pretrain_steps"]
    # with a GPU (or --setup gpu) every value is the GPU recipe's, exactly the dataclass defaults
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert train.parse_args([]) == train.TrainConfig(setup="gpu")
    assert train.parse_args(["--setup", "cpu"]).preset == "cpu"
    assert train.parse_args(["--device", "cpu"]).setup == "cpu"
    with pytest.raises(SystemExit):
        train.parse_args(["--setup", "laptop"])


def test_resume_with_nothing_to_resume_stops(tmp_path):
    cfg = train.parse_args(TINY + ["--out-dir", str(tmp_path), "--resume"])
    with pytest.raises(SystemExit, match="nothing to resume"):
        train.main(cfg)
    assert not os.path.exists(tmp_path / "metrics.jsonl")


def test_tiny_pipeline_end_to_end_with_kill_and_resume(tmp_path):
    out = str(tmp_path / "run")
    # Start a long RL run, kill it hard once an RL checkpoint exists, then resume to a shorter end.
    proc = run_train(TINY + ["--out-dir", out, "--rl-steps", "1000"], start_new_session=True)
    deadline = time.time() + 120
    while not os.path.exists(os.path.join(out, "rl.pt")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert proc.poll() is None, proc.communicate()[0]
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    step = torch.load(os.path.join(out, "rl.pt"), weights_only=False)["step"]
    assert step >= 2

    done = run_train(TINY + ["--out-dir", out, "--rl-steps", str(step + 3), "--resume"])
    log = done.communicate(timeout=300)[0]
    assert done.returncode == 0, log
    assert f"resumed RL at step {step}" in log
    rows = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]
    assert rows[0]["stage"] == "config" and rows[0]["commit"] and "train.py" in rows[0]["command"]
    assert rows[0]["config"]["corpus"]["p_reflect"] == 0.2
    rl_steps = [r["step"] for r in rows if r["stage"] == "rl"]
    assert rl_steps == list(range(step + 3))  # every step exactly once, in order
    for key in ("reward", "accuracy", "response_len_mean", "reflection_rate", "language_consistency", "entropy",
                "kl", "clip_frac", "router_max_over_mean", "rollout_s", "train_s"):
        assert key in rows[-1], key
    evals = json.load(open(os.path.join(out, "eval.json")))
    assert {"base", "rl"} <= set(evals) and 0 <= evals["rl"]["pass@1"] <= 1
    assert 0 <= evals["base"]["language_consistency"] <= 1 and 0 <= evals["rl"]["language_consistency"] <= 1
    assert os.path.getsize(os.path.join(out, "curves.png")) > 1000
    # resuming onto another device (a GPU; "meta" stands in for it here) moves the model, not the RNG state
    ckpt = load_checkpoint(os.path.join(out, "rl.pt"), device="meta")
    assert next(ckpt["model"].parameters()).device.type == "meta"
    torch.set_rng_state(ckpt["torch_rng"])  # raised for a state loaded onto a GPU
    # the checkpoint serves sample.py
    sample = subprocess.run([sys.executable, "sample.py", "--ckpt", os.path.join(out, "rl.pt"), "--numbers", "3",
                             "7", "11", "--target", "54", "--max-new-tokens", "8", "--device", "cpu"],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert sample.returncode == 0 and "sample 0" in sample.stdout, sample.stderr

