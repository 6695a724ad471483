"""
The engine: what makes the lesson fast on a GPU, kept beside it. The lesson (model.py, sample.py, grpo.py,
pretrain.py, sft.py) is plain PyTorch and runs as it is on any machine; the stage runners (rl.py, base.py, and
the scripts that evaluate or sample) ask this package for the fast parts, which it gives only where they run:

- decoding: engine/decoder.py's Decoder (a bf16 copy of the model with fused Triton kernels, CUDA graphs, finished
  rows compacted away) in place of sample.generate;
- log-probabilities: kernels/logprobs.py's Triton kernel in place of grpo.token_logprobs;
- training forwards: each block compiled (engine/compile.py), on rows padded to the model's whole context so that
  every step has the shape pretraining compiled.
Triton is imported only where a kernel runs: on a machine without it (macOS, Windows) the plain paths run.
"""

import functools
import importlib.util

import sample
from engine.compile import compiled_blocks

__all__ = ["compiled_blocks", "decoder_for", "has_triton", "speed_up_grpo"]


def has_triton():
    return importlib.util.find_spec("triton") is not None


def decoder_for(model):
    """A generate function, (prompts, max_new_tokens, temperature, top_p) -> completions, for `model`: on a GPU
    the engine's Decoder (kept by the caller, it reuses its CUDA graphs from one call to the next), else the plain
    sample.generate."""
    if next(model.parameters()).device.type != "cuda":
        return functools.partial(sample.generate, model)
    from engine.decoder import Decoder
    return Decoder(model, fused_kernels=has_triton()).generate


def speed_up_grpo(trainer, compile_blocks=True):
    """Swap the engine into a grpo.GRPOTrainer on a GPU: the fast decoder for its rollouts, the Triton log-prob
    kernel, and (compile_blocks) the update's forwards and backwards through compiled blocks, on rows padded to the
    model's context (a pretraining window's shape, so the update reuses pretraining's compiled code)."""
    if trainer.device.type != "cuda":
        return trainer
    trainer.generate = decoder_for(trainer.model)
    if has_triton():
        from kernels import token_logprobs
        trainer.logprobs_of_logits = token_logprobs
    if compile_blocks:
        trainer.update_context = lambda: compiled_blocks(trainer.model)
        trainer.pad_to = trainer.model.cfg.max_seq_len + 1
    return trainer
