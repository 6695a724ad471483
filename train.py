"""
The whole nanoR1 pipeline on one GPU: pretrain a base MoE model from scratch on the synthetic corpus, then
R1-Zero reinforcement learning (GRPO, rule-based rewards) on Countdown, then evaluate base vs RL model.

    python train.py                          # the GPU recipe on a GPU; without one, the CPU setup (CPU_SETUP)
    python train.py --preset tiny --pretrain-steps 20 --rl-steps 2 --rl-prompts-per-step 4 --eval-problems 4
                                             # a smoke run (3 min on a shared 2-core CPU at load 6)
    python train.py --resume                 # continue from out/ after an interruption (stops if none)
    python train.py --recipe r1              # DeepSeek-R1's stages after the base model (README, run_r1)
    python train.py --train-data mine.jsonl --eval-data held_out.jsonl   # your own problems (data.load_jsonl)
    torchrun --standalone --nproc-per-node 8 train.py   # data parallel over 8 GPUs (distributed.py)

Settings given on the command line always win; the setup (gpu, or cpu: CPU_SETUP) fills in the rest.

Writes to --out-dir: metrics.jsonl (one JSON line per step), base.pt and rl.pt checkpoints (atomic writes),
aha.jsonl (reflective responses that ended correct), eval.json (held-out evaluations, growth over RL, steps to
70% rollout accuracy, wall time in all and per phase), and PNG learning curves.
"""

import argparse
import json
import os
import random
import re
import shlex
import sys
import time
from dataclasses import asdict, fields

import torch

import data
import distributed
from base import pretrain_base
from checkpoint import git_commit
from config import R1Config, TrainConfig, add_config_flags
from curves import growth, plot_curves, read_rows, steps_to_accuracy
from evaluate import evaluate
from grpo import GRPOConfig
from r1 import run_r1
from rl import run_rl


# The CPU setup: the GPU recipe (config.TrainConfig's defaults) would take hours on a CPU. These values replace its
# defaults, except for the settings given on the command line. RL starts from a committed base model, bases/cpu.pt
# (3 MB; bases/README.md says how it was made and bases/regenerate.py makes it again), because pretraining it takes
# ~30 minutes on 2 cores and the lesson is RL's. That base is the setup's pretraining below, seed 0: a smaller model
# pretrained on shorter windows (documents average ~380 tokens), at most 6 attempts per reflect answer (so answers fit
# 256 new tokens), candidates right more often (a weaker base otherwise). Reflection only pays if the base can tell a
# hit from a miss ("Wait, v is not T" vs "Let me verify"), which a 0.8M model learns only from many reflect answers
# (6x the GPU corpus's share, 3000 steps); and RL only has reflection to amplify if the base seldom reflects where RL
# asks. So the reflect answers sit in documents' later turns: a first turn, the position of RL's prompts, reflects
# 10% of the time as in the GPU corpus. All of it in English: the GPU corpus's German reflection is there for R1's
# language study. Then fewer prompts per RL step and a smaller held-out evaluation (100 problems x 4 samples).
# --base pretrain (or any model, pretraining or corpus flag) pretrains the base here instead.
CPU_BASE = "bases/cpu.pt"
CPU_SETUP = {
    "base": CPU_BASE,
    "preset": "cpu", "pretrain_steps": 3000, "pretrain_batch_size": 32, "pretrain_seq_len": 256,
    "pretrain_lr": 3e-3, "pretrain_warmup": 50,
    "corpus_p_reflect": 0.6, "corpus_first_turn_reflect_scale": 0.1667, "corpus_max_attempts": 6,
    "corpus_p_correct": 0.25, "corpus_p_second_language_reflect": 0.0,
    "rl_steps": 60, "rl_prompts_per_step": 16, "rl_max_new_tokens": 256, "rl_lr": 2e-4,
    "eval_problems": 100, "eval_samples": 4, "checkpoint_every": 10, "pretrain_checkpoint_every": 200,
}


def choose_setup(setup, device):
    """-> (gpu or cpu, why): auto means the CPU setup when the run will not be on a GPU."""
    if setup != "auto":
        return setup, "--setup " + setup
    if device == "cpu":
        return "cpu", "--device cpu"
    if device == "auto" and not torch.cuda.is_available():
        return "cpu", "no CUDA device found; --setup gpu for the GPU recipe"
    return "gpu", "a CUDA device is used"


# -----------------------------------------------------------------------------
# The command line: every field of the configs is a flag

# the nested configs' fields get a prefix: --rl-lr sets grpo.lr, --corpus-p-reflect sets corpus.p_reflect
NESTED = {"grpo": (GRPOConfig, "rl_"), "corpus": (data.CorpusConfig, "corpus_"), "r1": (R1Config, "r1_")}
FLAG_PREFIXES = {TrainConfig: "", **dict(NESTED.values())}  # every config whose fields are flags


