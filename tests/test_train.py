import inspect
import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import replace

import pytest
import torch

import data
import r1
import readable
import rewards
import train
from checkpoint import load_checkpoint
from grpo import GRPOTrainer
from sft import example_from_text
from template import THINK

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--preset", "tiny", "--device", "cpu", "--pretrain-steps", "30", "--pretrain-batch-size", "8",
        "--pretrain-seq-len", "128", "--pretrain-unique-tokens", "50000", "--pretrain-warmup", "5",
        "--log-every", "5", "--rl-prompts-per-step", "4", "--rl-group-size", "4", "--rl-max-new-tokens", "24",
        "--eval-problems", "3", "--eval-samples", "4", "--checkpoint-every", "2", "--corpus-p-reflect", "0.2",
        "--eval-arithmetic-problems", "2", "--eval-arithmetic-samples", "2"]


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


def test_every_flag_has_help_from_its_field_comment(capsys):
    with pytest.raises(SystemExit):
        train.parse_args(["--help"])
    options = capsys.readouterr().out.split("\noptions:\n")[1]
    entries = re.split(r"\n  (?=--)", options)[1:]  # one per flag: "--flag [METAVAR]  help (default: ...)"
    assert len(entries) > 60
    for entry in entries:
        flag, _, rest = entry.partition(" ")
        text = " ".join(re.sub(r"^[A-Z0-9_]+\b", "", rest.strip()).split())
        assert text and not text.startswith("(default:"), (flag, text)
        assert "(default: " in text, flag
    flat = " ".join(options.split())
    assert "--pretrain-steps PRETRAIN_STEPS optimizer steps of pretraining (default: 1600; cpu setup: 3000)" in flat


def test_errors_name_fields_below_train_and_flags_on_its_command_line(capsys):
    with pytest.raises(ValueError, match=r"^GRPOConfig.group_size must be >= 2"):
        train.GRPOConfig(group_size=1).validate()
    with pytest.raises(ValueError, match=r"^TrainConfig.pretrain_lr must be a positive number"):
        train.TrainConfig(pretrain_lr=-1).validate()
    for args, message in ((["--rl-group-size", "1"], "--rl-group-size must be >= 2"),
                          (["--corpus-max-attempts", "0"], "--corpus-max-attempts must be >= 1"),
                          (["--r1-rsft-lr", "0"], "--r1-rsft-lr must be a positive number"),
                          (["--pretrain-lr", "-1"], "--pretrain-lr must be a positive number")):
        with pytest.raises(SystemExit):
            train.parse_args(args)
        assert message in capsys.readouterr().err
    assert train.flag_names("need 0 <= GRPOConfig.overlong_buffer < GRPOConfig.max_new_tokens (SFTConfig.lr)") == (
        "need 0 <= --rl-overlong-buffer < --rl-max-new-tokens (SFTConfig.lr)")


