"""
Reading a run's metrics.jsonl: the learning-curve figure (curves.png, and the notebooks'), R1-Zero's growth
ratios of response length and reflection over RL (eval.json), and runs side by side (R1-Zero vs R1):

    python curves.py --compare R1-Zero=results/r1/r1-zero_de_seed0 R1=results/r1/r1_de_seed0 --out cmp.png
"""

import argparse
import json

RL_STAGES = ("rl", "rl_reasoning", "rl_final")  # R1-Zero's one RL stage; --recipe r1's two


def growth(rows, key):
    """Mean of the last 10% of RL steps over the first 10% (R1-Zero's length and reflection growth)."""
    n = max(1, len(rows) // 10)
    first, last = (sum(r[key] for r in part) / n for part in (rows[:n], rows[-n:]))
    return {"first_10pct": first, "last_10pct": last, "ratio": last / first if first else float("inf")}


def steps_to_accuracy(rows, threshold=0.7, window=10):
    """The first RL step at which the mean rollout accuracy of the last `window` steps reaches `threshold`, or
    None: how fast RL gets going (R1's cold-started stage 2 beside R1-Zero, say)."""
    accuracy = [r["accuracy"] for r in rows]
    for end in range(window, len(accuracy) + 1):
        if sum(accuracy[end - window:end]) / window >= threshold:
            return rows[end - 1]["step"]
    return None


def draw_curves(rows):
    """A figure of one run's learning curves from its metrics rows (used here and by the notebook)."""
    import matplotlib.pyplot as plt
    # RL rows of every RL stage (R1-Zero: "rl"; --recipe r1: "rl_reasoning" then "rl_final"), one line per stage
    rl = [r for r in rows if r.get("stage") in RL_STAGES]
    pre = [r for r in rows if r.get("stage") == "pretrain"]
    panels = [("pretrain loss", pre, "loss"), ("accuracy (train rollouts)", rl, "accuracy"),
              ("mean response length (tokens)", rl, "response_len_mean"),
              ("reflections per response", rl, "reflection_rate"), ("entropy", rl, "entropy"),
              ("KL to reference", rl, "kl"), ("router max/mean load", rl, "router_max_over_mean"),
              ("reward", rl, "reward"), ("language consistency (R1 sec. 2.3.2)", rl, "language_consistency"),
              ("truncated responses", rl, "truncated")]
    fig, axes = plt.subplots(2, 5, figsize=(20, 7))
    for ax, (title, rs, key) in zip(axes.flat, panels):
        for stage in dict.fromkeys(r["stage"] for r in rs):
            pts = [(r["step"], r[key]) for r in rs if r["stage"] == stage and r.get(key) is not None]
            if pts:
                ax.plot(*zip(*pts), label=stage)
                if key == "kl" and any(v > 0 for _, v in pts):
                    ax.set_yscale("log")  # k3 is unbounded above: one spike would flatten the whole curve
        if len(ax.get_lines()) > 1:
            ax.legend(fontsize=7)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def draw_comparison(runs):
    """Runs side by side, {label: metrics rows}: each run's RL stages laid end to end on one axis of RL steps
    (R1's reasoning RL, then its final RL after rejection-sampling SFT, the boundary dotted), so the figure shows
    what each recipe's RL did to accuracy, length, reflection and language consistency (R1 sec. 2.3)."""
    import matplotlib.pyplot as plt
    panels = [("accuracy (train rollouts)", "accuracy"), ("mean response length (tokens)", "response_len_mean"),
              ("reflections per response", "reflection_rate"),
              ("language consistency (R1 sec. 2.3.2)", "language_consistency")]
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.8))
    for label, rows in runs.items():
        rl = [r for r in rows if r.get("stage") in RL_STAGES]
        starts, x = {}, []
        for r in rl:  # a stage starts where the stages before it ended
            starts.setdefault(r["stage"], len(x))
            x.append(starts[r["stage"]] + r["step"])
        for ax, (_, key) in zip(axes, panels):
            line, = ax.plot(x, [r.get(key) for r in rl], label=label, lw=1.2)
            for start in list(starts.values())[1:]:
                ax.axvline(start, color=line.get_color(), ls=":", lw=1)
    for ax, (title, _) in zip(axes, panels):
        ax.set_title(title)
        ax.set_xlabel("RL step (all RL stages)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    return fig


def read_rows(metrics_path):
    """A run's metrics.jsonl as a list of dicts (the first row is the run's config)."""
    with open(metrics_path) as f:
        return [json.loads(line) for line in f]


def save_figure(fig, out_png):
    import matplotlib.pyplot as plt
    fig.savefig(out_png, dpi=80)
    plt.close(fig)


def plot_curves(metrics_path, out_png):
    import matplotlib
    matplotlib.use("Agg")  # a file, no display
    save_figure(draw_curves(read_rows(metrics_path)), out_png)


def main(argv=None):
    parser = argparse.ArgumentParser(description="Draw runs' RL curves side by side (LABEL=RUN_DIR ...).")
    parser.add_argument("--compare", nargs="+", required=True, metavar="LABEL=RUN_DIR",
                        help="runs to draw: a label, '=', and a train.py --out-dir holding metrics.jsonl")
    parser.add_argument("--out", required=True, help="the PNG to write")
    args = parser.parse_args(argv)
    runs = {}
    for item in args.compare:
        label, sep, run_dir = item.partition("=")
        if not sep or not label or not run_dir:
            parser.error(f"--compare takes LABEL=RUN_DIR, got {item!r}")
        try:
            runs[label] = read_rows(f"{run_dir}/metrics.jsonl")
        except (OSError, json.JSONDecodeError) as err:
            parser.error(f"{run_dir}/metrics.jsonl: {err}")
    for label, rows in runs.items():
        for stage in RL_STAGES:
            stage_rows = [r for r in rows if r.get("stage") == stage]
            if stage_rows:
                print(f"{label} / {stage}: {len(stage_rows)} steps; 10-step mean accuracy first >= 0.7 at step "
                      f"{steps_to_accuracy(stage_rows)}")
    import matplotlib
    matplotlib.use("Agg")
    save_figure(draw_comparison(runs), args.out)


if __name__ == "__main__":
    main()
