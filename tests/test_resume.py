"""
Fault injection: a run killed with SIGKILL at chosen moments and resumed with --resume each time ends as the same
run uninterrupted, in every stage: R1-Zero (train.py), the R1 recipe (train.py --recipe r1), sft.py and
distill.py, at tiny sizes on the CPU.

The moments: each stage's first logged row (before the stage's first checkpoint), a random point, and between a
checkpoint's write and the next row. The test kills the real scripts from outside: it polls metrics.jsonl and the
checkpoint files, stops the process group (SIGSTOP) when the moment comes, checks that the process is where it
should be, and kills it (SIGKILL). A checkpoint is followed by its next row within one step, so that moment is
retried at the next checkpoint when the poll sees it late. Each pipeline runs uninterrupted once and killed twice
over, the kills split between two runs, all three side by side (their processes share the cores).

The R1 runs go through a driver (the end of this file): rejection sampling is stubbed (a tiny model's answers are
never kept), every RL step reports an aha example (a tiny model seldom ends right after a reflection, and
aha.jsonl needs rows to test), and the one moment polling cannot catch, the rejection row logged and its file not
yet written (microseconds apart), is made there.

What "the same run" means: every (stage, step) row exactly once in metrics.jsonl, the same rows in the same order
as the uninterrupted run's, bit for bit, except their wall-clock fields (TIMING) and the config rows (one per start
of a process, naming its command); aha.jsonl the same; and the final checkpoints' weights equal, bit for bit.
R1-Zero's evaluations (eval.json) are compared too. The other pipelines' are not: they sample from the global RNG
where the process has brought it, and a resumed process gets there by another path (loading a checkpoint builds a
model, whose initialisation draws from it; a finished stage's evaluation is not redone). Their training does not
depend on it: an RL stage seeds its sampling as it starts.
"""

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

import data

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# one thread (the machine's cores are shared), and the same string hashes in every process (set orders)
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}
TIMING = {"elapsed_s", "tokens_per_s", "rollout_s", "train_s", "rollout_tokens_per_s"}
TIMEOUT = 120  # seconds for any one process

# R1-Zero at tiny sizes: 20 pretraining steps (a checkpoint every 5), 6 RL steps (a checkpoint every 2), and an
# evaluation of the base and RL models on one problem
R1_ZERO = ["--preset", "tiny", "--device", "cpu", "--pretrain-steps", "20", "--pretrain-batch-size", "8",
           "--pretrain-seq-len", "64", "--pretrain-unique-tokens", "20000", "--pretrain-warmup", "2",
           "--pretrain-checkpoint-every", "5", "--log-every", "1", "--rl-steps", "6", "--rl-prompts-per-step", "2",
           "--rl-group-size", "2", "--rl-max-new-tokens", "16", "--rl-minibatches", "2", "--checkpoint-every", "2",
           "--eval-problems", "1", "--eval-samples", "2"]
# the R1 recipe on R1-Zero's base model: a few steps of each stage, no evaluation; the corpus writer's cold start
# (a tiny R1-Zero has no correct answer to make readable)
R1 = R1_ZERO + ["--eval-problems", "0", "--recipe", "r1", "--r1-coldstart-examples", "6", "--r1-sft-batch-size", "1",
                "--r1-sft-seq-len", "256", "--r1-sft-checkpoint-every", "2", "--r1-coldstart-epochs", "1",
                "--r1-reasoning-rl-steps", "4", "--r1-final-rl-steps", "4", "--r1-rejection-problems", "4",
                "--r1-rejection-samples-per-prompt", "2", "--r1-rejection-keep-per-prompt", "1",
                "--r1-coldstart-source", "oracle"]


# -----------------------------------------------------------------------------
# Watching and killing a run


def rows_of(path):
    """The complete JSON lines of a file being written (a line without its newline is still being written)."""
    try:
        with open(path) as f:
            text = f.read()
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in text.splitlines(keepends=True) if line.endswith("\n")]


