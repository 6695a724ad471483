"""
Fused kernels for a decoding step (forward only, no gradient): engine/decoder.py swaps them into its copy of the model.

A decoding step carries one token per row, so its cost is not arithmetic but the number of kernels and the bytes
of the KV cache read: PyTorch spends ~280 small kernels on a step of the small preset, each a few microseconds
however few rows are live. Here a layer takes about a dozen: RMSNorm in one program per row; after the qkv matmul,
RoPE, the cache write and attention over only the row's filled slots in one (attend_one_step); after the router
(one program per row), all experts, routed and shared, as one SwiGLU of two matmuls with one kernel between
(swiglu_experts). Around the layers, the step's positions and cache counts take one kernel (step_positions) and
its sampling, stop check and token write another (sample_step). The math is the model's own (model.py), in float32
as there (benchmarks/RESULTS.md measures it).
"""
import torch
import triton
import triton.language as tl
from triton.runtime.interpreter import InterpretedFunction


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
def _step_positions_kernel(real_ptr, stride_r, n_real_ptr, pos_ptr, valid_ptr, stride_v, cos_table_ptr, sin_table_ptr,
                           cos_ptr, sin_ptr, HALF: tl.constexpr, BLOCK: tl.constexpr):
    # one row: its token's RoPE position (its real tokens so far; a padding token takes the last one's), the angles
    # there, whether the slot this step fills holds a real token, and the row's count of real tokens
    b = tl.program_id(0)
    real = tl.load(real_ptr + b * stride_r) != 0
    n_real = tl.load(n_real_ptr + b)
    position = tl.maximum(n_real + real.to(tl.int64) - 1, 0)
    tl.store(valid_ptr + b * stride_v + tl.load(pos_ptr), real)
    tl.store(n_real_ptr + b, n_real + real.to(tl.int64))
    j = tl.arange(0, BLOCK)
    inside = j < HALF
    tl.store(cos_ptr + b * HALF + j, tl.load(cos_table_ptr + position * HALF + j, mask=inside), mask=inside)
    tl.store(sin_ptr + b * HALF + j, tl.load(sin_table_ptr + position * HALF + j, mask=inside), mask=inside)


def step_positions(real, n_real, valid, pos, cos_table, sin_table):
    """The bookkeeping of model.Transformer.forward for one decoding step, in one kernel: real [B, 1] (True = a
    real token); n_real [B], valid [B, S], pos [1]: the KV cache's (model.KVCache). Marks slot `pos` valid for the
    real tokens, adds them to n_real and returns the RoPE angles of their positions, cos, sin [B, 1, 1, D/2]
    (float32, from the tables [max_seq_len, D/2]). The caller advances pos once every layer has read it."""
    B, HALF = real.shape[0], cos_table.shape[1]
    assert real.shape == (B, 1) and valid.stride(1) == 1 and cos_table.is_contiguous() and sin_table.is_contiguous()
    cos = torch.empty(B, 1, 1, HALF, dtype=cos_table.dtype, device=real.device)
    sin = torch.empty_like(cos)
    _step_positions_kernel[(B,)](real, real.stride(0), n_real, pos, valid, valid.stride(0), cos_table, sin_table,
                                 cos, sin, HALF=HALF, BLOCK=triton.next_power_of_2(HALF))
    return cos, sin


