"""
Data-parallel scaling: the same short `train.py` run on 1 and on N GPUs under torchrun, with the same global
batch, for each preset asked for. It reads each run's metrics.jsonl and prints pretraining tokens/s and the RL
step's rollout and update times beside the one-GPU run.

    python -m benchmarks.bench_scaling --nproc 2 --presets small medium     # on a machine with 2 GPUs
    python -m benchmarks.bench_scaling --nproc 2 --presets tiny --device cpu --pretrain-steps 4 --rl-steps 2 \\
        --rl-prompts-per-step 4 --rl-max-new-tokens 16      # a dry run of the plumbing on CPU (gloo)

Any option it does not know goes to train.py unchanged. Pretraining tokens/s is the steady rate between the
first and the last logged step (global tokens over seconds, start-up left out); rollout and update seconds are means
over the RL steps after the first (which captures the CUDA graphs). Rollouts decode what the short-trained
policy writes, so their lengths, and the time they take, differ a little from run to run.
"""

import argparse
import os
import re
import shlex
import subprocess
import sys
import tempfile

from checkpoint import git_commit
from curves import read_rows

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # where train.py is, wherever this runs from

SHORT_RUN = ["--pretrain-steps", "200", "--log-every", "10", "--rl-steps", "6", "--eval-problems", "0",
             "--checkpoint-every", "1000"]
# medium's policy update keeps ~0.86 MB of activations per token: a one-GPU minibatch (128 rollouts of up to 626
# tokens) would need ~70 GB, so it accumulates gradients over 64-row micro-batches, on 1 GPU as on N
PRESET_FLAGS = {"medium": ["--rl-micro-batch-rows", "64"]}


def run(preset, nproc, extra, out_dir):
    """One train.py run under torchrun; returns its metrics rows."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
           "train.py", "--preset", preset, "--out-dir", out_dir, *SHORT_RUN, *PRESET_FLAGS.get(preset, []), *extra]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        # torchrun's own summary (ChildFailedError) buries the rank's error: keep the whole output in a file and
        # name the error lines of train.py itself
        log = os.path.join(tempfile.gettempdir(), f"bench_scaling_{preset}_{nproc}.log")
        with open(log, "w") as f:
            f.write(f"{shlex.join(cmd)}\n{done.stdout}\n{done.stderr}")
        errors = [line.strip() for line in done.stderr.splitlines()
                  if re.search(r"\w(Error|Exception)\b|error:", line) and "ChildFailedError" not in line]
        raise RuntimeError(f"{preset} on {nproc} process(es) failed: {' | '.join(dict.fromkeys(errors[-4:]))} "
                           f"(whole output in {log})")
    return read_rows(os.path.join(out_dir, "metrics.jsonl"))


def summarise(rows):
    pre = [r for r in rows if r.get("stage") == "pretrain"]
    rl = [r for r in rows if r.get("stage") == "rl"][1:] or [r for r in rows if r.get("stage") == "rl"]
    mean = lambda key: sum(r[key] for r in rl) / len(rl) if rl else float("nan")
    # steady state: the tokens and seconds between the first logged pretraining row and the last (start-up and
    # the first steps' warm-up left out); each row has the tokens/s and seconds since pretraining began
    tokens = lambda row: row["tokens_per_s"] * row["elapsed_s"]
    steady = ((tokens(pre[-1]) - tokens(pre[0])) / (pre[-1]["elapsed_s"] - pre[0]["elapsed_s"])
              if len(pre) > 1 else float("nan"))
    return {"pretrain_tokens_per_s": steady,
            "rollout_s": mean("rollout_s"), "update_s": mean("train_s"),
            "rollout_tokens_per_s": mean("rollout_tokens_per_s")}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nproc", type=int, default=2, help="GPUs (processes) to compare with one")
    parser.add_argument("--presets", nargs="+", default=["small", "medium"])
    args, extra = parser.parse_known_args()
    if args.nproc < 2:
        parser.error("--nproc must be >= 2")
    print(f"commit {git_commit()}; train.py {' '.join(SHORT_RUN + extra)}; per preset: {PRESET_FLAGS}")
    print(f"{'preset':>7} | {'GPUs':>4} | {'pretrain tok/s':>14} | {'speed-up':>8} | {'rollout s':>9} | "
          f"{'update s':>8} | {'RL step speed-up':>16}")
    failed = False
    for preset in args.presets:
        results = {}
        try:
            for nproc in (1, args.nproc):
                with tempfile.TemporaryDirectory() as out_dir:
                    results[nproc] = summarise(run(preset, nproc, extra, out_dir))
        except RuntimeError as err:  # the other presets still run: one failure loses only its own rows
            print(err, flush=True)
            failed = True
            continue
        one = results[1]
        for nproc, r in results.items():
            step, one_step = r["rollout_s"] + r["update_s"], one["rollout_s"] + one["update_s"]
            print(f"{preset:>7} | {nproc:>4} | {r['pretrain_tokens_per_s']:>14,.0f} | "
                  f"{r['pretrain_tokens_per_s'] / one['pretrain_tokens_per_s']:>7.2f}x | {r['rollout_s']:>9.3f} | "
                  f"{r['update_s']:>8.3f} | {one_step / step:>15.2f}x", flush=True)
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
