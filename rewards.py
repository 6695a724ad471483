"""
Rule-based rewards for nanoR1, as in DeepSeek-R1-Zero: an accuracy reward checked by rules and a format
reward for the template's tags. No reward model, so nothing for the policy to fool but these rules, and the
rules are written to be hard to fool: exact arithmetic, a parser that never calls eval, strict tags.

The text scored is the assistant's whole turn, starting with the prefilled "<think>":
    "<think> 7 * 3 = 21, 21 + 2 = 23. </think> <answer> 7 * 3 + 2 </answer>"

Format. The turn is exactly one <think>...</think> block, optional whitespace, exactly one
<answer>...</answer> block, then only whitespace, optionally around one trailing "<|endoftext|>" left by the
sampler. Leading whitespace is allowed. The think block may hold anything without tags, even nothing
(R1 asks only for the tags); the answer block must hold something besides whitespace. Any other tag
(a second block, answer tags inside the think block) or any other text outside the blocks fails the format,
and a turn that fails the format gets no accuracy reward either.

Countdown. The answer is an arithmetic expression over non-negative integer literals (ASCII digits, at
most 6 each), binary + - * / and parentheses, using the given numbers exactly once each (as a multiset),
whose exact rational value (fractions.Fraction) equals the target. Intermediate fractions and negatives are
allowed (8/(3-8/3) = 24). Unary minus and plus are rejected: "-3" would let the model flip a sign without
spending a number. Division by zero scores 0. The expression must be bare: "7*3+2 = 23" scores 0.

Numeric answers (arithmetic and a user's own dataset). The answer is a bare number: an integer, a decimal,
a fraction "3/4", optionally negative, with optional thousands separators "1,234"; it must equal the
reference exactly (as a Fraction, so "0.75" == "3/4"). No units, no words, no scientific notation.
A reference answer that is not such a number raises ValueError: it is a bug in the data, not a wrong answer.

Reflections. `reflection_count` counts the self-reflection phrases "wait", "let me check", "re-check" /
"recheck", "double-check", "verify", "mistake", "try again" and "hmm", and those of the corpus's second
language (languages.py), "warte" and "pruefen" (whole words, any case). It is the "aha moment" metric logged
during training, never part of the reward. `check_outcomes` asks whether those reflections check anything: each
"Wait, v is not T." and "Let me verify: v = T." of a Countdown answer, judged by the value v against the target.

Language consistency (DeepSeek-R1 sec. 2.3.2). `language_consistency(text, language)` is "the proportion of
target language words in the CoT": the CoT is what precedes the first "</think>" (all of the turn if it never
closes: a truncated rollout reasoned too), tags removed. A word is a run of letters of any script; numbers,
operators and punctuation are no words, so a CoT of pure arithmetic is neutral. A word is in the target
language if its lexicon holds it, any case. The lexicons (languages.py) are the words the corpus reasons
with, not whole languages, and every other word counts against: the second language's, a word of no
language ("Wiat", "思考") and an English template word copied into the CoT ("answer") alike. A word the
lexicon lacks is not evidence of the target language, and junk must not score as if it were pure. A CoT with no
words scores 1.0: nothing in it is mixed. R1 adds this reward to accuracy ("directly summing"); here
total = accuracy + format_weight * format + language_weight * consistency, and like accuracy the language
term needs the format. language_weight defaults to 0 (R1-Zero: no language reward); the consistency is
logged either way.
"""

import ast
import operator
import re
from fractions import Fraction
from typing import NamedTuple

from languages import LEXICONS, PHRASES, WORD_RE
from template import ANSWER, ANSWER_END, EOT, TAGS, THINK, THINK_END

FORMAT_RE = re.compile(rf"\s*{THINK}.*{THINK_END}\s*{ANSWER}(.*){ANSWER_END}\s*", re.DOTALL)  # no tag needs escaping

# -----------------------------------------------------------------------------
# Format

def extract_answer(text: str) -> str | None:
    """The answer block's content, stripped, if the turn has the R1 format; else None."""
    body = text.rstrip()
    if body.endswith(EOT):
        body = body[:-len(EOT)]
    # exactly one of each tag and no end-of-text inside: with that, the regex has only one way to match
    if EOT in body or any(body.count(tag) != 1 for tag in TAGS):
        return None
    m = FORMAT_RE.fullmatch(body)
    if m is None:
        return None
    return m.group(1).strip() or None


def format_reward(text: str) -> float:
    return 1.0 if extract_answer(text) is not None else 0.0

