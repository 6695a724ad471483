import json
import os
import re
from dataclasses import asdict

import pytest
import torch

import data
import distill
import rejection
from checkpoint import load_checkpoint, save_checkpoint
from config import TrainConfig
from grpo import GRPOConfig
from model import Transformer, make_config

# a teacher recipe small enough for a CPU test: a few steps of everything
TEACHER_CFG = TrainConfig(preset="tiny", pretrain_steps=3, pretrain_batch_size=2, pretrain_seq_len=64,
                          pretrain_unique_tokens=2000, pretrain_warmup=1, rl_steps=1, rl_prompts_per_step=2,
                          eval_problems=2, eval_samples=2, log_every=1, checkpoint_every=1,
                          grpo=GRPOConfig(group_size=2, max_new_tokens=8, minibatches=1))
ARGS = ["--students", "tiny", "--device", "cpu", "--distill-rl-steps", "1", "--reject-problems", "3",
        "--reject-samples-per-prompt", "2", "--reject-max-new-tokens", "64", "--reject-max-tokens", "64",
        "--sft-batch-size", "2", "--sft-seq-len", "256", "--sft-epochs", "1", "--sft-warmup", "1"]


def make_teacher(folder, vocab_size=None, step=TEACHER_CFG.rl_steps, **extra):
    """A teacher folder as train.py leaves it: rl.pt with its train_config (an untrained tiny model)."""
    os.makedirs(folder, exist_ok=True)
    torch.manual_seed(0)
    model = Transformer(make_config("tiny", **({"vocab_size": vocab_size} if vocab_size else {})))
    save_checkpoint(os.path.join(folder, "rl.pt"), model, stage="rl", step=step,
                    train_config=asdict(TEACHER_CFG), **extra)
    return folder


class SolvingDecoder:
    """Stands in for the teacher's sampling in rejection.py: an untrained tiny teacher solves nothing, so
    rejection would keep nothing. This one answers every Countdown prompt with a correct, reflective solution
    found by search, so the test exercises the real rejection filters and everything after them on data a good
    teacher would write. It is not the teacher's own sampling: that part is rejection.py's, tested there."""

    def __init__(self, model):
        self.enc = data.get_tokenizer()

    def generate(self, prompts, max_new_tokens, temperature=1.0, top_p=1.0):
        out = []
        for prompt in prompts:
            m = re.search(r"numbers \[([\d, ]+)\], create an equation that equals (\d+)", self.enc.decode(prompt))
            numbers, target = tuple(int(n) for n in m.group(1).split(", ")), int(m.group(2))
            e = next(e for e in data.clean_expressions(numbers) if e.value == target)
            out.append(data.encode(f" Try {e.text}: {data.render_steps(e)}. Let me verify: {target} = {target}. "
                                   f"</think> <answer> {e.text} </answer>"))
        return out


def mtimes(folder):
    return {os.path.join(d, f): os.stat(os.path.join(d, f)).st_mtime_ns
            for d, _, files in os.walk(folder) for f in files}


