"""
The whole nanoR1 pipeline on one GPU: pretrain a base MoE model from scratch on the synthetic corpus, then
R1-Zero reinforcement learning (GRPO, rule-based rewards) on Countdown, then evaluate base vs RL model.

    python train.py                          # the GPU recipe on a GPU; without one, the CPU setup (CPU_SETUP)
    python train.py --preset tiny --pretrain-steps 20 --rl-steps 2 --rl-prompts-per-step 4 --eval-problems 4
                                             # a smoke run (3 min on a shared 2-core CPU at load 6)
    python train.py --resume                 # continue from out/ after an interruption (stops if none)
    torchrun --standalone --nproc-per-node 8 train.py   # data parallel over 8 GPUs (distributed.py)

Settings given on the command line always win; the setup (gpu, or cpu: CPU_SETUP) fills in the rest.

Writes to --out-dir: metrics.jsonl (one JSON line per step), base.pt and rl.pt checkpoints (atomic writes),
aha.jsonl (reflective responses that ended correct), eval.json, and PNG learning curves.
"""

import argparse
import json
import math
import os
import random
import shlex
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field, fields

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

import data
import distributed
import rewards
from checkpoint import git_commit, load_checkpoint, save_checkpoint
from grpo import GRPOConfig, GRPOTrainer
from model import Transformer, make_config
from sample import Decoder


@dataclass
class TrainConfig:
    setup: str = "auto"                 # gpu (these defaults) or cpu (CPU_SETUP); auto: cpu when no GPU is used
    preset: str = "small"               # model preset: tiny (CPU tests), cpu (CPU_SETUP), small (one GPU), medium
    out_dir: str = "out"
    seed: int = 0
    device: str = "auto"                # auto: cuda if available, else cpu
    resume: bool = False                # continue from the checkpoints in out_dir; stops if there are none
    dist_backend: str = "auto"          # under torchrun: nccl (GPUs) or gloo (CPU); auto picks by device
    # pretraining on the synthetic corpus
    pretrain_steps: int = 2000
    pretrain_batch_size: int = 64      # global: split over the ranks under torchrun, as is rl_prompts_per_step
    pretrain_seq_len: int = 512
    pretrain_lr: float = 2e-3
    pretrain_warmup: int = 100
    pretrain_unique_tokens: int = 20_000_000  # the corpus stream is generated once and cycled
    # R1-Zero RL
    rl_steps: int = 120
    rl_prompts_per_step: int = 64      # x group_size = 512 rollouts, one decode batch
    # evaluation on the held-out split
    eval_problems: int = 200
    eval_samples: int = 16              # k for pass@1 (averaged over k) and cons@k (majority vote)
    eval_temperature: float = 0.6      # R1's evaluation protocol: temperature 0.6, top-p 0.95, pass@1 over k
    eval_top_p: float = 0.95
    log_every: int = 10
    checkpoint_every: int = 20          # RL steps between checkpoints
    grpo: GRPOConfig = field(default_factory=GRPOConfig)
    corpus: data.CorpusConfig = field(default_factory=data.CorpusConfig)


# The CPU setup: the GPU recipe above would take hours on a CPU. These values replace its defaults, except for the
# settings given on the command line: a smaller model pretrained on shorter windows (documents average ~380
# tokens), twice the reflect documents and at most 6 attempts each (so answers fit 256 new tokens), candidates
# right more often (a weaker base otherwise), fewer prompts per RL step and a faster RL learning rate, and a
# smaller held-out evaluation (100 problems x 4 samples still resolves a 20-point gain). It runs the whole
# pipeline, but does not show the aha moment yet: its base solves ~12% and RL does not amplify reflection
# (results/cpu).
CPU_SETUP = {
    "preset": "cpu", "pretrain_steps": 1000, "pretrain_batch_size": 32, "pretrain_seq_len": 256,
    "pretrain_lr": 3e-3, "pretrain_warmup": 50,
    "corpus_p_reflect": 0.2, "corpus_max_attempts": 6, "corpus_p_correct": 0.25,
    "rl_steps": 40, "rl_prompts_per_step": 16, "rl_max_new_tokens": 256, "rl_lr": 3e-4,
    "eval_problems": 100, "eval_samples": 4, "checkpoint_every": 10,
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
# Pretraining: next-token prediction on the packed corpus stream

def lr_at(step, total, peak, warmup):
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))  # cosine down to 10%


