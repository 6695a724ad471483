"""
The base model stage of the pipeline: pretrained from scratch (pretrain.py), or picked up where an interrupted run
left it, checkpointed so that a crash loses little. On a GPU the blocks run compiled, their compilation beside the
corpus's generation (engine/pretraining.py). R1-Zero's RL, R1's stages and distill.py's students start from it.
"""

import os
from dataclasses import asdict

import distributed
import engine
from checkpoint import drop_rows_from, load_checkpoint, save_checkpoint
from config import TrainConfig
from engine.pretraining import corpus_while_compiling
from model import Transformer, make_config
from pretrain import batch_generator, pretrain

REPOSITORY = os.path.dirname(os.path.abspath(__file__))


def load_base(cfg: TrainConfig, device):
    """The base checkpoint cfg.base (a path, or one relative to this repository: the CPU setup's
    bases/cpu.pt), refused with a clear message if it is missing, unreadable or of another preset."""
    path = cfg.base
    if not os.path.exists(path) and os.path.exists(os.path.join(REPOSITORY, path)):
        path = os.path.join(REPOSITORY, path)
    try:
        ckpt = load_checkpoint(path, device)
    except (FileNotFoundError, RuntimeError) as err:
        raise SystemExit(f"--base: {err}; --base pretrain pretrains one instead") from None
    if ckpt["model"].cfg != make_config(cfg.preset):
        raise SystemExit(f"--base {cfg.base} holds a model unlike --preset {cfg.preset}'s; --base pretrain "
                         "pretrains one of that preset")
    return ckpt["model"]


def pretrain_base(cfg: TrainConfig, device, log, paths, first_row=None):
    """The base model of cfg.preset: with cfg.resume the finished paths["base.pt"], or pretraining continued from
    an interrupted paths["pretrain.pt"]; else the checkpoint cfg.base, unless it says pretrain; otherwise pretrained
    from scratch. Logs `first_row`, the run's config row, at every start, so that a resumed run's metrics name each
    command and commit that wrote them. Saves base.pt when pretraining ends."""
    main_rank = distributed.is_main()
    say = print if main_rank else (lambda *args: None)
    if first_row is not None:
        log({**first_row, "resumed": cfg.resume})  # a config row: drop_rows_from below keeps it
    if cfg.resume and os.path.exists(paths["base.pt"]):
        say(f"resumed the finished base model from {paths['base.pt']}")
        return load_checkpoint(paths["base.pt"], device)["model"]
    if cfg.base != "pretrain":
        model = load_base(cfg, device)
        say(f"base model from {cfg.base}: {model.num_params() / 1e6:.1f}M parameters, on {device}")
        if main_rank:
            save_checkpoint(paths["base.pt"], model, stage="base", train_config=asdict(cfg))
        return model
    start, opt_state, batch_rng = 0, None, None
    if cfg.resume and os.path.exists(paths["pretrain.pt"]):
        ckpt = load_checkpoint(paths["pretrain.pt"], device)
        model, start, opt_state, batch_rng = ckpt["model"], ckpt["step"], ckpt["opt"], ckpt.get("batch_rng")
        say(f"resumed pretraining at step {start}")
    else:
        model = Transformer(make_config(cfg.preset)).to(device)
    if main_rank:  # the steps from `start` on are redone (all of them without pretrain.pt)
        drop_rows_from([paths["metrics.jsonl"]], start, ["pretrain"])
    batches = batch_generator(cfg, start, batch_rng)
    say(f"model: {model.num_params() / 1e6:.1f}M parameters, {model.num_params(active=True) / 1e6:.1f}M "
        f"active per token, on {device}")

    def save(step, opt):
        if main_rank:
            save_checkpoint(paths["pretrain.pt"], model, stage="pretrain", step=step, opt=opt.state_dict(),
                            batch_rng=batches.get_state())

    if device.type == "cuda" and not cfg.eager:
        with engine.compiled_blocks(model):
            stream = corpus_while_compiling(model, cfg, device)
            pretrain(model, cfg, device, log, save, start, opt_state, stream, batches)
    else:
        pretrain(model, cfg, device, log, save, start, opt_state, batches=batches)
    if main_rank:
        save_checkpoint(paths["base.pt"], model, stage="base", train_config=asdict(cfg))
    return model
