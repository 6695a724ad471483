"""
Speed of the rule-based rewards on one CPU core: completions scored per second.

    python -m benchmarks.bench_rewards          # from the repository root; prints one table

The batch is a realistic mix of Countdown turns of ~300 characters in the R1-Zero format: 40% valid and correct
(where the random expression's value is an integer), 40% valid and wrong, 20% malformed or hacks (text after
</answer>, a second answer block, no closing tag, an expression with a power or a reused number).
Scoring must cost next to nothing beside the rollouts, so the target is >= 20 000 completions/s.
"""

import random
import time

from rewards import (countdown_reward, countdown_value, format_reward, language_consistency, reflection_count,
                     score)


def random_expression(rng, numbers):
    """A random full expression over the numbers, in a random order, with a random operator at each node."""
    parts = [str(n) for n in rng.sample(numbers, len(numbers))]
    while len(parts) > 1:
        i = rng.randrange(len(parts) - 1)
        parts[i:i + 2] = [f"({parts[i]} {rng.choice('+-*/')} {parts[i + 1]})"]
    return parts[0][1:-1] if parts[0].startswith("(") else parts[0]


def completion(rng):
    numbers = [rng.randint(1, 12) for _ in range(rng.choice([3, 4]))]
    target = rng.randint(1, 100)
    expr = random_expression(rng, numbers)
    wrong = random_expression(rng, numbers)
    think = (f" Let me try {wrong}. Wait, that gives something else, not {target}. Hmm, let me check the "
             f"numbers {numbers} again, each one exactly once. Try {expr}: computing it step by step, one "
             f"operation at a time. Let me verify: it equals the target. ")
    kind = rng.random()
    answer = expr
    if kind < 0.4:  # valid and correct: make the target the expression's value
        value = countdown_value(expr, numbers)
        target = int(value) if value is not None and value.denominator == 1 else target
    elif kind >= 0.8:  # malformed
        return rng.choice([
            f"<think>{think}</think> <answer> {answer} </answer> So the answer is {answer}.",
            f"<think>{think}</think> <answer> {wrong} </answer> <answer> {answer} </answer>",
            f"<think>{think}</think> <answer> {answer}",
            f"<think>{think}</think> <answer> {answer} ** 1 </answer>",
            f"<think>{think}</think> <answer> {answer} + {numbers[0]} - {numbers[0]} </answer>",
        ]), numbers, target
    return f"<think>{think}</think> <answer> {answer} </answer><|endoftext|>", numbers, target


def throughput(fn, batch, repeats=5):
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        for args in batch:
            fn(*args)
        best = min(best, time.perf_counter() - t)
    return len(batch) / best


def main(n=20_000, seed=0):
    rng = random.Random(seed)
    batch = [completion(rng) for _ in range(n)]
    texts = [text for text, _, _ in batch]
    tasks = [{"task": "countdown", "numbers": numbers, "target": target} for _, numbers, target in batch]
    hits = sum(countdown_reward(*args) for args in batch)
    print(f"{n} completions, mean {sum(map(len, texts)) / n:.0f} chars, {sum(map(format_reward, texts)) / n:.0%} "
          f"well formed, {hits / n:.0%} correct; one CPU core, best of 5")
    rows = [
        ("format_reward", format_reward, [(t,) for t in texts]),
        ("reflection_count", reflection_count, [(t,) for t in texts]),
        ("language_consistency", language_consistency, [(t,) for t in texts]),
        ("countdown_reward", countdown_reward, batch),
        ("score", score, list(zip(texts, tasks))),
    ]
    print(f"{'function':<20} {'completions/s':>14}")
    for name, fn, args in rows:
        print(f"{name:<20} {throughput(fn, args):>14,.0f}")


if __name__ == "__main__":
    main()
