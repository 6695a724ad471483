import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_a_failing_preset_is_reported_with_its_error_and_the_others_still_run():
    # "nosuch" fails in train.py's argument parsing, under torchrun; "tiny" then runs on 1 and 2 CPU processes
    cmd = [sys.executable, "-m", "benchmarks.bench_scaling", "--nproc", "2", "--presets", "nosuch", "tiny",
           "--device", "cpu", "--pretrain-steps", "2", "--rl-steps", "2", "--rl-prompts-per-step", "2",
           "--rl-group-size", "2", "--rl-max-new-tokens", "4", "--pretrain-batch-size", "2",
           "--pretrain-seq-len", "32", "--pretrain-unique-tokens", "2000", "--log-every", "1"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 1, done.stdout + done.stderr
    failure = next(line for line in done.stdout.splitlines() if line.startswith("nosuch on 1 process(es) failed"))
    assert "unknown preset 'nosuch'" in failure and "whole output in" in failure
    rows = [line.split("|") for line in done.stdout.splitlines() if line.strip().startswith("tiny |")]
    assert [row[1].strip() for row in rows] == ["1", "2", "1 (1/2 batch)"], done.stdout
