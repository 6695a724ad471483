"""
Fused kernels for a decoding step (forward only, no gradient): sample.Decoder's copy of the model runs them.

A decoding step carries one token per row, so its cost is not arithmetic but the number of kernels: PyTorch
spends four to a dozen small kernels on each of RMSNorm, RoPE and the MoE router (casts, elementwise ops, top-k,
gather, normalise, scatter), each a few microseconds however few rows are live. Here each is one Triton program
per row (benchmarks/RESULTS.md measures the step). The math is the model's own (model.py), in float32 as there.
"""

import torch
import triton
import triton.language as tl


@triton.jit
def _rms_norm_kernel(x_ptr, w_ptr, out_ptr, eps, D: tl.constexpr, BLOCK_D: tl.constexpr):
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK_D)
    inside = cols < D
    x = tl.load(x_ptr + row * D + cols, mask=inside, other=0.0).to(tl.float32)
    w = tl.load(w_ptr + cols, mask=inside, other=0.0).to(tl.float32)
    inv_rms = 1.0 / tl.sqrt(tl.sum(x * x, axis=0) / D + eps)
    tl.store(out_ptr + row * D + cols, (x * inv_rms * w).to(out_ptr.dtype.element_ty), mask=inside)


def rms_norm(x, weight, eps):
    """model.RMSNorm: x * rsqrt(mean(x^2) + eps) * weight over the last dim, in float32, returned in x's dtype."""
    D = x.shape[-1]
    flat = x.reshape(-1, D).contiguous()
    out = torch.empty_like(flat)
    _rms_norm_kernel[(flat.shape[0],)](flat, weight, out, eps, D=D, BLOCK_D=triton.next_power_of_2(D))
    return out.view(x.shape)


@triton.jit
def _rope_kernel(qkv_ptr, cos_ptr, sin_ptr, out_ptr, n_rows, H: tl.constexpr, D: tl.constexpr,
                 BLOCK_R: tl.constexpr, BLOCK_J: tl.constexpr):
    # one token's 2H query and key heads: head r of the row is at qkv[n, r // H, r % H] = qkv_ptr + (n*3H + r)*D
    n = tl.program_id(0)
    r = tl.arange(0, BLOCK_R)[:, None]
    j = tl.arange(0, BLOCK_J)[None, :]
    inside = (r < 2 * H) & (j < D // 2)
    first = qkv_ptr + (n * 3 * H + r) * D + j
    x1 = tl.load(first, mask=inside, other=0.0).to(tl.float32)
    x2 = tl.load(first + D // 2, mask=inside, other=0.0).to(tl.float32)
    cos = tl.load(cos_ptr + n * (D // 2) + j, mask=j < D // 2, other=0.0)
    sin = tl.load(sin_ptr + n * (D // 2) + j, mask=j < D // 2, other=0.0)
    # out [2, n_rows, H, D]: queries, then keys
    dest = out_ptr + ((r // H) * n_rows + n) * H * D + (r % H) * D + j
    ty = out_ptr.dtype.element_ty
    tl.store(dest, (x1 * cos - x2 * sin).to(ty), mask=inside)
    tl.store(dest + D // 2, (x1 * sin + x2 * cos).to(ty), mask=inside)


def rope_queries_keys(qkv, cos, sin):
    """model.apply_rope on the queries and keys of a fused projection. qkv [B, T, 3, H, D] (contiguous, as the
    linear layer writes it); cos, sin [B, T, D/2] float32. Returns rotated q, k [B, H, T, D] in qkv's dtype."""
    B, T, _, H, D = qkv.shape
    out = torch.empty(2, B * T, H, D, dtype=qkv.dtype, device=qkv.device)
    _rope_kernel[(B * T,)](qkv, cos.contiguous(), sin.contiguous(), out, B * T, H=H, D=D,
                           BLOCK_R=triton.next_power_of_2(2 * H), BLOCK_J=triton.next_power_of_2(D // 2))
    q, k = out.view(2, B, T, H, D).transpose(2, 3)
    return q, k


@triton.jit
def _router_kernel(logits_ptr, bias_ptr, gates_ptr, route_scale, E: tl.constexpr, TOPK: tl.constexpr,
                   BLOCK_E: tl.constexpr):
    row = tl.program_id(0)
    e = tl.arange(0, BLOCK_E)
    inside = e < E
    scores = tl.sigmoid(tl.load(logits_ptr + row * E + e, mask=inside, other=0.0).to(tl.float32))
    biased = tl.where(inside, scores + tl.load(bias_ptr + e, mask=inside, other=0.0), float("-inf"))
    chosen = tl.zeros([BLOCK_E], dtype=tl.int1)
    for _ in tl.static_range(TOPK):  # top-k as k rounds of argmax, each taking the best expert left
        best = tl.argmax(biased, axis=0)
        chosen = chosen | (e == best)
        biased = tl.where(e == best, float("-inf"), biased)
    picked = tl.where(chosen, scores, 0.0)
    gates = picked / tl.sum(picked, axis=0) * route_scale
    tl.store(gates_ptr + row * E + e, gates.to(gates_ptr.dtype.element_ty), mask=inside)


def router_gates(logits, bias, topk, route_scale, dtype):
    """model.Gate.dense_gates (the router and its scatter): from the router logits [N, E] (float32), the gates
    [N, E] in `dtype`, sigmoid(logit) / (sum of the chosen) * route_scale for each row's top-k experts by
    sigmoid(logit) + bias, and 0 for the others."""
    N, E = logits.shape
    gates = torch.empty(N, E, dtype=dtype, device=logits.device)
    _router_kernel[(N,)](logits.contiguous(), bias, gates, route_scale, E=E, TOPK=topk,
                         BLOCK_E=triton.next_power_of_2(E))
    return gates
