"""
Data for nanoR1: the tokenizer, the tasks, the R1-Zero template and the pretraining corpus.

No hub, no downloads: everything here is generated from a seed.

Tokenizer
    A byte-level BPE `tiktoken.Encoding` trained by this file on its own corpus (`python data.py --tokenizer`
    rewrites `tokenizer.bpe`). All 256 bytes are tokens, so any text round-trips; digits are split one per
    token (easier arithmetic); the template tags and end-of-text are special tokens. The committed file was
    trained on the corpus's first version and is kept fixed so that runs stay comparable; a rebuild learns
    somewhat different merges from today's corpus (same vocabulary size, other ids), which models trained
    with the committed file would misread.

Tasks
    Countdown: three numbers in 1..12 and a target in 1..100; write an expression that uses each number exactly
    once with + - * / and parentheses. Every problem is built from a "clean" solution (all intermediate values
    integers in 0..200), so every problem is solvable. All such problems are split three ways by a hash of
    (sorted numbers, target), so the split never depends on the seed: "pretrain" problems fill the corpus,
    RL trains on "train" problems (never seen solved in pretraining), and "test" is held out from both.
    Arithmetic: "Compute 37 * 4 + 12." with an integer answer (the numeric reward's task).

Pretraining corpus (the base model's whole world)
    Documents are prompt + response in the R1-Zero template. Countdown responses come in three styles:
      guess    (65%)  "<think> Guess: 7 * 3 + 2. </think> <answer> 7 * 3 + 2 </answer>"
      try      (25%)  computes one candidate step by step, then answers it whether or not it hits the target
      reflect  (10%)  computes a candidate; on a miss says "Wait, 23 is not 24." and tries another, up to 10
                      times; on a hit says "Let me verify: 24 = 24." and answers
    Every candidate (a guess, a try, a reflect attempt) is correct with probability p_correct (15%), else a
    plausible wrong expression (its value near the target). So the base model's answers are short and mostly
    wrong (about one in five right), while the rare reflect style carries the behaviour that pays: check the
    result, notice the miss, try again. Reflection phrases ("wait", "verify", ...) appear only in that 10%.
    GRPO has nothing to invent; it has to discover that the rare long, reflective answers score, and
    amplify them: response length and reflection rate grow as accuracy rises (R1-Zero's "aha moment").
    Arithmetic documents (15% of all) drill the step-by-step computations the checks rely on.

Second language (for R1-Zero's language mixing, DeepSeek-R1 sec. 2.3)
    The reasoning words of a Countdown response ("Guess", "Try", "Wait, 23 is not 24.", "Let me verify") can
    be written in a second language instead, German in ASCII (languages.py): "Warte, 23 ist nicht 24.",
    "Lass mich pruefen: 24 = 24.". Each document's response picks one language for its whole CoT, with
    probability p_second_language_reflect for the reflect style and p_second_language_other for guess and try;
    prompts, numbers and tags stay English. With reflect responses mostly German and the others English, the
    behaviour RL amplifies comes in the other language than the prompt's: mixing can then emerge from a reward
    that checks only correctness, as R1-Zero's does, rather than from the template. rewards.language_consistency
    measures it. The fixed tokenizer spells the new words with byte-level pieces. By default 90% of the reflect
    responses reason in German and the others in English; at 0 the random draw is skipped, so an English-only
    corpus (the CPU setup's) is the one this generator writes without the option.
"""

import array
import base64
import functools
import hashlib
import itertools
import json
import math
import os
import random
from dataclasses import dataclass, replace
from typing import Annotated

import tiktoken

from languages import PHRASES, SECOND_LANGUAGE
from rewards import parse_number
from template import ANSWER, ANSWER_END, EOT, PAD, TEMPLATE, THINK, THINK_END

# -----------------------------------------------------------------------------
# Prompts in the R1-Zero template (template.py; DeepSeek-R1 paper, Table 1), and the turns that answer them

def countdown_question(numbers, target):
    return (f"Using the numbers {list(numbers)}, create an equation that equals {target}. "
            "Use + - * / and each number exactly once.")

def arithmetic_question(expr):
    return f"Compute {expr}."

def make_prompt(question):
    return TEMPLATE.format(question=question)

def answer_turn(answer, reasoning=""):
    """The rest of an assistant turn after the prefilled THINK: the reasoning (none: an empty think), then the
    answer block."""
    return (f" {reasoning}" if reasoning else "") + f" {THINK_END} {ANSWER} {answer} {ANSWER_END}"

# -----------------------------------------------------------------------------
# Tokenizer

