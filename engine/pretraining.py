"""
The start of pretraining on a GPU, its two long parts side by side: torch.compile compiles the blocks' forward and
backward (engine/compile.py) while a second process generates the corpus (~17 s and ~10 s on an H100 host).
"""

import multiprocessing
import sys
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

import numpy as np
import torch

import data
import distributed
from pretrain import corpus_stream, next_token_loss, pretrain_tokens


def compile_warm_up(model, rows, seq_len, device):
    """Run the compiled forward and backward once on a batch of zeros, so that torch.compile compiles them now,
    and leave no trace of it: no optimizer step, the gradients dropped, the routers' load counts zeroed."""
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    next_token_loss(model, torch.zeros(rows, seq_len + 1, dtype=torch.long, device=device), autocast).backward()
    model.zero_grad(set_to_none=True)
    for gate in model.gates():
        gate.load.zero_()


def corpus_while_compiling(model, cfg, device):
    """The corpus stream [n] (long), generated in a fresh process while the compiled blocks (open around this
    call) compile pretraining's step in this one. Should that process die (a script without an
    `if __name__ == "__main__":` guard re-runs itself in a spawned child, which Python stops), the stream is
    generated here after the warm-up."""
    n_tokens = pretrain_tokens(cfg)
    rows = cfg.pretrain_micro_batch_size or cfg.pretrain_batch_size // distributed.world_size()
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:  # spawn: CUDA-safe
        corpus = pool.submit(data.corpus_array, n_tokens, cfg.seed, cfg.corpus)  # the child imports data.py only
        compile_warm_up(model, rows, cfg.pretrain_seq_len, device)
        try:
            return torch.from_numpy(np.frombuffer(corpus.result(), dtype=np.int32)).long()
        except BrokenProcessPool:
            print("pretrain: the corpus process failed to start; generating the corpus here", file=sys.stderr)
    return corpus_stream(n_tokens, cfg.seed, cfg.corpus)