def file_id(path):
    """What changes when a checkpoint is written (atomically: a new file replaces the old)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns


class Run:
    """A script run as a child process in its own process group, with its output in a log file."""

    def __init__(self, command, out_dir, log_name):
        self.out_dir, self.metrics = out_dir, os.path.join(out_dir, "metrics.jsonl")
        self.log_path = os.path.join(os.path.dirname(out_dir), log_name)
        with open(self.log_path, "w") as log:
            self.proc = subprocess.Popen([sys.executable, *command], cwd=ROOT, env=ENV, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        self.deadline = time.time() + TIMEOUT

    def output(self):
        with open(self.log_path) as log:
            return log.read()[-3000:]

    def alive(self):
        assert time.time() < self.deadline, f"timed out:\n{self.output()}"
        return self.proc.poll() is None

    def wait(self):
        """Wait for the end of a run that must succeed."""
        try:
            self.proc.wait(timeout=max(1, self.deadline - time.time()))
        except subprocess.TimeoutExpired:
            self.signal(signal.SIGKILL)
            raise AssertionError(f"timed out:\n{self.output()}") from None
        assert self.proc.returncode == 0, self.output()

    def signal(self, sig):
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass

    def kill(self):
        self.signal(signal.SIGKILL)
        self.proc.wait()
        assert self.proc.returncode == -signal.SIGKILL, f"it ended before the kill:\n{self.output()}"

    def poll_until(self, moment):
        """Poll until moment() holds, then stop the process group (nothing moves while it is checked)."""
        while not moment():
            assert self.alive(), f"it ended before the moment came:\n{self.output()}"
            time.sleep(0.001)
        self.signal(signal.SIGSTOP)

    def kill_at_row(self, stage, step, before=None):
        """Kill once `stage`'s row of `step` is logged, and before the checkpoint file `before` exists."""
        def logged():
            return any(r.get("stage") == stage and r.get("step") == step for r in rows_of(self.metrics))
        self.poll_until(logged)
        if before is not None:
            assert not os.path.exists(os.path.join(self.out_dir, before)), f"{before} was written already"
        self.kill()
        return f"{stage} step {step}'s row"

    def kill_after_checkpoint(self, stage, name):
        """Kill between a write of checkpoint `name` (a mid-stage checkpoint of `stage`, with a "step") and the
        next row of `stage`; a moment seen too late (the next row logged) is tried again at the next write."""
        path, seen = os.path.join(self.out_dir, name), file_id(os.path.join(self.out_dir, name))
        while True:
            self.poll_until(lambda: file_id(path) not in (seen, None))
            seen = file_id(path)
            step = torch.load(path, weights_only=True).get("step")  # None: the stage's finished model
            logged = [r["step"] for r in rows_of(self.metrics) if r.get("stage") == stage and "step" in r]
            if step is not None and logged and logged[-1] == step - 1:
                self.kill()
                return f"{name} at step {step}, before the next {stage} row"
            self.signal(signal.SIGCONT)

    def kill_at_random(self, longest):
        """Kill at a random moment in the `longest` seconds after the process's first row (if it still runs)."""
        start = len(rows_of(self.metrics))
        self.poll_until(lambda: len(rows_of(self.metrics)) > start)
        self.signal(signal.SIGCONT)
        delay = random.uniform(0, longest)
        time.sleep(delay)
        if not self.alive():
            self.wait()
            return f"nothing: it ended within {delay:.2f} s of its first row"
        self.kill()
        return f"{delay:.2f} s after the first row"

    def dies_in_driver(self):
        """The R1 driver's own death: after the rejection row, before rejection.jsonl."""
        self.proc.wait(timeout=max(1, self.deadline - time.time()))
        assert self.proc.returncode == -signal.SIGKILL, self.output()
        assert any(r.get("stage") == "rejection" for r in rows_of(self.metrics))
        assert not os.path.exists(os.path.join(self.out_dir, "rejection.jsonl"))
        return "the rejection row, before rejection.jsonl"