def test_setup_auto_picks_cpu_without_gpu_and_explicit_flags_win(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cfg = train.parse_args([])
    assert "setup: cpu (no CUDA device found" in capsys.readouterr().out
    assert (cfg.setup, cfg.preset, cfg.rl_steps, cfg.eval_samples) == ("cpu", "cpu", train.CPU_SETUP["rl_steps"],
                                                                      train.CPU_SETUP["eval_samples"])
    assert cfg.grpo.lr == train.CPU_SETUP["rl_lr"] and cfg.corpus.p_reflect == train.CPU_SETUP["corpus_p_reflect"]
    assert cfg.grpo.group_size == train.GRPOConfig().group_size  # not in CPU_SETUP: the GPU recipe's value
    assert cfg.corpus.p_second_language_reflect == 0.0  # the CPU corpus is English (results/cpu's runs saw that)
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
    starts = [(r["resumed"], r["config"]["rl_steps"]) for r in rows if r["stage"] == "config"]
    assert starts == [(False, 1000), (True, step + 3)]  # each start's own command
    rl_steps = [r["step"] for r in rows if r["stage"] == "rl"]
    assert rl_steps == list(range(step + 3))  # every step exactly once, in order
    for key in ("reward", "accuracy", "response_len_mean", "reflection_rate", "language_consistency", "entropy",
                "kl", "clip_frac", "router_max_over_mean", "rollout_s", "train_s"):
        assert key in rows[-1], key
    evals = json.load(open(os.path.join(out, "eval.json")))
    assert {"base", "rl"} <= set(evals) and 0 <= evals["rl"]["pass@1"] <= 1
    assert 0 <= evals["base"]["language_consistency"] <= 1 and 0 <= evals["rl"]["language_consistency"] <= 1
    phases = evals["phase_wall_s"]
    assert list(phases) == ["pretraining", "base_eval", "rl", "rl_eval"] and min(phases.values()) > 0
    assert sum(phases.values()) <= evals["wall_time_s"]
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


def test_pretraining_resumes_from_its_checkpoint(tmp_path):
    """An interrupted pretraining (pretrain.pt, no base.pt) continues from its step: every step logged once, one
    config row per start."""
    args = TINY + ["--out-dir", str(tmp_path), "--log-every", "1", "--rl-steps", "0", "--eval-problems", "0",
                   "--pretrain-checkpoint-every", "10"]
    train.main(train.parse_args(args + ["--pretrain-steps", "25"]))
    os.remove(tmp_path / "base.pt")  # as if killed after the step-20 checkpoint
    assert load_checkpoint(str(tmp_path / "pretrain.pt"), torch.device("cpu"))["step"] == 20
    train.main(train.parse_args(args + ["--pretrain-steps", "30", "--resume"]))
    rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert [r["resumed"] for r in rows if r["stage"] == "config"] == [False, True]
    assert [r["step"] for r in rows if r["stage"] == "pretrain"] == list(range(30))
    assert os.path.exists(tmp_path / "base.pt")


def test_own_problems_from_jsonl_files(tmp_path, monkeypatch):
    train_file, eval_file = tmp_path / "train.jsonl", tmp_path / "eval.jsonl"
    train_lines = [{"numbers": [3, 7, 11], "target": 54}, {"numbers": [2, 5, 9], "target": 19},
                   {"question": "What is 6 * 7?", "answer": "42"}, {"numbers": [4, 4, 8], "target": 24},
                   {"question": "Compute 12 - 5.", "answer": 7}]
    train_file.write_text("".join(json.dumps(line) + "\n" for line in train_lines))
    eval_file.write_text(json.dumps({"numbers": [1, 2, 3], "target": 6}) + "\n\n"
                         + json.dumps({"question": "What is 3/4 as a decimal?", "answer": "0.75"}) + "\n")
    seen = []  # the questions RL trained on
    real_step = GRPOTrainer.step

    def recording_step(trainer, rows):
        seen.extend(row["question"] for row in rows)
        return real_step(trainer, rows)
    monkeypatch.setattr(GRPOTrainer, "step", recording_step)
    out = tmp_path / "run"
    evals = train.main(train.parse_args(TINY + ["--out-dir", str(out), "--pretrain-steps", "5", "--rl-steps", "2",
                                                "--train-data", str(train_file), "--eval-data", str(eval_file)]))
    questions = {row["question"] for row in data.load_jsonl(train_file)}
    assert len(seen) == 2 * 4 and set(seen) <= questions
    assert evals["base"]["problems"] == evals["rl"]["problems"] == 2  # every problem of the file (3 asked)
    assert [r["step"] for r in map(json.loads, open(out / "metrics.jsonl")) if r["stage"] == "rl"] == [0, 1]


def test_bad_problem_files_fail_before_any_training(tmp_path):
    good, bad = tmp_path / "good.jsonl", tmp_path / "bad.jsonl"
    good.write_text("".join(json.dumps({"numbers": [3, 7, n], "target": 20}) + "\n" for n in range(1, 5)))
    bad.write_text(good.read_text().splitlines()[0] + "\n\n" + '{"numbers": [3, 7], "target": "x"}\n')
    out = tmp_path / "run"
    for args, message in ((["--train-data", str(bad)], f"{bad}:3: 'numbers' must be"),
                          (["--eval-data", str(bad)], f"{bad}:3:"),
                          (["--train-data", str(tmp_path / "missing.jsonl")], "No such file"),
                          (["--train-data", str(good), "--rl-prompts-per-step", "8"], "4 problems, fewer than")):
        with pytest.raises(SystemExit, match=message):
            train.main(train.parse_args(TINY + ["--out-dir", str(out), *args]))
        assert not os.path.exists(out / "metrics.jsonl") and not os.path.exists(out / "pretrain.pt")


# -----------------------------------------------------------------------------
# --recipe r1 (DeepSeek-R1's stages after the base model)

R1_TINY = TINY + ["--recipe", "r1", "--log-every", "1", "--pretrain-steps", "20", "--eval-problems", "2",
                  "--eval-samples", "2", "--r1-coldstart-examples", "4", "--r1-sft-batch-size", "1",
                  "--r1-sft-seq-len", "320", "--r1-sft-checkpoint-every", "2", "--r1-reasoning-rl-steps", "3",
                  "--r1-final-rl-steps", "3", "--r1-rejection-problems", "3", "--r1-rejection-samples-per-prompt",
                  "2", "--r1-rejection-keep-per-prompt", "1", "--r1-coldstart-source", "oracle"]


class Crash(Exception):
    """A simulated interruption (the process dying mid-stage)."""


def crash_after_logging(monkeypatch, function, stage, step):
    """Make r1.<function> (run_sft or run_rl) raise Crash right after logging `stage`'s step `step`, once."""
    real = getattr(r1, function)
    signature = inspect.signature(real)

    def crashing(*args, **kwargs):
        bound = signature.bind(*args, **kwargs)
        log = bound.arguments["log"]

        def log_then_crash(row):
            log(row)
            if row.get("stage") == stage and row.get("step") == step:
                monkeypatch.setattr(r1, function, real)  # only once
                raise Crash(f"{stage} step {step}")
        bound.arguments["log"] = log_then_crash
        return real(*bound.args, **bound.kwargs)
    monkeypatch.setattr(r1, function, crashing)


def correct_samples(model, rows, cfg, generate_fn=None):
    """Stands in for rejection.rejection_sample, which keeps nothing of a tiny model's answers: one correct
    answer per problem, written by the corpus writer."""
    examples = []
    for row in rows:
        expr = next(e for e in data.clean_expressions(tuple(sorted(row["numbers"]))) if e.value == row["target"])
        examples.append({"question": row["question"],
                         "completion": f"<think> Guess: {expr.text}. </think> <answer> {expr.text} </answer>"})
    return examples, {"kept": len(examples)}


def test_r1_recipe_end_to_end_with_crash_and_resume_in_every_stage(tmp_path, monkeypatch):
    """Runs the whole --recipe r1 in-process, interrupted once in each new stage, and resumed each time. What it
    covers: the stages' order, checkpoints, resume (each step logged once), eval.json and the error a real
    rejection sampling of the tiny model raises. What it does not: that rejection sampling keeps good answers
    (stubbed by correct_samples once the real one has failed) or that any stage learns anything."""
    out = str(tmp_path / "r1")
    args = R1_TINY + ["--out-dir", out]
    crash_after_logging(monkeypatch, "run_sft", "coldstart", 2)
    with pytest.raises(Crash):
        train.main(train.parse_args(args))
    assert torch.load(os.path.join(out, "coldstart.pt"), weights_only=False)["step"] == 2
    crash_after_logging(monkeypatch, "run_rl", "rl_reasoning", 2)
    with pytest.raises(Crash):
        train.main(train.parse_args(args + ["--resume"]))
    # the tiny model solves nothing: the real rejection sampling keeps nothing and the run stops, naming the stage
    with pytest.raises(SystemExit, match=r"rejection sampling \(R1 stage 3\): no sample survived rejection"):
        train.main(train.parse_args(args + ["--resume"]))
    assert not os.path.exists(os.path.join(out, "rejection.jsonl"))
    monkeypatch.setattr(r1, "rejection_sample", correct_samples)
    crash_after_logging(monkeypatch, "run_sft", "rsft", 2)
    with pytest.raises(Crash):
        train.main(train.parse_args(args + ["--resume"]))
    crash_after_logging(monkeypatch, "run_rl", "rl_final", 2)
    with pytest.raises(Crash):
        train.main(train.parse_args(args + ["--resume"]))
    monkeypatch.setattr(r1, "rejection_sample", None)  # the finished rsft stage must not sample again
    evals = train.main(train.parse_args(args + ["--resume"]))

    rows = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]
    for stage, n_steps in (("coldstart", None), ("rl_reasoning", 3), ("rsft", None), ("rl_final", 3)):
        steps = [r["step"] for r in rows if r["stage"] == stage]
        n_steps = n_steps or next(r["steps"] for r in rows if r["stage"] == stage + "_data")
        assert n_steps > 2 and steps == list(range(n_steps)), (stage, steps)  # each step once, in order
    assert [r["stage"] for r in rows].count("coldstart_data") == 1
    rejected = [r for r in rows if r["stage"] == "rejection"]
    assert len(rejected) == 1 and rejected[0]["kept"] == 3
    rsft_data = next(r for r in rows if r["stage"] == "rsft_data")
    assert rsft_data["examples"] == 3 + 1  # + round(0.25 / 0.75 * 3) non-reasoning examples
    assert json.load(open(os.path.join(out, "eval.json"))) == evals
    for name in ("base", "coldstart", "rl_reasoning", "rsft", "r1"):
        assert 0 <= evals[name]["pass@1"] <= 1 and 0 <= evals[name]["language_consistency"] <= 1, name
    assert set(evals["stage_wall_s"]) == {"coldstart", "rl_reasoning", "rsft", "r1"}
    assert list(evals["phase_wall_s"]) == ["pretraining", "base_eval", "r1_stages"]
    assert {"rl_reasoning_growth", "rl_final_growth"} <= set(evals)
    for name in ("coldstart.pt", "rsft.pt"):
        assert torch.load(os.path.join(out, name), weights_only=False)["finished"]
    assert torch.load(os.path.join(out, "rl_final.pt"), weights_only=False)["step"] == 3
    # the language reward is on in both RL stages; R1-Zero's RL has none
    config = rows[0]["config"]
    assert config["recipe"] == "r1" and config["r1"]["language_weight"] == 1.0