# -----------------------------------------------------------------------------
# Countdown: an exact checker that parses with ast and walks a whitelist of nodes, never eval

MAX_EXPR_LEN = 200   # refused before parsing: a real answer is a few dozen characters
MAX_DIGITS = 6       # per literal
MAX_DEPTH = 20       # parentheses nesting, checked before ast (deep nesting crashes the parser)
EXPR_CHARS_RE = re.compile(r"[0-9+\-*/() ]+")  # [0-9], not \d: \d also matches unicode digits like "٣"
LONG_LITERAL_RE = re.compile(r"[0-9]{%d}" % (MAX_DIGITS + 1))


def _exact_div(a, b):
    """a / b without leaving exact arithmetic: an int where it divides (most steps), a Fraction otherwise."""
    if type(a) is int and type(b) is int and b and a % b == 0:
        return a // b
    return Fraction(a) / b  # raises ZeroDivisionError for b == 0


# ints until a division does not divide: a Fraction operation costs over 1 µs, an int one about 10 ns
BINOPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: _exact_div}


def _paren_depth(expr):
    depth = deepest = 0
    for c in expr:
        if c == "(":
            depth += 1
            deepest = max(deepest, depth)
        elif c == ")":
            depth -= 1
    return deepest


def _evaluate(node, literals):
    """Exact value of a whitelisted expression tree; appends the literals it uses. Raises ValueError on any
    other node (power, unary minus, names, calls, floats...) and ZeroDivisionError on division by zero."""
    if type(node) is ast.BinOp and type(node.op) in BINOPS:
        left = _evaluate(node.left, literals)
        right = _evaluate(node.right, literals)
        return BINOPS[type(node.op)](left, right)
    if type(node) is ast.Constant and type(node.value) is int:
        literals.append(node.value)
        return node.value
    raise ValueError(f"not allowed in a Countdown answer: {type(node).__name__}")


def countdown_value(expr: str, numbers: list[int]) -> Fraction | None:
    """Exact value of a Countdown answer that uses each of `numbers` exactly once, else None.
    Used by the reward and for majority voting (cons@k): two answers agree if their values are equal."""
    # cheap refusals first, so that hostile answers never reach the parser
    if (len(expr) > MAX_EXPR_LEN or not EXPR_CHARS_RE.fullmatch(expr) or LONG_LITERAL_RE.search(expr)
            or _paren_depth(expr) > MAX_DEPTH):
        return None
    try:
        tree = ast.parse(expr, mode="eval")
        literals = []
        value = _evaluate(tree.body, literals)
    except (SyntaxError, ValueError, ZeroDivisionError, RecursionError, MemoryError):
        return None
    return Fraction(value) if sorted(literals) == sorted(numbers) else None


def _countdown_correct(answer, numbers, target):
    value = None if answer is None else countdown_value(answer, numbers)
    return 1.0 if value is not None and value == target else 0.0


def countdown_reward(text: str, numbers: list[int], target: int) -> float:
    return _countdown_correct(extract_answer(text), numbers, target)

# -----------------------------------------------------------------------------
# Numeric answers

MAX_NUMBER_LEN = 100
NUMBER_RE = re.compile(r"""
    (?P<num>[-+]?[0-9]+) [ ]*/[ ]* (?P<den>[0-9]+)                        # 3/4, -3/4
  | [-+]?(?:[0-9]{1,3}(?:,[0-9]{3})+|[0-9]+)(?:\.[0-9]+)?                # 42, -1,234, 3.25, 1,234.5
""", re.VERBOSE)


def parse_number(s: str) -> Fraction | None:
    """The exact value of a bare number (see the module docstring for what is accepted), else None."""
    s = s.strip()
    m = NUMBER_RE.fullmatch(s) if len(s) <= MAX_NUMBER_LEN else None
    if m is None:
        return None
    if m.group("num"):
        den = int(m.group("den"))
        return Fraction(int(m.group("num")), den) if den else None
    return Fraction(s.replace(",", ""))  # Fraction parses a decimal string exactly


def _reference(answer):
    """The dataset's answer (a number or its string) as a Fraction; a non-numeric one is a data bug."""
    reference = parse_number(str(answer))
    if reference is None:
        raise ValueError(f"reference answer {answer!r} is not a number")
    return reference


def _numeric_correct(answer, reference):
    return 1.0 if answer is not None and parse_number(answer) == reference else 0.0


def numeric_reward(text: str, answer: str | int | Fraction) -> float:
    return _numeric_correct(extract_answer(text), _reference(answer))

