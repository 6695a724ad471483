"""
Per-token log-probabilities of the sampled tokens, without materializing the log-softmax.

GRPO needs log p(target) = z[target] - logsumexp(z), z = logits / temperature, at every completion
token. The plain way, log_softmax(logits.float()).gather(...), writes two float32 copies of the
logits (the cast and the log-softmax): 4x the size of bf16 logits, read and written in full. Here
one Triton program reads its row of logits once, keeping a running max and a running sum of exp
(the "online softmax"), and writes 4 bytes per token. The backward
reads the row once more and writes the gradient g * (onehot - softmax) / temperature straight into a
fresh buffer: logits' size and dtype, which autograd hands on as logits.grad.

Entropy (GRPO logs it) falls out of the same pass with one more running sum. It is reported, not
trained on, so it has no gradient.
"""

import os

import torch
import triton
import triton.language as tl
from triton.runtime.interpreter import InterpretedFunction

from grpo import token_logprobs as token_logprobs_reference  # the plain path: what this kernel computes

# the running max starts at a finite floor, not -inf, so a row whose logits are all -inf so far
# never computes -inf - (-inf) = nan; exp(floor - max) still underflows to 0 for any real max
MAX_FLOOR = tl.constexpr(-3.0e38)


@triton.jit
def _fwd_kernel(logits_ptr, targets_ptr, logp_ptr, lse_ptr, entropy_ptr,
                n_inner, stride_outer, stride_inner, stride_v, inv_temp,
                V: tl.constexpr, BLOCK_V: tl.constexpr, ENTROPY: tl.constexpr):
    # one program per row (token). Logits are viewed as (outer, inner, V) with arbitrary strides, so a
    # slice like logits[:, k:-1] or a transposed view needs no copy. int64: row * stride can pass 2^31.
    row = tl.program_id(0).to(tl.int64)
    row_ptr = logits_ptr + (row // n_inner) * stride_outer + (row % n_inner) * stride_inner
    m = tl.full([], MAX_FLOOR, tl.float32)  # running max of z
    s = tl.full([], 0.0, tl.float32)  # running sum of exp(z - m)
    t = tl.full([], 0.0, tl.float32)  # running sum of exp(z - m) * (z - m), for the entropy
    for start in range(0, V, BLOCK_V):
        cols = start + tl.arange(0, BLOCK_V)
        # evict_first: each byte is read once, so keep this stream from pushing other data out of L2
        z = tl.load(row_ptr + cols * stride_v, mask=cols < V, other=float("-inf"),
                    eviction_policy="evict_first").to(tl.float32) * inv_temp
        m_new = tl.maximum(m, tl.max(z, axis=0))
        alpha = tl.exp(m - m_new)  # rescales what was summed against the old max
        e = tl.exp(z - m_new)
        if ENTROPY:
            # sum e * (z - m_new), with e == 0 (z == -inf) contributing 0 rather than 0 * -inf = nan
            t = alpha * (t + s * (m - m_new)) + tl.sum(tl.where(e > 0, e * (z - m_new), 0.0), axis=0)
        s = s * alpha + tl.sum(e, axis=0)
        m = m_new
    lse = m + tl.log(s)
    z_target = tl.load(row_ptr + tl.load(targets_ptr + row) * stride_v).to(tl.float32) * inv_temp
    tl.store(logp_ptr + row, z_target - lse)
    tl.store(lse_ptr + row, lse)
    if ENTROPY:
        # H = lse - sum p z = log s - sum p (z - m): relative to m, so no cancellation at large logits
        tl.store(entropy_ptr + row, tl.log(s) - t / s)


@triton.jit
def _bwd_kernel(logits_ptr, targets_ptr, lse_ptr, grad_logp_ptr, grad_ptr,
                n_inner, stride_outer, stride_inner, stride_v, inv_temp,
                V: tl.constexpr, BLOCK_V: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    row_ptr = logits_ptr + (row // n_inner) * stride_outer + (row % n_inner) * stride_inner
    grad_row_ptr = grad_ptr + row * V  # the grad buffer is contiguous (rows, V)
    lse = tl.load(lse_ptr + row)
    g = tl.load(grad_logp_ptr + row) * inv_temp
    target = tl.load(targets_ptr + row)
    for start in range(0, V, BLOCK_V):
        cols = start + tl.arange(0, BLOCK_V)
        z = tl.load(row_ptr + cols * stride_v, mask=cols < V, other=float("-inf"),
                    eviction_policy="evict_first").to(tl.float32) * inv_temp
        p = tl.exp(z - lse)  # softmax, recomputed from the saved logsumexp
        grad = g * (tl.where(cols == target, 1.0, 0.0) - p)
        tl.store(grad_row_ptr + cols, grad.to(grad_ptr.dtype.element_ty), mask=cols < V)


def _use_triton(t):
    """Triton runs on CUDA tensors, and on CPU tensors in its interpreter: TRITON_INTERPRET=1, which
    triton.jit only honours if it was set before triton was imported (then our kernels are interpreted)."""
    interpreted = isinstance(_fwd_kernel, InterpretedFunction)
    return t.is_cuda or (os.environ.get("TRITON_INTERPRET") == "1" and interpreted)


def _config(V, max_block):
    """(BLOCK_V, num_warps): one program walks its row in BLOCK_V-wide chunks. Measured on an H100 inside CUDA
    graphs (kernels/README.md): long rows stream at the copy bandwidth with 16384-wide chunks in the forward
    (which only reads) and 8192-wide in the backward (which also writes); a short row runs fastest with one
    warp per 1024 columns (more warps only wait on each other at the reductions)."""
    block_v = min(triton.next_power_of_2(V), max_block)
    return block_v, min(8, max(1, block_v // 1024))


def _as_3d(logits):
    """View logits as (outer, inner, V); copies only if the dims before the last two can't merge."""
    if logits.dim() == 1:
        return logits.view(1, 1, -1)
    return logits.reshape(-1, *logits.shape[-2:])


def _launch(kernel, x, *buffers, inv_temp, max_block, **constexprs):
    outer, inner, V = x.shape
    block_v, num_warps = _config(V, max_block)
    # V is a compile-time constant: one compile per vocabulary size, and exact loop bounds
    kernel[(outer * inner,)](x, *buffers, inner, x.stride(0), x.stride(1), x.stride(2), inv_temp,
                             V=V, BLOCK_V=block_v, **constexprs, num_warps=num_warps)


def _forward(logits, targets, temperature, return_entropy):
    """Launch the forward kernel. Returns what the backward needs (logits as 3d, flat targets, logsumexp)
    and the outputs, logp and entropy (None unless asked for), shaped logits.shape[:-1]."""
    x = _as_3d(logits)
    targets = targets.contiguous().view(-1)  # tiny; copies if it is a strided slice like tokens[:, 1:]
    logp = torch.empty(targets.numel(), dtype=torch.float32, device=logits.device)
    lse = torch.empty_like(logp)  # saved for the backward: 4 bytes a token
    entropy = torch.empty_like(logp) if return_entropy else None
    _launch(_fwd_kernel, x, targets, logp, lse, entropy, inv_temp=1.0 / temperature, max_block=16384,
            ENTROPY=return_entropy)
    shape = logits.shape[:-1]
    return x, targets, lse, logp.view(shape), entropy.view(shape) if return_entropy else None


class _TokenLogprobs(torch.autograd.Function):

    @staticmethod
    def forward(ctx, logits, targets, temperature, return_entropy):
        x, targets, lse, logp, entropy = _forward(logits, targets, temperature, return_entropy)
        ctx.save_for_backward(x, targets, lse)
        ctx.temperature, ctx.shape = temperature, logits.shape
        if not return_entropy:
            return logp
        ctx.mark_non_differentiable(entropy)
        return logp, entropy

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_logp, *unused_grad_entropy):
        x, targets, lse = ctx.saved_tensors
        grad_logp = grad_logp.float().contiguous().view(-1)  # may arrive expanded (stride 0)
        grad = torch.empty(ctx.shape, dtype=x.dtype, device=x.device)
        _launch(_bwd_kernel, x, targets, lse, grad_logp, grad, inv_temp=1.0 / ctx.temperature, max_block=8192)
        return grad, None, None, None


def token_logprobs(logits, targets, temperature=1.0, return_entropy=False):
    """
    log softmax(logits / temperature)[targets] per token, float32, shape logits.shape[:-1].
    logits: (..., V) of any float dtype and any strides; targets: int64 in [0, V), shape logits.shape[:-1].
    Differentiable w.r.t. logits. With return_entropy, also returns the float32 entropy of
    softmax(logits / temperature) per token, which carries no gradient.
    """
    assert temperature > 0 and targets.shape == logits.shape[:-1]
    if not _use_triton(logits):
        return token_logprobs_reference(logits, targets, temperature, return_entropy)
    if torch.is_grad_enabled() and logits.requires_grad:
        return _TokenLogprobs.apply(logits, targets, float(temperature), return_entropy)
    # no gradient wanted (rollout scoring, the reference model): skip autograd's bookkeeping, which at
    # small vocabularies costs more host time than the kernel takes on the GPU
    *_, logp, entropy = _forward(logits, targets, float(temperature), return_entropy)
    return (logp, entropy) if return_entropy else logp