def test_r1_recipe_stops_on_a_cold_start_set_without_valid_example(tmp_path):
    # no candidate is ever right and a reflect answer gives up after one: no answer ends correct
    cfg = train.parse_args(R1_TINY + ["--out-dir", str(tmp_path), "--pretrain-steps", "2", "--eval-problems", "0",
                                      "--corpus-p-correct", "0", "--corpus-max-attempts", "1"])
    with pytest.raises(SystemExit, match=r"coldstart SFT \(oracle source\): no valid cold-start example"):
        train.main(cfg)
    assert not os.path.exists(tmp_path / "coldstart.pt") and not os.path.exists(tmp_path / "coldstart.jsonl")


def test_rejection_sft_set_adds_give_ups_and_non_reasoning_examples(tmp_path, monkeypatch):
    monkeypatch.setattr(r1, "rejection_sample", correct_samples)
    for fraction, n_give_ups in ((0.0, 0), (0.25, 10)):
        paths = {"rejection.jsonl": str(tmp_path / f"rejection{fraction}.jsonl"),
                 "metrics.jsonl": str(tmp_path / "metrics.jsonl")}
        cfg = train.parse_args(["--setup", "gpu", "--recipe", "r1", "--r1-rejection-problems", "30",
                                "--r1-rsft-giveup-fraction", str(fraction)])
        examples = r1.rejection_sft_examples(None, cfg, paths, lambda row: None)
        reasoning = 30 + n_give_ups  # give-ups: round(0.25 / 0.75 * 30); non-reasoning: a quarter of the whole set
        assert len(examples) == reasoning + round(0.25 / 0.75 * reasoning)
        stops = r1.give_ups(cfg, fraction, 30, cfg.seed + 3)
        assert examples[30:reasoning] == [example_from_text(data.make_prompt(row["question"]), completion)
                                          for row, completion in stops]
        for row, completion in stops:  # the corpus writer's English give-ups: every attempt misses
            assert completion.count("Wait,") == cfg.corpus.max_attempts and "</answer>" in completion, completion
            assert rewards.score(THINK + completion, row).accuracy == 0


