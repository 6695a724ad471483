import matplotlib
import pytest

from curves import draw_curves, growth

matplotlib.use("Agg")


def test_growth_compares_the_last_tenth_of_rl_steps_with_the_first():
    rows = [{"response_len_mean": 10.0 + step} for step in range(20)]  # 2 rows per tenth
    g = growth(rows, "response_len_mean")
    assert (g["first_10pct"], g["last_10pct"]) == (10.5, 28.5) and g["ratio"] == pytest.approx(28.5 / 10.5)
    assert growth([{"x": 0.0}, {"x": 1.0}], "x")["ratio"] == float("inf")  # nothing to grow from
    assert growth([{"x": 2.0}], "x")["ratio"] == 1.0  # one step: first and last are the same


def test_draw_curves_draws_every_rl_stage_as_its_own_line():
    rows = [{"stage": "pretrain", "step": s, "loss": 5.0 - s} for s in range(3)]
    for stage in ("rl_reasoning", "rl_final"):
        rows += [{"stage": stage, "step": s, "accuracy": 0.1 * s, "kl": 0.01, "response_len_mean": 20.0}
                 for s in range(3)]
    axes = draw_curves(rows).axes
    assert len(axes) == 10 and axes[0].get_title() == "pretrain loss"
    accuracy = next(ax for ax in axes if ax.get_title().startswith("accuracy"))
    assert [line.get_label() for line in accuracy.get_lines()] == ["rl_reasoning", "rl_final"]
