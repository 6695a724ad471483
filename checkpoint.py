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


def drop_rows_from(paths, step, stage=None):
    """Steps logged after the checkpoint a run resumes from are redone: drop their rows from the JSONL files
    `paths` (only `stage`'s rows if given; a row without a stage is an RL row, as older aha.jsonl rows were; a
    row without a step is kept) so that each step appears once."""
    def redone(row):
        return row.get("step", -1) >= step and (stage is None or row.get("stage", "rl") == stage)
    for path in paths:
        if os.path.exists(path):
            lines = [line for line in open(path) if not redone(json.loads(line))]
            with open(path, "w") as f:
                f.writelines(lines)


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
