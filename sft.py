"""
Supervised fine-tuning (SFT): next-token prediction on (prompt, completion) pairs, with the loss on the
completion only. The building block of DeepSeek-R1's stages other than RL (arXiv:2501.12948):

- cold start (sec. 2.3.1): before RL, fine-tune the base model on a few thousand readable long-CoT examples;
- rejection-sampling SFT (sec. 2.3.3): fine-tune on correct, readable samples of the RL model, for 2 epochs;
- distillation (sec. 2.4): fine-tune a small student on a large teacher's samples.

    python sft.py --init out/base.pt --data sft.jsonl --out-dir out_sft
    python sft.py --init out/base.pt --data sft.jsonl --out-dir out_sft --resume   # after an interruption
    torchrun --standalone --nproc-per-node 8 sft.py ...                            # data parallel (distributed.py)

Writes to --out-dir: sft.pt (the model, with optimizer and step, so that it can resume) and metrics.jsonl.

Layout. An example is laid out exactly as an RL rollout (grpo.py): the prompt is data.make_prompt(question),
which ends with the prefilled "<think>", and the completion is the rest of the assistant turn, ending with
"</answer>" (where sample.generate stops) or end-of-text. So SFT teaches the very tokens GRPO samples and scores.

Loss. Cross-entropy averaged over the completion tokens of the batch: each token weighs the same (DAPO's
"token-mean"); prompt and padding positions are masked (the model reads the prompt, it is not taught to write it).
Under torchrun each rank takes every N-th row of the batch and divides its token sum by the whole batch's count,
so the N ranks' losses add up to one process's loss on the whole batch (as grpo.py's "token-mean" does).

Packing. Examples are packed whole, several to a row of seq_len tokens (best-fit decreasing, TRL's "bfd"), never
split across rows. The model's segment_ids keep attention inside each example and restart its RoPE positions,
so a packed example trains exactly as it would alone, with little padding. An example longer than seq_len is
dropped (counted); a set with nothing left to train on is an error, never a silent run on nothing.

Order. The packed rows are shuffled each epoch by a generator seeded with (seed, epoch), so the batch of step s
depends only on the data, the config and s: a run resumed at step k continues exactly as the uninterrupted one.
"""

import argparse
import bisect
import hashlib
import json
import math
import os
import shlex
import sys
import time
from dataclasses import asdict, dataclass, fields
from typing import Annotated

import torch
import torch.nn.functional as F

import data
import distributed
from checkpoint import drop_rows_from, git_commit, load_checkpoint, save_checkpoint
from config import add_config_flags
from template import ANSWER_END, EOT, THINK

IGNORE = -100  # target of positions outside the completions (F.cross_entropy's ignore_index)


@dataclass
class SFTConfig:
    epochs: Annotated[int, "passes over the data (R1 sec. 2.3.3: two epochs)"] = 2
    steps: Annotated[int, "optimizer steps; 0: as many as `epochs` takes (the last batch may be short)"] = 0
    batch_size: Annotated[int, "packed rows per step, over all ranks together under torchrun"] = 16
    seq_len: Annotated[int, "tokens per row; at most the model's max_seq_len"] = 640
    lr: Annotated[float, "peak learning rate (not tuned yet)"] = 1e-4
    warmup: Annotated[int, "steps of linear warmup, then cosine decay"] = 10
    min_lr_frac: Annotated[float, "the cosine ends at lr * min_lr_frac"] = 0.1
    weight_decay: Annotated[float, "AdamW's decoupled weight decay"] = 0.0
    max_grad_norm: Annotated[float, "gradients clipped to this global norm"] = 1.0
    log_every: Annotated[int, "steps between metrics rows"] = 10
    checkpoint_every: Annotated[int, "steps between checkpoints (one is always written at the end)"] = 100
    seed: Annotated[int, "the order of the packed rows"] = 0

    def validate(self):
        for name in ("epochs", "batch_size", "seq_len", "log_every", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        for name in ("steps", "warmup", "weight_decay"):
            if getattr(self, name) < 0:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"--lr must be a positive number, got {self.lr}")
        if not 0 <= self.min_lr_frac <= 1:
            raise ValueError(f"--min-lr-frac must be in [0, 1], got {self.min_lr_frac}")
        if not self.max_grad_norm > 0:
            raise ValueError(f"--max-grad-norm must be > 0, got {self.max_grad_norm}")
        distributed.per_rank(self.batch_size, "--batch-size")  # under torchrun: refused on every rank alike

# -----------------------------------------------------------------------------
# Examples: (prompt ids, completion ids) in the RL layout


