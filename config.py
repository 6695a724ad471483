"""
The pipeline's settings: TrainConfig, everything train.py runs, and R1Config, the stages of --recipe r1
(DeepSeek-R1, arXiv:2501.12948 sec. 2.3), with their checks. Below the stages that read them (pretrain.py,
rl.py, r1.py, train.py, distill.py); the settings of GRPO and of the corpus live with their code (grpo.py,
data.py) and nest here.
"""

import argparse
import inspect
import math
import re
from dataclasses import dataclass, field, fields

import data
import distributed
from grpo import GRPOConfig
from model import make_config


def field_help(config_class):
    """{field name: the comment on its line} of a dataclass, read from its source: each setting is explained once,
    where it is declared, and train.py --help shows that."""
    names = {f.name for f in fields(config_class)}
    found = re.findall(r"^\s+(\w+):[^#\n]*#\s*(.+)$", inspect.getsource(config_class), re.MULTILINE)
    return {name: comment for name, comment in found if name in names}


def add_config_flags(parser, config_class, prefix="", skip=(), only_given=False, notes=None):
    """A flag per field of a dataclass config, --PREFIX-FIELD into dest PREFIX_FIELD, its help the field's comment
    and default (train.py, sft.py, rejection.py and distill.py build their command lines with it). only_given:
    the parsed namespace holds only the flags given (train.py lays them over its setup's values); notes: {dest:
    text} added to a flag's help. Returns {dest: default} of the flags added."""
    comments, defaults = field_help(config_class), {}
    for f in fields(config_class):
        if f.name in skip:
            continue
        dest = prefix + f.name
        defaults[dest] = f.default
        note = f"; {notes[dest]}" if notes and dest in notes else ""
        kind = dict(action="store_true") if isinstance(f.default, bool) else dict(type=type(f.default))
        parser.add_argument("--" + dest.replace("_", "-"), dest=dest,
                            default=argparse.SUPPRESS if only_given else f.default,
                            help=f"{comments.get(f.name, '')} (default: {f.default}{note})".replace("%", "%%"),
                            **kind)  # argparse formats help with %
    return defaults


