"""
Pretraining the base model: next-token prediction on the packed synthetic corpus (data.corpus_tokens), with
warmup and cosine decay. The base model is where R1-Zero's RL starts (and R1's stages, and distill.py's
students); base.py runs this loop as a resumable stage, on a GPU with the engine's compiled blocks.
"""

import math
import time

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

import data
import distributed
from config import TrainConfig


def lr_at(step, total, peak, warmup):
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))  # cosine down to 10%


def corpus_stream(n_tokens, seed, cfg):
    """The corpus stream [n] (long), generated in this process."""
    # through numpy: twice as fast as torch.tensor on a list of 20M ints
    return torch.from_numpy(np.array(data.corpus_tokens(n_tokens, seed=seed, cfg=cfg), dtype=np.int64))


def next_token_loss(train_model, windows, autocast):
    """Mean cross-entropy of each token of windows [n, T + 1] given the ones before it: a pretraining step's loss,
    and the compile warm-up's (the same graph, so the warm-up compiles what the steps run)."""
    with autocast:
        logits = train_model(windows[:, :-1])
    return F.cross_entropy(logits.view(-1, logits.shape[-1]), windows[:, 1:].reshape(-1))


def batch_generator(cfg: TrainConfig, start_step=0, state=None):
    """The generator each step draws its windows' start offsets from. `state`, a checkpoint's, continues the draws
    where that run stopped; without one, a run that starts at start_step draws a stream of its own."""
    gen = torch.Generator().manual_seed(cfg.seed * 100_003 + start_step)
    return gen if state is None else gen.set_state(state)


def pretrain(model, cfg: TrainConfig, device, log, save, start_step=0, opt_state=None, stream=None, batches=None):
    """Next-token prediction on windows of cfg.pretrain_seq_len tokens drawn at random from the corpus stream
    (generated here unless given), from start_step to cfg.pretrain_steps; `save(step, opt)` checkpoints every
    cfg.pretrain_checkpoint_every steps. `batches` is the batch_generator to draw from (the caller saves its
    state)."""
    B, T = cfg.pretrain_batch_size, cfg.pretrain_seq_len
    b, rank = B // distributed.world_size(), distributed.rank()  # this rank's rows of each global batch
    micro = cfg.pretrain_micro_batch_size or b  # rows per forward/backward; b // micro of them make a step
    train_model = distributed.wrap(model)  # forward + backward through it: gradients are averaged over ranks
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.pretrain_lr, betas=(0.9, 0.95), weight_decay=0.1,
                            fused=device.type == "cuda")  # one kernel per step on a GPU, not a dozen passes
    if opt_state:
        opt.load_state_dict(opt_state)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    if stream is None:
        stream = corpus_stream(pretrain_tokens(cfg), cfg.seed, cfg.corpus)
    # the whole stream on the device (160 MB for 20M tokens): a step's windows are gathered there from their start
    # offsets, 64 numbers to copy, not 64 windows stacked on the host and copied over
    n_starts, stream, window = len(stream) - T - 1, stream.to(device), torch.arange(T + 1, device=device)
    gen = batch_generator(cfg, start_step) if batches is None else batches
    model.train()
    t0, tokens_seen = time.time(), 0
    # a non-finite loss is caught at the next log or checkpoint, not at every step: testing it there would wait for
    # the forward pass to finish before the backward could be queued (a host sync per step)
    nonfinite, checked = torch.zeros((), dtype=torch.bool, device=device), start_step

    def check_finite(step):
        # every rank learns of any rank's non-finite loss, so all stop here together (none waits in a collective)
        if distributed.reduce_stats({"nonfinite": nonfinite.item()}, "max")["nonfinite"]:
            raise FloatingPointError(f"pretraining loss is not finite at a step in {checked}..{step}; lower "
                                     "TrainConfig.pretrain_lr")
    bar = tqdm(range(start_step, cfg.pretrain_steps), desc="pretrain", initial=start_step, total=cfg.pretrain_steps,
               disable=not distributed.is_main())
    for step in bar:
        # every rank draws the whole batch from the same generator and keeps its slice: the union is the batch
        starts = torch.randint(0, n_starts, (B,), generator=gen)[rank * b:(rank + 1) * b]
        batch = stream[starts.to(device, non_blocking=True)[:, None] + window]  # [b, T + 1]
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg.pretrain_steps, cfg.pretrain_lr, cfg.pretrain_warmup)
        opt.zero_grad(set_to_none=True)
        loss = 0.0
        for first in range(0, b, micro):  # gradient accumulation: each micro-batch adds its share of the mean
            with distributed.gradient_sync(train_model, last=first + micro == b):
                part = next_token_loss(train_model, batch[first:first + micro], autocast) * (micro / b)
                part.backward()
            loss += part.detach()
        nonfinite |= ~torch.isfinite(loss)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        tokens_seen += B * T
        distributed.sum_router_load(model)  # the bias update follows the global load, the same on every rank
        if step % cfg.log_every == 0 or step == cfg.pretrain_steps - 1:
            check_finite(step)
            checked = step + 1
            balance = model.router_stats()
            model.update_router_bias()
            dt = time.time() - t0
            mean_loss = distributed.reduce_stats({"loss": loss.item()})["loss"]  # ranks' equal shares
            log({"stage": "pretrain", "step": step, "loss": mean_loss, "lr": opt.param_groups[0]["lr"],
                 "router_max_over_mean": float(np.nanmean(balance)) if balance else None,
                 "tokens_per_s": tokens_seen / dt, "elapsed_s": dt})
            bar.set_postfix(loss=f"{mean_loss:.3f}")
        else:
            model.update_router_bias()
        if (step + 1) % cfg.pretrain_checkpoint_every == 0:
            check_finite(step)  # never a checkpoint of diverged weights
            save(step + 1, opt)


def pretrain_tokens(cfg: TrainConfig):
    """Corpus tokens to generate: what the steps read, at most cfg.pretrain_unique_tokens (then cycled)."""
    T = cfg.pretrain_seq_len
    return min(cfg.pretrain_unique_tokens, cfg.pretrain_steps * cfg.pretrain_batch_size * T) + T + 1