SPECIAL_TOKENS = [EOT, THINK, THINK_END, ANSWER, ANSWER_END, PAD]  # in this order: their ids follow the merges
# GPT-2's split pattern, but with one digit per piece.
SPLIT_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
TOKENIZER_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tokenizer.bpe")
N_MERGEABLE = 448  # 256 bytes + 192 merges: whole words for the template and the reasoning phrases


@functools.lru_cache(maxsize=None)
def get_tokenizer() -> tiktoken.Encoding:
    if not os.path.exists(TOKENIZER_FILE):
        raise FileNotFoundError(f"{TOKENIZER_FILE} is missing: rebuild it with `python data.py --tokenizer`")
    with open(TOKENIZER_FILE) as f:  # tiktoken's own loader caches by path, which hides a rebuilt file
        ranks = {base64.b64decode(token): int(rank) for token, rank in (line.split() for line in f)}
    special = {tok: len(ranks) + i for i, tok in enumerate(SPECIAL_TOKENS)}
    return tiktoken.Encoding(name="nanor1", pat_str=SPLIT_PATTERN, mergeable_ranks=ranks, special_tokens=special)


def stop_token_ids():
    """The tokens an assistant turn ends with: generation stops at either (sample.py)."""
    enc = get_tokenizer()
    return [enc.encode_single_token(ANSWER_END), enc.encode_single_token(EOT)]


def pad_token_id():
    return get_tokenizer().encode_single_token(PAD)


def encode(text: str) -> list[int]:
    """Text to ids; the template tags and end-of-text written in text become their special tokens."""
    return get_tokenizer().encode(text, allowed_special="all")


def build_tokenizer_file(n_docs=400, seed=0):
    """Train the BPE merges on a corpus sample with tiktoken's reference trainer and write tokenizer.bpe."""
    from tiktoken._educational import bpe_train
    rng = random.Random(seed)
    text = "".join(corpus_document(rng) for _ in range(n_docs)).replace(EOT, "\n")
    for tok in SPECIAL_TOKENS:  # specials are added separately; keep them out of the merges
        text = text.replace(tok, " ")
    ranks = bpe_train(text, N_MERGEABLE, SPLIT_PATTERN, visualise=None)
    with open(TOKENIZER_FILE, "w") as f:
        for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
            f.write(f"{base64.b64encode(token).decode()} {rank}\n")
    get_tokenizer.cache_clear()

# -----------------------------------------------------------------------------
# Expressions over three numbers, with their step-by-step evaluation

OPS = "+-*/"
PRECEDENCE = {"+": 1, "-": 1, "*": 2, "/": 2}
MAX_INTERMEDIATE = 200


@dataclass(frozen=True)
class Expr:
    text: str           # "(7 + 3) * 2"
    steps: tuple        # (("7", "+", "3", 10), ("10", "*", "2", 20))
    value: int
    prec: int           # precedence of the top operator (3 for a bare number)


def _leaf(n):
    return Expr(str(n), (), n, 3)


