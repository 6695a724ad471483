"""
The fast decoder: batched sampling shaped after what a decoding step must physically read, the weights once and
the keys and values of the rows still decoding, over the slots filled so far. sample.generate is the same
computation in plain PyTorch, and the tests hold this one to it (greedy tokens equal, draws from the same
distribution).

- Weights: on a GPU the decoder reads a bf16 copy of the model, refreshed at the start of every call (RL updates
  the fp32 weights in between); autocast would recast every matrix on every step.
- Kernels: in plain PyTorch a step is ~280 small kernels, a few microseconds each whatever the batch. The copy's
  modules are swapped for fused ones (`fuse`) that run about a dozen a layer (kernels/decode.py): RMSNorm; the qkv
  matmul; RoPE, the cache write and attention over the row's filled slots in one kernel (a finished row reads
  none); the output matmul; the router; and every expert as one SwiGLU (a matmul, one kernel, a matmul). Around
  the layers, one kernel for the step's positions and cache counts and, without a nucleus (top-p 1, the RL's
  rollouts), one for sampling, the stop check and writing the token (random numbers from a seed drawn for each
  call).
- Finished rows stop costing: every few steps the rows still decoding are moved to the front of the batch
  (`move_rows_to_front`) once they fit a smaller batch `bucket`, and later steps run only those.
- Attention spans the slots filled so far, rounded up to SLOT_BUCKET (`cache_view`), not the whole cache.
- One step (forward, sampling, stop check, writing the token) has static shapes and no host sync, so on a GPU
  each (batch bucket, slots) pair is captured once as a CUDA graph and replayed; graphs, cache and buffers are kept
  across calls, so an RL run captures each one once.
On the CPU the same steps run eagerly on the model itself.
"""

import copy

import torch

import model as plain
from data import get_tokenizer, pad_token_id, stop_token_ids
from sample import budgets_of, sample_next


# -----------------------------------------------------------------------------
# Fused modules: the model's own classes with their decoding paths through kernels/decode.py (no gradient).
# `fuse` swaps them into a copy of the model; the parameters stay where they are.

def _kernels():
    from kernels import decode  # Triton: imported only where the fused modules run
    return decode


class FusedRMSNorm(plain.RMSNorm):
    def forward(self, x):
        return _kernels().rms_norm(x, self.weight, self.eps)


