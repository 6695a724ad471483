"""
A small Mixture-of-Experts transformer in the style of DeepSeek-V3 (arXiv:2412.19437).

- RMSNorm, rotary position embeddings (RoPE), causal multi-head attention through
  `F.scaled_dot_product_attention`, SwiGLU feed-forward blocks.
- DeepSeekMoE: many fine-grained routed experts plus an always-on shared expert; each token goes to its
  top-k routed experts, weighted by sigmoid affinities normalised over the chosen k (V3 eq. 12-16).
- Auxiliary-loss-free load balancing (V3 sec. 2.1.2): a per-expert bias is added to the affinities for the
  top-k *choice only*; after each training step it moves by a fixed rate toward balance, down for
  overloaded experts and up for underloaded ones. No balancing term enters the loss.
- The first `n_dense_layers` layers use a dense SwiGLU instead of experts (as V3 does).
- A static-shape KV cache for decoding; rows may be left-padded (ragged prompts): padding is masked out of
  attention and each row's RoPE positions count only its real tokens.
"""

import math
from dataclasses import dataclass, replace

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class ModelConfig:
    vocab_size: int = 512
    max_seq_len: int = 640
    dim: int = 384
    n_layers: int = 8
    n_heads: int = 6
    n_dense_layers: int = 1       # leading layers with a dense FFN instead of experts
    dense_hidden: int = 1536
    n_routed_experts: int = 16
    n_shared_experts: int = 1
    n_activated_experts: int = 2  # top-k
    moe_hidden: int = 256         # hidden size of one (fine-grained) expert
    route_scale: float = 1.0
    bias_update_rate: float = 1e-3  # gamma, the bias update speed of aux-loss-free balancing
    rope_theta: float = 10000.0
    norm_eps: float = 1e-6


PRESETS = {
    "tiny": ModelConfig(dim=64, n_layers=2, n_heads=4, dense_hidden=128, n_routed_experts=4,
                        n_activated_experts=2, moe_hidden=32),
    "small": ModelConfig(),
    # train.py's CPU setup: ~0.8M parameters, pretrains at ~14k tokens/s on 2 CPU cores
    "cpu": ModelConfig(dim=128, n_layers=3, n_heads=4, dense_hidden=512, n_routed_experts=4,
                       n_activated_experts=2, moe_hidden=64),
}


class RMSNorm(nn.Module):
    def __init__(self, dim, eps):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)


def rope_tables(cfg: ModelConfig):
    head_dim = cfg.dim // cfg.n_heads
    freqs = 1.0 / (cfg.rope_theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    angles = torch.outer(torch.arange(cfg.max_seq_len, dtype=torch.float32), freqs)
    return angles.cos(), angles.sin()  # [max_seq_len, head_dim / 2] each


def apply_rope(x, cos, sin):
    """x [B, H, T, D]; cos, sin [B, 1, T, D/2]. Rotates pairs (x[i], x[i + D/2]) by position * freq."""
    x1, x2 = x.float().chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).type_as(x)


