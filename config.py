"""
The pipeline's settings: TrainConfig, everything train.py runs, and R1Config, the stages of --recipe r1
(DeepSeek-R1, arXiv:2501.12948 sec. 2.3), with their checks. Below the stages that read them (pretrain.py,
rl.py, r1.py, train.py, distill.py); the settings of GRPO and of the corpus live with their code (grpo.py,
data.py) and nest here.
"""

import argparse
import math
import typing
from dataclasses import dataclass, field, fields, replace
from typing import Annotated

import data
import distributed
from grpo import GRPOConfig
from model import make_config


def field_help(config_class):
    """{field name: its help}, the text its annotation carries (`name: Annotated[type, "help"] = default`): each
    setting is explained once, where it is declared, and train.py --help shows that."""
    hints = typing.get_type_hints(config_class, include_extras=True)
    return {f.name: hints[f.name].__metadata__[0] for f in fields(config_class)
            if typing.get_origin(hints[f.name]) is Annotated}


def add_config_flags(parser, config_class, prefix="", skip=(), only_given=False, notes=None, values=None):
    """A flag per field of a dataclass config, --PREFIX-FIELD into dest PREFIX_FIELD, its help the field's comment
    and default (train.py, sft.py, rejection.py and distill.py build their command lines with it). only_given:
    the parsed namespace holds only the flags given (train.py lays them over its setup's values); notes: {dest:
    text} added to a flag's help; values: an instance whose values are the defaults (a nested config's, which its
    parent may set apart from the class's). Returns {dest: default} of the flags added."""
    comments, defaults = field_help(config_class), {}
    for f in fields(config_class):
        if f.name in skip:
            continue
        dest = prefix + f.name
        default = defaults[dest] = f.default if values is None else getattr(values, f.name)
        note = f"; {notes[dest]}" if notes and dest in notes else ""
        boolean = isinstance(default, bool)  # --flag / --no-flag
        kind = dict(action=argparse.BooleanOptionalAction) if boolean else dict(type=type(default))
        parser.add_argument("--" + dest.replace("_", "-"), dest=dest,
                            default=argparse.SUPPRESS if only_given else default,
                            help=f"{comments.get(f.name, '')} (default: {default}{note})".replace("%", "%%"),
                            **kind)  # argparse formats help with %
    return defaults