# -----------------------------------------------------------------------------
# Reflections: the "aha moment" metric (R1-Zero learns to stop, check and retry; we count how often it says so)

REFLECTION_RE = re.compile(  # the first-letter lookahead only rejects most positions sooner: same matches
    r"\b(?=[wlrdvmthp])(?:wait|let\s+me\s+check|re-?check|double-check|verify|mistake|try\s+again|hmm"
    r"|warte|pruefen)\b", re.IGNORECASE)


def reflection_count(text: str) -> int:
    """Occurrences of self-reflection phrases, whole words, any case. One alternation scanned left to right,
    so each phrase counts once ("let me check" is one phrase, never also another)."""
    return len(REFLECTION_RE.findall(text))


# A check in the corpus's reflect style, either language: a candidate's last step "= v." followed by a rejection
# "Wait, v is not T." or a verification "Let me verify: v = T."
_phrases = lambda name: "|".join(re.escape(phrases[name]) for phrases in PHRASES.values())
CHECK_RE = re.compile(rf"= (\d+)\. (?:(?:{_phrases('wait')}), \d+ (?:{_phrases('is_not')}) \d+"
                      rf"|({_phrases('verify')}): )")


CHECK_OUTCOMES = ("true_verify", "false_verify", "true_reject", "false_reject")


def check_outcomes(text: str, target: int) -> dict:
    """Whether a Countdown answer's reflections check what they claim: each verification or rejection is judged
    by the value v it follows against the real target (not the number the text writes after it). A verification
    of v != target is a false accept ("Let me verify: 15 = 15." on a problem for 9), a rejection of v == target a
    false reject. Counts of true_verify, false_verify, true_reject, false_reject."""
    out = dict.fromkeys(CHECK_OUTCOMES, 0)
    for value, verify in CHECK_RE.findall(text):
        hit = int(value) == target
        if verify:
            out["true_verify" if hit else "false_verify"] += 1
        else:
            out["false_reject" if hit else "true_reject"] += 1
    return out

# -----------------------------------------------------------------------------
# Language consistency: R1's reward against language mixing (sec. 2.3.2), and the metric of mixing itself

TAG_RE = re.compile("|".join(re.escape(tag) for tag in (*TAGS, EOT)))


def language_consistency(text: str, language: str = "en") -> float:
    """Fraction of the CoT's words that are in `language` (see the module docstring); 1.0 if it has none."""
    if language not in LEXICONS:
        raise ValueError(f"unknown language {language!r}: expected one of {sorted(LEXICONS)}")
    words = WORD_RE.findall(TAG_RE.sub(" ", text.partition(THINK_END)[0]))
    if not words:
        return 1.0
    lexicon = LEXICONS[language]
    return sum(word.lower() in lexicon for word in words) / len(words)

# -----------------------------------------------------------------------------
# The combined scorer used by GRPO and the evaluation

class Reward(NamedTuple):
    total: float        # accuracy + format_weight * format + language_weight * consistency: what GRPO maximises
    format: float
    accuracy: float
    reflections: int    # logged, not rewarded
    language_consistency: float  # of the CoT, against English (the prompts' language); rewarded if weighted


def score(text: str, task: dict, format_weight: float = 0.1, language_weight: float = 0.0) -> Reward:
    """Score one turn. task: {"task": "countdown", "numbers": [...], "target": int} or
    {"task": "arithmetic", "answer": "..."} (a user's numeric dataset uses the arithmetic kind).
    Every prompt is in English, so the CoT's consistency is measured against English."""
    kind = task.get("task")
    if kind not in ("countdown", "arithmetic"):
        raise ValueError(f"unknown task kind {kind!r}: expected 'countdown' or 'arithmetic'")
    answer = extract_answer(text)
    fmt = 0.0 if answer is None else 1.0
    if kind == "countdown":
        accuracy = _countdown_correct(answer, task["numbers"], task["target"])
    else:
        accuracy = _numeric_correct(answer, _reference(task["answer"]))
    consistency = language_consistency(text, "en")
    total = accuracy + format_weight * fmt + language_weight * consistency * fmt
    return Reward(total, fmt, accuracy, reflection_count(text), consistency)


def score_batch(texts: list[str], tasks: list[dict], format_weight: float = 0.1,
                language_weight: float = 0.0) -> list[Reward]:
    return [score(text, task, format_weight, language_weight) for text, task in zip(texts, tasks, strict=True)]