@dataclass
class R1Config:
    """DeepSeek-R1's stages after the base model (arXiv:2501.12948 sec. 2.3), for --recipe r1; results/r1 measures
    these defaults on 3 seeds (and 4 cold-start epochs: no better)."""
    coldstart_examples: int = 3000      # cold-start SFT examples (sec. 2.3.1: "thousands of" readable long CoTs)
    # where they come from. oracle: the corpus writer's English reflect answers, kept when right (the writer of the
    # pretraining data: a cleaner source than R1 had); r1zero: R1-Zero's own correct answers (its RL first, from the
    # same base, as --recipe r1-zero runs it), rewritten readable (readable.py: English, no repeats, a summary)
    coldstart_source: str = "oracle"    # oracle or r1zero: who writes the cold-start CoTs (see above)
    coldstart_r1zero_problems: int = 1000  # pretraining-split problems the R1-Zero model answers (r1zero source)
    coldstart_r1zero_samples: int = 4   # answers sampled per problem; the distinct correct ones are kept
    coldstart_max_tokens: int = 384     # longest cold-start answer kept, in tokens (3/4 of the RL budget); 0: all
    coldstart_giveup_fraction: float = 0.0  # share of examples that give up: all attempts miss, the last is answered
    coldstart_epochs: int = 2           # epochs of cold-start SFT
    coldstart_lr: float = 1e-4          # peak learning rate of cold-start SFT
    reasoning_rl_steps: int = 120       # steps of reasoning RL on the cold-started model (sec. 2.3.2)
    language_weight: float = 1.0        # weight of sec. 2.3.2's language-consistency reward, in stages 2 and 4
    rejection_problems: int = 1000      # RL problems the stage-2 model answers for rejection sampling (sec. 2.3.3)
    rejection_samples_per_prompt: int = 8  # answers sampled per problem
    rejection_keep_per_prompt: int = 4  # most distinct correct answers kept per problem
    rejection_max_tokens_frac: float = 0.875  # longest kept answer, as a share of the RL budget (448 of 512)
    non_reasoning_fraction: float = 0.25  # share of direct answers in the SFT set (R1: 200k of 800k samples)
    rsft_epochs: int = 2                # epochs of SFT on them (sec. 2.3.3: "for two epochs")
    rsft_from: str = "base"             # base (the paper: R1 restarts from V3-Base) or reasoner (the stage-2 model)
    rsft_lr: float = 1e-4               # peak learning rate of that SFT
    sft_batch_size: int = 16            # rows per step of both SFT stages
    sft_seq_len: int = 640              # longest SFT example in tokens, at most the model's max_seq_len
    sft_checkpoint_every: int = 50      # SFT steps between checkpoints
    final_rl_steps: int = 120           # steps of RL for all scenarios on the rejection-SFT model (sec. 2.3.4)
    final_arithmetic_fraction: float = 0.25  # share of "Compute ..." problems among stage 4's prompts
    final_rl_lr: float = 0.0            # learning rate of stage 4's GRPO; 0: --rl-lr, as stage 2

    def validate(self):
        for name in ("coldstart_examples", "coldstart_epochs", "rejection_problems", "rejection_samples_per_prompt",
                     "rejection_keep_per_prompt", "rsft_epochs", "sft_batch_size", "sft_seq_len",
                     "sft_checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"R1Config.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("reasoning_rl_steps", "final_rl_steps"):
            if getattr(self, name) < 0:
                raise ValueError(f"R1Config.{name} must be >= 0, got {getattr(self, name)}")
        for name in ("coldstart_lr", "rsft_lr"):
            if not (getattr(self, name) > 0 and math.isfinite(getattr(self, name))):
                raise ValueError(f"R1Config.{name} must be a positive number")
        if not (self.language_weight >= 0 and math.isfinite(self.language_weight)):
            raise ValueError(f"R1Config.language_weight must be >= 0, got {self.language_weight}")
        if not 0 < self.rejection_max_tokens_frac <= 1:
            raise ValueError("R1Config.rejection_max_tokens_frac must be in (0, 1]")
        for name in ("non_reasoning_fraction", "final_arithmetic_fraction", "coldstart_giveup_fraction"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"R1Config.{name} must be in [0, 1)")
        for name, choices in (("coldstart_source", ("oracle", "r1zero")), ("rsft_from", ("base", "reasoner"))):
            if getattr(self, name) not in choices:
                raise ValueError(f"R1Config.{name} must be {' or '.join(choices)}, got {getattr(self, name)!r}")
        for name in ("coldstart_r1zero_problems", "coldstart_r1zero_samples"):
            if getattr(self, name) < 1:
                raise ValueError(f"R1Config.{name} must be >= 1, got {getattr(self, name)}")
        if self.coldstart_max_tokens < 0:
            raise ValueError(f"R1Config.coldstart_max_tokens must be >= 0 (0: no cap), got {self.coldstart_max_tokens}")
        if not (self.final_rl_lr >= 0 and math.isfinite(self.final_rl_lr)):
            raise ValueError(f"R1Config.final_rl_lr must be >= 0 (0: GRPOConfig.lr), got {self.final_rl_lr}")


@dataclass
class TrainConfig:
    recipe: str = "r1-zero"             # r1-zero: base -> RL; r1: base -> cold start -> RL -> rejection SFT -> RL
    setup: str = "auto"                 # gpu (these defaults) or cpu (CPU_SETUP); auto: cpu when no GPU is used
    preset: str = "small"               # model preset: tiny (CPU tests), cpu (CPU_SETUP), small (one GPU), medium
    out_dir: str = "out"                # where metrics, checkpoints, transcripts, eval.json and plots go
    seed: int = 0                       # seeds the weights, the corpus, the problems drawn and the sampling
    device: str = "auto"                # auto: cuda if available, else cpu
    resume: bool = False                # continue from the checkpoints in out_dir; stops if there are none
    dist_backend: str = "auto"          # under torchrun: nccl (GPUs) or gloo (CPU); auto picks by device
    eager: bool = False                 # train without torch.compile (on a GPU: the blocks of the training forwards)
    base: str = "pretrain"              # pretrain: pretrain the base model; else a base checkpoint to start RL from
    # pretraining on the synthetic corpus
    # 1600 steps of 64 x 640 tokens: the tokens of the earlier 2000 x 512, in windows of the model's whole context,
    # the shape of the GRPO update's micro-batches, which then run the code compiled here (engine.compiled_blocks).
    # Fewer tokens miss: RL from 1000 x 512 missed the targets on 3 seeds of 3 (65bf498: pass@1 69%, 47%, 28%)
    pretrain_steps: int = 1600          # optimizer steps of pretraining
    pretrain_batch_size: int = 64       # windows per step, global: split over the ranks under torchrun
    pretrain_micro_batch_size: int = 0  # windows per forward/backward on each rank, gradients accumulated (0: all)
    pretrain_seq_len: int = 640         # tokens per window of the packed corpus stream (small's whole context)
    pretrain_lr: float = 2e-3           # peak learning rate (AdamW), then cosine down to 10%
    pretrain_warmup: int = 100          # steps of linear warmup
    pretrain_unique_tokens: int = 20_000_000  # corpus tokens generated, then cycled
    # a checkpoint (weights and AdamW state, ~0.5 GB for small) takes ~0.75 s to write on an H100 host: every 100
    # steps that was 15 s of a 4-minute run; every 1000 a crash loses at most ~30 s of pretraining
    pretrain_checkpoint_every: int = 1000  # pretraining steps between checkpoints
    # R1-Zero RL
    # 100 reach every reproduction target on 3 seeds (results/README.md); 120, the earlier default, cost ~27 s more
    rl_steps: int = 100                 # GRPO steps of R1-Zero's RL
    rl_prompts_per_step: int = 64       # problems per RL step, global (x group_size = 512 rollouts, one decode batch)
    train_data: str = ""                # a JSONL file of your own RL problems (data.load_jsonl); "": Countdown's
    # evaluation on the held-out split
    eval_data: str = ""                 # a JSONL file of your own held-out problems; "": Countdown's test split
    eval_problems: int = 200            # drawn from the held-out problems (by --seed); 0 skips evaluation
    eval_samples: int = 16              # k for pass@1 (averaged over k) and cons@k (majority vote)
    eval_temperature: float = 0.6       # sampling temperature (R1's protocol: 0.6, top-p 0.95, pass@1 over k)
    eval_top_p: float = 0.95            # nucleus sampling's probability mass
    # the same models on "Compute ..." arithmetic (data.arithmetic_rows: a set fixed by --seed; the task space is
    # small, so it is no more held out than the corpus's arithmetic drill lets it be): arithmetic_pass@1 in eval.json
    eval_arithmetic_problems: int = 100  # arithmetic problems each evaluation adds; 0 skips them
    eval_arithmetic_samples: int = 4    # samples per arithmetic problem (pass@1 averaged over them)
    log_every: int = 10                 # steps between the metrics rows of pretraining and SFT (RL logs every step)
    checkpoint_every: int = 50          # RL steps between checkpoints (~1 s each on an H100, the reference included)
    grpo: GRPOConfig = field(default_factory=GRPOConfig)
    corpus: data.CorpusConfig = field(default_factory=data.CorpusConfig)
    r1: R1Config = field(default_factory=R1Config)

    def validate(self):
        make_config(self.preset)  # raises for an unknown preset
        positive = ["pretrain_steps", "pretrain_batch_size", "pretrain_seq_len", "rl_prompts_per_step", "eval_samples",
                    "eval_arithmetic_samples", "log_every", "checkpoint_every", "pretrain_unique_tokens",
                    "pretrain_checkpoint_every"]
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"TrainConfig.{name} must be positive, got {getattr(self, name)}")
        for name in ["rl_steps", "eval_problems", "pretrain_warmup", "pretrain_micro_batch_size",
                     "eval_arithmetic_problems"]:
            if getattr(self, name) < 0:
                raise ValueError(f"TrainConfig.{name} must be >= 0, got {getattr(self, name)}")
        if not (self.pretrain_lr > 0 and math.isfinite(self.pretrain_lr)):
            raise ValueError("TrainConfig.pretrain_lr must be a positive number")
        if self.eval_temperature < 0 or not 0 < self.eval_top_p <= 1:
            raise ValueError("need TrainConfig.eval_temperature >= 0 and 0 < TrainConfig.eval_top_p <= 1")
        if self.device not in ("auto", "cpu") and not self.device.startswith("cuda"):
            raise ValueError(f"TrainConfig.device must be auto, cpu or cuda[:N], got {self.device}")
        if self.base != "pretrain" and not self.base.endswith(".pt"):
            raise ValueError(f"TrainConfig.base must be pretrain or a checkpoint file (.pt), got {self.base!r}")
        if self.recipe not in ("r1-zero", "r1"):
            raise ValueError(f"TrainConfig.recipe must be r1-zero or r1, got {self.recipe}")
        self.grpo.validate()
        self.corpus.validate()
        self.r1.validate()
        if self.recipe == "r1" and self.r1.coldstart_source == "r1zero" and not self.rl_steps:
            raise ValueError("R1Config.coldstart_source r1zero samples R1-Zero after its RL: it needs "
                             "TrainConfig.rl_steps >= 1")
        # under torchrun: refused on every rank alike, before any rank waits for the others
        distributed.check_backend(self.dist_backend, self.device)
        share = distributed.per_rank(self.pretrain_batch_size, "TrainConfig.pretrain_batch_size")
        if self.pretrain_micro_batch_size and share % self.pretrain_micro_batch_size:
            raise ValueError(f"TrainConfig.pretrain_micro_batch_size = {self.pretrain_micro_batch_size} must divide "
                             f"each process's share of the batch ({share} windows)")
        distributed.per_rank(self.rl_prompts_per_step, "TrainConfig.rl_prompts_per_step")