def parse_args(argv=None) -> TrainConfig:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)

    defaults = {}  # the GPU recipe; the namespace holds only the flags given
    cpu_notes = {name: f"cpu setup: {value}" for name, value in CPU_SETUP.items()}
    for config_class, prefix in FLAG_PREFIXES.items():
        skip = NESTED if config_class is TrainConfig else ()
        defaults.update(add_config_flags(parser, config_class, prefix, skip, only_given=True, notes=cpu_notes))
    given = vars(parser.parse_args(argv))
    args = {**defaults, **given}
    if args["setup"] not in ("auto", "gpu", "cpu"):
        parser.error(f"--setup must be auto, gpu or cpu, got {args['setup']}")
    args["setup"], why = choose_setup(args["setup"], args["device"])
    if os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 alone says it
        print(f"setup: {args['setup']} ({why})")
    if args["setup"] == "cpu":  # explicit flags win over the CPU setup
        args = {**defaults, **CPU_SETUP, **given, "setup": "cpu"}
        if "base" not in given and any(name == "preset" or name.startswith(("pretrain_", "corpus_")) for name in given):
            args["base"] = "pretrain"  # a base unlike the committed one
    sub_configs = {key: config_class(**{f.name: args.pop(prefix + f.name) for f in fields(config_class)})
                   for key, (config_class, prefix) in NESTED.items()}
    try:
        cfg = TrainConfig(**args, **sub_configs)
        cfg.validate()
    except ValueError as err:
        parser.error(flag_names(str(err)))
    return cfg


def flag_names(message):
    """The modules below name config fields in their messages ("GRPOConfig.group_size must be >= 2"); the command
    line's user reads them as flags ("--rl-group-size must be >= 2")."""
    prefixes = {config_class.__name__: prefix for config_class, prefix in FLAG_PREFIXES.items()}

    def flag(match):
        config_name, field_name = match.groups()
        return "--" + (prefixes[config_name] + field_name).replace("_", "-") if config_name in prefixes else match[0]
    return re.sub(r"\b(\w+Config)\.(\w+)", flag, message)


# -----------------------------------------------------------------------------
# The pipeline

def problem_sets(cfg: TrainConfig):
    """-> (RL problems, held-out problems): --train-data and --eval-data, or the Countdown splits. A bad file
    stops the run with its name and line number, before any training."""
    try:
        train_rows = data.problem_rows("train", seed=cfg.seed, path=cfg.train_data)
        test_rows = data.problem_rows("test", cfg.eval_problems, cfg.seed, cfg.eval_data)
    except (OSError, ValueError) as err:
        raise SystemExit(f"--train-data/--eval-data: {err}") from None
    if len(train_rows) < cfg.rl_prompts_per_step:  # each RL step draws that many distinct problems
        raise SystemExit(f"--train-data {cfg.train_data}: {len(train_rows)} problems, fewer than "
                         f"--rl-prompts-per-step {cfg.rl_prompts_per_step}")
    return train_rows, test_rows


