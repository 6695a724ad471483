import pytest

from pretrain import lr_at


def test_lr_warms_up_linearly_then_decays_by_cosine_to_a_tenth():
    peak, total, warmup = 1.0, 110, 10
    assert [lr_at(s, total, peak, warmup) for s in (0, 4, 9)] == pytest.approx([0.1, 0.5, 1.0])
    assert lr_at(10, total, peak, warmup) == pytest.approx(1.0)  # the peak, where the decay starts
    assert lr_at(60, total, peak, warmup) == pytest.approx(0.55)  # halfway: 0.1 + 0.9 / 2
    assert lr_at(110, total, peak, warmup) == pytest.approx(0.1)
    assert lr_at(0, 5, peak, 0) == pytest.approx(1.0)  # no warmup