def test_r1_config_flags(capsys):
    cfg = train.parse_args(["--recipe", "r1", "--r1-language-weight", "0.5", "--r1-rsft-epochs", "3"])
    assert cfg.recipe == "r1" and cfg.r1.language_weight == 0.5 and cfg.r1.rsft_epochs == 3
    assert train.parse_args([]).recipe == "r1-zero"
    assert (cfg.r1.coldstart_source, cfg.r1.rsft_from, cfg.r1.final_rl_lr) == ("r1zero", "base", 0.0)
    assert (cfg.r1.coldstart_giveup_fraction, cfg.r1.rsft_giveup_fraction) == (0.0, 0.1)
    cfg = train.parse_args(["--recipe", "r1", "--r1-coldstart-source", "oracle", "--r1-rsft-from", "reasoner",
                            "--r1-final-rl-lr", "1e-5", "--r1-coldstart-giveup-fraction", "0.1",
                            "--r1-rsft-giveup-fraction", "0.05"])
    assert (cfg.r1.coldstart_source, cfg.r1.rsft_from, cfg.r1.final_rl_lr) == ("oracle", "reasoner", 1e-5)
    assert (cfg.r1.coldstart_giveup_fraction, cfg.r1.rsft_giveup_fraction) == (0.1, 0.05)
    for bad in (["--recipe", "r2"], ["--r1-coldstart-examples", "0"], ["--r1-non-reasoning-fraction", "1"],
                ["--r1-language-weight", "-1"], ["--r1-rejection-max-tokens-frac", "0"]):
        with pytest.raises(SystemExit):
            train.parse_args(bad)
    for bad, message in ((["--r1-coldstart-source", "people"], "--r1-coldstart-source must be oracle or r1zero"),
                         (["--r1-rsft-from", "rl"], "--r1-rsft-from must be base or reasoner"),
                         (["--r1-coldstart-max-tokens", "-1"], "--r1-coldstart-max-tokens must be >= 0"),
                         (["--r1-coldstart-giveup-fraction", "1"], "--r1-coldstart-giveup-fraction must be in"),
                         (["--r1-final-rl-lr", "-1"], "--r1-final-rl-lr must be >= 0"),
                         (["--r1-rsft-giveup-fraction", "-0.1"], "--r1-rsft-giveup-fraction must be in"),
                         (["--r1-clip-ratio-c", "1"], "--r1-clip-ratio-c must be 0 (off) or a number > 1"),
                         (["--r1-overlong-buffer-frac", "1"], "--r1-overlong-buffer-frac must be in"),
                         (["--r1-repeat-penalty", "-1"], "--r1-repeat-penalty must be >= 0"),
                         (["--rl-repeat-penalty", "nan"], "--rl-repeat-penalty must be a number >= 0"),
                         (["--r1-final-rl-temperature", "-1"], "--r1-final-rl-temperature must be >= 0"),
                         (["--r1-coldstart-r1zero-samples", "0"], "--r1-coldstart-r1zero-samples must be >= 1"),
                         (["--eval-arithmetic-samples", "0"], "--eval-arithmetic-samples must be positive"),
                         (["--recipe", "r1", "--r1-coldstart-source", "r1zero", "--rl-steps", "0"],
                          "--r1-coldstart-source r1zero samples R1-Zero after its RL: it needs --rl-steps >= 1")):
        with pytest.raises(SystemExit):
            train.parse_args(bad)
        assert message in capsys.readouterr().err, bad