def test_distillation_end_to_end_and_resume(tmp_path, monkeypatch, capsys):
    teacher = make_teacher(str(tmp_path / "teacher"))
    monkeypatch.setattr(rejection.engine, "decoder_for", lambda model: SolvingDecoder(model).generate)
    grpo_of_stage, run_rl = {}, distill.run_rl

    def recording_run_rl(model, cfg, *args, stage="rl", grpo_cfg=None, **kwargs):
        grpo_of_stage[stage] = grpo_cfg or cfg.grpo
        return run_rl(model, cfg, *args, stage=stage, grpo_cfg=grpo_cfg, **kwargs)

    monkeypatch.setattr(distill, "run_rl", recording_run_rl)
    out = tmp_path / "distill"
    results = distill.main(["--teacher", teacher, "--out-dir", str(out), *ARGS])
    # the RL baseline runs the teacher's R1-Zero GRPO; the distilled student's RL, after SFT, R1's stage-4 settings
    assert grpo_of_stage["rl"] == TEACHER_CFG.grpo
    assert grpo_of_stage["distilled_rl"] == TEACHER_CFG.r1.final_rl_config(TEACHER_CFG.grpo) != TEACHER_CFG.grpo
    student = out / "students" / "tiny" / "seed0"
    for name in ("base.pt", "rl.pt", "distilled.pt", "distilled_rl.pt"):
        assert (student / name).exists(), name
    # the base student got the teacher's token budget and the RL baseline its RL steps
    rows = [json.loads(line) for line in open(student / "metrics.jsonl")]
    assert [r["step"] for r in rows if r["stage"] == "pretrain"] == list(range(TEACHER_CFG.pretrain_steps))
    assert [r["step"] for r in rows if r["stage"] == "rl"] == list(range(TEACHER_CFG.rl_steps))
    assert [r["step"] for r in rows if r["stage"] == "distilled_rl"] == [0]
    assert any(r["stage"] == "sft" for r in rows)
    # one config row, first: the student's recipe and where it ran, as a train.py run's
    config_rows = [r for r in rows if r["stage"] == "config"]
    assert rows[0] is config_rows[0] and len(config_rows) == 1
    assert config_rows[0]["config"]["preset"] == "tiny" and config_rows[0]["command"].startswith("python distill.py")
    assert {"commit", "device", "torch"} <= set(config_rows[0])
    base_cfg = load_checkpoint(str(student / "base.pt"))["train_config"]
    assert (base_cfg["preset"], base_cfg["pretrain_batch_size"], base_cfg["pretrain_seq_len"]) == ("tiny", 2, 64)
    # the teacher's samples passed rejection and the distilled model differs from the base it started from
    teacher_rows = [json.loads(line) for line in open(out / "teacher.jsonl")]
    assert results["rejection"]["kept"] == len(teacher_rows) == 3  # 3 problems, duplicates dropped
    base, distilled = (load_checkpoint(str(student / n))["model"] for n in ("base.pt", "distilled.pt"))
    assert not torch.equal(base.embed.weight, distilled.embed.weight)
    # every method and the teacher evaluated on the same held-out problems, and the figure drawn
    saved = json.load(open(out / "distill.json"))
    evals = saved["students"]["tiny"]["seeds"]["0"]
    assert set(evals) == set(distill.METHODS)
    for result in [saved["teacher"], *evals.values()]:
        assert (result["problems"], result["samples_per_problem"]) == (2, 2)
        assert 0 <= result["pass@1"] <= 1
    assert saved["rl_steps"] == saved["teacher_rl_steps"] == 1 and saved["tokenizer_sha256"]
    assert (out / "distill.png").exists()

    # resume: a second run trains and evaluates nothing again
    before = mtimes(student)
    capsys.readouterr()
    again = distill.main(["--teacher", teacher, "--out-dir", str(out), *ARGS])
    assert mtimes(student) == before
    assert "teacher data" not in capsys.readouterr().out
    assert again["students"] == saved["students"] and again["teacher"] == saved["teacher"]
    # another seed into the same folder (as a run on another GPU would) adds its student; both are in the summary.
    # It reuses the teacher's data and evaluation from their own files, even when it started before distill.json
    # held them (processes started together)
    os.remove(out / "distill.json")
    both = distill.main(["--teacher", teacher, "--out-dir", str(out), *ARGS, "--seeds", "1"])
    printed = capsys.readouterr().out
    assert "teacher data:" not in printed and "teacher:" not in printed  # neither made again
    assert both["teacher"] == saved["teacher"] and both["rejection"] == saved["rejection"]
    assert set(both["students"]["tiny"]["seeds"]) == {"0", "1"}
    assert both["students"]["tiny"]["seeds"]["0"] == saved["students"]["tiny"]["seeds"]["0"]
    assert json.load(open(out / "distill.json"))["students"] == both["students"]
    # other settings into the same folder are refused, not mixed in
    with pytest.raises(SystemExit, match="other settings.*sft.lr"):
        distill.main(["--teacher", teacher, "--out-dir", str(out), *ARGS, "--sft-lr", "3e-4"])


def test_interrupted_sft_resumes_from_its_checkpoint(tmp_path, monkeypatch):
    """SFT stopped after its first checkpoint continues from it: the finished model is the uninterrupted one."""
    teacher = make_teacher(str(tmp_path / "teacher"))
    monkeypatch.setattr(rejection.engine, "decoder_for", lambda model: SolvingDecoder(model).generate)
    args = ["--teacher", teacher, *ARGS, "--sft-steps", "2", "--sft-checkpoint-every", "1"]
    cfg = distill.parse_args(args)
    distill.run(cfg)
    whole = load_checkpoint(str(tmp_path / "teacher" / "distill" / "students" / "tiny" / "seed0" / "distilled.pt"))
    student_dir = tmp_path / "teacher" / "distill" / "students" / "tiny" / "seed0"

    calls = []
    real_sft = distill.sft

    def interrupted(model, examples, sft_cfg, device, log, save, start_step, opt_state):
        calls.append(start_step)

        def save_then_stop(step, opt):  # the first run is stopped right after its first checkpoint
            save(step, opt)
            if len(calls) == 1:
                raise KeyboardInterrupt
        return real_sft(model, examples, sft_cfg, device, log, save_then_stop, start_step, opt_state)

    os.remove(student_dir / "distilled.pt")
    os.remove(student_dir / "distilled_sft.pt")
    monkeypatch.setattr(distill, "sft", interrupted)
    with pytest.raises(KeyboardInterrupt):
        distill.run(cfg)
    assert load_checkpoint(str(student_dir / "distilled_sft.pt"))["step"] == 1
    distill.run(cfg)
    assert calls == [0, 1]
    resumed = load_checkpoint(str(student_dir / "distilled.pt"))
    for key, value in whole["model"].state_dict().items():
        assert torch.allclose(value, resumed["model"].state_dict()[key]), key