def run_with_kills(command, out_dir, kills):
    """Run command(i), the i-th process's command (the first one's, then the resumed ones'), into out_dir: killed
    at each of `kills` (functions of a Run that kill it and say where), and the last to its end. Returns what each
    kill hit."""
    hits = []
    for i, kill in enumerate(kills + [None]):
        run = Run(command(i), out_dir, f"{os.path.basename(out_dir)}_{i}.log")
        try:
            run.wait() if kill is None else hits.append(kill(run))
        except BaseException:
            run.signal(signal.SIGKILL)  # not left stopped by a failed check
            raise
    return hits


def side_by_side(*functions):
    """Call `functions` at once, each in a thread (their processes share the cores), and return their results."""
    with ThreadPoolExecutor(len(functions)) as pool:
        return [future.result() for future in [pool.submit(f) for f in functions]]


# -----------------------------------------------------------------------------
# Comparing a killed and resumed run with the uninterrupted one


def stage_rows(path):
    """The rows that steps and stages write, without their wall-clock fields: all but the config rows."""
    return [{k: v for k, v in row.items() if k not in TIMING} for row in rows_of(path) if row.get("stage") != "config"]


def assert_same_run(killed, reference, checkpoints, evals=()):
    rows, expected = (stage_rows(os.path.join(folder, "metrics.jsonl")) for folder in (killed, reference))
    keys = [(row["stage"], row.get("step")) for row in rows]
    repeated = sorted({key for key in keys if keys.count(key) > 1}, key=str)
    assert not repeated, f"rows logged more than once: {repeated}"
    missing = [key for key in ((r["stage"], r.get("step")) for r in expected) if key not in keys]
    assert not missing, f"rows missing: {missing}"
    for got, want in zip(rows, expected):
        assert got == want, f"{got['stage']} step {got.get('step')} differs from the uninterrupted run's"
    assert len(rows) == len(expected)
    aha, expected_aha = rows_of(os.path.join(killed, "aha.jsonl")), rows_of(os.path.join(reference, "aha.jsonl"))
    assert len({json.dumps(row, sort_keys=True) for row in aha}) == len(aha), "aha.jsonl has a duplicate"
    assert aha == expected_aha
    for name in checkpoints:
        got = torch.load(os.path.join(killed, name), weights_only=True)["model"]
        want = torch.load(os.path.join(reference, name), weights_only=True)["model"]
        assert got.keys() == want.keys()
        differ = [key for key in want if not torch.equal(got[key], want[key])]
        assert not differ, f"{name}: weights differ from the uninterrupted run's ({differ[:3]} ...)"
    for name in evals:
        got, want = (json.load(open(os.path.join(folder, "eval.json")))[name] for folder in (killed, reference))
        assert got == want, f"eval.json's {name} differs from the uninterrupted run's"


# -----------------------------------------------------------------------------
# The pipelines


@pytest.fixture(scope="module")
def r1_zero_reference(tmp_path_factory):
    """R1-Zero uninterrupted: the reference of the R1-Zero test, and the base model and teacher of the others.
    It runs beside the R1-Zero test's killed runs; reference() waits for it and returns its --out-dir."""
    out = str(tmp_path_factory.mktemp("r1_zero") / "reference")
    run, done = Run(["train.py", *R1_ZERO, "--out-dir", out], out, "reference.log"), []

    def reference():
        if not done:
            run.wait()
            done.append(True)
        return out
    return reference


def test_r1_zero_killed_anywhere_resumes_to_the_same_run(r1_zero_reference, tmp_path):
    """Killed before its first checkpoint, a train.py run has nothing to resume (--resume says so:
    test_train.test_resume_with_nothing_to_resume_stops) and starts afresh; pretrain_base's restart from nothing
    is distill.py's (below). Two runs, killed twice each, side by side."""
    outs = [str(tmp_path / name) for name in ("a", "b")]

    def command(out):
        return lambda i: ["train.py", *R1_ZERO, "--out-dir", out, *["--resume"][:i]]
    hits = side_by_side(
        lambda: run_with_kills(command(outs[0]), outs[0], [
            lambda run: run.kill_after_checkpoint("pretrain", "pretrain.pt"),
            lambda run: run.kill_at_row("rl", 0, before="rl.pt"),  # RL restarts from base.pt
        ]),
        lambda: run_with_kills(command(outs[1]), outs[1], [
            lambda run: run.kill_after_checkpoint("rl", "rl.pt"),
            lambda run: run.kill_at_random(1.0),
        ]))
    print("killed at:", hits)
    for out in outs:
        assert_same_run(out, r1_zero_reference(), ["base.pt", "rl.pt"], evals=["base", "rl"])