def test_r1_rl_stages_add_the_dual_clip_and_the_overlong_punishment_and_take_r1s_repeat_penalty():
    for args, budget in ((["--setup", "gpu"], 512), (["--setup", "cpu"], 256)):
        cfg = train.parse_args(args + ["--recipe", "r1"])
        assert (cfg.grpo.language_weight, cfg.grpo.clip_ratio_c, cfg.grpo.overlong_buffer,
                cfg.grpo.repeat_penalty) == (0.0, 0.0, 0, 0.0)
        stage = cfg.r1.rl_config(cfg.grpo)
        assert (stage.language_weight, stage.clip_ratio_c, stage.overlong_buffer,
                stage.repeat_penalty) == (1.0, 3.0, budget // 8, 0.5)
        assert replace(stage, language_weight=0.0, clip_ratio_c=0.0, overlong_buffer=0, repeat_penalty=0.0) == cfg.grpo
        assert (cfg.grpo.temperature, cfg.r1.final_rl_temperature) == (1.0, 0.7)  # stage 4 samples nearer the eval's
        final = cfg.r1.final_rl_config(cfg.grpo)
        assert replace(final, temperature=1.0) == stage and final.temperature == 0.7
    cfg = train.parse_args(["--recipe", "r1", "--r1-clip-ratio-c", "0", "--r1-overlong-buffer-frac", "0",
                            "--rl-overlong-buffer", "16", "--r1-repeat-penalty", "1", "--rl-repeat-penalty", "0.5"])
    stage = cfg.r1.rl_config(cfg.grpo)
    assert (stage.clip_ratio_c, stage.overlong_buffer, cfg.grpo.overlong_buffer) == (0.0, 0, 16)
    assert (stage.repeat_penalty, cfg.grpo.repeat_penalty) == (1.0, 0.5)
    # stage 4's own temperature and learning rate, 0 taking stage 2's
    cfg = train.parse_args(["--recipe", "r1", "--r1-final-rl-temperature", "0", "--r1-final-rl-lr", "3e-6"])
    final = cfg.r1.final_rl_config(cfg.grpo)
    assert (final.temperature, final.lr) == (cfg.grpo.temperature, 3e-6)
    assert replace(final, lr=cfg.grpo.lr) == cfg.r1.rl_config(cfg.grpo)


# -----------------------------------------------------------------------------
# R1's cold start from R1-Zero's own answers, made readable (readable.py)

def messy_correct_samples(model, rows, cfg, decoder=None):
    """Stands in for rejection.rejection_sample on an R1-Zero model: for each problem, cfg.samples_per_prompt
    correct answers in R1-Zero's style at HEAD (German reflection, a miss tried twice), written from the problem's
    solutions; the second sample of a problem rewrites to the first's readable text (only its repeat differs)."""
    examples = []
    for row in rows:
        exprs = data.clean_expressions(tuple(sorted(row["numbers"])))
        hit = next(e for e in exprs if e.value == row["target"])
        miss = next(e for e in exprs if e.value != row["target"])
        tried = f"Versuche {miss.text}: {data.render_steps(miss)}. Warte, {miss.value} ist nicht {row['target']}. "
        for i in range(cfg.samples_per_prompt):
            examples.append({"question": row["question"], "completion": (
                f"<think> {tried * (i + 1)}Versuche {hit.text}: {data.render_steps(hit)}. Lass mich pruefen: "
                f"{hit.value} = {row['target']}. </think> <answer> {hit.text} </answer>")})
    return examples, {"sampled": len(examples), "correct": len(examples), "kept": len(examples),
                      "mean_kept_tokens": 50.0}


def row_of(question):
    """The Countdown row of a question as data.countdown_question writes it."""
    numbers, target = re.fullmatch(r"Using the numbers \[([\d, ]+)\], create an equation that equals (\d+)\. .*",
                                   question).groups()
    return data.countdown_row([int(n) for n in numbers.split(", ")], int(target))


def test_r1zero_coldstart_set_is_readable_english_with_summaries_and_capped(monkeypatch):
    monkeypatch.setattr(r1, "rejection_sample", messy_correct_samples)
    cfg = train.parse_args(["--setup", "gpu", "--recipe", "r1", "--r1-coldstart-source", "r1zero",
                            "--r1-coldstart-r1zero-problems",
                            "30", "--r1-coldstart-r1zero-samples", "2", "--r1-coldstart-giveup-fraction", "0.25",
                            "--r1-coldstart-max-tokens", "307"])
    examples, stats = r1.make_coldstart_set(cfg)
    answers = [e for e in examples if e["kind"] == "answer"]
    assert stats["r1zero_sampled"] == 60 and stats["r1zero_duplicate"] == 30 and len(answers) == 30
    assert stats["r1zero_mixed_language"] == 60 and stats["r1zero_repeated_attempts"] == 30
    for example in examples:
        row, text = row_of(example["question"]), THINK + example["completion"]
        score = rewards.score(text, row)
        assert score.format == 1 and score.language_consistency == 1.0 and readable.summary_ok(text, row)
        assert score.accuracy == (example["kind"] == "answer")  # a give-up answers its last miss
        if example["kind"] == "answer":
            assert rewards.extract_answer(example["original"]) == rewards.extract_answer(text)
    # the give-ups (written by the corpus writer: 10 misses, ~370 tokens) mostly pass the 307-token cap; the report
    # counts what it dropped and gives the kept lengths' distribution
    assert stats["max_tokens"] == 307 and stats["dropped_over_max_tokens"] >= 1
    assert stats["examples"] == len(examples) == 30 + stats["give_ups"]
    assert stats["tokens"]["max"] <= 307 < stats["dropped_tokens"]["max"]
    assert stats["tokens"]["p50"] <= stats["tokens"]["p90"] <= stats["tokens"]["max"]


def test_r1_recipe_with_an_r1zero_cold_start(tmp_path, monkeypatch):
    """--r1-coldstart-source r1zero runs R1-Zero's RL first (rl.pt, evaluated as "rl"); the tiny R1-Zero solves
    nothing and the run stops, saying so; with R1-Zero's answers stubbed (messy_correct_samples) a resumed run
    keeps R1-Zero's RL, makes the readable set and runs every stage, rejection SFT from the stage-2 model."""
    out = str(tmp_path / "r1zero")
    args = R1_TINY + ["--out-dir", out, "--r1-coldstart-source", "r1zero", "--rl-steps", "2", "--r1-rsft-from",
                      "reasoner", "--r1-final-rl-lr", "1e-5", "--r1-final-rl-steps", "1", "--r1-reasoning-rl-steps",
                      "1", "--r1-coldstart-r1zero-problems", "3", "--r1-coldstart-r1zero-samples", "2"]
    with pytest.raises(SystemExit, match=r"coldstart SFT \(r1zero source\): R1-Zero \(rl.pt, 2 RL steps\) has no "
                                         r"correct answer to make readable: no sample survived rejection"):
        train.main(train.parse_args(args))
    assert torch.load(os.path.join(out, "rl.pt"), weights_only=False)["step"] == 2
    assert not os.path.exists(os.path.join(out, "coldstart.jsonl"))
    assert "rl" in json.load(open(os.path.join(out, "eval.json")))  # R1-Zero from the same base, for the table

    monkeypatch.setattr(r1, "rejection_sample", messy_correct_samples)
    sft_models = {}
    real_run_sft = r1.run_sft

    def spy(model, *args, **kwargs):
        stage = args[-1]
        sft_models[stage + "_init"] = model
        sft_models[stage] = real_run_sft(model, *args, **kwargs)
        return sft_models[stage]
    monkeypatch.setattr(r1, "run_sft", spy)
    evals = train.main(train.parse_args(args + ["--resume"]))
    assert sft_models["rsft_init"] is sft_models["coldstart"]  # the stage-2 model: trained in place since the SFT
    rows = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]
    assert [r["step"] for r in rows if r["stage"] == "rl"] == [0, 1]  # R1-Zero's RL once, not again on resume
    made = [r for r in rows if r["stage"] == "coldstart_set"]
    assert len(made) == 1 and made[0]["source"] == "r1zero" and made[0]["examples"] == 3
    for line in open(os.path.join(out, "coldstart.jsonl")):
        example = json.loads(line)
        assert "Summary: " in example["completion"] and "Versuche" in example["original"]
        assert "Versuche" not in example["completion"]
    for stage, lr in (("rl", train.parse_args(args).grpo.lr), ("rl_final", 1e-5)):  # --rl-lr; --r1-final-rl-lr
        ckpt = torch.load(os.path.join(out, stage + ".pt"), weights_only=False)
        assert ckpt["trainer"]["opt"]["param_groups"][0]["lr"] == lr, stage
    for name in ("base", "rl", "coldstart", "rl_reasoning", "rsft", "r1"):
        assert 0 <= evals[name]["arithmetic_pass@1"] <= 1 and evals[name]["truncated_rate"] is not None, name
    assert {"rl_growth", "rl_reasoning_growth", "rl_final_growth"} <= set(evals)
