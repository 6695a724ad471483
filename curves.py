"""
Reading a run's metrics.jsonl: the learning-curve figure (curves.png, and the notebooks'), R1-Zero's growth
ratios of response length and reflection over RL (eval.json), and runs side by side: their RL curves, or the
held-out evaluation of every stage of R1's recipe as a Markdown table (eval.json):

    python curves.py --compare R1-Zero=results/r1-zero/seed0 R1=results/r1/seed0 --out cmp.png
    python curves.py --stages seed0=results/r1/seed0 seed1=results/r1/seed1
"""

import argparse
import json

RL_STAGES = ("rl", "rl_reasoning", "rl_final")  # R1-Zero's one RL stage; --recipe r1's two
EVALUATED_STAGES = ("base", "rl", "coldstart", "rl_reasoning", "rsft", "r1")  # eval.json's models, recipe order
STAGE_COLUMNS = (("pass@1", "pass@1", 100), ("cons@k", "cons@k", 100), ("tokens", "mean_response_tokens", 1),
                 ("format", "format_rate", 1), ("truncated", "truncated_rate", 1), ("repeats", "repeat_rate", 1),
                 ("summary", "summary_rate", 1), ("consistency", "language_consistency", 1),
                 ("reflections", "reflections_per_response", 1), ("arith pass@1", "arithmetic_pass@1", 100))


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


def stage_table(runs):
    """A Markdown table of runs' held-out evaluations ({label: eval.json as a dict}), a row per evaluated stage in
    the recipe's order, percentages for pass@1 and cons@k, the stage's wall seconds where the run recorded them."""
    cell = lambda value, scale: "-" if value is None else f"{value * 100:.1f}" if scale == 100 else f"{value:.3g}"

    def value(stage_eval, key):  # cons@k: k is the evaluation's samples per problem (16 on a GPU, 4 on the CPU)
        if key == "cons@k":
            return next((v for k, v in stage_eval.items() if k.startswith("cons@")), None)
        return stage_eval.get(key)

    lines = ["| run | stage | " + " | ".join(name for name, _, _ in STAGE_COLUMNS) + " | wall s |",
             "|" + " --- |" * (len(STAGE_COLUMNS) + 3)]
    for label, evals in runs.items():
        for stage in EVALUATED_STAGES:
            if stage in evals:
                wall = evals.get("stage_wall_s", {}).get(stage)
                lines.append(f"| {label} | {stage} | " + " | ".join(cell(value(evals[stage], key), scale)
                             for _, key, scale in STAGE_COLUMNS) + f" | {'-' if wall is None else round(wall)} |")
    return "\n".join(lines)


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


def labelled_runs(parser, items, file_name, read):
    """{label: read(RUN_DIR/file_name)} for LABEL=RUN_DIR arguments; a bad one stops with the parser's error."""
    runs = {}
    for item in items:
        label, sep, run_dir = item.partition("=")
        if not sep or not label or not run_dir:
            parser.error(f"runs are given as LABEL=RUN_DIR, got {item!r}")
        try:
            runs[label] = read(f"{run_dir}/{file_name}")
        except (OSError, json.JSONDecodeError) as err:
            parser.error(f"{run_dir}/{file_name}: {err}")
    return runs


def main(argv=None):
    parser = argparse.ArgumentParser(description="Runs side by side (LABEL=RUN_DIR ...): their RL curves in a PNG "
                                                 "(--compare, --out), or every stage's evaluation (--stages).")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--compare", nargs="+", metavar="LABEL=RUN_DIR",
                       help="runs to draw: a label, '=', and a train.py --out-dir holding metrics.jsonl")
    which.add_argument("--stages", nargs="+", metavar="LABEL=RUN_DIR",
                       help="runs whose eval.json to print as a Markdown table, a row per evaluated stage")
    parser.add_argument("--out", help="the PNG to write (--compare)")
    args = parser.parse_args(argv)
    if args.stages:
        print(stage_table(labelled_runs(parser, args.stages, "eval.json", lambda path: json.load(open(path)))))
        return
    if not args.out:
        parser.error("--compare needs --out")
    runs = labelled_runs(parser, args.compare, "metrics.jsonl", read_rows)
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