def example_from_text(prompt, completion):
    """Prompt and completion text -> (prompt ids, completion ids). The prompt normally is
    data.make_prompt(question), ending with the prefilled "<think>"; a completion written as the whole turn
    (starting with "<think>", as rewards.py scores it) loses that tag, which the prompt already holds."""
    if completion.startswith(THINK) and prompt.endswith(THINK):
        completion = completion[len(THINK):]
    prompt_ids, completion_ids = data.encode(prompt), data.encode(completion)
    if not prompt_ids or not completion_ids:
        raise ValueError("prompt and completion must both be non-empty")
    if completion_ids[-1] not in data.stop_token_ids():
        raise ValueError(f"the completion must end with {ANSWER_END} or {EOT}, as a finished RL rollout does "
                         f"(it ends with {completion[-20:]!r})")
    return prompt_ids, completion_ids


def load_examples(path):
    """Examples from a JSONL file, one object a line: {"question": ..., "completion": ...} (the prompt is then
    data.make_prompt(question)) or {"prompt": ..., "completion": ...} (the prompt text as is). A bad line fails
    with its line number; so does a file without any example."""
    examples = []
    for i, obj in data.jsonl_objects(path):
        given = [key for key in ("question", "prompt") if key in obj] if isinstance(obj, dict) else []
        if len(given) != 1 or not isinstance(obj[given[0]], str) or not isinstance(obj.get("completion"), str):
            raise ValueError(f"{path}:{i}: expected an object with a string \"completion\" and either a "
                             "string \"question\" or a string \"prompt\"")
        prompt = data.make_prompt(obj["question"]) if given == ["question"] else obj["prompt"]
        try:
            examples.append(example_from_text(prompt, obj["completion"]))
        except ValueError as err:
            raise ValueError(f"{path}:{i}: {err}") from None
    if not examples:
        raise ValueError(f"{path}: no examples found (the file is empty)")
    return examples


def example_length(example):
    """Positions an example takes in a row: its inputs are all its tokens but the last (the last is only a target)."""
    prompt, completion = example
    return len(prompt) + len(completion) - 1


def check_examples(examples, seq_len, vocab_size):
    """Validate token-id examples and drop those longer than seq_len. Returns (kept, number dropped)."""
    if not examples:
        raise ValueError("no SFT examples: the set is empty, there is nothing to train on")
    stops = data.stop_token_ids()
    for i, (prompt, completion) in enumerate(examples):
        if not prompt or not completion:
            raise ValueError(f"SFT example {i}: prompt and completion need at least one token each")
        if not all(type(t) is int and 0 <= t < vocab_size for t in prompt + completion):
            raise ValueError(f"SFT example {i}: token ids must be ints in [0, {vocab_size})")
        if completion[-1] not in stops:
            raise ValueError(f"SFT example {i}: the completion must end with a stop token ({ANSWER_END} or "
                             f"{EOT}); an example that never stops teaches the model not to stop")
    kept = [e for e in examples if example_length(e) <= seq_len]
    if not kept:
        longest = max(map(example_length, examples))
        raise ValueError(f"none of the {len(examples)} SFT examples fits in --seq-len {seq_len} (the shortest "
                         f"needs {min(map(example_length, examples))}, the longest {longest}); raise --seq-len "
                         "or shorten them")
    return kept, len(examples) - len(kept)

# -----------------------------------------------------------------------------
# Packing and batches


def pack(lengths, seq_len):
    """Best-fit decreasing: longest first, each into the open row with the least room that still fits it.
    Returns rows as lists of example indices; every example is in exactly one row, whole."""
    rows, room = [], []  # room: sorted (free positions, row index) of rows with space left
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        j = bisect.bisect_left(room, (lengths[i], -1))
        free, r = room.pop(j) if j < len(room) else (seq_len, len(rows))
        if r == len(rows):
            rows.append([])
        rows[r].append(i)
        if free > lengths[i]:
            bisect.insort(room, (free - lengths[i], r))
    return rows


def make_batch(examples, rows, seq_len, pad_id):
    """Packed rows -> tokens, targets and segment_ids, each [len(rows), seq_len]. An example puts its inputs
    (all tokens but the last) in its segment; its targets are its tokens shifted by one, IGNORE where the token
    to predict belongs to the prompt. Padding at the end of a row is segment -1 and has no targets."""
    tokens = torch.full((len(rows), seq_len), pad_id, dtype=torch.long)
    targets = torch.full((len(rows), seq_len), IGNORE, dtype=torch.long)
    segment_ids = torch.full((len(rows), seq_len), -1, dtype=torch.long)
    for r, row in enumerate(rows):
        start = 0
        for segment, i in enumerate(row):
            prompt, completion = examples[i]
            n = example_length(examples[i])
            tokens[r, start:start + n] = torch.tensor((prompt + completion)[:-1])
            # the position of the last prompt token (the prefilled "<think>") predicts the first completion token
            targets[r, start + len(prompt) - 1:start + n] = torch.tensor(completion)
            segment_ids[r, start:start + n] = segment
            start += n
    return tokens, targets, segment_ids


