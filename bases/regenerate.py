"""
Make the CPU setup's base model again with the project's own command, and say whether it matches the committed
one, bases/cpu.pt:

    python bases/regenerate.py                 # about a minute on a GPU; ~30 minutes on 2 CPU cores

It runs `python train.py --setup cpu --base pretrain --rl-steps 0 --seed 0` (the CPU setup's pretraining, then the
base's held-out evaluation) into --out-dir, then compares the two checkpoints: the largest difference of any
weight, and the next-token loss of both on the same held-out corpus windows. Bit-equal weights need the device,
PyTorch build and GPU kernels that bases/README.md records (GPU training is not bit-reproducible even there);
elsewhere rounding differs from the first step on and the weights drift apart, and the loss says whether the
regenerated base is as good.
"""

import argparse
import os
import subprocess
import sys

import torch
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import data  # noqa: E402
from checkpoint import load_checkpoint  # noqa: E402

COMMITTED = os.path.join(ROOT, "bases", "cpu.pt")


@torch.no_grad()
def held_out_loss(model, windows=64, seq_len=256, seed=12_345):
    """Mean next-token loss on corpus windows of another seed than the base's (seed 0)."""
    cfg = load_checkpoint(COMMITTED)["train_config"]["corpus"]
    stream = torch.tensor(data.corpus_tokens(windows * (seq_len + 1), seed=seed, cfg=data.CorpusConfig(**cfg)))
    batch = stream[:windows * (seq_len + 1)].view(windows, seq_len + 1)
    logits = model.eval()(batch[:, :-1])
    return F.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten()).item()


def compare(path_a, path_b):
    a, b = load_checkpoint(path_a)["model"], load_checkpoint(path_b)["model"]
    max_diff = max((pa - pb).abs().max().item() for pa, pb in zip(a.state_dict().values(), b.state_dict().values()))
    return max_diff, held_out_loss(a), held_out_loss(b)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out-dir", default="out/cpu-base", help="where the new base and its metrics go")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--compare-only", action="store_true", help="compare --out-dir's base.pt, train nothing")
    args = parser.parse_args()
    if not args.compare_only:
        command = [sys.executable, os.path.join(ROOT, "train.py"), "--setup", "cpu", "--base", "pretrain",
                   "--rl-steps", "0", "--seed", "0", "--device", args.device, "--out-dir", args.out_dir]
        print(" ".join(command), flush=True)
        subprocess.run(command, check=True)
    max_diff, loss_committed, loss_new = compare(COMMITTED, os.path.join(args.out_dir, "base.pt"))
    print(f"largest weight difference: {max_diff:.3g}")
    print(f"held-out next-token loss: committed {loss_committed:.4f}, regenerated {loss_new:.4f}")
    if max_diff == 0:
        print("matches: the same weights, bit for bit")
    elif abs(loss_new - loss_committed) <= 0.02 * loss_committed:
        print("matches in quality (held-out loss within 2%), not bit for bit: another device, build or thread count")
    else:
        print("does not match: the held-out loss differs by more than 2%")


if __name__ == "__main__":
    main()
