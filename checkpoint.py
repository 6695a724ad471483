"""
Checkpoint I/O, resume plumbing and run provenance, shared by every stage (train, sft, sample, benchmarks) and
kept below them.

Checkpoints hold only tensors, numbers, strings, lists, tuples and dicts, so they are read with
`torch.load(weights_only=True)`: a checkpoint from someone else cannot run code when it is loaded (a plain
pickle can). Writes are atomic: a crash mid-write leaves the previous file intact.
"""

import hashlib
import json
import os
import pickle
import subprocess
from dataclasses import asdict

import torch

from data import TOKENIZER_FILE
from model import ModelConfig, Transformer


def tokenizer_sha256():
    """A fingerprint of the tokenizer file: token ids mean nothing under another tokenizer."""
    with open(TOKENIZER_FILE, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def save_checkpoint(path, model, **extra):
    """Every checkpoint records the tokenizer it was trained with (tokenizer_sha256)."""
    tmp = path + ".tmp"
    torch.save({"model_config": asdict(model.cfg), "model": model.state_dict(),
                "tokenizer_sha256": tokenizer_sha256(), **extra}, tmp)
    os.replace(tmp, path)


def load_checkpoint(path, device="cpu"):
    """Returns the saved dict with "model" replaced by a ready Transformer on `device`. Everything else stays
    on the CPU: the RNG state must, and optimizer state follows its parameters when loaded."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "Weights only load failed" in str(err):
            raise RuntimeError(f"checkpoint {path} holds more than tensors and plain data (it could run code "
                               "when loaded), so it was refused; load only checkpoints you trust") from None
        raise RuntimeError(f"checkpoint {path} is corrupt: {err}") from None
    except Exception as err:
        raise RuntimeError(f"checkpoint {path} is corrupt or unreadable: {err}") from None
    try:
        model = Transformer(ModelConfig(**ckpt["model_config"]))
        model.load_state_dict(ckpt["model"])
    except Exception as err:
        raise RuntimeError(f"checkpoint {path} is corrupt or incompatible: {err}") from None
    ckpt["model"] = model.to(device)
    return ckpt


def drop_rows_from(paths, step, stages):
    """The one resume rule of every stage: a stage that starts at `step` (its own checkpoint's, or 0 from the
    previous stage's model) redoes every step from there, so their rows go from the JSONL files `paths`
    (metrics.jsonl, aha.jsonl) and each step appears once, whatever the moment of the crash. A row goes when its
    stage is one of `stages` and its step is >= `step`. A row without a step (a stage's data summary, written as
    it starts) belongs to step 0; a row without a stage is an RL row (as older aha.jsonl rows are)."""
    stages = set(stages)

    def redone(row):
        return row.get("stage", "rl") in stages and row.get("step", 0) >= step
    for path in paths:
        if os.path.exists(path):
            lines = [line for line in open(path) if not redone(json.loads(line))]
            with open(path, "w") as f:
                f.writelines(lines)


def global_rng_state(device):
    """The global random states a stage's steps draw from (torch's CPU generator; on a GPU, also its CUDA one), as
    checkpoint fields: restored by set_global_rng_state, the resumed steps draw what the uninterrupted ones would."""
    state = {"torch_rng": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda_rng"] = torch.cuda.get_rng_state(device)
    return state


def set_global_rng_state(ckpt, device):
    """Restores what global_rng_state saved in `ckpt` (the CUDA state only onto a GPU)."""
    torch.set_rng_state(ckpt["torch_rng"])
    if device.type == "cuda" and "cuda_rng" in ckpt:
        torch.cuda.set_rng_state(ckpt["cuda_rng"], device)


def git_commit():
    """The commit a run came from, for its provenance. NANOR1_COMMIT wins: a copied tree (a remote machine)
    may carry a stale .git. "+dirty" marks uncommitted changes to tracked files."""
    if os.environ.get("NANOR1_COMMIT"):
        return os.environ["NANOR1_COMMIT"]
    here = os.path.dirname(os.path.abspath(__file__))

    def git(*args):
        return subprocess.run(["git", *args], cwd=here, capture_output=True, text=True).stdout.strip()

    try:
        commit = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except OSError:
        commit = dirty = ""
    return (commit + ("+dirty" if dirty else "")) if commit else "unknown"
