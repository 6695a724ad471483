"""
The annotators of DeepSeek-R1's cold start (arXiv:2501.12948 sec. 2.3.1): R1-Zero's outputs gathered "in a
readable format" and refined by people. Here the people are rules, and the phrase tables of languages.py are
their dictionary. Pure functions of text, used by r1.py (the "r1zero" cold start) and evaluate.py (diagnostics).

R1 writes its readable answers as |special_token|<reasoning_process>|special_token|<summary>. This project's
answer block must hold the bare expression (rewards.py), so the summary is the reasoning's last sentence:

    <think> Try 9 * 5 + 10: 9 * 5 = 45, 45 + 10 = 55. Wait, 55 is not 85. Try 10 * 9 - 5: 10 * 9 = 90,
    90 - 5 = 85. Let me verify: 85 = 85. Summary: 10 * 9 - 5 = 85. </think> <answer> 10 * 9 - 5 </answer>

"Summary: <the answer's expression> = <its value>." can be checked by rule (summary_ok): the expression is the
answer, the value is what it computes. "Summary" is a phrase of languages.py's tables, so the English lexicon
holds it and the summary keeps the language consistency at 1.

The rewrite (readable_answer) keeps R1-Zero's search, its candidates in its order, and writes everything else
anew, the way an annotator would copy out a messy draft:
  1. translate the second language's phrases into English (translate: "Versuche" -> "Try", "Warte" -> "Wait");
  2. read the candidates the answer tried ("Try E:" and "Guess: E.");
  3. keep each valid candidate once: one that breaks the rules (numbers not used exactly once, a division by
     zero) and one tried before go; so does a hit other than the answer (the answer's attempt comes last);
  4. write each kept miss as "Try E: <its steps>. Wait, v is not T." with the steps computed anew (R1-Zero's own
     arithmetic may be wrong), then the answer's attempt, its check ("Let me verify: T = T." for a hit, "Wait, v
     is not T." for an answer that gives up), and the summary.
The answer is never changed (its spacing aside), so the rewritten text scores the accuracy the original did
(rewards.score).
"""

import ast
import re
from fractions import Fraction

import data
import rewards
from languages import PHRASES
from template import THINK, THINK_END

EN = PHRASES["en"]
SUMMARY = EN["summary"]
_EXPR = r"[0-9+\-*/() ]+?"
_alt = lambda name: "|".join(re.escape(phrases[name]) for phrases in PHRASES.values())
# a candidate, in any language of the tables: "Try E:" / "Versuche E:" or "Guess: E." / "Ich rate: E."
CANDIDATE_RE = re.compile(rf"(?:(?:{_alt('try')}) ({_EXPR}):|(?:{_alt('guess')}): ({_EXPR})\.)")
SUMMARY_RE = re.compile(rf"{re.escape(SUMMARY)}: ({_EXPR}) = (-?[0-9]+(?:/[0-9]+)?)\.\s*$")


def translate(text, source, target="en"):
    """The phrases of language `source` replaced by those of `target` (languages.py's tables), longest first and
    as whole words; every other character is kept. The annotators' dictionary."""
    pairs = sorted(((PHRASES[source][name], PHRASES[target][name]) for name in PHRASES[source]),
                   key=lambda pair: -len(pair[0]))
    for phrase, replacement in pairs:
        text = re.sub(rf"\b{re.escape(phrase)}\b", replacement, text)
    return text


def to_english(text):
    """translate from every language of the tables but English."""
    for language in PHRASES:
        if language != "en":
            text = translate(text, language)
    return text


def cot_of(text):
    """The reasoning of an assistant turn: what lies between "<think>" and the first "</think>"."""
    return text.partition(THINK_END)[0].replace(THINK, " ")


def candidates(text):
    """The candidate expressions a Countdown answer tries, in order, as written (stripped)."""
    return [" ".join((a or b).split()) for a, b in CANDIDATE_RE.findall(cot_of(text))]


def repeated_candidates(text):
    """How many of an answer's candidates repeat one it tried before: the loops that run answers to the cap."""
    found = candidates(text)
    return len(found) - len(set(found))


def repeated_share(text):
    """The share of an answer's candidates that repeat one it tried before, in [0, 1): 0 without candidates, near
    1 in a loop. What grpo.GRPOConfig.repeat_penalty punishes."""
    n = len(candidates(text))
    return repeated_candidates(text) / n if n else 0.0


def _fmt(value):
    return str(Fraction(value))  # 55, or 8/3 where a step does not divide


def _operand(value):
    return _fmt(value) if Fraction(value).denominator == 1 else f"({_fmt(value)})"  # 8 / (1/3), not 8 / 1/3


def expression_steps(expr):
    """The steps of an expression the way the corpus writes them ("9 * 5 = 45, 45 + 10 = 55"), innermost first
    and left before right (data.render_steps's order), in exact arithmetic. None if it does not parse or divides
    by zero."""
    ops = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/"}
    steps = []

    def walk(node):
        if type(node) is ast.Constant and type(node.value) is int:
            return node.value
        if type(node) is not ast.BinOp or type(node.op) not in ops:
            raise ValueError(type(node).__name__)
        a, b = walk(node.left), walk(node.right)
        value = rewards.BINOPS[type(node.op)](a, b)
        steps.append(f"{_operand(a)} {ops[type(node.op)]} {_operand(b)} = {_fmt(value)}")
        return value

    try:
        walk(ast.parse(expr, mode="eval").body)
    except (SyntaxError, ValueError, ZeroDivisionError, RecursionError):
        return None
    return ", ".join(steps)


def summary_line(expr, value):
    return f"{SUMMARY}: {expr} = {_fmt(value)}."


def readable_answer(text, row):
    """A Countdown answer (the assistant turn from "<think>", in the R1 format) rewritten in the readable format
    (see the module docstring): the completion after the prompt's "<think>", as sft.example_from_text takes it.
    The answer is kept as is, right or wrong. None when there is nothing to rewrite: not a Countdown row, not in
    the format, or an answer that is no valid expression of the numbers."""
    if row.get("task") != "countdown":
        return None
    answer = rewards.extract_answer(text)
    value = None if answer is None else rewards.countdown_value(answer, row["numbers"])
    steps = None if value is None else expression_steps(answer)
    if steps is None:
        return None
    answer = " ".join(answer.split())
    target, parts, seen = row["target"], [], {answer}
    for expr in candidates(to_english(text)):
        v = rewards.countdown_value(expr, row["numbers"])
        if expr in seen or v is None or v == target:  # tried before, against the rules, or a hit not answered
            continue
        seen.add(expr)
        parts += [f"{EN['try']} {expr}: {expression_steps(expr)}.", f"{EN['wait']}, {_fmt(v)} {EN['is_not']} {target}."]
    parts.append(f"{EN['try']} {answer}: {steps}.")
    parts.append(f"{EN['verify']}: {_fmt(value)} = {target}." if value == target
                 else f"{EN['wait']}, {_fmt(value)} {EN['is_not']} {target}.")
    parts.append(summary_line(answer, value))
    return data.answer_turn(answer, " ".join(parts))


def summary_ok(text, row):
    """Whether a Countdown answer's reasoning ends with a true summary: "Summary: E = v." where E is the answer
    (spaces aside) and v its exact value."""
    answer = rewards.extract_answer(text)
    m = SUMMARY_RE.search(cot_of(text).rstrip())
    if answer is None or m is None or " ".join(m[1].split()) != " ".join(answer.split()):
        return False
    value = rewards.countdown_value(answer, row["numbers"])
    return value is not None and value == Fraction(m[2])