def r1_driver(args, die_after_rejection_row=False):
    """The command of train.py's run of `args` through the R1 driver (the end of this file)."""
    return ["-m", "tests.test_resume", *(["--die-after-rejection-row"] if die_after_rejection_row else []), *args]


def test_r1_recipe_killed_in_every_stage_resumes_to_the_same_run(r1_zero_reference, tmp_path):
    """All runs start from R1-Zero's base model (--resume from base.pt); two of them killed three times each."""
    outs = [str(tmp_path / name) for name in ("reference", "a", "b")]
    for out in outs:
        os.makedirs(out)
        shutil.copy(os.path.join(r1_zero_reference(), "base.pt"), out)
    reference = Run(r1_driver([*R1, "--out-dir", outs[0], "--resume"]), outs[0], "reference.log")
    hits = side_by_side(
        lambda: run_with_kills(lambda i: r1_driver([*R1, "--out-dir", outs[1], "--resume"]), outs[1], [
            lambda run: run.kill_at_row("coldstart", 0, before="coldstart.pt"),  # restarts from base.pt
            lambda run: run.kill_after_checkpoint("coldstart", "coldstart.pt"),
            lambda run: run.kill_at_row("rl_reasoning", 0, before="rl_reasoning.pt"),
        ]),
        lambda: run_with_kills(lambda i: r1_driver([*R1, "--out-dir", outs[2], "--resume"], i == 0), outs[2], [
            lambda run: run.dies_in_driver(),
            lambda run: run.kill_at_row("rsft", 0, before="rsft.pt"),
            lambda run: run.kill_at_row("rl_final", 0, before="rl_final.pt"),
        ]))
    print("killed at:", hits)
    reference.wait()
    for out in outs[1:]:
        assert_same_run(out, outs[0], ["coldstart.pt", "rl_reasoning.pt", "rsft.pt", "rl_final.pt"])


def correct_answer(row):
    """A short correct answer to a Countdown problem, as an SFT example: {"question", "completion"}."""
    expr = next(e for e in data.clean_expressions(tuple(sorted(row["numbers"]))) if e.value == row["target"])
    return {"question": row["question"],
            "completion": f"<think> Try {expr.text}. </think> <answer> {expr.text} </answer>"}


def countdown_examples(n, seed):
    """n SFT examples, as sft.py reads them, of the problems pretraining sees."""
    rng, problems = random.Random(seed), data.countdown_problems("pretrain")
    return [correct_answer(data.countdown_row(*rng.choice(problems), rng)) for _ in range(n)]


def write_jsonl(path, rows):
    with open(path, "w") as f:
        f.writelines(json.dumps(row) + "\n" for row in rows)


def test_sft_killed_anywhere_resumes_to_the_same_run(r1_zero_reference, tmp_path):
    data_path = str(tmp_path / "sft.jsonl")
    write_jsonl(data_path, countdown_examples(16, seed=0))
    outs = [str(tmp_path / name) for name in ("reference", "a", "b")]

    def command(out):
        return lambda i: ["sft.py", "--init", os.path.join(r1_zero_reference(), "base.pt"), "--data", data_path,
                          "--device", "cpu", "--batch-size", "1", "--seq-len", "160", "--epochs", "1", "--warmup",
                          "2", "--log-every", "1", "--checkpoint-every", "3", "--out-dir", out, *["--resume"][:i]]
    reference = Run(command(outs[0])(0), outs[0], "reference.log")
    hits = side_by_side(
        lambda: run_with_kills(command(outs[1]), outs[1], [
            lambda run: run.kill_at_row("sft", 0, before="sft.pt"),  # restarts from --init
            lambda run: run.kill_after_checkpoint("sft", "sft.pt"),
        ]),
        lambda: run_with_kills(command(outs[2]), outs[2], [lambda run: run.kill_at_random(0.5)]))
    print("killed at:", hits)
    reference.wait()
    for out in outs[1:]:
        assert_same_run(out, outs[0], ["sft.pt"])