@triton.jit
def _attend_one_step_kernel(qkv_ptr, cos_ptr, sin_ptr, k_ptr, v_ptr, valid_ptr, slot_ptr, out_ptr, scale,
                            stride_cb, stride_ch, stride_cs, stride_vb, H: tl.constexpr, D: tl.constexpr,
                            BLOCK_D: tl.constexpr, BLOCK_S: tl.constexpr, INTERPRETED: tl.constexpr):
    b, h = tl.program_id(0), tl.program_id(1)
    d = tl.arange(0, BLOCK_D)
    inside = d < D
    slot = tl.load(slot_ptr)   # the slot this step writes; the ones before it hold the row's past
    ty = qkv_ptr.dtype.element_ty
    # this token's query, key and value of head h (qkv [B, 1, 3, H, D]). RoPE (model.apply_rope) rotates the pairs
    # (x[i], x[i + D/2]): x[d] * cos + sign * x[partner] * sin, rounded to the activations' dtype as the plain
    # path rounds them
    q_ptr = qkv_ptr + (b * 3 * H + h) * D
    half = d % (D // 2)
    partner = tl.where(d < D // 2, d + D // 2, d - D // 2)
    sign = tl.where(d < D // 2, -1.0, 1.0)
    cos = tl.load(cos_ptr + b * (D // 2) + half, mask=inside, other=0.0)
    sin = tl.load(sin_ptr + b * (D // 2) + half, mask=inside, other=0.0) * sign
    q = (tl.load(q_ptr + d, mask=inside, other=0.0).to(tl.float32) * cos
         + tl.load(q_ptr + partner, mask=inside, other=0.0).to(tl.float32) * sin).to(ty)
    k = (tl.load(q_ptr + H * D + d, mask=inside, other=0.0).to(tl.float32) * cos
         + tl.load(q_ptr + H * D + partner, mask=inside, other=0.0).to(tl.float32) * sin).to(ty)
    v = tl.load(q_ptr + 2 * H * D + d, mask=inside, other=0.0)
    # into the cache at its slot
    cache_ty = k_ptr.dtype.element_ty
    k_row = k_ptr + b * stride_cb + h * stride_ch
    v_row = v_ptr + b * stride_cb + h * stride_ch
    tl.store(k_row + slot * stride_cs + d, k.to(cache_ty), mask=inside)
    tl.store(v_row + slot * stride_cs + d, v.to(cache_ty), mask=inside)
    # online softmax (flash attention) over the row's valid past slots, starting from the token itself. A row
    # that has finished (its token is padding, not valid) attends to itself only: its output is never used, so
    # its past is not read.
    q = q.to(tl.float32)
    m = tl.sum(q * k.to(cache_ty).to(tl.float32), axis=0) * scale
    total = tl.full([], 1.0, tl.float32)
    acc = v.to(cache_ty).to(tl.float32)
    n_past = tl.where(tl.load(valid_ptr + b * stride_vb + slot) != 0, slot, 0)
    valid_row = valid_ptr + b * stride_vb
    if INTERPRETED:  # the same tiles; Triton's interpreter before 3.7 cannot take a tensor as a range's bound
        start = 0
        while start < n_past:
            m, total, acc = _attend_tile(start, n_past, q, d, inside, k_row, v_row, valid_row, stride_cs, scale,
                                         m, total, acc, BLOCK_S)
            start += BLOCK_S
    else:
        for start in range(0, n_past, BLOCK_S):
            m, total, acc = _attend_tile(start, n_past, q, d, inside, k_row, v_row, valid_row, stride_cs, scale,
                                         m, total, acc, BLOCK_S)
    tl.store(out_ptr + (b * H + h) * D + d, (acc / total).to(out_ptr.dtype.element_ty), mask=inside)


@triton.jit
def _attend_tile(start, n_past, q, d, inside, k_row, v_row, valid_row, stride_cs, scale, m, total, acc,
                 BLOCK_S: tl.constexpr):
    # one tile of BLOCK_S past slots: their scores, then the running max m, softmax total and weighted sum of values
    # rescaled to the new max
    s = start + tl.arange(0, BLOCK_S)
    past = (s < n_past) & (tl.load(valid_row + s, mask=s < n_past, other=0) != 0)
    tile = past[:, None] & inside[None, :]
    keys = tl.load(k_row + s[:, None] * stride_cs + d[None, :], mask=tile, other=0.0)
    scores = tl.where(past, tl.sum(keys.to(tl.float32) * q[None, :], axis=1) * scale, float("-inf"))
    m_new = tl.maximum(m, tl.max(scores, axis=0))
    p = tl.exp(scores - m_new)
    rescale = tl.exp(m - m_new)
    values = tl.load(v_row + s[:, None] * stride_cs + d[None, :], mask=tile, other=0.0)
    acc = acc * rescale + tl.sum(p[:, None] * values.to(tl.float32), axis=0)
    total = total * rescale + tl.sum(p, axis=0)
    return m_new, total, acc


ATTEND_BLOCK_S = 128  # past slots a program reads at a time


def attend_one_step(qkv, cos, sin, k_cache, v_cache, valid, slot):
    """A decoding step of model.Attention after its qkv projection, in one kernel: rotate this token's query and
    key (RoPE), write its key and value into the cache at `slot`, and attend over the row's valid past slots and
    the token itself (a finished row, whose token is not valid at `slot`, over itself only). qkv [B, 1, 3, H, D];
    cos, sin [B, 1, D/2] float32; k_cache, v_cache [B, H, S, D] (views of the cache's buffers); valid [B, S] bool,
    this step's slot included; slot [1] long, on the device (no host sync: CUDA-graph safe).
    Returns [B, 1, H * D], the heads side by side as the output projection takes them."""
    B, T, _, H, D = qkv.shape
    assert T == 1 and qkv.is_contiguous() and k_cache.stride() == v_cache.stride() and k_cache.stride(-1) == 1
    out = torch.empty(B, 1, H * D, dtype=qkv.dtype, device=qkv.device)
    _attend_one_step_kernel[(B, H)](
        qkv, cos.contiguous(), sin.contiguous(), k_cache, v_cache, valid, slot, out, D ** -0.5,
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2), valid.stride(0), H=H, D=D,
        BLOCK_D=triton.next_power_of_2(D), BLOCK_S=ATTEND_BLOCK_S,
        INTERPRETED=isinstance(_attend_one_step_kernel, InterpretedFunction))
    return out


@triton.jit
def _router_kernel(x_ptr, weight_ptr, bias_ptr, gates_ptr, route_scale, DIM, E: tl.constexpr, TOPK: tl.constexpr,
                   BLOCK_E: tl.constexpr, BLOCK_DIM: tl.constexpr):
    # model.Gate for one token: sigmoid affinities in float32, top-k by affinity + bias, normalised over the k
    row = tl.program_id(0)
    e = tl.arange(0, BLOCK_E)
    cols = tl.arange(0, BLOCK_DIM)
    x = tl.load(x_ptr + row * DIM + cols, mask=cols < DIM, other=0.0).to(tl.float32)
    w = tl.load(weight_ptr + e[:, None] * DIM + cols[None, :], mask=(e[:, None] < E) & (cols[None, :] < DIM),
                other=0.0)
    scores = tl.sigmoid(tl.sum(w * x[None, :], axis=1))
    biased = tl.where(e < E, scores + tl.load(bias_ptr + e, mask=e < E, other=0.0), float("-inf"))
    chosen = tl.zeros([BLOCK_E], dtype=tl.int1)
    for _ in tl.static_range(TOPK):  # top-k as k rounds of argmax, each taking the best expert left
        best = tl.argmax(biased, axis=0)
        chosen = chosen | (e == best)
        biased = tl.where(e == best, float("-inf"), biased)
    picked = tl.where(chosen, scores, 0.0)
    tl.store(gates_ptr + row * E + e, picked / tl.sum(picked, axis=0) * route_scale, mask=e < E)


@triton.jit
def _swiglu_hidden_kernel(a_ptr, gates_ptr, out_ptr, F: tl.constexpr, E: tl.constexpr, H: tl.constexpr,
                          BLOCK_H: tl.constexpr):
    # program (row, e): silu(gate proj) * up proj of routed expert e's H hidden units, times its gate;
    # e == E: the ungated rest (the shared experts, or a dense SwiGLU's whole hidden layer). F, the hidden units in
    # all, is a constant: the loop's bound, which Triton's interpreter before 3.7 cannot take as a tensor
    row, e = tl.program_id(0), tl.program_id(1)
    a_row = a_ptr + row * 2 * F  # [gate projections (F) | up projections (F)]
    if e < E:
        gate = tl.load(gates_ptr + row * E + e)
        h = e * H + tl.arange(0, BLOCK_H)
        inside = h < (e + 1) * H
        a1 = tl.load(a_row + h, mask=inside, other=0.0).to(tl.float32)
        a3 = tl.load(a_row + F + h, mask=inside, other=0.0).to(tl.float32)
        tl.store(out_ptr + row * F + h, (a1 * tl.sigmoid(a1) * a3 * gate).to(out_ptr.dtype.element_ty), mask=inside)
    else:
        for start in range(E * H, F, BLOCK_H):
            h = start + tl.arange(0, BLOCK_H)
            inside = h < F
            a1 = tl.load(a_row + h, mask=inside, other=0.0).to(tl.float32)
            a3 = tl.load(a_row + F + h, mask=inside, other=0.0).to(tl.float32)
            tl.store(out_ptr + row * F + h, (a1 * tl.sigmoid(a1) * a3).to(out_ptr.dtype.element_ty), mask=inside)


def swiglu_experts(x, w13, w2, gate=None, experts=0, expert_hidden=1):
    """model.MoE (or model.SwiGLU, gate None) on a decoding step's few tokens, as one SwiGLU whose hidden units are
    every routed expert's (each scaled by the token's gate, 0 for the experts the router did not pick) followed by
    the shared experts': the router in one kernel, then two matmuls with one kernel between them.
    x [N, dim]; w13 [2F, dim]: the gate projections of all F hidden units, then their up projections
    (engine.decoder.FusedMoE.pack); w2 [dim, F]; gate: the model.Gate, its first `experts` x `expert_hidden`
    units the routed experts'."""
    x = x.contiguous()
    N, dim = x.shape
    F = w2.shape[1]
    gates = torch.empty(N, max(experts, 1), dtype=torch.float32, device=x.device)
    if experts:
        _router_kernel[(N,)](x, gate.weight, gate.bias, gates, gate.route_scale, dim, E=experts, TOPK=gate.topk,
                             BLOCK_E=triton.next_power_of_2(experts), BLOCK_DIM=triton.next_power_of_2(dim))
    hidden = torch.empty(N, F, dtype=x.dtype, device=x.device)
    _swiglu_hidden_kernel[(N, experts + 1)](x @ w13.T, gates, hidden, F=F, E=experts, H=expert_hidden,
                                            BLOCK_H=triton.next_power_of_2(expert_hidden) if experts else 512)
    return hidden @ w2.T


@triton.jit
def _sample_step_kernel(logits_ptr, stride_l, V, inv_temperature, seed_ptr, t_ptr, row_of_ptr, budget_ptr, done_ptr,
                        tokens_ptr, out_ptr, stride_o, n_callers, stop_ptr, N_STOP: tl.constexpr, GREEDY: tl.constexpr,
                        BLOCK_V: tl.constexpr, BLOCK_STOP: tl.constexpr):
    # one row: draw its token, write it at step t of its caller's row, and mark the row done at a stop token or
    # at the end of its budget
    row = tl.program_id(0)
    v = tl.arange(0, BLOCK_V)
    t = tl.load(t_ptr)
    caller_row = tl.load(row_of_ptr + row)
    logits = tl.load(logits_ptr + row * stride_l + v, mask=v < V, other=float("-inf")).to(tl.float32)
    if GREEDY:
        score = logits
    else:
        # the exponential race of sample.sample_next in log space: argmax p_i / E_i = argmax logit_i / T - log E_i,
        # E_i = -log U_i; U from Philox, keyed by the call's seed and counted by (step, caller's row, token), so
        # every draw of a call is a fresh one wherever compaction has moved the row
        uniform = tl.rand(tl.load(seed_ptr), (t * n_callers + caller_row) * BLOCK_V + v)
        score = logits * inv_temperature - tl.log(-tl.log(uniform))
    token = tl.argmax(score, axis=0)
    tl.store(out_ptr + caller_row * stride_o + t, token.to(tl.int64))
    s = tl.arange(0, BLOCK_STOP)
    stops = tl.load(stop_ptr + s, mask=s < N_STOP, other=-1)
    finished = (tl.sum((stops == token).to(tl.int32), axis=0) > 0) | (t + 1 >= tl.load(budget_ptr + row))
    tl.store(done_ptr + row, (tl.load(done_ptr + row) != 0) | finished)
    tl.store(tokens_ptr + row, token.to(tl.int64))


def sample_step(logits, temperature, seed, t, row_of, budget, done, tokens, out, stops):
    """The Decoder's step epilogue (engine/decoder.py) in one kernel, for temperature sampling without a nucleus
    (top-p 1) and for greedy decoding (temperature 0): for each of the B rows of logits [B, V], draw its token, write
    it to out[row_of[row], t], set tokens[row] to it and done[row] once it is one of `stops` or step t was the row's
    last of `budget`. seed and t: [1] long tensors on the device (CUDA-graph safe); the caller advances t."""
    B, V = logits.shape
    assert logits.stride(1) == 1 and out.stride(1) == 1
    _sample_step_kernel[(B,)](
        logits, logits.stride(0), V, 1.0 / temperature if temperature else 0.0, seed, t, row_of, budget, done,
        tokens, out, out.stride(0), out.shape[0], stops, N_STOP=len(stops), GREEDY=temperature == 0,
        BLOCK_V=triton.next_power_of_2(V), BLOCK_STOP=triton.next_power_of_2(max(len(stops), 1)))