def sft_loss(logits, targets, n_total=None):
    """Mean cross-entropy over the batch's completion tokens (positions whose target is not IGNORE). n_total
    replaces the divisor when this batch is one rank's share: the whole batch's completion-token count."""
    if n_total is None:
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE,
                           reduction="sum") / n_total


def rows_of_step(step, n_rows, cfg: SFTConfig):
    """Which packed rows step `step` trains on: a stream of per-epoch shuffles of all rows, cut into batches."""
    first, last = step * cfg.batch_size, (step + 1) * cfg.batch_size
    if not cfg.steps:
        last = min(last, cfg.epochs * n_rows)
    out = []
    for epoch in range(first // n_rows, (last - 1) // n_rows + 1):
        order = torch.randperm(n_rows, generator=torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch))
        out += order[max(first - epoch * n_rows, 0):last - epoch * n_rows].tolist()
    return out


def lr_at(step, total, cfg: SFTConfig):
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, total - cfg.warmup)
    return cfg.lr * (cfg.min_lr_frac + (1 - cfg.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * progress)))

# -----------------------------------------------------------------------------
# The training loop


def sft(model, examples, cfg: SFTConfig, device, log=print, save=None, start_step=0, opt_state=None):
    """Fine-tune `model` in place on examples (a list of (prompt ids, completion ids)). log(row) gets a dict
    per logged step; save(step, opt) is called every checkpoint_every steps and at the end. To resume, pass the
    saved step as start_step and the optimizer's state_dict as opt_state. Returns a summary dict.
    Data parallel (distributed.py): every rank packs all rows and takes every W-th row of each global batch;
    log gets the same rows, reduced over ranks, on every rank."""
    cfg.validate()
    if cfg.seq_len > model.cfg.max_seq_len:
        raise ValueError(f"--seq-len {cfg.seq_len} is longer than the model's max_seq_len {model.cfg.max_seq_len}")
    examples, dropped = check_examples(examples, cfg.seq_len, model.cfg.vocab_size)
    rows = pack([example_length(e) for e in examples], cfg.seq_len)
    total = cfg.steps or math.ceil(cfg.epochs * len(rows) / cfg.batch_size)
    if not 0 <= start_step <= total:
        raise ValueError(f"cannot start at step {start_step} of a {total}-step run")
    summary = {"examples": len(examples), "dropped_too_long": dropped, "rows": len(rows), "steps": total}
    if distributed.is_main():
        print(f"sft: {len(examples)} examples ({dropped} longer than --seq-len {cfg.seq_len} dropped) packed in "
              f"{len(rows)} rows; {total} steps of {cfg.batch_size} rows")
    if start_step == 0:
        log({"stage": "sft_data", **summary})
    pad_id = data.pad_token_id()
    W, rank = distributed.world_size(), distributed.rank()
    train_model = distributed.wrap(model)  # forward + backward through it: gradients are averaged over ranks
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.95), weight_decay=cfg.weight_decay,
                            fused=device.type == "cuda")  # one kernel per step on a GPU
    if opt_state:
        opt.load_state_dict(opt_state)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    model.train()
    t0, tokens_seen = time.time(), 0
    for step in range(start_step, total):
        batch = [rows[r] for r in rows_of_step(step, len(rows), cfg)]
        # this rank's rows; a short last batch may leave a rank none (it then adds nothing, but joins the all-reduce)
        tokens, targets, segment_ids = (t.to(device) for t in
                                        make_batch(examples, batch[rank::W], cfg.seq_len, pad_id))
        for group in opt.param_groups:
            group["lr"] = lr_at(step, total, cfg)
        n_total = distributed.all_reduce_([(targets != IGNORE).sum()])[0]  # the global batch's completion tokens
        with autocast:
            logits = train_model(tokens, segment_ids=segment_ids)
        loss = sft_loss(logits, targets, n_total)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"SFT loss is {loss.item()} at step {step}; lower --lr")
        opt.zero_grad(set_to_none=True)
        # this rank's loss is its share of the global loss; DDP averages gradients over the W ranks, so W x the
        # share gives the gradient of the global loss
        (loss * W).backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
        opt.step()
        distributed.sum_router_load(model)  # the bias update follows the global load, the same on every rank
        tokens_seen += (segment_ids >= 0).sum().item()
        if step % cfg.log_every == 0 or step + 1 == total:
            balance = model.router_stats()
            dt = time.time() - t0
            totals = distributed.all_reduce_metrics({"loss": loss.item(), "tokens": tokens_seen}, "sum")
            summary["loss"] = totals["loss"]
            log({"stage": "sft", "step": step, "loss": totals["loss"], "lr": opt.param_groups[0]["lr"],
                 "grad_norm": grad_norm.item(), "completion_tokens": n_total.item(),
                 "epoch": (step * cfg.batch_size + len(batch)) / len(rows),
                 "router_max_over_mean": sum(balance) / len(balance) if balance else None,
                 "tokens_per_s": totals["tokens"] / dt, "elapsed_s": dt})
        model.update_router_bias()  # aux-loss-free balancing, once per step as in pretraining
        if save is not None and ((step + 1) % cfg.checkpoint_every == 0 or step + 1 == total):
            save(step + 1, opt)
    return summary

