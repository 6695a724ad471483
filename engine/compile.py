"""
Regional compilation of the training forwards (PyTorch's recipe for models of repeated layers): torch.compile each
block's forward rather than the whole model's. Blocks of one kind share their compiled code (small: one dense
block, seven MoE blocks), so compiling takes about half as long as the whole model's (benchmarks/RESULTS.md).
"""

import contextlib

import torch


@contextlib.contextmanager
def compiled_blocks(model):
    """Each block's forward compiled while the context is open. Static shapes (dynamic=False): pretraining's
    windows and the GRPO update's rows have one shape, [64, 640], so the update runs the code pretraining compiled;
    another shape compiles anew, never the much slower shape-generic code a second shape would otherwise get.
    Undone on exit, so that decoding, the no-grad passes and copies of the model (the reference, the decoder) run
    eagerly."""
    for block in model.layers:
        block.forward = torch.compile(block.forward, dynamic=False)  # an instance attribute over the class's
    try:
        yield
    finally:
        for block in model.layers:
            del block.forward
