"""
Per-token log-probabilities of the sampled tokens, without materializing the log-softmax.

GRPO needs log p(target) = z[target] - logsumexp(z), z = logits / temperature, at every completion
token. The plain way, log_softmax(logits.float()).gather(...), writes two float32 copies of the
logits (the cast and the log-softmax): 4x the size of bf16 logits, read and written in full. Here one Triton program reads its row of logits once, keeping a running
max and a running sum of exp (the "online softmax"), and writes 4 bytes per token. The backward
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

# the running max starts at a finite floor, not -inf, so a row whose logits are all -inf so far
# never computes -inf - (-inf) = nan; exp(floor - max) still underflows to 0 for any real max
MAX_FLOOR = tl.constexpr(-3.0e38)


@triton.jit
def _fwd_kernel(logits_ptr, targets_ptr, logp_ptr, lse_ptr, entropy_ptr,
                n_rows, n_inner, stride_outer, stride_inner, stride_v, V, inv_temp,
                BLOCK_R: tl.constexpr, BLOCK_V: tl.constexpr, ENTROPY: tl.constexpr):
    # logits are viewed as (outer, inner, V) with arbitrary strides: a slice like logits[:, k:-1]
    # or a transposed view needs no copy. int64 because rows * stride can pass 2^31.
    rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    row_ok = rows < n_rows
    row_ptrs = logits_ptr + (rows // n_inner) * stride_outer + (rows % n_inner) * stride_inner
    m = tl.full([BLOCK_R], MAX_FLOOR, tl.float32)  # running max of z
    s = tl.zeros([BLOCK_R], tl.float32)  # running sum of exp(z - m)
    t = tl.zeros([BLOCK_R], tl.float32)  # running sum of exp(z - m) * (z - m), for the entropy
    for start in range(0, V, BLOCK_V):
        cols = start + tl.arange(0, BLOCK_V)
        mask = row_ok[:, None] & (cols < V)[None, :]
        # evict_first: each byte is read once, so keep this stream from pushing other data out of L2
        z = tl.load(row_ptrs[:, None] + cols[None, :] * stride_v, mask=mask, other=float("-inf"),
                    eviction_policy="evict_first").to(tl.float32) * inv_temp
        m_new = tl.maximum(m, tl.max(z, axis=1))
        alpha = tl.exp(m - m_new)  # rescales what was summed against the old max
        e = tl.exp(z - m_new[:, None])
        if ENTROPY:
            # sum e * (z - m_new), with e == 0 (z == -inf) contributing 0 rather than 0 * -inf = nan
            t = alpha * (t + s * (m - m_new)) + tl.sum(tl.where(e > 0, e * (z - m_new[:, None]), 0.0), axis=1)
        s = s * alpha + tl.sum(e, axis=1)
        m = m_new
    lse = m + tl.log(s)
    target = tl.load(targets_ptr + rows, mask=row_ok, other=0)
    z_target = tl.load(row_ptrs + target * stride_v, mask=row_ok).to(tl.float32) * inv_temp
    tl.store(logp_ptr + rows, z_target - lse, mask=row_ok)
    tl.store(lse_ptr + rows, lse, mask=row_ok)
    if ENTROPY:
        # H = lse - sum p z = log s - sum p (z - m): relative to m, so no cancellation at large logits
        tl.store(entropy_ptr + rows, tl.log(s) - t / s, mask=row_ok)


@triton.jit
def _bwd_kernel(logits_ptr, targets_ptr, lse_ptr, grad_logp_ptr, grad_ptr,
                n_rows, n_inner, stride_outer, stride_inner, stride_v, V, inv_temp,
                BLOCK_R: tl.constexpr, BLOCK_V: tl.constexpr):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    row_ok = rows < n_rows
    row_ptrs = logits_ptr + (rows // n_inner) * stride_outer + (rows % n_inner) * stride_inner
    lse = tl.load(lse_ptr + rows, mask=row_ok, other=0.0)
    g = tl.load(grad_logp_ptr + rows, mask=row_ok, other=0.0) * inv_temp
    target = tl.load(targets_ptr + rows, mask=row_ok, other=-1)
    grad_rows = grad_ptr + rows * V  # the grad buffer is contiguous (rows, V)
    for start in range(0, V, BLOCK_V):
        cols = start + tl.arange(0, BLOCK_V)
        mask = row_ok[:, None] & (cols < V)[None, :]
        z = tl.load(row_ptrs[:, None] + cols[None, :] * stride_v, mask=mask, other=float("-inf"),
                    eviction_policy="evict_first").to(tl.float32) * inv_temp
        p = tl.exp(z - lse[:, None])  # softmax, recomputed from the saved logsumexp
        onehot = tl.where(cols[None, :] == target[:, None], 1.0, 0.0)
        grad = g[:, None] * (onehot - p)
        tl.store(grad_rows[:, None] + cols[None, :], grad.to(grad_ptr.dtype.element_ty), mask=mask)


def _use_triton(t):
    """Triton runs on CUDA tensors, and on CPU tensors in its interpreter: TRITON_INTERPRET=1, which
    triton.jit only honours if it was set before triton was imported (then our kernels are interpreted)."""
    interpreted = isinstance(_fwd_kernel, InterpretedFunction)
    return t.is_cuda or (os.environ.get("TRITON_INTERPRET") == "1" and interpreted)


def _config(V):
    """(BLOCK_R rows, BLOCK_V columns, num_warps) of one program's tile.
    Large V: one row per program, walked in 8192-wide chunks (16 KB of bf16 per load, enough bytes in
    flight to keep HBM busy). Small V: several rows per program, so a program still moves ~8K elements."""
    block_v = min(triton.next_power_of_2(V), 8192)
    block_r = max(1, 8192 // block_v)
    return block_r, block_v, 16 if block_r * block_v >= 8192 else 4


def _as_3d(logits):
    """View logits as (outer, inner, V); copies only if the dims before the last two can't merge."""
    if logits.dim() == 1:
        return logits.view(1, 1, -1)
    return logits.reshape(-1, *logits.shape[-2:])


