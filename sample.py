"""
Batched generation with the KV cache, and a CLI that loads a checkpoint and answers a problem.

    python sample.py --ckpt out/rl.pt --numbers 3 7 11 --target 54 --num-samples 4

Prompts of different lengths are left-padded to a common length; the model masks the padding and gives each
row its own RoPE positions (see model.py), so a row decodes exactly as it would alone.
"""

import argparse
import copy
import time
from typing import NamedTuple

import torch

import rewards
from checkpoint import load_checkpoint
from data import (check_countdown, countdown_question, encode, get_tokenizer, make_prompt, pad_token_id,
                  stop_token_ids)
from kernels import decode as decode_kernels
from model import KVCache
from template import THINK


def sample_next(logits, temperature=1.0, top_p=1.0, generator=None):
    """logits [B, V] -> token ids [B]. temperature 0 is greedy; top_p < 1 keeps the smallest set of tokens
    whose probability reaches top_p (nucleus sampling). The draw is an exponential race, argmax p_i / E_i with
    E_i ~ Exp(1), which picks token i with probability p_i (the smallest of independent exponential clocks of
    rates p_i) and, unlike torch.multinomial, has static shapes and no host sync: it runs inside a CUDA graph."""
    if temperature == 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits / temperature, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        outside = sorted_probs.cumsum(-1) - sorted_probs > top_p  # mass before this token already reaches top_p
        probs = probs.scatter(-1, order, sorted_probs.masked_fill(outside, 0.0))
    clocks = torch.empty_like(probs).exponential_(generator=generator)
    return (probs / clocks).argmax(-1)


def bucket(n):
    """The batch sizes a decoder runs at, one CUDA graph each: powers of two and 1.5x between (2, 3, 4, 6, 8,
    12, ...). Rows that finish are compacted away once the live ones fit the next bucket down."""
    size = 2
    while size < n:
        size = size * 3 // 2 if size & (size - 1) == 0 else size * 4 // 3
    return size


SLOT_BUCKET = 64  # attention reads the filled slots rounded up to this: one graph per 64 slots, little waste