def pretrain(model, cfg: TrainConfig, device, log, save, start_step=0, opt_state=None):
    """Next-token prediction over the packed stream; `save(step, opt)` checkpoints every 10 log intervals."""
    n_tokens = min(cfg.pretrain_unique_tokens, cfg.pretrain_steps * cfg.pretrain_batch_size * cfg.pretrain_seq_len)
    stream = torch.tensor(data.corpus_tokens(n_tokens + cfg.pretrain_seq_len + 1, seed=cfg.seed, cfg=cfg.corpus),
                          dtype=torch.long)
    B, T = cfg.pretrain_batch_size, cfg.pretrain_seq_len
    b, rank = B // distributed.world_size(), distributed.rank()  # this rank's rows of each global batch
    train_model = distributed.wrap(model)  # forward + backward through it: gradients are averaged over ranks
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.pretrain_lr, betas=(0.9, 0.95), weight_decay=0.1)
    if opt_state:
        opt.load_state_dict(opt_state)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    gen = torch.Generator().manual_seed(cfg.seed * 100_003 + start_step)
    model.train()
    t0, tokens_seen = time.time(), 0
    bar = tqdm(range(start_step, cfg.pretrain_steps), desc="pretrain", initial=start_step, total=cfg.pretrain_steps,
               disable=not distributed.is_main())
    for step in bar:
        # every rank draws the whole batch from the same generator and keeps its slice: the union is the batch
        starts = torch.randint(0, len(stream) - T - 1, (B,), generator=gen)[rank * b:(rank + 1) * b]
        batch = torch.stack([stream[s:s + T + 1] for s in starts.tolist()]).to(device, non_blocking=True)
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg.pretrain_steps, cfg.pretrain_lr, cfg.pretrain_warmup)
        with autocast:
            logits = train_model(batch[:, :-1])
        loss = F.cross_entropy(logits.view(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))
        if not torch.isfinite(loss):
            raise FloatingPointError(f"pretraining loss is {loss.item()} at step {step}; lower --pretrain-lr")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        tokens_seen += B * T
        distributed.sum_router_load(model)  # the bias update follows the global load, the same on every rank
        if step % cfg.log_every == 0 or step == cfg.pretrain_steps - 1:
            balance = model.router_stats()
            model.update_router_bias()
            dt = time.time() - t0
            mean_loss = distributed.all_reduce_metrics({"loss": loss.item()})["loss"]  # ranks' equal shares
            log({"stage": "pretrain", "step": step, "loss": mean_loss, "lr": opt.param_groups[0]["lr"],
                 "router_max_over_mean": float(np.nanmean(balance)) if balance else None,
                 "tokens_per_s": tokens_seen / dt, "elapsed_s": dt})
            bar.set_postfix(loss=f"{mean_loss:.3f}")
        else:
            model.update_router_bias()
        if (step + 1) % (10 * cfg.log_every) == 0:
            save(step + 1, opt)


# -----------------------------------------------------------------------------
# Evaluation: pass@1 averaged over k samples, and cons@k (majority vote over answer values)

def answer_key(text, row):
    """What two answers must share to count as the same vote: the exact value (None if invalid)."""
    answer = rewards.extract_answer(text)
    if answer is None:
        return None
    if row["task"] == "countdown":
        return rewards.countdown_value(answer, row["numbers"])
    return rewards.parse_number(answer)


@torch.no_grad()
def evaluate(model, rows, k, max_new_tokens, temperature, top_p, batch_size=512):
    """Data parallel: each rank answers every world_size-th problem, and the ranks' sums are added up."""
    enc = data.get_tokenizer()
    n_problems = len(rows)
    rows = rows[distributed.rank()::distributed.world_size()]
    prompts = [data.encode(data.make_prompt(r["question"])) for r in rows for _ in range(k)]
    texts, decoder = [], Decoder(model)
    for i in range(0, len(prompts), batch_size):
        texts += ["<think>" + enc.decode(c) for c in
                  decoder.generate(prompts[i:i + batch_size], max_new_tokens, temperature, top_p)]
    pass1, cons, lengths, reflections, consistency = [], [], [], [], []
    for j, row in enumerate(rows):
        group = texts[j * k:(j + 1) * k]
        scores = [rewards.score(t, row).accuracy for t in group]
        pass1.append(sum(scores) / k)
        votes = Counter(key for key in (answer_key(t, row) for t in group) if key is not None)
        target = row["target"] if row["task"] == "countdown" else rewards.parse_number(row["answer"])
        cons.append(float(bool(votes) and votes.most_common(1)[0][0] == target))
        lengths += [len(enc.encode(t, allowed_special="all")) for t in group]
        reflections += [rewards.reflection_count(t) for t in group]
        consistency += [rewards.language_consistency(t) for t in group]  # all prompts are English
    sums = distributed.all_reduce_metrics({"pass@1": sum(pass1), "cons": sum(cons), "tokens": sum(lengths),
                                           "reflections": sum(reflections), "consistency": sum(consistency)}, "sum")
    return {"pass@1": sums["pass@1"] / n_problems, f"cons@{k}": sums["cons"] / n_problems,
            "mean_response_tokens": sums["tokens"] / (n_problems * k),
            "reflections_per_response": sums["reflections"] / (n_problems * k),
            "language_consistency": sums["consistency"] / (n_problems * k),
            "problems": n_problems, "samples_per_problem": k, "example": texts[0] if texts else None}


