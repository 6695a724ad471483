"""
Batched generation with the KV cache, and a CLI that loads a checkpoint and answers a problem.

    python sample.py --ckpt out/rl.pt --numbers 3 7 11 --target 54 --num-samples 4

Prompts of different lengths are left-padded to a common length; the model masks the padding and gives each
row its own RoPE positions (see model.py), so a row decodes exactly as it would alone.
"""

import argparse
import time

import torch

from checkpoint import load_checkpoint
from data import EOT, PAD, check_countdown, countdown_question, encode, get_tokenizer, make_prompt
from model import KVCache


def stop_token_ids():
    enc = get_tokenizer()
    return [enc.encode_single_token("</answer>"), enc.encode_single_token(EOT)]


def pad_token_id():
    return get_tokenizer().encode_single_token(PAD)


def sample_next(logits, temperature=1.0, top_p=1.0, generator=None):
    """logits [B, V] -> token ids [B]. temperature 0 is greedy; top_p < 1 keeps the smallest set of tokens
    whose probability reaches top_p (nucleus sampling)."""
    if temperature == 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits / temperature, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        outside = sorted_probs.cumsum(-1) - sorted_probs > top_p  # mass before this token already reaches top_p
        sorted_probs[outside] = 0.0
        probs = torch.zeros_like(probs).scatter_(-1, order, sorted_probs)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def decode_step_fn(model, cache, batch_size, use_graph):
    """Returns step(tokens [B], real [B]) -> next-token logits [B, V], appending one slot to the cache.

    On a GPU one decoding step is hundreds of small kernels, and launching them costs more than running them.
    The step has static shapes and no host sync (model.KVCache), so it is captured once as a CUDA graph and each
    later step is a single replay over fixed input buffers."""
    def step(tokens, real):
        return model(tokens[:, None], pad_mask=real[:, None], cache=cache)[:, -1]

    if not use_graph:
        return step
    device = cache.k.device
    tokens_in = torch.zeros(batch_size, dtype=torch.long, device=device)
    real_in = torch.ones(batch_size, dtype=torch.bool, device=device)
    # Warm up on a side stream (lazy kernel initialisation must not be captured), then undo its cache writes.
    saved = cache.pos.clone(), cache.n_real.clone(), cache.valid.clone()
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        step(tokens_in, real_in)
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        logits_out = step(tokens_in, real_in)
    cache.pos.copy_(saved[0])
    cache.n_real.copy_(saved[1])
    cache.valid.copy_(saved[2])

    def replay(tokens, real):
        tokens_in.copy_(tokens)
        real_in.copy_(real)
        graph.replay()
        return logits_out
    return replay


@torch.no_grad()
def generate(model, prompts, max_new_tokens, temperature=1.0, top_p=1.0, stop_ids=None, generator=None,
             cuda_graph=True):
    """Sample a completion for each prompt (a list of token-id lists). Returns a list of token-id lists, each
    ending with its stop token unless it ran out of max_new_tokens. Runs in eval mode, no grad; on a GPU in
    bf16 with the decoding step replayed from a CUDA graph."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token")
    if max_new_tokens < 1:
        raise ValueError("max_new_tokens must be >= 1")
    stop_ids = stop_token_ids() if stop_ids is None else stop_ids
    device = next(model.parameters()).device
    on_gpu = device.type == "cuda"
    B, P = len(prompts), max(len(p) for p in prompts)
    if P + max_new_tokens > model.cfg.max_seq_len:
        raise ValueError(f"prompt ({P}) + max_new_tokens ({max_new_tokens}) exceeds max_seq_len "
                         f"{model.cfg.max_seq_len}")
    tokens = torch.full((B, P), pad_token_id(), dtype=torch.long)
    real = torch.zeros(B, P, dtype=torch.bool)
    for i, p in enumerate(prompts):
        tokens[i, P - len(p):] = torch.tensor(p)
        real[i, P - len(p):] = True
    tokens, real = tokens.to(device), real.to(device)
    stop = torch.tensor(stop_ids, device=device)
    n_vocab = get_tokenizer().n_vocab

    was_training = model.training
    model.eval()
    # autocast's weight-cast cache cannot live across graph replays: cache_enabled=False
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=on_gpu, cache_enabled=False)
    with autocast:
        cache = KVCache(model.cfg, B, P + max_new_tokens, device,
                        torch.bfloat16 if on_gpu else next(model.parameters()).dtype)
        logits = model(tokens, pad_mask=real, cache=cache)[:, -1]
        step = decode_step_fn(model, cache, B, use_graph=on_gpu and cuda_graph and max_new_tokens > 1)
        out = torch.empty(B, max_new_tokens, dtype=torch.long, device=device)
        done = torch.zeros(B, dtype=torch.bool, device=device)
        for t in range(max_new_tokens):
            # the embedding table is rounded up past the tokenizer's ids; never sample the unused rows
            nxt = sample_next(logits[:, :n_vocab], temperature, top_p, generator)
            out[:, t] = nxt
            done |= torch.isin(nxt, stop)
            if t + 1 == max_new_tokens or (t % 8 == 7 and bool(done.all())):  # syncing every step would stall
                break
            # finished rows keep decoding (static shapes) but their new tokens are masked out as padding
            logits = step(nxt, ~done)
    model.train(was_training)

    completions = []
    for row in out[:, :t + 1].tolist():
        ends = [i for i, tok in enumerate(row) if tok in stop_ids]
        completions.append(row[:ends[0] + 1] if ends else row)
    return completions


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
        print(f"--- sample {i}\n<think>{enc.decode(c)}")
    print(f"({sum(map(len, completions))} tokens in {time.time() - t0:.2f}s)")


if __name__ == "__main__":
    main()