def main(cfg: TrainConfig):
    if cfg.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda asked for, but no CUDA device is available")
    train_rows, test_rows = problem_sets(cfg)  # a bad file stops the run here, before any training
    device = distributed.setup(cfg.device, cfg.dist_backend)  # under torchrun: join the other ranks
    # Rank 0 alone writes files and prints. Each rank samples its own rollouts (seed + rank); the model's
    # initial weights are made equal when DDP wraps it (broadcast from rank 0); the prompt sampler (python
    # random) and the data generators are seeded alike on every rank.
    main_rank, rank, world = distributed.is_main(), distributed.rank(), distributed.world_size()
    say = print if main_rank else (lambda *args: None)
    os.makedirs(cfg.out_dir, exist_ok=True)
    paths = {name: os.path.join(cfg.out_dir, name) for name in
             ("metrics.jsonl", "base.pt", "rl.pt", "pretrain.pt", "aha.jsonl", "eval.json", "curves.png",
              "coldstart.jsonl", "coldstart.pt", "rl_reasoning.pt", "rejection.jsonl", "rsft.pt", "rl_final.pt")}
    if cfg.resume and not any(os.path.exists(paths[name]) for name in ("pretrain.pt", "base.pt", "rl.pt")):
        raise SystemExit(f"--resume: nothing to resume in {cfg.out_dir}/ (no pretrain.pt, base.pt or rl.pt); "
                         "leave out --resume to start a fresh run")
    torch.manual_seed(cfg.seed + rank)
    random.seed(cfg.seed)
    torch.backends.cuda.matmul.allow_tf32 = True
    if not cfg.resume and main_rank:
        for name in ("metrics.jsonl", "aha.jsonl", "eval.json", "coldstart.jsonl", "rejection.jsonl"):
            if os.path.exists(paths[name]):
                os.remove(paths[name])
    metrics_file = open(paths["metrics.jsonl"], "a") if main_rank else None

    def log(row):
        if main_rank:
            metrics_file.write(json.dumps(row) + "\n")
            metrics_file.flush()

    t_start = time.time()
    run_info = {"stage": "config", "config": asdict(cfg), "device": torch.cuda.get_device_name(device)
                if device.type == "cuda" else "cpu", "torch": torch.__version__, "commit": git_commit(),
                "command": shlex.join(["python", "train.py", *sys.argv[1:]]), "world_size": world}

    phase_wall_s, t_phase = {}, [t_start]  # where this process's time went, per phase (eval.json)

    def phase_done(name):
        now = time.time()
        phase_wall_s[name] = now - t_phase[0]
        t_phase[0] = now

    # 1. Base model: pretrain from scratch (or pick up the finished/interrupted one)
    model = pretrain_base(cfg, device, log, paths, first_row=run_info)
    phase_done("pretraining")  # with the corpus's generation, the model's set-up and the checkpoint

    evals = json.load(open(paths["eval.json"])) if cfg.resume and os.path.exists(paths["eval.json"]) else {}
    arithmetic_rows = data.arithmetic_rows(cfg.eval_arithmetic_problems, cfg.seed)

    def evaluate_model(name, stage_model):
        """evals[name]: the held-out evaluation of a model (evaluate.py), with its pass@1 on "Compute ..." problems
        beside, printed without its example answers."""
        result = evaluate(stage_model, test_rows, cfg.eval_samples, cfg.grpo.max_new_tokens, cfg.eval_temperature,
                          cfg.eval_top_p)
        if arithmetic_rows:
            arithmetic = evaluate(stage_model, arithmetic_rows, cfg.eval_arithmetic_samples, cfg.grpo.max_new_tokens,
                                  cfg.eval_temperature, cfg.eval_top_p)
            result.update({"arithmetic_" + key: arithmetic[key] for key in
                           ("pass@1", "format_rate", "truncated_rate", "mean_response_tokens", "example")})
        evals[name] = result
        say(f"{'RL' if name == 'rl' else name} model:", {k: v for k, v in result.items() if not k.endswith("example")})

    if "base" not in evals and cfg.eval_problems:
        evaluate_model("base", model)
        if main_rank:
            json.dump(evals, open(paths["eval.json"], "w"), indent=2)
    phase_done("base_eval")

    if cfg.recipe == "r1":
        def evaluate_as(name, stage_model, t0):
            """Evaluate a stage's model once (a resumed run keeps the eval.json entry) and add up its wall time."""
            if name not in evals and cfg.eval_problems:
                evaluate_model(name, stage_model)
            wall = evals.setdefault("stage_wall_s", {})
            wall[name] = wall.get(name, 0.0) + time.time() - t0  # summed over the runs that reached its end
            if main_rank:
                json.dump(evals, open(paths["eval.json"], "w"), indent=2)

        # 2-5. DeepSeek-R1's stages on the base model, each evaluated on the same held-out problems
        run_r1(model, cfg, device, log, paths, evaluate_as, train_rows)
        phase_done("r1_stages")
        rl_stages = ("rl", "rl_reasoning", "rl_final")  # "rl": R1-Zero's, run first for an r1zero cold start
    else:
        # 2. R1-Zero RL on the base model
        run_rl(model, cfg, device, log, paths, train_rows)
        phase_done("rl")

        # 3. Evaluate the RL model on the same held-out problems
        if cfg.rl_steps and cfg.eval_problems:
            evaluate_model("rl", model)
        phase_done("rl_eval")
        rl_stages = ("rl",)
    if main_rank:
        rows = read_rows(paths["metrics.jsonl"])
        for stage in rl_stages:
            rl_rows = [r for r in rows if r.get("stage") == stage]
            if rl_rows:
                evals[stage + "_growth"] = {key: growth(rl_rows, key)
                                            for key in ("response_len_mean", "reflection_rate", "accuracy")}
                evals[stage + "_steps_to_70pct"] = steps_to_accuracy(rl_rows)  # 10-step mean accuracy >= 0.7
        evals["wall_time_s"] = time.time() - t_start
        evals["phase_wall_s"] = phase_wall_s  # this process's (a resumed run's cover only what it redid)
        json.dump(evals, open(paths["eval.json"], "w"), indent=2)
        metrics_file.close()
        plot_curves(paths["metrics.jsonl"], paths["curves.png"])
    say(f"done in {time.time() - t_start:.0f}s; results in {cfg.out_dir}/")
    distributed.finish()
    return evals


if __name__ == "__main__":
    try:
        main(parse_args())
    except FloatingPointError as err:  # a diverged loss, with a hint that names a field ("lower GRPOConfig.lr")
        raise SystemExit(f"FloatingPointError: {flag_names(str(err))}") from None
    except SystemExit as err:  # a stage's message for the user ("coldstart SFT: ... (CorpusConfig.p_correct 0)")
        raise SystemExit(flag_names(err.code) if isinstance(err.code, str) else err.code) from None
