"""
Rejection sampling: turn a model's own samples into SFT data, keeping only the good ones. The data-making step
that DeepSeek-R1 (arXiv:2501.12948) uses twice:

- rejection-sampling SFT (sec. 2.3.3): once reasoning RL converges, sample many answers per prompt from its
  checkpoint, keep only the correct ones, and filter out "chain-of-thought with mixed languages, long
  paragraphs, and code blocks"; the model is then fine-tuned on what is left (sft.py);
- distillation (sec. 2.4): the same samples of the large model are the SFT data of a small student.

    python rejection.py --ckpt out/rl.pt --split train --problems 1000 --out out/rejection.jsonl
    python sft.py --init out/base.pt --data out/rejection.jsonl --out-dir out_sft

A sample is kept only if it is all of: finished (it ended with a stop token: a truncated answer is never kept),
in the R1 format, correct (rewards.score's accuracy is 1), in one language (rewards.language_consistency of its
CoT at least min_language_consistency: R1's "mixed languages" filter), and at most max_tokens long (R1's "long
paragraphs": the answers that barely fit the budget go too). Of a prompt's survivors, identical texts count
once and at most keep_per_prompt are kept, so that a few easy prompts, solved by every sample, do not make up
most of the data. Each rejected sample is counted under the first check it fails, in the order above.

Output: one JSONL line per kept sample, {"question": ..., "completion": "<think>...</answer>"}, the layout
sft.load_examples reads (the prompt is data.make_prompt(question); the completion is the whole assistant turn,
as rewards.py scores it). The stats are printed as one JSON line. A set with nothing kept is an error that says
why, never an empty file to train on.
"""

import argparse
import json
import os
from dataclasses import asdict, dataclass, fields
from typing import Annotated

import torch

import data
import engine
import sft
from checkpoint import git_commit, load_checkpoint
from config import add_config_flags
from sample import rollouts

# why a sample is rejected, in the order the checks run (each sample counts under the first it fails)
REASONS = ("truncated", "bad_format", "wrong", "mixed_language", "too_long", "duplicate", "over_keep_per_prompt")