class FusedAttention(plain.Attention):
    def forward(self, x, cos, sin, mask, cache, slots):
        B, T, C = x.shape
        if cache is None or T > 1:
            return super().forward(x, cos, sin, mask, cache, slots)
        qkv = self.wqkv(x).view(B, T, 3, self.n_heads, C // self.n_heads)
        # a decoding step: RoPE, the cache write and attention over the valid slots in one kernel
        return self.wo(_kernels().attend_one_step(qkv, cos[:, 0], sin[:, 0], cache.k[self.layer_id],
                                                  cache.v[self.layer_id], cache.valid, slots))

    def rotate_queries_keys(self, qkv, cos, sin):
        return _kernels().rope_queries_keys(qkv, cos[:, 0], sin[:, 0])


class FusedSwiGLU(plain.SwiGLU):
    def forward(self, x):
        if x.numel() > plain.DENSE_MAX_TOKENS * x.shape[-1]:
            return super().forward(x)
        return _kernels().swiglu_experts(x.reshape(-1, x.shape[-1]), *self.packed).view(x.shape)

    @torch.no_grad()
    def pack(self):
        """The input projections as one matrix (kernels/decode.swiglu_experts), from the current weights; written
        in place after the first call, as CUDA graphs captured since then read it where it is."""
        w13 = self.packed[0] if hasattr(self, "packed") else None
        self.packed = (torch.cat([self.w1.weight, self.w3.weight], out=w13), self.w2.weight)


class FusedMoE(plain.MoE):
    def forward(self, x):
        if x.reshape(-1, x.shape[-1]).shape[0] > plain.DENSE_MAX_TOKENS:
            return super().forward(x)
        E, H, _ = self.w1.shape
        return _kernels().swiglu_experts(x.reshape(-1, x.shape[-1]), *self.packed, self.gate, E, H).view(x.shape)

    @torch.no_grad()
    def pack(self):
        """The routed experts and the shared one as one SwiGLU of E*H + H_s hidden units (routed expert e's units
        are e*H .. (e+1)*H - 1), its input projections one matrix, from the current weights; written in place after
        the first call, as CUDA graphs captured since then read them there."""
        E, H, D = self.w1.shape
        shared = self.shared
        w13, w2 = self.packed if hasattr(self, "packed") else (None, None)
        self.packed = (
            torch.cat([self.w1.reshape(E * H, D), shared.w1.weight, self.w3.reshape(E * H, D), shared.w3.weight],
                      out=w13),
            torch.cat([self.w2.permute(1, 0, 2).reshape(D, E * H), shared.w2.weight], 1, out=w2))


class FusedTransformer(plain.Transformer):
    def positions_and_mask(self, real, padded, cache, segment_ids):
        if cache is None or real.shape[1] > 1 or self.cfg.attention != "mha":
            return super().positions_and_mask(real, padded, cache, segment_ids)
        # an MHA decoding step: positions, their angles and the cache's counts in one kernel, and no mask
        # (FusedAttention's kernel reads cache.valid itself)
        cos, sin = _kernels().step_positions(real, cache.n_real, cache.valid, cache.pos, self.rope_cos, self.rope_sin)
        return cos, sin, None, cache.pos


FUSED = {plain.RMSNorm: FusedRMSNorm, plain.Attention: FusedAttention, plain.SwiGLU: FusedSwiGLU,
         plain.MoE: FusedMoE, plain.Transformer: FusedTransformer}


def fuse(net):
    """Swap the fused classes into `net` (a copy of the model: its modules change class, their parameters stay)
    and pack the feed-forward matrices. A MoE packs its shared expert with its routed ones, so the shared SwiGLU
    stays plain."""
    shared = {id(m.shared) for m in net.modules() if isinstance(m, plain.MoE)}
    for module in net.modules():
        if type(module) in FUSED and id(module) not in shared:
            module.__class__ = FUSED[type(module)]
    pack(net)
    return net


def pack(net):
    for module in net.modules():
        if isinstance(module, (FusedSwiGLU, FusedMoE)):
            module.pack()


def is_fused(net):
    return isinstance(net, FusedTransformer)


# -----------------------------------------------------------------------------
# The KV cache as the decoder uses it: views over the first rows and slots, and rows moved to the front

def cache_view(cache, rows, slots):
    """The same cache restricted to its first `rows` rows and `slots` slots (no copy)."""
    part = object.__new__(plain.KVCache)
    part.per_token_names = cache.per_token_names
    for name, buf in cache.per_token_buffers().items():
        setattr(part, name, buf[:, :rows, :, :slots])
    part.valid, part.n_real, part.pos = cache.valid[:rows, :slots], cache.n_real[:rows], cache.pos
    return part


def move_rows_to_front(cache, order, slots):
    """Move rows `order` (a LongTensor) to the front, in that order, in place; only the first `slots` slots
    matter."""
    n = len(order)
    for buf in cache.per_token_buffers().values():
        buf[:, :n, :, :slots] = buf[:, order, :, :slots]
    cache.valid[:n, :slots] = cache.valid[order, :slots]
    cache.n_real[:n] = cache.n_real[order]


def bucket(n):
    """The batch sizes a decoder runs at, one CUDA graph each: powers of two and 1.5x between (2, 3, 4, 6, 8,
    12, ...). Rows that finish are compacted away once the live ones fit the next bucket down."""
    size = 2
    while size < n:
        size = size * 3 // 2 if size & (size - 1) == 0 else size * 4 // 3
    return size


SLOT_BUCKET = 64  # attention reads the filled slots rounded up to this: one graph per 64 slots, little waste


def slots_for(n):
    """n slots rounded up to a multiple of SLOT_BUCKET: what a step's attention reads."""
    return -(-n // SLOT_BUCKET) * SLOT_BUCKET


class Decoder:
    """Batched sampling from one model (see the module's docstring). fused_kernels=False runs the copy's steps as
    plain PyTorch ops (what the fused kernels are measured against); cuda_graph=False runs them eagerly."""

    def __init__(self, model, cuda_graph=True, fused_kernels=True):
        self.model = model
        self.device = next(model.parameters()).device
        self.on_gpu = self.device.type == "cuda"
        self.cuda_graph = cuda_graph and self.on_gpu
        if self.on_gpu:
            self.net = copy.deepcopy(model).eval().requires_grad_(False)
            for name, p in self.net.named_parameters():
                if ".gate." not in name:  # the router computes its affinities in fp32 (model.Gate)
                    p.data = p.data.bfloat16()
            if fused_kernels:
                fuse(self.net)
        else:
            self.net = model
        self.rows = self.slots = 0  # capacity of the cache and buffers, grown on demand
        self.graphs, self.stop_tensors = {}, {}
        self.pool = torch.cuda.graph_pool_handle() if self.cuda_graph else None
        self.refresh_weights()

    def refresh_weights(self):
        """The copy takes the model's current weights (RL changed them since the last call), and the fused
        feed-forward layers their packed matrices."""
        if self.net is self.model:
            return
        for mine, theirs in zip(self.net.state_dict().values(), self.model.state_dict().values()):
            mine.copy_(theirs)
        pack(self.net)

    def _allocate(self, rows, slots):
        self.rows, self.slots, self.graphs = rows, slots, {}
        dtype = torch.bfloat16 if self.on_gpu else next(self.model.parameters()).dtype
        self.cache = plain.KVCache(self.model.cfg, rows, slots, self.device, dtype)
        long = dict(dtype=torch.long, device=self.device)
        self.tokens = torch.zeros(rows, **long)  # each row's last token, the next step's input
        self.row_of = torch.zeros(rows, **long)  # which caller's row each batch row holds
        self.budget = torch.zeros(rows, **long)  # each row's max_new_tokens
        self.done = torch.zeros(rows, dtype=torch.bool, device=self.device)
        self.out = torch.zeros(rows, slots, **long)  # tokens by caller's row and step
        self.t = torch.zeros(1, **long)  # the step being sampled
        self.seed = torch.zeros(1, **long)  # the fused sampler's, drawn anew by every call

    def _sample_into_buffers(self, logits, rows, sampling):
        """Sample token t for the first `rows` rows from logits, write it out, update done; advance t."""
        temperature, top_p, stop_ids, generator = sampling
        stop = self.stop_tensors[stop_ids]
        logits = logits[:, :get_tokenizer().n_vocab]
        if self.fused_sampling(top_p):
            _kernels().sample_step(logits, temperature, self.seed, self.t, self.row_of[:rows], self.budget[:rows],
                                   self.done[:rows], self.tokens[:rows], self.out, stop)
        else:
            nxt = sample_next(logits, temperature, top_p, generator)
            self.out.index_put_((self.row_of[:rows], self.t.expand(rows)), nxt)
            self.done[:rows] |= torch.isin(nxt, stop) | (self.t + 1 >= self.budget[:rows])
            self.tokens[:rows] = nxt
        self.t += 1

    def fused_sampling(self, top_p):
        """Whether a step's sampling and bookkeeping run as one kernel (kernels/decode.sample_step, ~12 kernels
        fewer a step): on the fused copy, for any temperature but without a nucleus (the RL's rollouts;
        evaluation's top-p 0.95 sorts the probabilities in PyTorch)."""
        return is_fused(self.net) and top_p == 1.0

    def _step(self, rows, slots, sampling):
        """One decoding step for the first `rows` rows over the first `slots` slots: feed each row's last token
        (finished rows feed theirs as padding, masked out), then sample the next."""
        real = ~self.done[:rows]
        logits = self.net(self.tokens[:rows, None], pad_mask=real[:, None], cache=cache_view(self.cache, rows, slots))
        self._sample_into_buffers(logits[:, -1], rows, sampling)

    def _graph(self, rows, slots, sampling):
        key = (rows, slots, *sampling[:3])
        if key not in self.graphs:
            # Warm up on a side stream (lazy initialisation must not be captured), then undo what it wrote:
            # its cache slot and output token are rewritten by the real step.
            state = [self.cache.pos, self.cache.n_real, self.cache.valid, self.tokens, self.done, self.t]
            saved = [x.clone() for x in state]
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                self._step(rows, slots, sampling)
            torch.cuda.current_stream(self.device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self.pool):  # one memory pool: graphs run one at a time
                self._step(rows, slots, sampling)
            for x, old in zip(state, saved):
                x.copy_(old)
            self.graphs[key] = graph
        return self.graphs[key]

    @torch.no_grad()
    def generate(self, prompts, max_new_tokens, temperature=1.0, top_p=1.0, stop_ids=None, generator=None):
        """sample.generate's contract: a completion for each prompt (a list of token-id lists); max_new_tokens is
        one budget for all rows or a list with one per row; each completion ends with its stop token unless it ran
        out of its budget."""
        budgets = budgets_of(self.model, prompts, max_new_tokens)
        stop_ids = stop_token_ids() if stop_ids is None else stop_ids
        B, P, N = len(prompts), max(len(p) for p in prompts), max(budgets)
        rows = bucket(B)  # rows past B are placeholders, finished from the start
        slots = slots_for(P + N)
        if rows > self.rows or slots > self.slots:
            self._allocate(max(rows, self.rows), max(slots, self.slots))
        self.refresh_weights()
        tokens = torch.full((rows, P), pad_token_id(), dtype=torch.long)
        real = torch.zeros(rows, P, dtype=torch.bool)
        for i, p in enumerate(prompts):
            tokens[i, P - len(p):] = torch.tensor(p)
            real[i, P - len(p):] = True
        real[B:, -1] = True
        tokens, real = tokens.to(self.device), real.to(self.device)
        self.row_of[:rows] = torch.arange(rows, device=self.device)
        self.budget[:rows] = torch.tensor(budgets + [1] * (rows - B), device=self.device)
        self.done[:rows] = False
        self.t.zero_()
        if self.fused_sampling(top_p):  # a graph reads the seed from its buffer: a fresh one for every call
            self.seed.copy_(torch.randint(2 ** 62, (1,), device=self.device, generator=generator))
        self.cache.pos.zero_()
        self.cache.n_real.zero_()
        self.cache.valid.zero_()
        # graphs keep pointers to the stop ids: one persistent tensor per set of them
        stop_key = tuple(stop_ids)
        if stop_key not in self.stop_tensors:
            self.stop_tensors[stop_key] = torch.tensor(stop_key, dtype=torch.long, device=self.device)
        sampling = (temperature, top_p, stop_key, generator)
        was_training = self.model.training
        self.net.eval()
        logits = self.net(tokens, pad_mask=real, cache=cache_view(self.cache, rows, P))[:, -1]
        self._sample_into_buffers(logits, rows, sampling)
        self.done[B:rows] = True
        for t in range(1, N):
            if t % 8 == 0:  # syncing every step would stall the GPU
                live = (~self.done[:rows]).nonzero().squeeze(1)
                if len(live) == 0:
                    break
                if bucket(len(live)) < rows:
                    finished = self.done[:rows].nonzero().squeeze(1)
                    rows = bucket(len(live))
                    order = torch.cat([live, finished])[:rows]
                    move_rows_to_front(self.cache, order, P + t)
                    for buf in (self.tokens, self.row_of, self.budget, self.done):
                        buf[:rows] = buf[order]
            used = slots_for(P + t)  # the filled slots and the step's own
            if self.cuda_graph and generator is None:  # a graph draws from the default CUDA generator
                self._graph(rows, used, sampling).replay()
            else:
                self._step(rows, used, sampling)
        self.model.train(was_training)

        completions = []
        for row, budget in zip(self.out[:B, :N].tolist(), budgets):
            row = row[:budget]
            ends = [i for i, tok in enumerate(row) if tok in stop_ids]
            completions.append(row[:ends[0] + 1] if ends else row)
        return completions