def growth(rows, key):
    """Mean of the last 10% of RL steps over the first 10% (R1-Zero's length and reflection growth)."""
    n = max(1, len(rows) // 10)
    first, last = (sum(r[key] for r in part) / n for part in (rows[:n], rows[-n:]))
    return {"first_10pct": first, "last_10pct": last, "ratio": last / first if first else float("inf")}


# -----------------------------------------------------------------------------
# Plots

def draw_curves(rows):
    """A figure of one run's learning curves from its metrics rows (used here and by the notebook)."""
    import matplotlib.pyplot as plt
    rl = [r for r in rows if r.get("stage") == "rl"]
    pre = [r for r in rows if r.get("stage") == "pretrain"]
    panels = [("pretrain loss", pre, "loss"), ("accuracy (train rollouts)", rl, "accuracy"),
              ("mean response length (tokens)", rl, "response_len_mean"),
              ("reflections per response", rl, "reflection_rate"), ("entropy", rl, "entropy"),
              ("KL to reference", rl, "kl"), ("router max/mean load", rl, "router_max_over_mean"),
              ("reward", rl, "reward"), ("language consistency (R1 sec. 2.3.2)", rl, "language_consistency"),
              ("truncated responses", rl, "truncated")]
    fig, axes = plt.subplots(2, 5, figsize=(20, 7))
    for ax, (title, rs, key) in zip(axes.flat, panels):
        pts = [(r["step"], r[key]) for r in rs if r.get(key) is not None]
        if pts:
            ax.plot(*zip(*pts))
            if key == "kl":
                ax.set_yscale("log")  # k3 is unbounded above: one spike would flatten the whole curve
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


# -----------------------------------------------------------------------------
# The pipeline

def parse_args(argv=None) -> TrainConfig:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)

    defaults = {}  # the GPU recipe; the namespace holds only the flags given (argument_default=SUPPRESS)

    def add(name, default):
        flag = "--" + name.replace("_", "-")
        defaults[name] = default
        if isinstance(default, bool):
            parser.add_argument(flag, dest=name, action="store_true", default=argparse.SUPPRESS)
        else:
            help = f"default: {default}" + (f" (cpu setup: {CPU_SETUP[name]})" if name in CPU_SETUP else "")
            parser.add_argument(flag, dest=name, type=type(default), default=argparse.SUPPRESS, help=help)

    # the nested configs' fields get a prefix: --rl-lr sets grpo.lr, --corpus-p-reflect sets corpus.p_reflect
    nested = {"grpo": (GRPOConfig, "rl_"), "corpus": (data.CorpusConfig, "corpus_")}
    for f in fields(TrainConfig):
        if f.name not in nested:
            add(f.name, getattr(TrainConfig, f.name))
    for config_class, prefix in nested.values():
        for f in fields(config_class):
            add(prefix + f.name, getattr(config_class, f.name))
    given = vars(parser.parse_args(argv))
    args = {**defaults, **given}
    if args["setup"] not in ("auto", "gpu", "cpu"):
        parser.error(f"--setup must be auto, gpu or cpu, got {args['setup']}")
    args["setup"], why = choose_setup(args["setup"], args["device"])
    if os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 alone says it
        print(f"setup: {args['setup']} ({why})")
    if args["setup"] == "cpu":  # explicit flags win over the CPU setup
        args = {**defaults, **CPU_SETUP, **given, "setup": "cpu"}
    sub_configs = {key: config_class(**{f.name: args.pop(prefix + f.name) for f in fields(config_class)})
                   for key, (config_class, prefix) in nested.items()}
    try:
        cfg = TrainConfig(**args, **sub_configs)
        validate(cfg)
    except ValueError as err:
        parser.error(str(err))
    return cfg