@dataclass
class RejectionConfig:
    samples_per_prompt: Annotated[int, "R1 samples many answers per prompt and keeps the correct ones"] = 8
    max_new_tokens: Annotated[int, "the sampling budget (grpo.py's default)"] = 512
    temperature: Annotated[float, "the policy's own distribution, as GRPO samples it"] = 1.0
    top_p: Annotated[float, "nucleus sampling; 1.0: the whole distribution"] = 1.0
    min_language_consistency: Annotated[float, "keep single-language CoTs only (R1 sec. 2.3.3: no mixed "
                                        "languages)"] = 0.99
    max_tokens: Annotated[int, "longest completion kept (SFT tokens, after the prompt's \"<think>\")"] = 448
    keep_per_prompt: Annotated[int, "at most this many distinct correct answers per prompt"] = 4
    batch_size: Annotated[int, "rows decoded together"] = 512
    seed: Annotated[int, "the samples' draws and the problems drawn by the CLI"] = 0

    def validate(self):
        for name in ("samples_per_prompt", "max_new_tokens", "max_tokens", "keep_per_prompt", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.max_tokens > self.max_new_tokens:
            raise ValueError(f"--max-tokens {self.max_tokens} must be <= --max-new-tokens {self.max_new_tokens}: "
                             "a longer completion was never sampled")
        if not self.temperature >= 0:  # also refuses nan
            raise ValueError(f"--temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"--top-p must be in (0, 1], got {self.top_p}")
        if not 0 <= self.min_language_consistency <= 1:
            raise ValueError(f"--min-language-consistency must be in [0, 1], got {self.min_language_consistency}")


def rejection_reason(finished, reward, n_tokens, cfg: RejectionConfig):
    """The first check a sample fails (a name from REASONS), or None if it passes them all. finished: it ended
    with a stop token; reward: its rewards.score; n_tokens: its completion's length as SFT will train it."""
    if not finished:
        return "truncated"
    if reward.format < 1:
        return "bad_format"
    if reward.accuracy < 1:
        return "wrong"
    if reward.language_consistency < cfg.min_language_consistency:
        return "mixed_language"
    if n_tokens > cfg.max_tokens:
        return "too_long"
    return None


def rejection_sample(model, rows, cfg: RejectionConfig, generate_fn=None):
    """Sample cfg.samples_per_prompt completions of each row (a task dict of data.py) and keep the good ones
    (see the module docstring). Returns (examples, stats): examples are {"question", "completion"} dicts in
    sft.load_examples's layout, stats a dict of counts. Raises ValueError if nothing is kept. generate_fn (default:
    engine.decoder_for(model)) samples, as sample.rollouts calls it."""
    cfg.validate()
    rows = list(rows)
    if not rows:
        raise ValueError("no problems to sample: the set of rows is empty")
    generate_fn = engine.decoder_for(model) if generate_fn is None else generate_fn
    stop_ids, k = data.stop_token_ids(), cfg.samples_per_prompt
    device = next(model.parameters()).device
    # seeded draws without touching the caller's RNG state (a torch.Generator would turn off the CUDA graphs)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(cfg.seed)
        batch = rollouts(generate_fn, rows, k, cfg.max_new_tokens, cfg.temperature, cfg.top_p, cfg.batch_size)

    reasons = dict.fromkeys(REASONS, 0)
    seen = {}  # question -> the kept completion texts, for duplicates and keep_per_prompt
    examples, kept_tokens, kept_reflections, correct = [], 0, 0, 0
    for i, (completion, text, reward) in enumerate(zip(batch.completions, batch.texts, batch.scores)):
        row = rows[i // k]
        correct += reward.accuracy == 1
        finished = bool(completion) and completion[-1] in stop_ids
        # the completion ids SFT will train on (the prompt holds "<think>"): what max_tokens limits
        n_tokens = len(sft.example_from_text(data.make_prompt(row["question"]), text)[1]) if finished else 0
        reason = rejection_reason(finished, reward, n_tokens, cfg)
        kept = seen.setdefault(row["question"], [])
        if reason is None and text in kept:
            reason = "duplicate"
        elif reason is None and len(kept) >= cfg.keep_per_prompt:
            reason = "over_keep_per_prompt"
        if reason is not None:
            reasons[reason] += 1
            continue
        kept.append(text)
        examples.append({"question": row["question"], "completion": text})
        kept_tokens += n_tokens
        kept_reflections += reward.reflections

    n = len(batch.completions)
    stats = {"prompts": len(rows), "sampled": n, "correct": correct, "kept": len(examples),
             "prompts_kept": sum(1 for texts in seen.values() if texts), "kept_fraction": len(examples) / n,
             "rejected": reasons, "mean_kept_tokens": kept_tokens / len(examples) if examples else None,
             "mean_kept_reflections": kept_reflections / len(examples) if examples else None}
    if not examples:
        why = ", ".join(f"{count} {reason.replace('_', ' ')}" for reason, count in reasons.items() if count)
        raise ValueError(f"no sample survived rejection: {correct} of {n} correct ({len(rows)} prompts x {k} "
                         f"samples); rejected: {why}. There is nothing to fine-tune on: sample more, or from a "
                         "better checkpoint")
    return examples, stats

# -----------------------------------------------------------------------------
# CLI


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", required=True, help="checkpoint to sample from, e.g. out/rl.pt")
    parser.add_argument("--split", default="train", choices=sorted(data.SPLITS), help="Countdown problems' split")
    parser.add_argument("--problems", type=int, default=1000, help="problems drawn from the split (seeded by --seed)")
    parser.add_argument("--out", required=True, help="JSONL file of the kept examples, for sft.py --data")
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cpu or cuda[:N]")
    add_config_flags(parser, RejectionConfig)
    args = parser.parse_args(argv)
    cfg = RejectionConfig(**{f.name: getattr(args, f.name) for f in fields(RejectionConfig)})
    try:
        cfg.validate()
    except ValueError as err:
        parser.error(str(err))
    if args.problems < 1:
        parser.error(f"--problems must be >= 1, got {args.problems}")
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda asked for, but no CUDA device is available")
    try:
        model = load_checkpoint(args.ckpt, device)["model"]
    except (FileNotFoundError, RuntimeError) as err:
        parser.error(str(err))
    rows = list(data.countdown_dataset(args.split, args.problems, seed=cfg.seed))
    try:
        examples, stats = rejection_sample(model, rows, cfg)
    except ValueError as err:
        raise SystemExit(f"rejection.py: {err}") from None  # exit status 1, and no file written
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    tmp = args.out + ".tmp"
    with open(tmp, "w") as f:
        f.writelines(json.dumps(example) + "\n" for example in examples)
    os.replace(tmp, args.out)
    print(json.dumps({"stats": stats, "out": args.out, "ckpt": args.ckpt, "split": args.split,
                      "config": asdict(cfg), "commit": git_commit()}))
    return examples, stats


if __name__ == "__main__":
    main()