# -----------------------------------------------------------------------------
# CLI


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--init", help="checkpoint to fine-tune, e.g. out/base.pt (with --resume, used only "
                                       "when out-dir has no sft.pt yet)")
    parser.add_argument("--data", required=True, help="JSONL examples: {\"question\" or \"prompt\", \"completion\"}")
    parser.add_argument("--out-dir", default="out_sft")
    parser.add_argument("--resume", action="store_true", help="continue from out-dir/sft.pt")
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cpu or cuda[:N]")
    parser.add_argument("--dist-backend", default="auto", help="under torchrun: nccl (GPUs) or gloo (CPU); auto "
                                                               "picks by device")
    add_config_flags(parser, SFTConfig)
    args = parser.parse_args(argv)
    cfg = SFTConfig(**{f.name: getattr(args, f.name) for f in fields(SFTConfig)})
    try:
        cfg.validate()  # under torchrun: refused on every rank alike, before any rank waits for the others
        distributed.check_backend(args.dist_backend, args.device)
        examples = load_examples(args.data)
    except (ValueError, OSError) as err:
        parser.error(str(err))
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda asked for, but no CUDA device is available")
    device = distributed.setup(args.device, args.dist_backend)  # under torchrun: join the other ranks
    # rank 0 alone writes files and prints; every rank reads the checkpoint it resumes from
    main_rank = distributed.is_main()
    say = print if main_rank else (lambda *args: None)
    os.makedirs(args.out_dir, exist_ok=True)
    ckpt_path, metrics_path = os.path.join(args.out_dir, "sft.pt"), os.path.join(args.out_dir, "metrics.jsonl")
    data_sha = hashlib.sha256(open(args.data, "rb").read()).hexdigest()

    start, opt_state = 0, None
    if args.resume and os.path.exists(ckpt_path):
        ckpt = load_checkpoint(ckpt_path, device)
        changed = [k for k, v in asdict(cfg).items()  # the intervals do not change the weights; all else does
                   if k not in ("log_every", "checkpoint_every") and ckpt["sft_config"].get(k) != v]
        if changed or ckpt["data_sha"] != data_sha:
            raise SystemExit(f"cannot resume {ckpt_path}: it was trained with other "
                             f"{'settings (' + ', '.join(changed) + ')' if changed else '--data'}; resuming needs "
                             "the same data and settings")
        model, start, opt_state = ckpt["model"], ckpt["step"], ckpt["opt"]
        say(f"resumed SFT at step {start}")
        if main_rank:
            drop_rows_from([metrics_path], start, ["sft", "sft_data"])
    else:
        if not args.init:
            parser.error("--init is required (the checkpoint to fine-tune)")
        model = load_checkpoint(args.init, device)["model"]
        if main_rank and os.path.exists(metrics_path):
            os.remove(metrics_path)
    metrics_file = open(metrics_path, "a") if main_rank else None

    def log(row):
        if main_rank:
            metrics_file.write(json.dumps(row) + "\n")
            metrics_file.flush()

    if start == 0:
        log({"stage": "config", "config": asdict(cfg), "init": args.init, "data": args.data, "data_sha": data_sha,
             "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
             "torch": torch.__version__, "commit": git_commit(), "world_size": distributed.world_size(),
             "command": shlex.join(["python", "sft.py", *(sys.argv[1:] if argv is None else argv)])})

    def save(step, opt):
        if main_rank:
            save_checkpoint(ckpt_path, model, stage="sft", step=step, opt=opt.state_dict(), sft_config=asdict(cfg),
                            data_sha=data_sha, init=args.init)

    summary = sft(model, examples, cfg, device, log, save, start, opt_state)
    if main_rank:
        metrics_file.close()
    say(f"done: {summary}; model in {ckpt_path}")
    distributed.finish()
    return summary


if __name__ == "__main__":
    main()