def validate(cfg: TrainConfig):
    make_config(cfg.preset)  # raises for an unknown preset
    positive = ["pretrain_steps", "pretrain_batch_size", "pretrain_seq_len", "rl_prompts_per_step", "eval_samples",
                "log_every", "checkpoint_every", "pretrain_unique_tokens"]
    for name in positive:
        if getattr(cfg, name) <= 0:
            raise ValueError(f"--{name.replace('_', '-')} must be positive, got {getattr(cfg, name)}")
    for name in ["rl_steps", "eval_problems", "pretrain_warmup"]:
        if getattr(cfg, name) < 0:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(cfg, name)}")
    if not (cfg.pretrain_lr > 0 and math.isfinite(cfg.pretrain_lr)):
        raise ValueError("--pretrain-lr must be a positive number")
    if cfg.eval_temperature < 0 or not 0 < cfg.eval_top_p <= 1:
        raise ValueError("need --eval-temperature >= 0 and 0 < --eval-top-p <= 1")
    if cfg.device not in ("auto", "cpu") and not cfg.device.startswith("cuda"):
        raise ValueError(f"--device must be auto, cpu or cuda[:N], got {cfg.device}")
    cfg.grpo.validate()
    cfg.corpus.validate()
    # under torchrun: refused on every rank alike, before any rank waits for the others
    distributed.check_backend(cfg.dist_backend, cfg.device)
    distributed.per_rank(cfg.pretrain_batch_size, "--pretrain-batch-size")
    distributed.per_rank(cfg.rl_prompts_per_step, "--rl-prompts-per-step")


def drop_rows_from(files, stage, step):
    """Steps logged after the checkpoint we resume from are redone: drop their rows so each appears once."""
    def redone(line):
        row = json.loads(line)
        return row.get("stage", "rl") == stage and row["step"] >= step  # older aha.jsonl rows have no stage: RL
    for path in files:
        if os.path.exists(path):
            lines = [line for line in open(path) if not redone(line)]
            with open(path, "w") as f:
                f.writelines(lines)


def run_rl(model, cfg: TrainConfig, device, log, paths, train_rows, stage="rl", grpo_cfg=None, steps=None):
    """GRPO on `model`, in place: `steps` RL steps (default cfg.rl_steps) of cfg.rl_prompts_per_step prompts drawn
    from train_rows, logged as `stage` rows, with reflective correct answers appended to paths["aha.jsonl"] and a
    resumable checkpoint in paths[stage + ".pt"] (picked up when cfg.resume)."""
    main_rank, rank, world = distributed.is_main(), distributed.rank(), distributed.world_size()
    say = print if main_rank else (lambda *args: None)
    steps = cfg.rl_steps if steps is None else steps
    ckpt_path = paths[stage + ".pt"]
    trainer = GRPOTrainer(model, grpo_cfg or cfg.grpo, device, seed=cfg.seed)
    start = 0
    if cfg.resume and os.path.exists(ckpt_path):
        ckpt = load_checkpoint(ckpt_path, device)
        model.load_state_dict(ckpt["model"].state_dict())
        trainer.load_state_dict(ckpt["trainer"])
        start = ckpt["step"]
        say(f"resumed {stage.upper()} at step {start}")
        if main_rank:
            drop_rows_from([paths["metrics.jsonl"], paths["aha.jsonl"]], stage, start)
    rng = random.Random(cfg.seed)
    if start:
        rng.setstate(ckpt["rng"])
        if main_rank:  # the checkpoint holds rank 0's sampling RNG; the other ranks start afresh
            torch.set_rng_state(ckpt["torch_rng"])
        else:
            torch.manual_seed(cfg.seed + rank + 1_000_003 * start)
    P = cfg.rl_prompts_per_step // world  # this rank's prompts: whole groups, so advantages stay local
    bar = tqdm(range(start, steps), desc=stage, initial=start, total=steps, disable=not main_rank)
    for step in bar:
        batch = rng.sample(train_rows, cfg.rl_prompts_per_step)[rank * P:(rank + 1) * P]
        stats, aha = trainer.step(batch)
        log({"stage": stage, "step": step, **stats})
        if main_rank:  # rank 0's own examples
            with open(paths["aha.jsonl"], "a") as f:
                for example in aha:
                    f.write(json.dumps({"stage": stage, "step": step, **example}) + "\n")
        bar.set_postfix(acc=f"{stats['accuracy']:.2f}", len=f"{stats['response_len_mean']:.0f}")
        if main_rank and ((step + 1) % cfg.checkpoint_every == 0 or step + 1 == steps):
            save_checkpoint(ckpt_path, model, stage=stage, step=step + 1, trainer=trainer.state_dict(),
                            train_config=asdict(cfg), rng=rng.getstate(), torch_rng=torch.get_rng_state())