class Decoder:
    """Batched sampling from one model, shaped after what a decoding step must physically read: the weights
    once and the keys and values of the rows still decoding, over the slots filled so far.

    - Weights: on a GPU the decoder reads a bf16 copy of the model, refreshed at the start of every call
      (RL updates the fp32 weights in between); autocast would recast every matrix on every step.
    - Kernels: in plain PyTorch a step is ~280 small kernels, a few microseconds each whatever the batch; the
      copy runs about a dozen a layer (kernels/decode.py; fused_kernels=False: none of it): RMSNorm; the qkv
      matmul; RoPE, the cache write and attention over the row's filled slots in one kernel (a finished row
      reads none); the output matmul; the router; and every expert as one SwiGLU (a matmul, one kernel, a
      matmul). Around the layers, one kernel for the step's positions and cache counts and, without a nucleus
      (top-p 1, the RL's rollouts), one for sampling, the stop check and writing the token (random numbers from
      a seed drawn for each call).
    - Finished rows stop costing: every few steps the rows still decoding are moved to the front of the batch
      (KVCache.keep_rows) once they fit a smaller batch `bucket`, and later steps run only those.
    - Attention spans the slots filled so far (the plain path: rounded up to SLOT_BUCKET, KVCache.view), not
      the whole cache.
    - One step (forward, sampling, stop check, writing the token) has static shapes and no host sync, so on a
      GPU each (batch bucket, slots) pair is captured once as a CUDA graph and replayed; graphs, cache and buffers
      are kept across calls, so an RL run captures each one once.
    On the CPU the same steps run eagerly (the tests check them against the uncached forward)."""

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
            for module in self.net.modules():
                if hasattr(module, "fused_decode"):
                    module.fused_decode = fused_kernels
        else:
            self.net = model
        self.rows = self.slots = 0  # capacity of the cache and buffers, grown on demand
        self.graphs, self.stop_tensors = {}, {}
        self.pool = torch.cuda.graph_pool_handle() if self.cuda_graph else None
        self.refresh_weights()

    def refresh_weights(self):
        """The copy takes the model's current weights (RL changed them since the last call), and the fused
        experts their packed matrices."""
        if self.net is self.model:
            return
        for mine, theirs in zip(self.net.state_dict().values(), self.model.state_dict().values()):
            mine.copy_(theirs)
        if self.net.fused_decode:
            self.net.pack_for_decoding()

    def _allocate(self, rows, slots):
        self.rows, self.slots, self.graphs = rows, slots, {}
        dtype = torch.bfloat16 if self.on_gpu else next(self.model.parameters()).dtype
        self.cache = KVCache(self.model.cfg, rows, slots, self.device, dtype)
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
            decode_kernels.sample_step(logits, temperature, self.seed, self.t, self.row_of[:rows], self.budget[:rows],
                                       self.done[:rows], self.tokens[:rows], self.out, stop)
        else:
            nxt = sample_next(logits, temperature, top_p, generator)
            self.out.index_put_((self.row_of[:rows], self.t.expand(rows)), nxt)
            self.done[:rows] |= torch.isin(nxt, stop) | (self.t + 1 >= self.budget[:rows])
            self.tokens[:rows] = nxt
        self.t += 1

    def fused_sampling(self, top_p):
        """Whether a step's sampling and bookkeeping run as one kernel (kernels/decode.sample_step, ~12 kernels
        fewer a step): on the GPU copy with the fused kernels, for any temperature but without a nucleus (the RL's
        rollouts; evaluation's top-p 0.95 sorts the probabilities in PyTorch)."""
        return self.net is not self.model and self.net.fused_decode and top_p == 1.0

    def _step(self, rows, slots, sampling):
        """One decoding step for the first `rows` rows over the first `slots` slots: feed each row's last token
        (finished rows feed theirs as padding, masked out), then sample the next."""
        real = ~self.done[:rows]
        logits = self.net(self.tokens[:rows, None], pad_mask=real[:, None], cache=self.cache.view(rows, slots))
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
        """Sample a completion for each prompt (a list of token-id lists). max_new_tokens is one budget for all
        rows or a list with one per row. Returns a list of token-id lists, each ending with its stop token unless
        it ran out of its budget."""
        budgets = [max_new_tokens] * len(prompts) if isinstance(max_new_tokens, int) else list(max_new_tokens)
        if not prompts or any(len(p) == 0 for p in prompts):
            raise ValueError("every prompt needs at least one token")
        if len(budgets) != len(prompts) or min(budgets) < 1:
            raise ValueError("max_new_tokens must be >= 1 (one value, or one per prompt)")
        stop_ids = stop_token_ids() if stop_ids is None else stop_ids
        B, P, N = len(prompts), max(len(p) for p in prompts), max(budgets)
        if P + N > self.model.cfg.max_seq_len:
            raise ValueError(f"prompt ({P}) + max_new_tokens ({N}) exceeds max_seq_len {self.model.cfg.max_seq_len}")
        rows = bucket(B)  # rows past B are placeholders, finished from the start
        slots = -(-(P + N) // SLOT_BUCKET) * SLOT_BUCKET
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
        logits = self.net(tokens, pad_mask=real, cache=self.cache.view(rows, P))[:, -1]
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
                    self.cache.keep_rows(order, P + t)
                    for buf in (self.tokens, self.row_of, self.budget, self.done):
                        buf[:rows] = buf[order]
            used = -(-(P + t) // SLOT_BUCKET) * SLOT_BUCKET  # slots the step reads: the filled ones and its own
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


def generate(model, prompts, max_new_tokens, temperature=1.0, top_p=1.0, stop_ids=None, generator=None,
             cuda_graph=True):
    """One-off batched sampling (see Decoder; keep a Decoder to reuse its graphs across calls)."""
    return Decoder(model, cuda_graph).generate(prompts, max_new_tokens, temperature, top_p, stop_ids, generator)


class Rollouts(NamedTuple):
    prompts: list       # token ids, k consecutive rows per problem
    completions: list   # token ids, each ending with its stop token unless it ran out of its budget
    texts: list         # the assistant turns as rewards.py scores them: "<think>" + the decoded completion
    scores: list        # the rewards.Reward of each text


def rollouts(decoder, rows, k, max_new_tokens, temperature=1.0, top_p=1.0, batch_size=512, score=rewards.score):
    """k sampled answers to each problem of `rows` (task dicts of data.py), decoded batch_size rows at a time,
    and their rewards, score(text, row): what a GRPO step learns from, and what the evaluation and rejection
    sampling count and keep."""
    prompts = [encode(make_prompt(row["question"])) for row in rows for _ in range(k)]
    completions = []
    for i in range(0, len(prompts), batch_size):
        completions += decoder.generate(prompts[i:i + batch_size], max_new_tokens, temperature, top_p)
    enc = get_tokenizer()
    texts = [THINK + enc.decode(c) for c in completions]
    return Rollouts(prompts, completions, texts, [score(text, rows[i // k]) for i, text in enumerate(texts)])


def main():
    parser = argparse.ArgumentParser(description="Sample answers from a nanoR1 checkpoint.")
    parser.add_argument("--ckpt", required=True, help="checkpoint written by train.py")
    parser.add_argument("--numbers", type=int, nargs="+", help="Countdown numbers, e.g. 3 7 11")
    parser.add_argument("--target", type=int, help="Countdown target")
    parser.add_argument("--question", help="any other question (instead of --numbers/--target)")
    parser.add_argument("--num-samples", type=int, default=1)
    parser.add_argument("--max-new-tokens", type=int, default=400)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    if args.question is None and (args.numbers is None or args.target is None):
        parser.error("give --numbers and --target, or --question")
    if args.question is None:
        try:
            check_countdown(args.numbers, args.target)
        except ValueError as err:
            parser.error(str(err))
    if args.num_samples < 1 or args.temperature < 0 or not 0 < args.top_p <= 1:
        parser.error("need --num-samples >= 1, --temperature >= 0 and 0 < --top-p <= 1")

    model = load_checkpoint(args.ckpt, device=args.device)["model"]
    question = args.question or countdown_question(args.numbers, args.target)
    prompt = make_prompt(question)
    torch.manual_seed(args.seed)
    t0 = time.time()
    completions = generate(model, [encode(prompt)] * args.num_samples, args.max_new_tokens,
                           args.temperature, args.top_p)
    enc = get_tokenizer()
    print(prompt)
    for i, c in enumerate(completions):
        print(f"--- sample {i}\n{THINK}{enc.decode(c)}")
    print(f"({sum(map(len, completions))} tokens in {time.time() - t0:.2f}s)")


if __name__ == "__main__":
    main()
