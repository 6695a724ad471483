import contextlib

import pytest
import torch

from model import Transformer, make_config
from pretrain import lr_at


def test_lr_warms_up_linearly_then_decays_by_cosine_to_a_tenth():
    peak, total, warmup = 1.0, 110, 10
    assert [lr_at(s, total, peak, warmup) for s in (0, 4, 9)] == pytest.approx([0.1, 0.5, 1.0])
    assert lr_at(10, total, peak, warmup) == pytest.approx(1.0)  # the peak, where the decay starts
    assert lr_at(60, total, peak, warmup) == pytest.approx(0.55)  # halfway: 0.1 + 0.9 / 2
    assert lr_at(110, total, peak, warmup) == pytest.approx(0.1)
    assert lr_at(0, 5, peak, 0) == pytest.approx(1.0)  # no warmup


def test_a_diverging_pretraining_stops_with_a_clear_error_and_saves_no_diverged_checkpoint():
    """The loss is checked at log and checkpoint steps (no host sync per step): a non-finite loss in between is
    caught there, before any checkpoint of the diverged weights."""
    import torch

    from config import TrainConfig
    from model import Transformer, make_config
    from pretrain import pretrain

    cfg = TrainConfig(preset="tiny", device="cpu", pretrain_steps=30, pretrain_batch_size=2, pretrain_seq_len=16,
                      pretrain_lr=1e3, pretrain_warmup=0, pretrain_unique_tokens=2000, log_every=1)
    torch.manual_seed(0)
    rows, saved = [], []
    with pytest.raises(FloatingPointError, match=r"not finite at a step in \d+\.\.\d+; lower TrainConfig.pretrain_lr"):
        pretrain(Transformer(make_config("tiny")), cfg, torch.device("cpu"), rows.append,
                 save=lambda step, opt: saved.append(step))
    assert all(torch.isfinite(torch.tensor(row["loss"])) for row in rows)  # nothing non-finite was logged
    assert all(step <= rows[-1]["step"] + 1 for step in saved)  # no checkpoint after the last finite log


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the blocks are compiled on a GPU only")
def test_pretraining_with_compiled_blocks_follows_the_eager_run_and_leaves_the_blocks_eager():
    from config import TrainConfig
    from engine import compiled_blocks
    from pretrain import pretrain

    losses = {}
    for eager in (True, False):
        cfg = TrainConfig(preset="tiny", device="cuda", pretrain_steps=20, pretrain_batch_size=8, pretrain_seq_len=64,
                          pretrain_warmup=2, pretrain_unique_tokens=20_000, log_every=1, eager=eager)
        torch.manual_seed(0)
        model = Transformer(make_config("tiny")).cuda()
        rows = []
        with compiled_blocks(model) if not eager else contextlib.nullcontext():
            pretrain(model, cfg, torch.device("cuda"), rows.append, save=lambda step, opt: None)
        losses[eager] = torch.tensor([row["loss"] for row in rows])
        assert not any("forward" in vars(block) for block in model.layers)
    assert losses[False][-1] < losses[False][0] - 1  # it learns (a tiny model, 20 steps: 6.2 -> 4.6 on an H100)
    torch.testing.assert_close(losses[False], losses[True], rtol=0.05, atol=0.05)  # bf16 steps, fused differently
