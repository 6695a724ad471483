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
from dataclasses import asdict, dataclass, field, fields, replace

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

import data
import distributed
import rewards
from checkpoint import drop_rows_from, git_commit, load_checkpoint, save_checkpoint
from grpo import GRPOConfig, GRPOTrainer
from model import Transformer, make_config
from rejection import RejectionConfig, rejection_sample
from sample import Decoder
from sft import SFTConfig, example_from_text, sft


@dataclass
class R1Config:
    """DeepSeek-R1's stages after the base model (arXiv:2501.12948 sec. 2.3), for --recipe r1. Not tuned yet."""
    coldstart_examples: int = 3000      # sec. 2.3.1: "thousands of" readable long-CoT examples
    coldstart_epochs: int = 2
    coldstart_lr: float = 1e-4
    reasoning_rl_steps: int = 120       # sec. 2.3.2: reasoning RL on the cold-started model
    language_weight: float = 1.0        # sec. 2.3.2's language-consistency reward, in stages 2 and 4
    rejection_problems: int = 1000      # sec. 2.3.3: RL-split prompts sampled from the stage-2 model
    rejection_samples_per_prompt: int = 8
    rejection_keep_per_prompt: int = 4
    rejection_max_tokens_frac: float = 0.875  # longest kept answer, as a share of --rl-max-new-tokens (448/512)
    non_reasoning_fraction: float = 0.25  # of the SFT set (R1: 200k of 800k samples are non-reasoning)
    rsft_epochs: int = 2                # sec. 2.3.3: "fine-tune DeepSeek-V3-Base for two epochs"
    rsft_lr: float = 1e-4
    sft_batch_size: int = 16            # both SFT stages
    sft_seq_len: int = 640              # at most the model's max_seq_len
    sft_checkpoint_every: int = 50      # SFT steps between checkpoints
    final_rl_steps: int = 120           # sec. 2.3.4: RL for all scenarios on the rejection-SFT model
    final_arithmetic_fraction: float = 0.25  # of stage 4's prompts: non-Countdown ("Compute ...") problems

    def validate(self):
        for name in ("coldstart_examples", "coldstart_epochs", "rejection_problems", "rejection_samples_per_prompt",
                     "rejection_keep_per_prompt", "rsft_epochs", "sft_batch_size", "sft_seq_len",
                     "sft_checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"--r1-{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        for name in ("reasoning_rl_steps", "final_rl_steps"):
            if getattr(self, name) < 0:
                raise ValueError(f"--r1-{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")
        for name in ("coldstart_lr", "rsft_lr"):
            if not (getattr(self, name) > 0 and math.isfinite(getattr(self, name))):
                raise ValueError(f"--r1-{name.replace('_', '-')} must be a positive number")
        if not (self.language_weight >= 0 and math.isfinite(self.language_weight)):
            raise ValueError(f"--r1-language-weight must be >= 0, got {self.language_weight}")
        if not 0 < self.rejection_max_tokens_frac <= 1:
            raise ValueError("--r1-rejection-max-tokens-frac must be in (0, 1]")
        for name in ("non_reasoning_fraction", "final_arithmetic_fraction"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"--r1-{name.replace('_', '-')} must be in [0, 1)")


@dataclass
class TrainConfig:
    recipe: str = "r1-zero"             # r1-zero: base -> RL; r1: base -> cold start -> RL -> rejection SFT -> RL
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
    train_data: str = ""                # a JSONL file of your own RL problems (data.load_jsonl); "": Countdown's
    # evaluation on the held-out split
    eval_data: str = ""                 # a JSONL file of your own held-out problems; "": Countdown's test split
    eval_problems: int = 200            # drawn from the held-out problems (by --seed); 0 skips evaluation
    eval_samples: int = 16              # k for pass@1 (averaged over k) and cons@k (majority vote)
    eval_temperature: float = 0.6      # R1's evaluation protocol: temperature 0.6, top-p 0.95, pass@1 over k
    eval_top_p: float = 0.95
    log_every: int = 10
    checkpoint_every: int = 20          # RL steps between checkpoints
    grpo: GRPOConfig = field(default_factory=GRPOConfig)
    corpus: data.CorpusConfig = field(default_factory=data.CorpusConfig)
    r1: R1Config = field(default_factory=R1Config)


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
    nested = {"grpo": (GRPOConfig, "rl_"), "corpus": (data.CorpusConfig, "corpus_"), "r1": (R1Config, "r1_")}
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
    if cfg.recipe not in ("r1-zero", "r1"):
        raise ValueError(f"--recipe must be r1-zero or r1, got {cfg.recipe}")
    cfg.grpo.validate()
    cfg.corpus.validate()
    cfg.r1.validate()
    # under torchrun: refused on every rank alike, before any rank waits for the others
    distributed.check_backend(cfg.dist_backend, cfg.device)
    distributed.per_rank(cfg.pretrain_batch_size, "--pretrain-batch-size")
    distributed.per_rank(cfg.rl_prompts_per_step, "--rl-prompts-per-step")


def pretrain_base(cfg: TrainConfig, device, log, paths, first_row=None):
    """The base model of cfg.preset: with cfg.resume the finished paths["base.pt"], or pretraining continued from
    an interrupted paths["pretrain.pt"]; otherwise pretrained from scratch (after logging `first_row`, the run's
    config row). Saves base.pt when pretraining ends."""
    main_rank = distributed.is_main()
    say = print if main_rank else (lambda *args: None)
    if cfg.resume and os.path.exists(paths["base.pt"]):
        say(f"resumed the finished base model from {paths['base.pt']}")
        return load_checkpoint(paths["base.pt"], device)["model"]
    start, opt_state = 0, None
    if cfg.resume and os.path.exists(paths["pretrain.pt"]):
        ckpt = load_checkpoint(paths["pretrain.pt"], device)
        model, start, opt_state = ckpt["model"], ckpt["step"], ckpt["opt"]
        say(f"resumed pretraining at step {start}")
        if main_rank:
            drop_rows_from([paths["metrics.jsonl"]], start, "pretrain")
    else:
        if first_row is not None:
            log(first_row)
        model = Transformer(make_config(cfg.preset)).to(device)
    say(f"model: {model.num_params() / 1e6:.1f}M parameters, {model.num_params(active=True) / 1e6:.1f}M "
        f"active per token, on {device}")

    def save(step, opt):
        if main_rank:
            save_checkpoint(paths["pretrain.pt"], model, stage="pretrain", step=step, opt=opt.state_dict())

    pretrain(model, cfg, device, log, save, start, opt_state)
    if main_rank:
        save_checkpoint(paths["base.pt"], model, stage="base", train_config=asdict(cfg))
    return model


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
            drop_rows_from([paths["metrics.jsonl"], paths["aha.jsonl"]], start, stage)
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


# -----------------------------------------------------------------------------
# The DeepSeek-R1 recipe (--recipe r1, arXiv:2501.12948 sec. 2.3): the stages after the base model

def coldstart_examples(cfg: TrainConfig):
    """Sec. 2.3.1's cold-start data at our scale: "readable" long CoTs written by the corpus writer in its
    reflect style (try a candidate, say "Wait" on a miss, verify the hit), English only, kept only when the final
    answer is right, on "pretrain"-split problems (never an answer to an RL problem)."""
    style = replace(cfg.corpus, p_try=0.0, p_reflect=1.0, p_second_language_reflect=0.0, p_second_language_other=0.0)
    rng, problems, n = random.Random(cfg.seed), data.countdown_problems("pretrain"), cfg.r1.coldstart_examples
    examples, written = [], 0
    while len(examples) < n and written < 20 * n:  # a reflect document ends right unless it runs out of attempts
        numbers, target = rng.choice(problems)
        row = data.countdown_row(numbers, target, rng)
        response = data.countdown_response(rng, (numbers, target), style)
        written += 1
        if rewards.score("<think>" + response, row).accuracy == 1:
            examples.append(example_from_text(data.make_prompt(row["question"]), response))
    if not examples:
        raise ValueError(f"no valid cold-start example: none of {written} reflect-style answers ended correct "
                         f"(--corpus-p-correct {cfg.corpus.p_correct}, --corpus-max-attempts "
                         f"{cfg.corpus.max_attempts})")
    return examples


def non_reasoning_examples(n, seed):
    """Sec. 2.3.3's non-reasoning data at our scale: "Compute ..." questions answered directly, with an empty
    think ("for simpler queries ... we do not provide a CoT in response")."""
    rng, examples = random.Random(seed), []
    for _ in range(n):
        e = data.arithmetic_expression(rng)
        examples.append(example_from_text(data.make_prompt(data.arithmetic_question(e.text)),
                                          f" </think> <answer> {e.value} </answer>"))
    return examples


def rejection_sft_examples(model, cfg: TrainConfig, paths, log):
    """Sec. 2.3.3's SFT set: the stage-2 model's finished, correct, single-language, not overlong answers to RL
    problems (rejection.py), plus non-reasoning examples (--r1-non-reasoning-fraction of the set). The kept
    answers go to rejection.jsonl, so that a resumed run trains on the same set without sampling again.
    Rank 0 alone samples (rejection.py is single-process); the other ranks wait, then read the file."""
    path, ok, err = paths["rejection.jsonl"], 1.0, None
    if distributed.is_main() and not (cfg.resume and os.path.exists(path)):
        rows = data.problem_rows("train", cfg.r1.rejection_problems, cfg.seed, cfg.train_data)
        rej_cfg = RejectionConfig(samples_per_prompt=cfg.r1.rejection_samples_per_prompt,
                                  max_new_tokens=cfg.grpo.max_new_tokens, temperature=cfg.grpo.temperature,
                                  keep_per_prompt=cfg.r1.rejection_keep_per_prompt, seed=cfg.seed,
                                  max_tokens=max(1, int(cfg.r1.rejection_max_tokens_frac * cfg.grpo.max_new_tokens)))
        try:
            kept, stats = rejection_sample(model, rows, rej_cfg)
            log({"stage": "rejection", **stats})
            with open(path + ".tmp", "w") as f:
                f.writelines(json.dumps(example) + "\n" for example in kept)
            os.replace(path + ".tmp", path)
        except ValueError as error:
            ok, err = 0.0, error
    if not distributed.all_reduce_metrics({"ok": ok}, "min")["ok"]:  # also the other ranks' wait for the file
        raise SystemExit(f"rejection sampling (R1 stage 3): {err or 'failed on rank 0'}")
    examples = [example_from_text(data.make_prompt(obj["question"]), obj["completion"])
                for _, obj in data.jsonl_objects(path)]
    f = cfg.r1.non_reasoning_fraction
    return examples + non_reasoning_examples(round(f / (1 - f) * len(examples)), cfg.seed)


def all_scenarios_rows(cfg: TrainConfig, train_rows):
    """Sec. 2.3.4's prompts "from diverse scenarios", rule-rewarded: the RL problems plus "Compute ..."
    arithmetic problems (--r1-final-arithmetic-fraction of all)."""
    f, rng = cfg.r1.final_arithmetic_fraction, random.Random(cfg.seed + 1)
    arithmetic = [data.arithmetic_expression(rng) for _ in range(round(f / (1 - f) * len(train_rows)))]
    return train_rows + [data.arithmetic_row(data.arithmetic_question(e.text), e.value) for e in arithmetic]


def run_sft(model, examples_fn, sft_cfg: SFTConfig, cfg: TrainConfig, device, log, paths, stage):
    """SFT of `model` on examples_fn()'s examples as `stage`, checkpointed in paths[stage + ".pt"] (step and
    optimizer every sft_cfg.checkpoint_every steps; finished=True at the end). With --resume, a finished stage is
    skipped (examples_fn is not even called) and an interrupted one continues. Returns the fine-tuned model.
    Bad data (no example, none that fits) stops the run with a message naming the stage."""
    main_rank, ckpt_path = distributed.is_main(), paths[stage + ".pt"]
    say = print if main_rank else (lambda *args: None)
    start, opt_state = 0, None
    if cfg.resume and os.path.exists(ckpt_path):
        ckpt = load_checkpoint(ckpt_path, device)
        if ckpt.get("finished"):
            say(f"resumed the finished {stage} model from {ckpt_path}")
            return ckpt["model"]
        model, start, opt_state = ckpt["model"], ckpt["step"], ckpt["opt"]
        say(f"resumed {stage} at step {start}")
        if main_rank:
            drop_rows_from([paths["metrics.jsonl"]], start, stage)

    def stage_log(row):  # sft.py logs "sft" and "sft_data" rows: name them after the stage
        log({**row, "stage": stage if row["stage"] == "sft" else stage + "_data"})

    def save(step, opt):
        if main_rank:
            save_checkpoint(ckpt_path, model, stage=stage, step=step, opt=opt.state_dict(), finished=False)

    try:
        sft(model, examples_fn(), sft_cfg, device, stage_log, save, start, opt_state)
    except ValueError as err:
        raise SystemExit(f"{stage} SFT: {err}") from None
    if main_rank:
        save_checkpoint(ckpt_path, model, stage=stage, finished=True, train_config=asdict(cfg))
    return model


def run_r1(model, cfg: TrainConfig, device, log, paths, evaluate_as, train_rows):
    """DeepSeek-R1's four stages after the base model, each resumable, on the RL problems train_rows.
    evaluate_as(name, model, t0) evaluates each stage's model on the held-out problems and records the stage's
    wall time since t0."""
    r1 = cfg.r1

    def sft_config(epochs, lr):
        return SFTConfig(epochs=epochs, lr=lr, batch_size=r1.sft_batch_size, seq_len=r1.sft_seq_len,
                         log_every=cfg.log_every, checkpoint_every=r1.sft_checkpoint_every, seed=cfg.seed)

    language = replace(cfg.grpo, language_weight=r1.language_weight)  # sec. 2.3.2, kept in sec. 2.3.4
    # 1. cold start (sec. 2.3.1): SFT of the base model on readable long CoTs
    t0 = time.time()
    model = run_sft(model, lambda: coldstart_examples(cfg), sft_config(r1.coldstart_epochs, r1.coldstart_lr),
                    cfg, device, log, paths, "coldstart")
    evaluate_as("coldstart", model, t0)
    # 2. reasoning-oriented RL (sec. 2.3.2) on the cold-started model, with the language-consistency reward
    t0 = time.time()
    run_rl(model, cfg, device, log, paths, train_rows, stage="rl_reasoning", grpo_cfg=language,
           steps=r1.reasoning_rl_steps)
    evaluate_as("rl_reasoning", model, t0)
    # 3. rejection sampling from the stage-2 model + non-reasoning data, then SFT of the *base* model for two
    #    epochs (sec. 2.3.3: R1 restarts from DeepSeek-V3-Base, not from the RL model)
    t0 = time.time()
    reasoner = model
    model = run_sft(load_checkpoint(paths["base.pt"], device)["model"],
                    lambda: rejection_sft_examples(reasoner, cfg, paths, log),
                    sft_config(r1.rsft_epochs, r1.rsft_lr), cfg, device, log, paths, "rsft")
    evaluate_as("rsft", model, t0)
    # 4. RL for all scenarios (sec. 2.3.4): Countdown and arithmetic prompts, rule rewards, language reward kept
    t0 = time.time()
    run_rl(model, cfg, device, log, paths, all_scenarios_rows(cfg, train_rows), stage="rl_final",
           grpo_cfg=language, steps=r1.final_rl_steps)
    evaluate_as("r1", model, t0)
    return model


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
              "coldstart.pt", "rl_reasoning.pt", "rejection.jsonl", "rsft.pt", "rl_final.pt")}
    if cfg.resume and not any(os.path.exists(paths[name]) for name in ("pretrain.pt", "base.pt", "rl.pt")):
        raise SystemExit(f"--resume: nothing to resume in {cfg.out_dir}/ (no pretrain.pt, base.pt or rl.pt); "
                         "leave out --resume to start a fresh run")
    torch.manual_seed(cfg.seed + rank)
    random.seed(cfg.seed)
    torch.backends.cuda.matmul.allow_tf32 = True
    if not cfg.resume and main_rank:
        for name in ("metrics.jsonl", "aha.jsonl", "eval.json", "rejection.jsonl"):
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
    model = pretrain_base(cfg, device, log, paths, first_row=run_info)

    evals = json.load(open(paths["eval.json"])) if cfg.resume and os.path.exists(paths["eval.json"]) else {}
    if "base" not in evals and cfg.eval_problems:
        evals["base"] = evaluate(model, test_rows, cfg.eval_samples, cfg.grpo.max_new_tokens, cfg.eval_temperature,
                                 cfg.eval_top_p)
        say("base model:", {k: v for k, v in evals["base"].items() if k != "example"})
        if main_rank:
            json.dump(evals, open(paths["eval.json"], "w"), indent=2)

    if cfg.recipe == "r1":
        def evaluate_as(name, stage_model, t0):
            """Evaluate a stage's model once (a resumed run keeps the eval.json entry) and add up its wall time."""
            if name not in evals and cfg.eval_problems:
                evals[name] = evaluate(stage_model, test_rows, cfg.eval_samples, cfg.grpo.max_new_tokens,
                                       cfg.eval_temperature, cfg.eval_top_p)
                say(f"{name} model:", {k: v for k, v in evals[name].items() if k != "example"})
            wall = evals.setdefault("stage_wall_s", {})
            wall[name] = wall.get(name, 0.0) + time.time() - t0  # summed over the runs that reached its end
            if main_rank:
                json.dump(evals, open(paths["eval.json"], "w"), indent=2)

        # 2-5. DeepSeek-R1's stages on the base model, each evaluated on the same held-out problems
        run_r1(model, cfg, device, log, paths, evaluate_as, train_rows)
        rl_stages = ("rl_reasoning", "rl_final")
    else:
        # 2. R1-Zero RL on the base model
        run_rl(model, cfg, device, log, paths, train_rows)

        # 3. Evaluate the RL model on the same held-out problems
        if cfg.rl_steps and cfg.eval_problems:
            evals["rl"] = evaluate(model, test_rows, cfg.eval_samples, cfg.grpo.max_new_tokens,
                                   cfg.eval_temperature, cfg.eval_top_p)
            say("RL model:  ", {k: v for k, v in evals["rl"].items() if k != "example"})
        rl_stages = ("rl",)
    if main_rank:
        rows = [json.loads(line) for line in open(paths["metrics.jsonl"])]
        for stage in rl_stages:
            rl_rows = [r for r in rows if r.get("stage") == stage]
            if rl_rows:
                evals[stage + "_growth"] = {key: growth(rl_rows, key)
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
