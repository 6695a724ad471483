"""
An RL stage of the pipeline: GRPO steps (grpo.py) over a set of problems, with one metrics row a step, the
reflective correct answers kept as "aha" transcripts, and a checkpoint to resume from. R1-Zero's RL, R1's two RL
stages (r1.py) and distill.py's students all run it.
"""

import json
import os
import random
from dataclasses import asdict

import torch
from tqdm import tqdm

import distributed
import engine
from checkpoint import drop_rows_from, global_rng_state, load_checkpoint, save_checkpoint, set_global_rng_state
from config import TrainConfig
from grpo import GRPOTrainer


def run_rl(model, cfg: TrainConfig, device, log, paths, train_rows, stage="rl", grpo_cfg=None, steps=None):
    """GRPO on `model`, in place: `steps` RL steps (default cfg.rl_steps) of cfg.rl_prompts_per_step prompts drawn
    from train_rows, logged as `stage` rows, with reflective correct answers appended to paths["aha.jsonl"] and a
    resumable checkpoint in paths[stage + ".pt"] (picked up when cfg.resume)."""
    main_rank, rank, world = distributed.is_main(), distributed.rank(), distributed.world_size()
    say = print if main_rank else (lambda *args: None)
    steps = cfg.rl_steps if steps is None else steps
    ckpt_path = paths[stage + ".pt"]
    trainer = engine.speed_up_grpo(GRPOTrainer(model, grpo_cfg or cfg.grpo, device, seed=cfg.seed),
                                   compile_blocks=not cfg.eager)
    start = 0
    if cfg.resume and os.path.exists(ckpt_path):
        ckpt = load_checkpoint(ckpt_path, device)
        model.load_state_dict(ckpt["model"].state_dict())
        trainer.load_state_dict(ckpt["trainer"])
        start = ckpt["step"]
        say(f"resumed {stage.upper()} at step {start}")
    if main_rank:  # the steps from `start` on are redone (all of them when the stage starts from another's model)
        drop_rows_from([paths["metrics.jsonl"], paths["aha.jsonl"]], start, [stage])
    rng = random.Random(cfg.seed)  # the problems each step draws, alike on every rank
    if start:
        rng.setstate(ckpt["rng"])
    if start and main_rank:  # the checkpoint holds rank 0's sampling RNG
        set_global_rng_state(ckpt, device)
    else:  # a stage that starts samples from the seed, whatever drew from the global RNG before it in this process
        # (a model's initialisation, an evaluation); a resumed rank other than 0 from a seed of its own
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
                            train_config=asdict(cfg), rng=rng.getstate(), **global_rng_state(device))
