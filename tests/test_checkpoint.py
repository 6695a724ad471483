import json
import os
import subprocess

import pytest
import torch

from checkpoint import drop_rows_from, git_commit, load_checkpoint, save_checkpoint
from model import Transformer, make_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_save_and_load_round_trip(tmp_path):
    torch.manual_seed(0)
    model = Transformer(make_config("tiny"))
    path = str(tmp_path / "m.pt")
    save_checkpoint(path, model, step=7, rng=(3, tuple(range(5)), None), opt={"lr": 1e-3})
    ckpt = load_checkpoint(path)
    assert ckpt["step"] == 7 and ckpt["rng"] == (3, tuple(range(5)), None) and not os.path.exists(path + ".tmp")
    for a, b in zip(model.state_dict().values(), ckpt["model"].state_dict().values()):
        assert torch.equal(a, b)


def test_missing_or_corrupt_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_checkpoint(str(tmp_path / "nope.pt"))
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(RuntimeError, match="corrupt"):
        load_checkpoint(str(bad))


class RunsCode:
    """Unpickling this calls os.system: what a malicious checkpoint would do."""

    def __reduce__(self):
        return (os.system, ("touch " + MARKER,))


MARKER = ""


def test_checkpoint_that_would_run_code_is_refused(tmp_path):
    global MARKER
    MARKER = str(tmp_path / "pwned")
    model = Transformer(make_config("tiny"))
    path = str(tmp_path / "evil.pt")
    torch.save({"model_config": {}, "model": model.state_dict(), "payload": RunsCode()}, path)
    with pytest.raises(RuntimeError, match="refused"):
        load_checkpoint(path)
    assert not os.path.exists(MARKER)
    torch.load(path, weights_only=False)  # what the old loader did: the payload runs
    assert os.path.exists(MARKER)


def test_run_provenance_names_the_commit(monkeypatch):
    monkeypatch.delenv("NANOR1_COMMIT", raising=False)
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout
    if head.strip():  # in a git checkout: HEAD, marked when tracked files differ from it
        assert git_commit().split("+")[0] == head.strip()
    monkeypatch.setenv("NANOR1_COMMIT", "abc1234")  # a copied tree's stale .git must not win over the caller
    assert git_commit() == "abc1234"


def test_drop_rows_from_drops_the_rows_of_the_steps_a_stage_redoes(tmp_path):
    """A row goes when its stage is listed and its step is >= the step the stage starts at; a row without a step
    is its stage's step 0; a row without a stage is an RL row; the config rows always stay."""
    path = str(tmp_path / "metrics.jsonl")
    rows = [{"stage": "config"}, {"stage": "pretrain", "step": 0}, {"stage": "pretrain", "step": 1},
            {"stage": "sft_data", "examples": 4}, {"stage": "sft", "step": 0}, {"stage": "rejection", "kept": 3},
            {"step": 0, "response": "old aha"}, {"stage": "rl", "step": 1}]
    with open(path, "w") as f:
        f.writelines(json.dumps(row) + "\n" for row in rows)

    def left():
        return [json.loads(line) for line in open(path)]
    drop_rows_from([path, str(tmp_path / "absent.jsonl")], 1, ["pretrain"])
    assert left() == rows[:2] + rows[3:]
    drop_rows_from([path], 1, ["sft", "sft_data"])  # from a checkpoint at step 1: the data row stays
    assert left() == rows[:2] + rows[3:]
    drop_rows_from([path], 0, ["sft", "sft_data"])  # from the start: the data row goes too
    assert left() == rows[:2] + rows[5:]
    drop_rows_from([path], 0, ["rl"])
    assert left() == rows[:2] + rows[5:6]