def test_distill_killed_in_every_stage_resumes_to_the_same_run(r1_zero_reference, tmp_path):
    """R1-Zero's run is the teacher; its samples (teacher.jsonl) are given, as a tiny teacher solves nothing. Two
    runs, killed in different stages, side by side (distill.py always resumes)."""
    outs = [str(tmp_path / name) for name in ("reference", "a", "b")]
    students = [os.path.join(out, "students", "tiny", "seed0") for out in outs]
    examples = countdown_examples(10, seed=1)
    for out, student in zip(outs, students):
        os.makedirs(student)
        write_jsonl(os.path.join(out, "teacher.jsonl"), examples)
        json.dump({"kept": len(examples)}, open(os.path.join(out, "rejection.json"), "w"))

    def command(out):
        return lambda i: ["distill.py", "--teacher", r1_zero_reference(), "--out-dir", out, "--students", "tiny",
                          "--device", "cpu", "--distill-rl-steps", "4", "--eval-problems", "1", "--eval-samples",
                          "2", "--sft-batch-size", "1", "--sft-seq-len", "160", "--sft-epochs", "1",
                          "--sft-warmup", "1", "--sft-log-every", "1", "--sft-checkpoint-every", "2"]
    reference = Run(command(outs[0])(0), students[0], "reference.log")
    hits = side_by_side(
        lambda: run_with_kills(command(outs[1]), students[1], [
            lambda run: run.kill_at_row("pretrain", 0, before="pretrain.pt"),  # restarts from nothing
            lambda run: run.kill_at_row("rl", 0, before="rl.pt"),
        ]),
        lambda: run_with_kills(command(outs[2]), students[2], [
            lambda run: run.kill_at_row("sft", 0, before="distilled_sft.pt"),
            lambda run: run.kill_after_checkpoint("sft", "distilled_sft.pt"),
            lambda run: run.kill_at_row("distilled_rl", 0, before="distilled_rl.pt"),
        ]))
    print("killed at:", hits)
    reference.wait()
    for student in students[1:]:
        assert_same_run(student, students[0], ["base.pt", "rl.pt", "distilled.pt", "distilled_rl.pt"])


# -----------------------------------------------------------------------------
# The R1 driver: train.py --recipe r1 with rejection sampling stubbed and an aha example from every RL step


def correct_samples(model, rows, cfg, decoder=None):
    """Stands in for rejection.rejection_sample: one correct answer per problem."""
    return [correct_answer(row) for row in rows], {"kept": len(rows)}


if __name__ == "__main__":  # python -m tests.test_resume [--die-after-rejection-row] TRAIN_ARGS...
    import grpo
    import r1
    import train
    r1.rejection_sample = correct_samples
    step = grpo.GRPOTrainer.step

    def step_with_an_aha(trainer, rows):
        stats, aha = step(trainer, rows)
        return stats, aha + [{"question": rows[0]["question"], "response": "(the driver's)", "reflections": 1}]
    grpo.GRPOTrainer.step = step_with_an_aha
    argv = sys.argv[1:]
    if argv[0] == "--die-after-rejection-row":  # killed once the rejection row is logged, before its file is written
        argv, replace = argv[1:], os.replace

        def replace_or_die(src, dst):
            if dst.endswith("rejection.jsonl"):
                os.kill(os.getpid(), signal.SIGKILL)
            replace(src, dst)
        os.replace = replace_or_die
    train.main(train.parse_args(argv))
