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
- A KV cache for decoding; rows may be left-padded (ragged prompts): padding is masked out of attention and
  each row's RoPE positions count only its real tokens.
- Optional multi-head latent attention (`attention="mla"`; DeepSeek-V2 sec. 2.1, V3 sec. 2.1.1 eq. 1-11) in
  place of standard multi-head attention ("mha", the default). Keys and values are up-projected from one shared
  low-rank latent c_kv = W_DKV h (eq. 1-2, 5); position enters only through a small decoupled key k_R = RoPE(W_KR h),
  shared by all heads, and matching query parts (eq. 3-4, 8-9); scores are scaled by 1/sqrt(d_nope + d_rope)
  (eq. 10). Only c_kv and k_R are cached, so a token costs (d_c + d_R) values per layer instead of 2 * dim.
  Training and prefill expand the latent to per-head keys and values ("naive"); a cached decoding step instead
  absorbs W_UK into the query and W_UV into the output and attends over the latent directly ("absorb", V2 sec.
  2.1.2), never materialising per-head keys and values of the whole cache.

This is the one plain path of every part. The decoding engine (engine/decoder.py) runs a copy of this model with
fused Triton kernels swapped in, and training compiles its blocks (engine/compile.py); both are tested against
this file.
"""

import math
from dataclasses import dataclass, replace

import torch
import torch.nn as nn
import torch.nn.functional as F

# A MoE layer given at most DENSE_MAX_TOKENS tokens (a decoding step) runs every expert on every token and weights
# them by the gates (MoE.routed_dense); more tokens are grouped by expert (MoE.routed_grouped).
DENSE_MAX_TOKENS = 1024


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
    attention: str = "mha"        # "mha" (multi-head attention) or "mla" (multi-head latent attention)
    # MLA sizes, in DeepSeek-V2's proportions to the MHA head size d_h = dim / n_heads: latent 4 d_h, decoupled
    # RoPE key d_h / 2, per-head keys and values d_h (V2 sec. 3.1.2)
    kv_lora_rank: int = 256       # d_c, width of the cached latent c_kv
    q_lora_rank: int = 0          # d_c', width of the query latent; 0 = queries straight from h (as V2-Lite)
    qk_nope_head_dim: int = 64    # d_h, the part of each query/key head without position
    qk_rope_head_dim: int = 32    # d_h^R, the decoupled RoPE part (the key's is shared by all heads)
    v_head_dim: int = 64
    mla_decode: str = "absorb"    # cached decoding steps: "absorb" (attend over the latent) or "naive"

    def __post_init__(self):
        if self.attention not in ("mha", "mla"):
            raise ValueError(f"attention must be 'mha' or 'mla', got {self.attention!r}")
        if self.attention == "mha" and (self.dim % self.n_heads or (self.dim // self.n_heads) % 2):
            raise ValueError(f"mha needs dim ({self.dim}) divisible by n_heads ({self.n_heads}) into an even "
                             "head size (RoPE rotates pairs)")
        if self.attention == "mla":
            sizes = dict(kv_lora_rank=self.kv_lora_rank, qk_nope_head_dim=self.qk_nope_head_dim,
                         qk_rope_head_dim=self.qk_rope_head_dim, v_head_dim=self.v_head_dim)
            if min(sizes.values()) < 1 or self.q_lora_rank < 0:
                raise ValueError(f"mla needs positive {sizes} and q_lora_rank >= 0 (got {self.q_lora_rank})")
            if self.qk_rope_head_dim % 2:
                raise ValueError(f"qk_rope_head_dim must be even (RoPE rotates pairs), got {self.qk_rope_head_dim}")
            if self.mla_decode not in ("absorb", "naive"):
                raise ValueError(f"mla_decode must be 'absorb' or 'naive', got {self.mla_decode!r}")


PRESETS = {
    "tiny": ModelConfig(dim=64, n_layers=2, n_heads=4, dense_hidden=128, n_routed_experts=4,
                        n_activated_experts=2, moe_hidden=32,
                        kv_lora_rank=64, qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=16),
    "small": ModelConfig(),
    # 8.7x small's active parameters (114M of 478M), for several GPUs (distributed.py); DDP's full copy per GPU
    # (weights, gradients, AdamW state: ~8 GB) still fits an 80 GB card, so it needs no sharding
    "medium": ModelConfig(dim=768, n_layers=12, n_heads=12, dense_hidden=3072, moe_hidden=1024),
    # Dense students for distillation (R1 sec. 2.4 distils into dense models): every layer a plain SwiGLU, no
    # experts; 1.2M, 4.5M and 12.2M parameters, all below the small teacher's 42M (13M active per token)
    "dense-1m": ModelConfig(dim=128, n_layers=4, n_heads=4, n_dense_layers=4, dense_hidden=512),
    "dense-4m": ModelConfig(dim=256, n_layers=4, n_heads=4, n_dense_layers=4, dense_hidden=1024),
    "dense-12m": ModelConfig(dim=384, n_layers=5, n_heads=6, n_dense_layers=5, dense_hidden=1536),
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
        # in float32 (a no-op for the residual stream): MLA also normalises bf16 projections under autocast
        return F.rms_norm(x.float(), (x.shape[-1],), self.weight.float(), self.eps).type_as(x)


def rope_tables(head_dim, max_seq_len, theta):
    """cos, sin [max_seq_len, head_dim / 2] for the vectors RoPE rotates: whole heads in MHA, only the
    decoupled parts (qk_rope_head_dim) in MLA."""
    freqs = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    angles = torch.outer(torch.arange(max_seq_len, dtype=torch.float32), freqs)
    return angles.cos(), angles.sin()


def apply_rope(x, cos, sin):
    """x [B, H, T, D]; cos, sin [B, 1, T, D/2]. Rotates pairs (x[i], x[i + D/2]) by position * freq."""
    x1, x2 = x.float().chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).type_as(x)


class KVCache:
    """What attention needs of past tokens, for every layer and a batch of rows, in fixed-size buffers.

    Slot j of every row is written at the same decoding step; `valid[b, j]` says whether it holds a real token
    of row b (left padding holds none), and `n_real[b]` counts row b's real tokens so far, which is the RoPE
    position of its next token. `pos` counts the slots filled so far; attention spans all slots and masks the
    invalid and unfilled ones.

    Every per-token buffer has the shape [n_layers, B, kv_heads, max_len, width]: MHA keeps keys `k` and values
    `v` of each head; MLA keeps one latent `latent` and one RoPE key `k_rope`, shared by all heads (kv_heads 1)."""

    def __init__(self, cfg: ModelConfig, batch_size, max_len, device, dtype):
        def buffer(kv_heads, width):
            return torch.zeros(cfg.n_layers, batch_size, kv_heads, max_len, width, device=device, dtype=dtype)

        if cfg.attention == "mla":
            self.latent, self.k_rope = buffer(1, cfg.kv_lora_rank), buffer(1, cfg.qk_rope_head_dim)
            self.per_token_names = ("latent", "k_rope")
        else:
            head_dim = cfg.dim // cfg.n_heads
            self.k, self.v = buffer(cfg.n_heads, head_dim), buffer(cfg.n_heads, head_dim)
            self.per_token_names = ("k", "v")
        self.valid = torch.zeros(batch_size, max_len, dtype=torch.bool, device=device)
        self.n_real = torch.zeros(batch_size, dtype=torch.long, device=device)
        self.pos = torch.zeros(1, dtype=torch.long, device=device)  # slots filled so far

    def keep_rows(self, rows):
        """Keep only the rows `rows` (a LongTensor), in that order: the rows still decoding."""
        for name, buf in self.per_token_buffers().items():
            setattr(self, name, buf[:, rows])
        self.valid, self.n_real = self.valid[rows], self.n_real[rows]

    def per_token_buffers(self):
        """name -> buffer [n_layers, B, kv_heads, max_len, width]: rows on dim 1, slots on dim 3."""
        return {name: getattr(self, name) for name in self.per_token_names}


def kv_cache_bytes_per_token(cfg: ModelConfig, dtype=torch.bfloat16):
    """KV-cache bytes one token takes over all layers: MHA caches a key and a value per head, 2 * dim values
    per layer; MLA caches only the latent and the shared RoPE key, d_c + d_h^R values (V2 Table 1)."""
    width = cfg.kv_lora_rank + cfg.qk_rope_head_dim if cfg.attention == "mla" else 2 * cfg.dim
    return cfg.n_layers * width * torch.finfo(dtype).bits // 8


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_id):
        super().__init__()
        self.layer_id, self.n_heads = layer_id, cfg.n_heads
        self.wqkv = nn.Linear(cfg.dim, 3 * cfg.dim, bias=False)
        self.wo = nn.Linear(cfg.dim, cfg.dim, bias=False)

    def forward(self, x, cos, sin, mask, cache: KVCache | None, slots):
        B, T, C = x.shape
        qkv = self.wqkv(x).view(B, T, 3, self.n_heads, C // self.n_heads)
        q, k = self.rotate_queries_keys(qkv, cos, sin)
        v = qkv[:, :, 2].transpose(1, 2)  # [B, H, T, D], as q and k
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

    def rotate_queries_keys(self, qkv, cos, sin):
        """RoPE on the queries and keys of qkv [B, T, 3, H, D] -> q, k [B, H, T, D], rotated together (half the
        kernels of two calls)."""
        return apply_rope(qkv[:, :, :2].permute(2, 0, 3, 1, 4), cos, sin)


class MLA(nn.Module):
    """Multi-head latent attention (V3 eq. 1-11). Same interface as `Attention`; its cache is the latent."""

    def __init__(self, cfg: ModelConfig, layer_id):
        super().__init__()
        self.layer_id, self.n_heads, self.decode = layer_id, cfg.n_heads, cfg.mla_decode
        self.q_lora_rank = cfg.q_lora_rank
        self.rank, self.nope, self.rope, self.v_dim = (cfg.kv_lora_rank, cfg.qk_nope_head_dim,
                                                      cfg.qk_rope_head_dim, cfg.v_head_dim)
        qk_dim = self.nope + self.rope
        if self.q_lora_rank:  # low-rank queries (eq. 6-7), with an RMSNorm on their latent as DeepSeek's models have
            self.wq_a = nn.Linear(cfg.dim, cfg.q_lora_rank, bias=False)
            self.q_norm = RMSNorm(cfg.q_lora_rank, cfg.norm_eps)
            self.wq_b = nn.Linear(cfg.q_lora_rank, cfg.n_heads * qk_dim, bias=False)
        else:
            self.wq = nn.Linear(cfg.dim, cfg.n_heads * qk_dim, bias=False)
        self.wkv_a = nn.Linear(cfg.dim, self.rank + self.rope, bias=False)  # [W_DKV; W_KR] (eq. 1, 3)
        self.kv_norm = RMSNorm(self.rank, cfg.norm_eps)  # on the latent, as DeepSeek-V2 does (its sec. 3.1.2)
        self.wkv_b = nn.Linear(self.rank, cfg.n_heads * (self.nope + self.v_dim), bias=False)  # [W_UK; W_UV] per head
        self.wo = nn.Linear(cfg.n_heads * self.v_dim, cfg.dim, bias=False)
        self.scale = qk_dim ** -0.5  # eq. 10

    def forward(self, x, cos, sin, mask, cache: KVCache | None, slots):
        B, T, _ = x.shape
        H = self.n_heads
        q = self.wq_b(self.q_norm(self.wq_a(x))) if self.q_lora_rank else self.wq(x)
        q_nope, q_rope = q.view(B, T, H, self.nope + self.rope).transpose(1, 2).split([self.nope, self.rope], -1)
        q_rope = apply_rope(q_rope, cos, sin)
        latent, k_rope = self.wkv_a(x)[:, None].split([self.rank, self.rope], -1)  # [B, 1, T, .]: one "kv head"
        latent, k_rope = self.kv_norm(latent), apply_rope(k_rope, cos, sin)
        if cache is not None:
            latent_all, k_rope_all = cache.latent[self.layer_id], cache.k_rope[self.layer_id]
            latent_all.index_copy_(2, slots, latent.to(latent_all.dtype))
            k_rope_all.index_copy_(2, slots, k_rope.to(k_rope_all.dtype))
            latent, k_rope = latent_all.to(q.dtype), k_rope_all.to(q.dtype)
        if cache is not None and T == 1 and self.decode == "absorb":  # a decoding step: one new token per row
            y = self.absorbed(q_nope, q_rope, latent, k_rope, mask)
        else:
            y = self.naive(q_nope, q_rope, latent, k_rope, mask)
        return self.wo(y.transpose(1, 2).reshape(B, T, H * self.v_dim))

    def naive(self, q_nope, q_rope, latent, k_rope, mask):
        """Expand the latent of every key slot to per-head keys and values (eq. 2, 4, 5), then plain attention."""
        B, _, S, _ = latent.shape
        kv = self.wkv_b(latent[:, 0]).view(B, S, self.n_heads, self.nope + self.v_dim).transpose(1, 2)
        k_nope, v = kv.split([self.nope, self.v_dim], -1)
        q = torch.cat([q_nope, q_rope], -1)
        k = torch.cat([k_nope, k_rope.expand(-1, self.n_heads, -1, -1)], -1)
        if mask is None:
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=self.scale)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.scale)

    def absorbed(self, q_nope, q_rope, latent, k_rope, mask):
        """The same attention without per-head keys and values: q_nope . (W_UK c) = (W_UK^T q_nope) . c, and
        sum_j p_j (W_UV c_j) = W_UV (sum_j p_j c_j). Every head attends over the one cached latent, like
        multi-query attention with head size d_c + d_h^R; cheap when few queries meet many cached slots."""
        w_kv = self.wkv_b.weight.to(q_nope.dtype).view(self.n_heads, self.nope + self.v_dim, self.rank)
        w_uk, w_uv = w_kv.split([self.nope, self.v_dim], 1)                          # [H, d_nope, d_c], [H, d_v, d_c]
        latent, k_rope = latent[:, 0], k_rope[:, 0]                                   # [B, S, .]
        # einsum keeps each product one batched matmul (batch b or h), never copying the cache per head
        q_latent = torch.einsum("bhtn,hnc->bhtc", q_nope, w_uk)
        scores = (torch.einsum("bhtc,bsc->bhts", q_latent, latent)
                  + torch.einsum("bhtr,bsr->bhts", q_rope, k_rope)) * self.scale
        probs = scores.masked_fill(~mask, float("-inf")).softmax(-1, dtype=torch.float32).type_as(latent)
        return torch.einsum("bhtc,hvc->bhtv", torch.einsum("bhts,bsc->bhtc", probs, latent), w_uv)


class SwiGLU(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.w1 = nn.Linear(dim, hidden, bias=False)  # gate
        self.w3 = nn.Linear(dim, hidden, bias=False)  # up
        self.w2 = nn.Linear(hidden, dim, bias=False)  # down

    def forward(self, x):
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


def expert_counts(idx, n_experts):
    """Tokens routed to each expert. torch.bincount on a GPU reads the indices' min and max back to the host, a
    sync that stalls the launch queue of every training forward; a scatter-add on the device does not."""
    flat = idx.flatten()
    return torch.zeros(n_experts, dtype=torch.long, device=idx.device).scatter_add_(0, flat, torch.ones_like(flat))


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
            self.load += expert_counts(idx, self.load.numel())
        return weights.type_as(x), idx

    @torch.no_grad()
    def update_bias(self):
        """b_i += gamma * sign(mean load - load_i), then forget the counts. No load (no training forward since
        the last update) moves nothing: sign(0) = 0, and no host sync is needed to test for it."""
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
        routed = self.routed_dense if x.shape[0] <= DENSE_MAX_TOKENS else self.routed_grouped
        return (routed(x, weights, idx) + self.shared(x)).view(shape)

    # Two exact ways to compute sum_k g_k * expert_k(x). Decoding steps carry few tokens; every expert's
    # weights are read from memory either way, so running all experts on all tokens and weighting by the gates
    # (zero for unchosen experts) is cheapest there, and it needs no host sync, so it fits CUDA graphs.
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
        counts = expert_counts(flat_idx, self.w1.shape[0])
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
    """Whether routed_grouped runs a grouped GEMM: where the GPU has one (torch._grouped_mm: bf16, sm90+)."""
    return x.is_cuda and hasattr(torch, "_grouped_mm") and torch.cuda.get_device_capability(x.device)[0] >= 9


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_id):
        super().__init__()
        self.attn_norm, self.ffn_norm = RMSNorm(cfg.dim, cfg.norm_eps), RMSNorm(cfg.dim, cfg.norm_eps)
        self.attn = MLA(cfg, layer_id) if cfg.attention == "mla" else Attention(cfg, layer_id)
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
        rope_dim = cfg.qk_rope_head_dim if cfg.attention == "mla" else cfg.dim // cfg.n_heads
        cos, sin = rope_tables(rope_dim, cfg.max_seq_len, cfg.rope_theta)
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

    def forward(self, tokens, pad_mask=None, cache: KVCache | None = None, segment_ids=None):
        """tokens [B, T] -> logits [B, T, V] (float32).

        pad_mask [B, T] (True = real token) is needed only when rows carry padding; without it and without a
        cache, attention is plain causal. With a cache the tokens go into the next T slots (the caller sizes the
        cache; checking here would need a host sync).
        segment_ids [B, T] is for training on packed rows (sft.py): each row holds several examples, each a
        contiguous run of one id; a token attends only to earlier tokens of its own segment and its RoPE
        position counts from the segment's start, so every example is computed exactly as if it were alone."""
        B, T = tokens.shape
        if cache is None and T > self.cfg.max_seq_len:
            raise ValueError(f"sequence of {T} tokens is longer than max_seq_len={self.cfg.max_seq_len}")
        real = torch.ones_like(tokens, dtype=torch.bool) if pad_mask is None else pad_mask
        cos, sin, mask, slots = self.positions_and_mask(real, pad_mask is not None, cache, segment_ids)
        x = self.embed(tokens)
        for layer in self.layers:
            x = layer(x, cos, sin, mask, cache, slots)
        if cache is not None:
            cache.pos += T  # once every layer has written its keys and values at the slots this step filled
        return self.head(self.norm(x)).float()

    def positions_and_mask(self, real, padded, cache, segment_ids):
        """Each token's RoPE angles cos, sin [B, 1, T, D/2], the attention mask [B, 1, T, S] (None: plain causal)
        and the slots [T] the tokens take (None without a cache or padding); with a cache, also marks the slots'
        validity and counts the real tokens."""
        T = real.shape[1]
        offset = cache.n_real[:, None] if cache is not None else 0
        positions = (offset + real.cumsum(1) - 1).clamp(min=0)
        mask, slots = None, None
        if segment_ids is not None:
            if cache is not None or padded:
                raise ValueError("segment_ids is for packed training rows: it takes no cache and no pad_mask")
            t = torch.arange(T, device=real.device)
            starts = torch.ones_like(segment_ids, dtype=torch.bool)
            starts[:, 1:] = segment_ids[:, 1:] != segment_ids[:, :-1]
            positions = t - torch.where(starts, t, 0).cummax(1).values            # t - start of t's segment
            same_segment = segment_ids[:, :, None] == segment_ids[:, None, :]       # [B, T, T]
            mask = (same_segment & (t[None, :] <= t[:, None])[None])[:, None]      # document-causal
        cos, sin = self.rope_cos[positions][:, None], self.rope_sin[positions][:, None]
        if cache is not None or padded:
            slots = torch.arange(T, device=real.device)  # the slot (key index) each new token goes to
            keys_valid = real
            if cache is not None:
                slots = slots + cache.pos
                cache.valid.index_copy_(1, slots, real)
                cache.n_real += real.sum(1)
                keys_valid = cache.valid
            k_slot = torch.arange(keys_valid.shape[1], device=real.device)
            causal = k_slot[None, :] <= slots[:, None]                           # [T, S]
            mask = causal[None] & keys_valid[:, None, :]                          # [B, T, S]
            mask |= (k_slot[None, :] == slots[:, None])[None]  # a pad query sees itself: no empty rows, no NaN
            mask = mask[:, None]
        return cos, sin, mask, slots

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