@dataclass
class R1Config:
    """DeepSeek-R1's stages after the base model (arXiv:2501.12948 sec. 2.3), for --recipe r1; results/r1 measures
    them beside R1-Zero from the same base."""
    coldstart_examples: Annotated[int, "cold-start SFT examples (sec. 2.3.1: \"thousands of\" readable long "
                                  "CoTs)"] = 3000
    # where they come from. r1zero: R1-Zero's own correct answers (its RL first, from the same base, as --recipe
    # r1-zero runs it), rewritten readable (readable.py: English, no repeats, a summary), as sec. 2.3.1 gathers them;
    # oracle: the corpus writer's English reflect answers, kept when right (the writer of the pretraining data: a
    # cleaner source than R1 had). The default is the one that gives the better R1 by the rule docs/r1.md sets:
    # R1's three targets met on more seeds, then the higher mean pass@1 (results/r1/README.md)
    coldstart_source: Annotated[str, "r1zero or oracle: who writes the cold-start CoTs (see above)"] = "r1zero"
    coldstart_r1zero_problems: Annotated[int, "pretraining-split problems the R1-Zero model answers (r1zero "
                                         "source)"] = 1000
    coldstart_r1zero_samples: Annotated[int, "answers sampled per problem; the distinct correct ones are kept"] = 4
    coldstart_max_tokens: Annotated[int, "longest cold-start answer kept, in tokens (3/4 of the RL budget); 0: "
                                    "all"] = 384
    # a give-up tries the writer's 10 attempts, all misses, and answers the last: without such examples an SFT stage
    # teaches only answers that end in a hit, and on a problem it cannot solve the model tries on to the token budget.
    # In the cold start they cost pass@1 (the model stops on problems it would have solved by trying on: 0.9-19
    # points against R1-Zero on 3 seeds, results/README.md); stopping is taught later, by rsft_giveup_fraction and
    # overlong_buffer_frac
    coldstart_giveup_fraction: Annotated[float, "share of cold-start examples that give up: all attempts miss, the "
                                         "last is answered"] = 0.0
    coldstart_epochs: Annotated[int, "epochs of cold-start SFT"] = 2
    coldstart_lr: Annotated[float, "peak learning rate of cold-start SFT"] = 1e-4
    reasoning_rl_steps: Annotated[int, "steps of reasoning RL on the cold-started model (sec. 2.3.2)"] = 120
    language_weight: Annotated[float, "weight of sec. 2.3.2's language-consistency reward, in stages 2 and 4"] = 1.0
    # GRPO's dual clip (grpo_loss) in stages 2 and 4: after a cold start with give-ups, single tokens' ratios reached
    # the hundreds to thousands and reasoning RL collapsed in two of three runs without it (results/README.md);
    # R1-Zero's RL, from the pretrained base, runs the paper's GRPO without it
    clip_ratio_c: Annotated[float, "dual clip of stages 2 and 4: with a negative advantage the ratio counts at most "
                            "c (> 1); 0: off"] = 3.0
    # DAPO's soft overlong punishment (grpo.overlong_penalty) in stages 2 and 4: SFT on answers that end in a hit
    # leaves the model trying on to the token budget where it cannot solve a problem (docs/r1.md); the penalty
    # makes a truncated answer worse than a finished miss, so the RL after each stage unlearns the loops, though
    # not in every run
    overlong_buffer_frac: Annotated[float, "stages 2 and 4 punish answers in this last share of the token budget "
                                    "(64 of 512 tokens, where rejection sampling's length cap starts; 0: off)"] = 0.125
    # the loops themselves: an answer that tries a candidate again, and again, until the budget ends. A repeat that
    # the sampling escapes at temperature 1 costs a rollout nothing, so RL lets the habit grow, and at the
    # evaluation's 0.6 it no longer escapes. A penalty makes every repeat cost, finished or not: the n-gram
    # repetition penalty of Yeo et al. 2025 (arXiv:2502.03373, Algorithm 1) on this task's unit of repetition,
    # the candidate
    repeat_penalty: Annotated[float, "stages 2 and 4 subtract this times the share of an answer's candidates "
                              "tried before (up to 1, a hit still beats a finished miss; 0: off)"] = 0.5
    # the paper lowers the sampling temperature to 0.7 in its last RL stage (sec. 2.3.4, the Nature version's
    # training details), and rollouts near the evaluation's 0.6 show the loops that 1.0 escapes
    final_rl_temperature: Annotated[float, "sampling temperature of stage 4's rollouts; 0: --rl-temperature, as "
                                    "stage 2"] = 0.7
    rejection_problems: Annotated[int, "RL problems the stage-2 model answers for rejection sampling (sec. "
                                  "2.3.3)"] = 1000
    rejection_samples_per_prompt: Annotated[int, "answers sampled per problem"] = 8
    rejection_keep_per_prompt: Annotated[int, "most distinct correct answers kept per problem"] = 4
    rejection_max_tokens_frac: Annotated[float, "longest kept answer, as a share of the RL budget (448 of 512)"] = 0.875
    non_reasoning_fraction: Annotated[float, "share of direct answers in the SFT set (R1: 200k of 800k samples)"] = 0.25
    # the loops again: a rejection-SFT set of answers that all end in a hit trains a model that tries on to the
    # token budget where it cannot solve a problem, and the final RL unlearns that in some runs only. Give-ups, the
    # corpus writer's answers whose every attempt misses, show the model where to stop; here, after reasoning RL
    # has made the model strong, they cost far less pass@1 than in the cold start (docs/r1.md)
    rsft_giveup_fraction: Annotated[float, "share of rejection-SFT reasoning examples that give up: all attempts "
                                    "miss, the last is answered"] = 0.1
    rsft_epochs: Annotated[int, "epochs of SFT on them (sec. 2.3.3: \"for two epochs\")"] = 2
    rsft_from: Annotated[str, "base (the paper: R1 restarts from V3-Base) or reasoner (the stage-2 model)"] = "base"
    rsft_lr: Annotated[float, "peak learning rate of that SFT"] = 1e-4
    sft_batch_size: Annotated[int, "rows per step of both SFT stages"] = 16
    sft_seq_len: Annotated[int, "longest SFT example in tokens, at most the model's max_seq_len"] = 640
    sft_checkpoint_every: Annotated[int, "SFT steps between checkpoints"] = 50
    final_rl_steps: Annotated[int, "steps of RL for all scenarios on the rejection-SFT model (sec. 2.3.4)"] = 120
    final_arithmetic_fraction: Annotated[float, "share of \"Compute ...\" problems among stage 4's prompts"] = 0.25
    final_rl_lr: Annotated[float, "learning rate of stage 4's GRPO; 0: --rl-lr, as stage 2"] = 0.0

    def rl_config(self, grpo: GRPOConfig) -> GRPOConfig:
        """The GRPO settings of stages 2 and 4: `grpo` with the language reward, the dual clip, the overlong
        punishment and the repeat penalty above in place of its own."""
        return replace(grpo, language_weight=self.language_weight, clip_ratio_c=self.clip_ratio_c,
                       overlong_buffer=int(self.overlong_buffer_frac * grpo.max_new_tokens),
                       repeat_penalty=self.repeat_penalty)

    def final_rl_config(self, grpo: GRPOConfig) -> GRPOConfig:
        """The GRPO settings of stage 4, RL after SFT: rl_config's, with stage 4's temperature and learning rate
        (0: `grpo`'s). distill.py's distilled + RL runs them too."""
        return replace(self.rl_config(grpo), lr=self.final_rl_lr or grpo.lr,
                       temperature=self.final_rl_temperature or grpo.temperature)

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
        for name in ("language_weight", "repeat_penalty"):
            if not (getattr(self, name) >= 0 and math.isfinite(getattr(self, name))):
                raise ValueError(f"R1Config.{name} must be >= 0, got {getattr(self, name)}")
        if not (self.final_rl_temperature >= 0 and math.isfinite(self.final_rl_temperature)):
            raise ValueError(f"R1Config.final_rl_temperature must be >= 0 (0: as stage 2), got "
                             f"{self.final_rl_temperature}")
        if not 0 < self.rejection_max_tokens_frac <= 1:
            raise ValueError("R1Config.rejection_max_tokens_frac must be in (0, 1]")
        for name in ("non_reasoning_fraction", "final_arithmetic_fraction", "coldstart_giveup_fraction",
                     "rsft_giveup_fraction", "overlong_buffer_frac"):
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
        if not (self.clip_ratio_c == 0 or 1 < self.clip_ratio_c < float("inf")):
            raise ValueError(f"R1Config.clip_ratio_c must be 0 (off) or a number > 1, got {self.clip_ratio_c}")
        if not (self.final_rl_lr >= 0 and math.isfinite(self.final_rl_lr)):
            raise ValueError(f"R1Config.final_rl_lr must be >= 0 (0: GRPOConfig.lr), got {self.final_rl_lr}")


