import json

import matplotlib
import pytest

from curves import draw_comparison, draw_curves, growth, main, stage_table, steps_to_accuracy

matplotlib.use("Agg")


@pytest.fixture(autouse=True)
def close_figures():
    """Each test's figures closed after it: pyplot keeps every open figure alive (and warns past 20)."""
    yield
    import matplotlib.pyplot as plt
    plt.close("all")


def test_growth_compares_the_last_tenth_of_rl_steps_with_the_first():
    rows = [{"response_len_mean": 10.0 + step} for step in range(20)]  # 2 rows per tenth
    g = growth(rows, "response_len_mean")
    assert (g["first_10pct"], g["last_10pct"]) == (10.5, 28.5) and g["ratio"] == pytest.approx(28.5 / 10.5)
    assert growth([{"x": 0.0}, {"x": 1.0}], "x")["ratio"] == float("inf")  # nothing to grow from
    assert growth([{"x": 2.0}], "x")["ratio"] == 1.0  # one step: first and last are the same


def test_steps_to_accuracy_is_the_first_step_whose_window_mean_reaches_the_threshold():
    accuracy = [0.0] * 5 + [1.0] * 10  # the 10-step window ending at step 11 holds 3 zeros: mean 0.7
    rows = [{"step": s, "accuracy": a} for s, a in enumerate(accuracy)]
    assert steps_to_accuracy(rows) == 11
    assert steps_to_accuracy(rows, threshold=1.0) == 14
    assert steps_to_accuracy(rows[:9]) is None  # fewer steps than the window
    assert steps_to_accuracy([{"step": s, "accuracy": 0.6} for s in range(30)]) is None


def test_draw_curves_draws_every_rl_stage_as_its_own_line():
    rows = [{"stage": "pretrain", "step": s, "loss": 5.0 - s} for s in range(3)]
    for stage in ("rl_reasoning", "rl_final"):
        rows += [{"stage": stage, "step": s, "accuracy": 0.1 * s, "kl": 0.01, "response_len_mean": 20.0}
                 for s in range(3)]
    axes = draw_curves(rows).axes
    assert len(axes) == 10 and axes[0].get_title() == "pretrain loss"
    accuracy = next(ax for ax in axes if ax.get_title().startswith("accuracy"))
    assert [line.get_label() for line in accuracy.get_lines()] == ["rl_reasoning", "rl_final"]


def test_draw_comparison_lays_a_runs_rl_stages_end_to_end():
    r1_zero = [{"stage": "rl", "step": s, "accuracy": 0.1 * s, "language_consistency": 0.7} for s in range(4)]
    r1 = [{"stage": stage, "step": s, "accuracy": 0.5, "language_consistency": 1.0}
          for stage in ("rl_reasoning", "rl_final") for s in range(3)]
    accuracy = draw_comparison({"R1-Zero": r1_zero, "R1": r1}).axes[0]
    zero_line, r1_line, boundary = accuracy.get_lines()
    assert list(zero_line.get_xdata()) == [0, 1, 2, 3] and list(r1_line.get_xdata()) == [0, 1, 2, 3, 4, 5]
    assert list(boundary.get_xdata()) == [3, 3]  # the final RL stage starts after the reasoning RL's 3 steps
    assert [t.get_text() for t in accuracy.get_legend().get_texts()] == ["R1-Zero", "R1"]


def test_compare_cli_writes_a_png_and_refuses_a_bad_argument(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text("".join(json.dumps({"stage": "rl", "step": s, "accuracy": 0.5}) + "\n"
                                               for s in range(3)))
    main(["--compare", f"A={run}", "--out", str(tmp_path / "cmp.png")])
    assert (tmp_path / "cmp.png").stat().st_size > 0
    assert "A / rl: 3 steps; 10-step mean accuracy first >= 0.7 at step None" in capsys.readouterr().out
    for bad in ("no-equals-sign", f"A={tmp_path / 'missing'}"):
        with pytest.raises(SystemExit):
            main(["--compare", bad, "--out", str(tmp_path / "x.png")])


def test_stage_table_has_a_row_per_evaluated_stage_in_the_recipes_order():
    evals = {"r1": {"pass@1": 0.8125, "format_rate": 0.5}, "base": {"pass@1": 0.2, "cons@4": 0.25},
             "stage_wall_s": {"r1": 99.6}, "wall_time_s": 5.0}
    lines = stage_table({"A": evals}).splitlines()
    assert lines[0].startswith("| run | stage | pass@1 | cons@k |") and lines[0].endswith("| wall s |")
    assert len(lines) == 4 and lines[1].count("---") == len(lines[0].split("|")) - 2
    assert lines[2].startswith("| A | base | 20.0 | 25.0 | - |") and lines[2].endswith("| - |")
    assert lines[3].startswith("| A | r1 | 81.2 | - | - | 0.5 |") and lines[3].endswith("| 100 |")


def test_stages_cli_prints_the_table_and_compare_needs_an_out(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "eval.json").write_text(json.dumps({"base": {"pass@1": 0.5}}))
    main(["--stages", f"B={run}"])
    assert "| B | base | 50.0 |" in capsys.readouterr().out
    for bad in (["--stages", f"B={tmp_path / 'missing'}"], ["--compare", f"B={run}"],
                ["--stages", f"B={run}", "--compare", f"B={run}"]):
        with pytest.raises(SystemExit):
            main(bad)
