"""
Data-parallel scaling: the same short `train.py` run on 1 and on N GPUs under torchrun, with the same global
batch, for each preset asked for. It reads each run's metrics.jsonl and prints pretraining tokens/s and the RL
step's rollout and update times beside the one-GPU run.

    python -m benchmarks.bench_scaling --nproc 2 --presets small medium     # on a machine with 2 GPUs
    python -m benchmarks.bench_scaling --nproc 2 --presets medium --pretrain-batch-size 256 \\
        --pretrain-micro-batch-size 64 --pretrain-steps 100 --rl-steps 0   # a larger batch, in micro-batches
    python -m benchmarks.bench_scaling --nproc 2 --presets tiny --device cpu --pretrain-steps 4 --rl-steps 2 \\
        --rl-prompts-per-step 4 --rl-max-new-tokens 16      # a dry run of the plumbing on CPU (gloo)

A third run per preset, one GPU on 1/N of the global batch (what each of N GPUs computes), gives the ceiling:
N GPUs can be at most N x its throughput, which is below N x the one-GPU throughput wherever a step has costs that
do not shrink with the batch (the optimizer over all weights, kernel launches). Its row's speed-up column is that
ideal: N x its tokens/s over the one-GPU run's, and the one-GPU RL step over its RL step.

Any option it does not know goes to train.py unchanged. Pretraining tokens/s is the steady rate between the
first and the last logged step (global tokens over seconds, start-up left out; pretraining checkpoints, written
every --pretrain-checkpoint-every steps (1000), fall after the last); rollout and update seconds are means over
the RL steps after the first (which captures the CUDA graphs). Rollouts decode what the short-trained policy writes, so their lengths, and
the time they take, differ a little from run to run.
"""

import argparse
import os
import re
import shlex
import subprocess
import sys
import tempfile

from checkpoint import git_commit
from config import TrainConfig
from curves import read_rows

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # where train.py is, wherever this runs from

SHORT_RUN = ["--pretrain-steps", "200", "--log-every", "20", "--rl-steps", "6", "--eval-problems", "0",
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
    # the global batch, read here (and passed on) because the ceiling run takes 1/nproc of it
    parser.add_argument("--pretrain-batch-size", type=int, default=TrainConfig.pretrain_batch_size)
    parser.add_argument("--rl-prompts-per-step", type=int, default=TrainConfig.rl_prompts_per_step)
    args, extra = parser.parse_known_args()
    N = args.nproc
    if N < 2:
        parser.error("--nproc must be >= 2")
    if args.pretrain_batch_size % N or args.rl_prompts_per_step % N:
        parser.error(f"--pretrain-batch-size and --rl-prompts-per-step must be divisible by --nproc {N}")
    batch = lambda share: ["--pretrain-batch-size", str(args.pretrain_batch_size // share),
                           "--rl-prompts-per-step", str(args.rl_prompts_per_step // share)]
    runs = {"1": (1, 1), str(N): (N, 1), f"1 (1/{N} batch)": (1, N)}  # label: (processes, share of the batch)
    print(f"commit {git_commit()}; train.py {' '.join(SHORT_RUN + batch(1) + extra)}; per preset: {PRESET_FLAGS}")
    print(f"{'preset':>7} | {'GPUs':>14} | {'pretrain tok/s':>14} | {'speed-up':>8} | {'rollout s':>9} | "
          f"{'update s':>8} | {'RL step speed-up':>16}")
    failed = False
    for preset in args.presets:
        results = {}
        try:
            for label, (nproc, share) in runs.items():
                with tempfile.TemporaryDirectory() as out_dir:
                    results[label] = summarise(run(preset, nproc, batch(share) + extra, out_dir))
        except RuntimeError as err:  # the other presets still run: one failure loses only its own rows
            print(err, flush=True)
            failed = True
            continue
        one = results["1"]
        one_step = one["rollout_s"] + one["update_s"]
        for label, r in results.items():
            # the ceiling run's throughput counts N times (its share's): N GPUs on a share each, communication free
            share = runs[label][1]
            print(f"{preset:>7} | {label:>14} | {r['pretrain_tokens_per_s']:>14,.0f} | "
                  f"{share * r['pretrain_tokens_per_s'] / one['pretrain_tokens_per_s']:>7.2f}x | "
                  f"{r['rollout_s']:>9.3f} | {r['update_s']:>8.3f} | "
                  f"{one_step / (r['rollout_s'] + r['update_s']):>15.2f}x", flush=True)
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