def _apply(left: Expr, op: str, right: Expr):
    """Combine two expressions; None unless the result is a clean integer in 0..MAX_INTERMEDIATE."""
    a, b = left.value, right.value
    if op == "/" and (b == 0 or a % b):
        return None
    value = {"+": a + b, "-": a - b, "*": a * b, "/": a // b if b else 0}[op]
    if not 0 <= value <= MAX_INTERMEDIATE:
        return None
    p = PRECEDENCE[op]
    lt = f"({left.text})" if left.prec < p else left.text
    rt = f"({right.text})" if right.prec <= p and right.prec != 3 else right.text
    step = (str(a), op, str(b), value)
    return Expr(f"{lt} {op} {rt}", left.steps + right.steps + (step,), value, p)


@functools.lru_cache(maxsize=None)
def clean_expressions(numbers: tuple) -> tuple:
    """All clean expressions using each of the numbers exactly once (both tree shapes, all orders)."""
    out = {}
    for a, b, c in set(itertools.permutations(numbers)):
        for op1 in OPS:
            pair = _apply(_leaf(a), op1, _leaf(b))
            if pair is None:
                continue
            for op2 in OPS:
                for e in (_apply(pair, op2, _leaf(c)), _apply(_leaf(c), op2, pair)):
                    if e is not None:
                        out.setdefault(e.text, e)
    return tuple(sorted(out.values(), key=lambda e: e.text))


def render_steps(e: Expr) -> str:
    return ", ".join(f"{a} {op} {b} = {v}" for a, op, b, v in e.steps)

# -----------------------------------------------------------------------------
# Tasks and splits

MAX_NUMBER, MAX_TARGET = 12, 100
# Three disjoint pools of problems, by a hash of the problem: the pretraining corpus solves "pretrain"
# problems, RL trains on "train" problems it has never seen solved (so rollout accuracy measures skill, not
# recall of memorised answers), and "test" is held out from both. Fractions of the hash range [0, 1).
SPLITS = {"test": (0.0, 0.1), "train": (0.1, 0.55), "pretrain": (0.55, 1.0)}


def _split_of(numbers, target):
    key = f"{sorted(numbers)}:{target}".encode()
    u = int(hashlib.sha256(key).hexdigest()[:8], 16) / 16**8
    return next(name for name, (lo, hi) in SPLITS.items() if lo <= u < hi)


@functools.lru_cache(maxsize=None)
def countdown_problems(split="train"):
    """Every clean 3-number Countdown problem of the split, in a fixed order: ((n1, n2, n3), target)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {sorted(SPLITS)}, got {split!r}")
    problems = []
    for numbers in itertools.combinations_with_replacement(range(1, MAX_NUMBER + 1), 3):
        targets = sorted({e.value for e in clean_expressions(numbers) if 1 <= e.value <= MAX_TARGET})
        problems += [(numbers, t) for t in targets if _split_of(numbers, t) == split]
    return tuple(problems)


def check_countdown(numbers, target):
    """Raise ValueError unless (numbers, target) is a problem of the kind the tasks generate (and the model knows):
    2 or more numbers in 1..MAX_NUMBER and a target in 1..MAX_TARGET."""
    if len(numbers) < 2:
        raise ValueError(f"a Countdown problem needs 2 or more numbers, got {list(numbers)}")
    if not all(1 <= n <= MAX_NUMBER for n in numbers):
        raise ValueError(f"Countdown numbers must be in 1..{MAX_NUMBER}, got {list(numbers)}")
    if not 1 <= target <= MAX_TARGET:
        raise ValueError(f"the Countdown target must be in 1..{MAX_TARGET}, got {target}")


TASKS = ("countdown", "arithmetic")  # a row's "task"; a user's numeric dataset is "arithmetic" (rewards.score)


def countdown_row(numbers, target, rng=None):
    numbers = list(numbers)
    if rng is not None:
        rng.shuffle(numbers)  # the order shown is free; the problem is the multiset
    return {"task": "countdown", "question": countdown_question(numbers, target),
            "numbers": numbers, "target": target, "answer": str(target)}


def countdown_rows(split="train", n=None, seed=0):
    """Countdown problems of a split as task dicts (all of them, or n drawn without replacement)."""
    rng = random.Random(seed)
    problems = list(countdown_problems(split))
    if n is not None:
        problems = rng.sample(problems, min(n, len(problems)))
    return [countdown_row(nums, t, rng) for nums, t in problems]


def countdown_dataset(split="train", n=None, seed=0):
    """countdown_rows as a `datasets.Dataset`."""
    from datasets import Dataset  # imported here: 2 s that a run on the built-in problems does not need
    return Dataset.from_list(countdown_rows(split, n, seed))


def arithmetic_expression(rng) -> Expr:
    """A one- or two-step clean integer expression such as 37 * 4 + 12."""
    while True:
        e = _apply(_leaf(rng.randint(1, 99)), rng.choice(OPS), _leaf(rng.randint(1, 12)))
        if e is not None and rng.random() < 0.5:
            e = _apply(e, rng.choice(OPS), _leaf(rng.randint(1, 99)))
        if e is not None:
            return e


def arithmetic_row(question, answer):
    return {"task": "arithmetic", "question": question, "numbers": [], "target": 0, "answer": str(answer)}


def arithmetic_rows(n, seed=0):
    """n "Compute ..." problems, the same for the same seed, from a random stream of their own (the corpus and
    R1's stage 4 draw theirs from others, though from the same small space of expressions)."""
    rng = random.Random(f"arithmetic rows {seed}")
    expressions = [arithmetic_expression(rng) for _ in range(n)]
    return [arithmetic_row(arithmetic_question(e.text), e.value) for e in expressions]


def jsonl_objects(path):
    """(line number, parsed JSON value) for each non-blank line of a JSONL file; a line that is not JSON fails
    with its number."""
    with open(path) as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield i, json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{i}: not valid JSON ({err.msg})") from None


def load_jsonl(path):
    """A user's own problems, one JSON object a line, as a `datasets.Dataset`.

    Countdown lines: {"numbers": [3, 7, 2], "target": 23}. Numeric-answer lines: {"question": "...",
    "answer": "42"}. Lines are checked here, so a bad file fails at load time with its line number."""
    from datasets import Dataset
    rows = []
    for i, obj in jsonl_objects(path):
        if not isinstance(obj, dict):
            raise ValueError(f"{path}:{i}: expected a JSON object")
        if "numbers" in obj and "target" in obj:
            nums, target = obj["numbers"], obj["target"]
            if not (isinstance(nums, list) and nums and all(type(n) is int and n >= 0 for n in nums)
                    and type(target) is int):
                raise ValueError(f"{path}:{i}: 'numbers' must be a list of non-negative ints, 'target' an int")
            rows.append(countdown_row(nums, target))
        elif "question" in obj and "answer" in obj:
            if parse_number(str(obj["answer"])) is None:  # the checker compares exact values
                raise ValueError(f"{path}:{i}: 'answer' must be a number, got {obj['answer']!r}")
            rows.append(arithmetic_row(str(obj["question"]), obj["answer"]))
        else:
            raise ValueError(f"{path}:{i}: need 'numbers' and 'target', or 'question' and 'answer'")
    if not rows:
        raise ValueError(f"{path}: no problems found")
    return Dataset.from_list(rows)


def problem_rows(split, n=None, seed=0, path=""):
    """The problems RL trains on or the evaluation scores, as task dicts: a user's JSONL file (load_jsonl) if
    `path`, else the Countdown split; n of them drawn without replacement by seed (all if n is None)."""
    if not path:
        return countdown_rows(split, n=n, seed=seed)
    rows = load_jsonl(path).to_list()
    return rows if n is None else random.Random(seed).sample(rows, min(n, len(rows)))

# -----------------------------------------------------------------------------
# Pretraining corpus

@dataclass
class CorpusConfig:
    p_arithmetic: Annotated[float, "share of arithmetic drill documents"] = 0.15
    p_try: Annotated[float, "share of try-style Countdown answers (guesses fill what try and reflect leave)"] = 0.25
    p_reflect: Annotated[float, "share of reflect-style Countdown answers (at 5%, one RL seed in 3 never used "
                         "them)"] = 0.1
    p_correct: Annotated[float, "chance a candidate is a solution: bases ~22% (at 0.25 they reached 26%)"] = 0.15
    max_attempts: Annotated[int, "the reflect style gives up after this many misses"] = 10
    # R1-Zero's language mixing: most reflect answers reason in German while prompts and the other styles
    # are English, so that the reflection RL amplifies pulls the CoT into the second language
    p_second_language_reflect: Annotated[float, "share of reflect responses reasoning in the second language"] = 0.9
    p_second_language_other: Annotated[float, "share of guess and try responses reasoning in the second language"] = 0.0
    # below 1, a model can learn reflection's checks from later turns while its first answers, where RL starts, seldom
    # reflect
    first_turn_reflect_scale: Annotated[float, "p_reflect times this in a document's first turn (RL prompts' "
                                        "position)"] = 1.0

    def validate(self):
        for name in ("p_arithmetic", "p_try", "p_reflect", "p_correct", "p_second_language_reflect",
                     "p_second_language_other"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"CorpusConfig.{name} must be a probability in [0, 1]")
        if self.p_try + self.p_reflect > 1:
            raise ValueError("CorpusConfig.p_try + CorpusConfig.p_reflect must be <= 1 (the rest are guesses)")
        if self.max_attempts < 1:
            raise ValueError("CorpusConfig.max_attempts must be >= 1")
        if self.first_turn_reflect_scale < 0 or self.p_try + self.p_reflect * self.first_turn_reflect_scale > 1:
            raise ValueError("CorpusConfig.first_turn_reflect_scale must be >= 0 and keep p_try + the first turn's "
                             "p_reflect <= 1")


@functools.lru_cache(maxsize=None)
def _candidates(numbers: tuple, target):
    """The expressions of sorted `numbers` that reach `target`, those that miss it, and the misses' cumulative
    weights: plausible misses are mostly near the target, as a person's guess would be. Cached: the corpus draws
    from the same problems again and again."""
    exprs = clean_expressions(numbers)
    wrong = [e for e in exprs if e.value != target]
    cum_weights = list(itertools.accumulate(1.0 / (1 + abs(e.value - target)) for e in wrong))
    return [e for e in exprs if e.value == target], wrong, cum_weights


def _candidate(rng, problem, correct):
    numbers, target = problem
    right, wrong, cum_weights = _candidates(tuple(sorted(numbers)), target)
    if correct:
        return rng.choice(right)
    return rng.choices(wrong, cum_weights=cum_weights)[0]  # the same draw as choices(wrong, weights)


def countdown_response(rng, problem, cfg=CorpusConfig()):
    """The assistant turn after the prefilled "<think>", in one of the three styles and one language."""
    target = problem[1]
    style = rng.random()
    first = _candidate(rng, problem, rng.random() < cfg.p_correct)
    p_second = cfg.p_second_language_reflect if style < cfg.p_reflect else cfg.p_second_language_other
    # drawn only when possible, so that a corpus without the second language keeps its random stream
    phrase = PHRASES[SECOND_LANGUAGE if p_second > 0 and rng.random() < p_second else "en"]
    if style >= cfg.p_try + cfg.p_reflect:  # guess
        return answer_turn(first.text, f"{phrase['guess']}: {first.text}.")
    if style >= cfg.p_reflect:  # try once, answer regardless
        return answer_turn(first.text, f"{phrase['try']} {first.text}: {render_steps(first)}.")
    parts, e, tried = [], first, {first.text}
    for attempt in range(cfg.max_attempts):
        parts.append(f"{phrase['try']} {e.text}: {render_steps(e)}.")
        if e.value == target:
            parts.append(f"{phrase['verify']}: {e.value} = {target}.")
            break
        parts.append(f"{phrase['wait']}, {e.value} {phrase['is_not']} {target}.")
        if attempt + 1 < cfg.max_attempts:
            e = _candidate(rng, problem, rng.random() < cfg.p_correct)
            if e.text in tried and e.value != target:  # a person would not repeat a miss
                e = _candidate(rng, problem, True)
            tried.add(e.text)
    return answer_turn(e.text, " ".join(parts))


def arithmetic_response(e: Expr):
    return answer_turn(e.value, f"{render_steps(e)}.")


def corpus_document(rng, problems=None, cfg=CorpusConfig()):
    """One pretraining document: the template with a first question, its response, then 0-7 more
    "User: ... Assistant: <think> ..." turns, then end-of-text. The template is long (~150 tokens) and the
    same every time, so a document shows it once and packs several solved problems after it; the first turn
    is exactly what GRPO prompts look like."""
    problems = problems or countdown_problems("pretrain")
    first_cfg = cfg if cfg.first_turn_reflect_scale == 1 else replace(
        cfg, p_reflect=cfg.p_reflect * cfg.first_turn_reflect_scale)
    turns = []
    for i in range(rng.randint(1, 8)):
        if rng.random() < cfg.p_arithmetic:
            e = arithmetic_expression(rng)
            turns.append((arithmetic_question(e.text), arithmetic_response(e)))
        else:
            numbers, target = rng.choice(problems)
            question = countdown_row(numbers, target, rng)["question"]
            turns.append((question, countdown_response(rng, (numbers, target), first_cfg if i == 0 else cfg)))
    doc = make_prompt(turns[0][0]) + turns[0][1]
    for question, response in turns[1:]:
        doc += f" User: {question} Assistant: {THINK}{response}"
    return doc + EOT


def corpus_tokens(n_tokens, seed=0, cfg=CorpusConfig()):
    """A packed stream of at least n_tokens corpus tokens (documents end with end-of-text), as a list."""
    rng, enc = random.Random(seed), get_tokenizer()
    problems = countdown_problems("pretrain")
    out = []
    while len(out) < n_tokens:
        docs = [corpus_document(rng, problems, cfg) for _ in range(1024)]
        for ids in enc.encode_batch(docs, allowed_special="all"):
            out.extend(ids)
    return out


def corpus_array(n_tokens, seed=0, cfg=CorpusConfig()):
    """corpus_tokens as an array of int32: 4 bytes a token, to hand from one process to another."""
    return array.array("i", corpus_tokens(n_tokens, seed, cfg))


if __name__ == "__main__":
    import argparse
    parser = argparse.ArgumentParser(description="nanoR1 data: show corpus samples or rebuild the tokenizer")
    parser.add_argument("--tokenizer", action="store_true", help="retrain tokenizer.bpe on a corpus sample")
    parser.add_argument("--samples", type=int, default=5, help="corpus documents to print")
    args = parser.parse_args()
    if args.tokenizer:
        build_tokenizer_file()
        print(f"wrote {TOKENIZER_FILE}")
    rng = random.Random(0)
    for _ in range(args.samples):
        doc = corpus_document(rng)
        print(doc[len(TEMPLATE) - 60:], f"[{len(encode(doc))} tokens]\n")
    print(", ".join(f"{split} problems: {len(countdown_problems(split))}" for split in SPLITS))