@dataclass
class TrainConfig:
    recipe: Annotated[str, "r1-zero: base -> RL; r1: base -> cold start -> RL -> rejection SFT -> RL"] = "r1-zero"
    setup: Annotated[str, "gpu (these defaults) or cpu (CPU_SETUP); auto: cpu when no GPU is used"] = "auto"
    preset: Annotated[str, "model preset: tiny (CPU tests), cpu (CPU_SETUP), small (one GPU), medium"] = "small"
    out_dir: Annotated[str, "where metrics, checkpoints, transcripts, eval.json and plots go"] = "out"
    seed: Annotated[int, "seeds the weights, the corpus, the problems drawn and the sampling"] = 0
    device: Annotated[str, "auto: cuda if available, else cpu"] = "auto"
    resume: Annotated[bool, "continue from the checkpoints in out_dir; stops if there are none"] = False
    dist_backend: Annotated[str, "under torchrun: nccl (GPUs) or gloo (CPU); auto picks by device"] = "auto"
    eager: Annotated[bool, "train without torch.compile (on a GPU: the blocks of the training forwards)"] = False
    base: Annotated[str, "pretrain: pretrain the base model; else a base checkpoint to start RL from"] = "pretrain"
    # pretraining on the synthetic corpus
    # 1600 steps of 64 x 640 tokens (65.5M), in windows of the model's whole context: the shape of the GRPO update's
    # micro-batches, which then run the code compiled here (engine.compiled_blocks). Half as many tokens leave a base
    # from which RL misses the reproduction targets (pass@1 28-69% on 3 seeds)
    pretrain_steps: Annotated[int, "optimizer steps of pretraining"] = 1600
    pretrain_batch_size: Annotated[int, "windows per step, global: split over the ranks under torchrun"] = 64
    pretrain_micro_batch_size: Annotated[int, "windows per forward/backward on each rank, gradients accumulated (0: "
                                         "all)"] = 0
    pretrain_seq_len: Annotated[int, "tokens per window of the packed corpus stream (small's whole context)"] = 640
    pretrain_lr: Annotated[float, "peak learning rate (AdamW), then cosine down to 10%"] = 2e-3
    pretrain_warmup: Annotated[int, "steps of linear warmup"] = 100
    pretrain_unique_tokens: Annotated[int, "corpus tokens generated, then cycled"] = 20_000_000
    # a checkpoint (weights and AdamW state, ~0.5 GB for small) takes ~0.75 s to write on an H100 host: every 1000
    # steps costs little, and a crash loses at most ~30 s of pretraining
    pretrain_checkpoint_every: Annotated[int, "pretraining steps between checkpoints"] = 1000
    # R1-Zero RL
    # 100 reach every reproduction target on 3 seeds (results/README.md)
    rl_steps: Annotated[int, "GRPO steps of R1-Zero's RL"] = 100
    rl_prompts_per_step: Annotated[int, "problems per RL step, global (x group_size = 512 rollouts, one decode "
                                   "batch)"] = 64
    train_data: Annotated[str, "a JSONL file of your own RL problems (data.load_jsonl); \"\": Countdown's"] = ""
    # evaluation on the held-out split
    eval_data: Annotated[str, "a JSONL file of your own held-out problems; \"\": Countdown's test split"] = ""
    eval_problems: Annotated[int, "drawn from the held-out problems (by --seed); 0 skips evaluation"] = 200
    eval_samples: Annotated[int, "k for pass@1 (averaged over k) and cons@k (majority vote)"] = 16
    eval_temperature: Annotated[float, "sampling temperature (R1's protocol: 0.6, top-p 0.95, pass@1 over k)"] = 0.6
    eval_top_p: Annotated[float, "nucleus sampling's probability mass"] = 0.95
    # the same models on "Compute ..." arithmetic (data.arithmetic_rows: a set fixed by --seed; the task space is
    # small, so it is no more held out than the corpus's arithmetic drill lets it be): arithmetic_pass@1 in eval.json
    eval_arithmetic_problems: Annotated[int, "arithmetic problems each evaluation adds; 0 skips them"] = 100
    eval_arithmetic_samples: Annotated[int, "samples per arithmetic problem (pass@1 averaged over them)"] = 4
    log_every: Annotated[int, "steps between the metrics rows of pretraining and SFT (RL logs every step)"] = 10
    checkpoint_every: Annotated[int, "RL steps between checkpoints (~1 s each on an H100, the reference included)"] = 50
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
