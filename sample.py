"""
Batched generation with the KV cache, and a CLI that loads a checkpoint and answers a problem.

    python sample.py --ckpt out/rl.pt --numbers 3 7 11 --target 54 --num-samples 4

Prompts of different lengths are left-padded to a common length; the model masks the padding and gives each
row its own RoPE positions (see model.py), so a row decodes exactly as it would alone.
"""

import argparse
import time
from typing import NamedTuple

import torch

import rewards
from checkpoint import load_checkpoint
from data import (check_countdown, countdown_question, encode, get_tokenizer, make_prompt, pad_token_id,
                  stop_token_ids)
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


def budgets_of(model, prompts, max_new_tokens):
    """Each prompt's budget of new tokens (max_new_tokens: one for all rows, or one per row), once the request is
    checked: every prompt has a token, every budget one, and the longest prompt with the largest budget fits the
    model's context."""
    budgets = [max_new_tokens] * len(prompts) if isinstance(max_new_tokens, int) else list(max_new_tokens)
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token")
    if len(budgets) != len(prompts) or min(budgets) < 1:
        raise ValueError("max_new_tokens must be >= 1 (one value, or one per prompt)")
    P, N = max(len(p) for p in prompts), max(budgets)
    if P + N > model.cfg.max_seq_len:
        raise ValueError(f"prompt ({P}) + max_new_tokens ({N}) exceeds max_seq_len {model.cfg.max_seq_len}")
    return budgets


@torch.no_grad()
def generate(model, prompts, max_new_tokens, temperature=1.0, top_p=1.0, stop_ids=None, generator=None):
    """Sample a completion for each prompt (a list of token-id lists). max_new_tokens is one budget for all rows
    or a list with one per row. Returns a list of token-id lists, each ending with its stop token unless it ran
    out of its budget.

    The prompts are left-padded to one length and run through the model once (the prefill), filling the KV
    cache; then each step feeds every unfinished row its last token and samples the next. A row that stops is
    dropped from the batch and from the cache."""
    budgets = budgets_of(model, prompts, max_new_tokens)
    stop_ids = set(stop_token_ids() if stop_ids is None else stop_ids)
    B, P, N = len(prompts), max(len(p) for p in prompts), max(budgets)
    device = next(model.parameters()).device
    tokens = torch.tensor([[pad_token_id()] * (P - len(p)) + p for p in prompts], device=device)
    real = torch.tensor([[False] * (P - len(p)) + [True] * len(p) for p in prompts], device=device)
    was_training = model.training
    model.eval()
    cache = KVCache(model.cfg, B, P + N, device, next(model.parameters()).dtype)
    logits = model(tokens, pad_mask=real, cache=cache)[:, -1]
    completions = [[] for _ in prompts]
    live = list(range(B))  # the caller's rows still decoding, in the order of the batch's rows
    while live:
        nxt = sample_next(logits[:, :get_tokenizer().n_vocab], temperature, top_p, generator)
        for row, token in zip(live, nxt.tolist()):
            completions[row].append(token)
        going = [i for i, row in enumerate(live)
                 if completions[row][-1] not in stop_ids and len(completions[row]) < budgets[row]]
        if len(going) < len(live):
            live = [live[i] for i in going]
            cache.keep_rows(torch.tensor(going, dtype=torch.long, device=device))
            nxt = nxt[going]
        if live:
            logits = model(nxt[:, None], cache=cache)[:, -1]
    model.train(was_training)
    return completions


class Rollouts(NamedTuple):
    prompts: list       # token ids, k consecutive rows per problem
    completions: list   # token ids, each ending with its stop token unless it ran out of its budget
    texts: list         # the assistant turns as rewards.py scores them: "<think>" + the decoded completion
    scores: list        # the rewards.Reward of each text


def rollouts(generate_fn, rows, k, max_new_tokens, temperature=1.0, top_p=1.0, batch_size=512, score=rewards.score):
    """k sampled answers to each problem of `rows` (task dicts of data.py), decoded batch_size rows at a time by
    generate_fn(prompts, max_new_tokens, temperature, top_p) (`generate` on the model, or on a GPU the engine's
    decoder), and their rewards, score(text, row): what a GRPO step learns from, and what the evaluation and
    rejection sampling count and keep."""
    prompts = [encode(make_prompt(row["question"])) for row in rows for _ in range(k)]
    completions = []
    for i in range(0, len(prompts), batch_size):
        completions += generate_fn(prompts[i:i + batch_size], max_new_tokens, temperature, top_p)
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
