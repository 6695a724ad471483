"""
Reading a run's metrics.jsonl: the learning-curve figure (curves.png, and the notebooks') and R1-Zero's growth
ratios of response length and reflection over RL (eval.json).
"""

import json


def growth(rows, key):
    """Mean of the last 10% of RL steps over the first 10% (R1-Zero's length and reflection growth)."""
    n = max(1, len(rows) // 10)
    first, last = (sum(r[key] for r in part) / n for part in (rows[:n], rows[-n:]))
    return {"first_10pct": first, "last_10pct": last, "ratio": last / first if first else float("inf")}


def draw_curves(rows):
    """A figure of one run's learning curves from its metrics rows (used here and by the notebook)."""
    import matplotlib.pyplot as plt
    # RL rows of every RL stage (R1-Zero: "rl"; --recipe r1: "rl_reasoning" then "rl_final"), one line per stage
    rl = [r for r in rows if r.get("stage") in ("rl", "rl_reasoning", "rl_final")]
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
                if key == "kl":
                    ax.set_yscale("log")  # k3 is unbounded above: one spike would flatten the whole curve
        if len({r["stage"] for r in rs}) > 1:
            ax.legend(fontsize=7)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def plot_curves(metrics_path, out_png):
    import matplotlib
    matplotlib.use("Agg")  # a file, no display
    import matplotlib.pyplot as plt
    fig = draw_curves([json.loads(line) for line in open(metrics_path)])
    fig.savefig(out_png, dpi=80)
    plt.close(fig)