def _launch(kernel, x, *buffers, inv_temp, **constexprs):
    outer, inner, V = x.shape
    block_r, block_v, num_warps = _config(V)
    grid = (triton.cdiv(outer * inner, block_r),)
    kernel[grid](x, *buffers, outer * inner, inner, x.stride(0), x.stride(1), x.stride(2), V, inv_temp,
                 **constexprs, BLOCK_R=block_r, BLOCK_V=block_v, num_warps=num_warps)


class _TokenLogprobs(torch.autograd.Function):

    @staticmethod
    def forward(ctx, logits, targets, temperature, return_entropy):
        x = _as_3d(logits)
        targets = targets.contiguous().view(-1)  # tiny; copies if it is a strided slice like tokens[:, 1:]
        n_rows = targets.numel()
        logp = torch.empty(n_rows, dtype=torch.float32, device=logits.device)
        lse = torch.empty_like(logp)  # saved for the backward: 4 bytes a token
        entropy = torch.empty_like(logp) if return_entropy else None
        _launch(_fwd_kernel, x, targets, logp, lse, entropy, inv_temp=1.0 / temperature, ENTROPY=return_entropy)
        ctx.save_for_backward(x, targets, lse)
        ctx.temperature, ctx.shape = temperature, logits.shape
        logp = logp.view(logits.shape[:-1])
        if not return_entropy:
            return logp
        entropy = entropy.view(logits.shape[:-1])
        ctx.mark_non_differentiable(entropy)
        return logp, entropy

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_logp, *unused_grad_entropy):
        x, targets, lse = ctx.saved_tensors
        grad_logp = grad_logp.float().contiguous().view(-1)  # may arrive expanded (stride 0)
        grad = torch.empty(ctx.shape, dtype=x.dtype, device=x.device)
        _launch(_bwd_kernel, x, targets, lse, grad_logp, grad, inv_temp=1.0 / ctx.temperature)
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
    return _TokenLogprobs.apply(logits, targets, float(temperature), return_entropy)


def token_logprobs_reference(logits, targets, temperature=1.0, return_entropy=False):
    """Plain PyTorch token_logprobs: the CPU path, and what the kernel is tested and benchmarked against."""
    logp_all = torch.log_softmax(logits.float() / temperature, dim=-1)
    logp = logp_all.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    if not return_entropy:
        return logp
    with torch.no_grad():
        entropy = torch.special.entr(logp_all.exp()).sum(-1)  # entr(0) = 0 where logits are -inf
    return logp, entropy