def test_teacher_folder_problems_stop_clearly(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SystemExit, match="no teacher checkpoint"):
        distill.main(["--teacher", str(empty), *ARGS])
    with pytest.raises(SystemExit, match="no such folder"):
        distill.main(["--teacher", str(tmp_path / "missing"), *ARGS])
    with pytest.raises(SystemExit, match="vocab_size 600 differs"):
        distill.main(["--teacher", make_teacher(str(tmp_path / "big_vocab"), vocab_size=600), *ARGS])
    with pytest.raises(SystemExit, match="another tokenizer"):
        distill.main(["--teacher", make_teacher(str(tmp_path / "other_tok"), tokenizer_sha256="0" * 64), *ARGS])
    with pytest.raises(SystemExit, match="at least as many RL steps as the teacher got \\(5\\)"):
        distill.main(["--teacher", make_teacher(str(tmp_path / "long_rl"), step=5), *ARGS, "--rl-steps", "2"])


def test_students_with_a_weaker_prior_beside_the_same_corpus(tmp_path, monkeypatch):
    """--student-reflect-scales 1 0.1: a second set of students pretrained on the teacher's corpus with 10x fewer
    reflect answers, in students_reflect0.1/, summed up beside the same-corpus ones, one figure panel each."""
    teacher = make_teacher(str(tmp_path / "teacher"))
    monkeypatch.setattr(rejection.engine, "decoder_for", lambda model: SolvingDecoder(model).generate)
    out = tmp_path / "distill"
    results = distill.main(["--teacher", teacher, "--out-dir", str(out), *ARGS, "--distill-rl-steps", "0",
                            "--student-reflect-scales", "1", "0.1"])
    for folder, p_reflect in (("students", TEACHER_CFG.corpus.p_reflect),
                              ("students_reflect0.1", TEACHER_CFG.corpus.p_reflect * 0.1)):
        base_cfg = load_checkpoint(str(out / folder / "tiny" / "seed0" / "base.pt"))["train_config"]
        assert base_cfg["corpus"]["p_reflect"] == pytest.approx(p_reflect), folder
        assert base_cfg["corpus"]["p_try"] == TEACHER_CFG.corpus.p_try
    assert set(results["students"]["tiny"]["seeds"]["0"]) == set(distill.METHODS)
    assert set(results["students_by_reflect_scale"]) == {"0.1"}
    assert set(results["students_by_reflect_scale"]["0.1"]["tiny"]["seeds"]["0"]) == set(distill.METHODS)
    assert (out / "distill.png").exists()
    # a scale that makes no valid corpus (p_try + p_reflect > 1) stops before any work
    with pytest.raises(SystemExit, match="--student-reflect-scales 10 makes no valid student corpus"):
        distill.main(["--teacher", teacher, "--out-dir", str(tmp_path / "other"), *ARGS,
                      "--student-reflect-scales", "10"])
    assert not (tmp_path / "other").exists()


def test_bad_values_fail_clearly():
    for bad in (["--students", "huge"], ["--students", "tiny", "tiny"], ["--seeds", "-1"], ["--seeds", "0", "0"],
                ["--distill-rl-steps", "-1"], ["--reject-problems", "-1"], ["--sft-lr", "0"],
                ["--reject-max-tokens", "600"], ["--eval-samples", "-2"], ["--device", "tpu"],
                ["--student-reflect-scales", "-1"], ["--student-reflect-scales", "1", "1"]):
        with pytest.raises(SystemExit):
            distill.parse_args(["--teacher", "somewhere", *bad])
    with pytest.raises(SystemExit):
        distill.parse_args([])  # --teacher is required
    cfg = distill.parse_args(["--teacher", "t", "--students", "dense-1m", "tiny", "--sft-lr", "3e-4"])
    assert cfg.students == ("dense-1m", "tiny") and cfg.sft.lr == 3e-4 and cfg.seeds == (0,)
    assert distill.parse_args(["--teacher", "t"]).sft.lr == distill.DistillConfig().sft.lr == 1e-3
    # a nested config's flags default to DistillConfig's values for it, which differ from RejectionConfig's own
    assert cfg.rejection == distill.DistillConfig().rejection != rejection.RejectionConfig()
    assert distill.parse_args(["--teacher", "t", "--reject-keep-per-prompt", "3"]).rejection.keep_per_prompt == 3