def main(cfg: TrainConfig):
    if cfg.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda asked for, but no CUDA device is available")
    device = distributed.setup(cfg.device, cfg.dist_backend)  # under torchrun: join the other ranks
    # Rank 0 alone writes files and prints. Each rank samples its own rollouts (seed + rank); the model's
    # initial weights are made equal when DDP wraps it (broadcast from rank 0); the prompt sampler (python
    # random) and the data generators are seeded alike on every rank.
    main_rank, rank, world = distributed.is_main(), distributed.rank(), distributed.world_size()
    say = print if main_rank else (lambda *args: None)
    os.makedirs(cfg.out_dir, exist_ok=True)
    paths = {name: os.path.join(cfg.out_dir, name) for name in
             ("metrics.jsonl", "base.pt", "rl.pt", "pretrain.pt", "aha.jsonl", "eval.json", "curves.png")}
    if cfg.resume and not any(os.path.exists(paths[name]) for name in ("pretrain.pt", "base.pt", "rl.pt")):
        raise SystemExit(f"--resume: nothing to resume in {cfg.out_dir}/ (no pretrain.pt, base.pt or rl.pt); "
                         "leave out --resume to start a fresh run")
    torch.manual_seed(cfg.seed + rank)
    random.seed(cfg.seed)
    torch.backends.cuda.matmul.allow_tf32 = True
    if not cfg.resume and main_rank:
        for name in ("metrics.jsonl", "aha.jsonl", "eval.json"):
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

    # 1. Base model: pretrain from scratch (or pick up the finished/interrupted one)
    if cfg.resume and os.path.exists(paths["base.pt"]):
        model = load_checkpoint(paths["base.pt"], device)["model"]
        say(f"resumed the finished base model from {paths['base.pt']}")
    else:
        start, opt_state = 0, None
        if cfg.resume and os.path.exists(paths["pretrain.pt"]):
            ckpt = load_checkpoint(paths["pretrain.pt"], device)
            model, start, opt_state = ckpt["model"], ckpt["step"], ckpt["opt"]
            say(f"resumed pretraining at step {start}")
            if main_rank:
                drop_rows_from([paths["metrics.jsonl"]], "pretrain", start)
        else:
            log(run_info)
            model = Transformer(make_config(cfg.preset)).to(device)
        say(f"model: {model.num_params() / 1e6:.1f}M parameters, {model.num_params(active=True) / 1e6:.1f}M "
            f"active per token, on {device}")

        def save(step, opt):
            if main_rank:
                save_checkpoint(paths["pretrain.pt"], model, stage="pretrain", step=step, opt=opt.state_dict())

        pretrain(model, cfg, device, log, save, start, opt_state)
        if main_rank:
            save_checkpoint(paths["base.pt"], model, stage="base", train_config=asdict(cfg))

    test_rows = data.countdown_dataset("test", n=cfg.eval_problems, seed=cfg.seed).to_list()
    evals = json.load(open(paths["eval.json"])) if cfg.resume and os.path.exists(paths["eval.json"]) else {}
    if "base" not in evals and cfg.eval_problems:
        evals["base"] = evaluate(model, test_rows, cfg.eval_samples, cfg.grpo.max_new_tokens, cfg.eval_temperature,
                                 cfg.eval_top_p)
        say("base model:", {k: v for k, v in evals["base"].items() if k != "example"})
        if main_rank:
            json.dump(evals, open(paths["eval.json"], "w"), indent=2)

    # 2. R1-Zero RL on the base model
    run_rl(model, cfg, device, log, paths, data.countdown_dataset("train", seed=cfg.seed).to_list())

    # 3. Evaluate the RL model on the same held-out problems
    if cfg.rl_steps and cfg.eval_problems:
        evals["rl"] = evaluate(model, test_rows, cfg.eval_samples, cfg.grpo.max_new_tokens, cfg.eval_temperature,
                                 cfg.eval_top_p)
        say("RL model:  ", {k: v for k, v in evals["rl"].items() if k != "example"})
    if main_rank:
        rl_rows = [json.loads(line) for line in open(paths["metrics.jsonl"])]
        rl_rows = [r for r in rl_rows if r.get("stage") == "rl"]
        if rl_rows:
            evals["rl_growth"] = {key: growth(rl_rows, key)
                                  for key in ("response_len_mean", "reflection_rate", "accuracy")}
        evals["wall_time_s"] = time.time() - t_start
        json.dump(evals, open(paths["eval.json"], "w"), indent=2)
        metrics_file.close()
        plot_curves(paths["metrics.jsonl"], paths["curves.png"])
    say(f"done in {time.time() - t_start:.0f}s; results in {cfg.out_dir}/")
    distributed.cleanup()
    return evals


if __name__ == "__main__":
    main(parse_args())