class KVCache:
    """Keys and values of every layer for a batch of rows, in fixed-size buffers.

    Slot j of every row is written at the same decoding step; `valid[b, j]` says whether it holds a real token
    of row b (left padding and rows that already finished hold none), and `n_real[b]` counts row b's real
    tokens so far, which is the RoPE position of its next token. Every index lives on the device and attention
    always spans all slots (unfilled ones are masked), so a decoding step has static shapes and no host sync:
    it can be captured once as a CUDA graph and replayed (sample.py)."""

    def __init__(self, cfg: ModelConfig, batch_size, max_len, device, dtype):
        head_dim = cfg.dim // cfg.n_heads
        shape = (cfg.n_layers, batch_size, cfg.n_heads, max_len, head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.valid = torch.zeros(batch_size, max_len, dtype=torch.bool, device=device)
        self.n_real = torch.zeros(batch_size, dtype=torch.long, device=device)
        self.pos = torch.zeros(1, dtype=torch.long, device=device)  # slots filled so far
        self.max_len = max_len


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_id):
        super().__init__()
        self.layer_id, self.n_heads = layer_id, cfg.n_heads
        self.wqkv = nn.Linear(cfg.dim, 3 * cfg.dim, bias=False)
        self.wo = nn.Linear(cfg.dim, cfg.dim, bias=False)

    def forward(self, x, cos, sin, mask, cache: KVCache | None, slots):
        B, T, C = x.shape
        q, k, v = self.wqkv(x).view(B, T, 3, self.n_heads, C // self.n_heads).permute(2, 0, 3, 1, 4)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            k_all, v_all = cache.k[self.layer_id], cache.v[self.layer_id]
            k_all.index_copy_(2, slots, k.to(k_all.dtype))
            v_all.index_copy_(2, slots, v.to(v_all.dtype))
            k, v = k_all.to(q.dtype), v_all.to(q.dtype)
        if mask is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.wo(y.transpose(1, 2).reshape(B, T, C))


class SwiGLU(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.w1 = nn.Linear(dim, hidden, bias=False)  # gate
        self.w3 = nn.Linear(dim, hidden, bias=False)  # up
        self.w2 = nn.Linear(hidden, dim, bias=False)  # down

    def forward(self, x):
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class Gate(nn.Module):
    """Top-k router with sigmoid affinities and an aux-loss-free balancing bias (V3 eq. 13-16)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.topk, self.route_scale, self.rate = cfg.n_activated_experts, cfg.route_scale, cfg.bias_update_rate
        self.weight = nn.Parameter(torch.empty(cfg.n_routed_experts, cfg.dim))
        self.register_buffer("bias", torch.zeros(cfg.n_routed_experts))
        # tokens routed to each expert since the last bias update (training steps only)
        self.register_buffer("load", torch.zeros(cfg.n_routed_experts), persistent=False)

    def forward(self, x):
        scores = torch.sigmoid(F.linear(x.float(), self.weight.float()))      # s_i,t
        idx = torch.topk(scores + self.bias, self.topk, dim=-1).indices        # bias affects the choice only
        weights = scores.gather(-1, idx)
        weights = weights / weights.sum(-1, keepdim=True) * self.route_scale   # g_i,t
        if self.training:
            self.load += torch.bincount(idx.flatten(), minlength=self.load.numel())
        return weights.type_as(x), idx

    @torch.no_grad()
    def update_bias(self):
        """b_i += gamma * sign(mean load - load_i), then forget the counts."""
        if self.load.sum() > 0:
            self.bias += self.rate * torch.sign(self.load.mean() - self.load)
        self.load.zero_()


class MoE(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        E, D, H = cfg.n_routed_experts, cfg.dim, cfg.moe_hidden
        self.gate = Gate(cfg)
        # expert weights stacked [E, ...] so one index picks an expert's matrices
        self.w1 = nn.Parameter(torch.empty(E, H, D))
        self.w3 = nn.Parameter(torch.empty(E, H, D))
        self.w2 = nn.Parameter(torch.empty(E, D, H))
        self.shared = SwiGLU(D, cfg.n_shared_experts * H)

    def forward(self, x):
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        weights, idx = self.gate(x)
        routed = self.routed_dense if x.shape[0] <= self.dense_max_tokens else self.routed_grouped
        return (routed(x, weights, idx) + self.shared(x)).view(shape)

    # Two exact ways to compute sum_k g_k * expert_k(x). Decoding steps carry few tokens; every expert's
    # weights are read from memory either way, so running all experts on all tokens and weighting by the gates
    # (zero for unchosen experts) is cheapest there, and it needs no host sync, so it fits CUDA graphs.
    dense_max_tokens = 1024

    def routed_dense(self, x, weights, idx):
        gates = torch.zeros(x.shape[0], self.w1.shape[0], dtype=x.dtype, device=x.device).scatter_(1, idx, weights)
        h = F.silu(torch.einsum("nd,ehd->neh", x, self.w1)) * torch.einsum("nd,ehd->neh", x, self.w3)
        return torch.einsum("neh,edh,ne->nd", h, self.w2, gates)

    def routed_grouped(self, x, weights, idx):
        """Group the (token, expert) pairs by expert with one sort, then run each expert on its tokens: one grouped
        GEMM per matrix where the GPU has it (bf16, sm90+), else one matmul per expert."""
        flat_idx = idx.flatten()
        order = flat_idx.argsort(stable=True)
        token_of = order // idx.shape[1]
        counts = torch.bincount(flat_idx, minlength=self.w1.shape[0])
        xs = x[token_of]
        if use_grouped_mm(x):
            offs = counts.cumsum(0).to(torch.int32)  # end row of each expert's group
            xs = xs.bfloat16()
            gmm = lambda a, w: torch._grouped_mm(a, w.bfloat16().transpose(1, 2), offs=offs)
            out = gmm(F.silu(gmm(xs, self.w1)) * gmm(xs, self.w3), self.w2).type_as(x)
        else:
            out = torch.empty_like(xs)
            start = 0
            for e, n in enumerate(counts.tolist()):
                if n:
                    h = xs[start:start + n]
                    out[start:start + n] = (F.silu(h @ self.w1[e].T) * (h @ self.w3[e].T)) @ self.w2[e].T
                    start += n
        return torch.zeros_like(x).index_add_(0, token_of, out * weights.flatten()[order, None])


def use_grouped_mm(x):
    return (x.is_cuda and hasattr(torch, "_grouped_mm") and torch.cuda.get_device_capability(x.device)[0] >= 9
            and GROUPED_MM)


GROUPED_MM = True  # switch, for tests and benchmarks that compare against the per-expert loop


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_id):
        super().__init__()
        self.attn_norm, self.ffn_norm = RMSNorm(cfg.dim, cfg.norm_eps), RMSNorm(cfg.dim, cfg.norm_eps)
        self.attn = Attention(cfg, layer_id)
        self.ffn = SwiGLU(cfg.dim, cfg.dense_hidden) if layer_id < cfg.n_dense_layers else MoE(cfg)

    def forward(self, x, cos, sin, mask, cache, slots):
        x = x + self.attn(self.attn_norm(x), cos, sin, mask, cache, slots)
        return x + self.ffn(self.ffn_norm(x))


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.layers = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.head = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        cos, sin = rope_tables(cfg)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.reset_parameters()

    def reset_parameters(self):
        std = 0.02
        for name, p in self.named_parameters():
            if p.dim() < 2:
                continue
            # residual-branch outputs start small so the stack begins close to the identity (GPT-2)
            scale = 1 / math.sqrt(2 * self.cfg.n_layers) if name.endswith(("wo.weight", "w2.weight", "w2")) else 1
            nn.init.normal_(p, mean=0.0, std=std * scale)

    def forward(self, tokens, pad_mask=None, cache: KVCache | None = None):
        """tokens [B, T] -> logits [B, T, V] (float32).

        pad_mask [B, T] (True = real token) is needed only when rows carry padding; without it and without a
        cache, attention is plain causal. With a cache the tokens go into the next T slots (the caller sizes the
        cache; checking here would need a host sync)."""
        B, T = tokens.shape
        if cache is None and T > self.cfg.max_seq_len:
            raise ValueError(f"sequence of {T} tokens is longer than max_seq_len={self.cfg.max_seq_len}")
        real = torch.ones_like(tokens, dtype=torch.bool) if pad_mask is None else pad_mask
        offset = cache.n_real[:, None] if cache is not None else 0
        positions = (offset + real.cumsum(1) - 1).clamp(min=0)
        cos, sin = self.rope_cos[positions][:, None], self.rope_sin[positions][:, None]
        mask, slots = None, None
        if cache is not None or pad_mask is not None:
            slots = torch.arange(T, device=tokens.device)  # the slot (key index) each new token goes to
            if cache is not None:
                slots = slots + cache.pos
                cache.valid.index_copy_(1, slots, real)
                keys_valid = cache.valid
            else:
                keys_valid = real
            k_slot = torch.arange(keys_valid.shape[1], device=tokens.device)
            causal = k_slot[None, :] <= slots[:, None]                           # [T, S]
            mask = causal[None] & keys_valid[:, None, :]                          # [B, T, S]
            mask |= (k_slot[None, :] == slots[:, None])[None]  # a pad query sees itself: no empty rows, no NaN
            mask = mask[:, None]
        x = self.embed(tokens)
        for layer in self.layers:
            x = layer(x, cos, sin, mask, cache, slots)
        if cache is not None:
            cache.pos += T
            cache.n_real += real.sum(1)
        return self.head(self.norm(x)).float()

    def gates(self):
        return [layer.ffn.gate for layer in self.layers if isinstance(layer.ffn, MoE)]

    def update_router_bias(self):
        """Aux-loss-free balancing step; call once after each optimizer step."""
        for gate in self.gates():
            gate.update_bias()

    @torch.no_grad()
    def router_stats(self):
        """Per MoE layer, max load / mean load since the last bias update (1.0 = perfectly balanced)."""
        return [(g.load.max() / g.load.mean()).item() if g.load.sum() > 0 else float("nan") for g in self.gates()]

    def num_params(self, active=False):
        n = sum(p.numel() for p in self.parameters())
        if active:  # parameters one token touches: only k of the E routed experts
            cfg = self.cfg
            per_expert = 3 * cfg.dim * cfg.moe_hidden
            n -= len(self.gates()) * (cfg.n_routed_experts - cfg.n_activated_experts) * per_expert
        return n


def make_config(preset="small", **overrides) -> ModelConfig:
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose from {sorted(PRESETS)}")
    return replace(PRESETS[preset], **overrides)
