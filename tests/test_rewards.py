import re
from fractions import Fraction

import pytest
from hypothesis import assume, given, settings, strategies as st

from rewards import (Reward, countdown_reward, countdown_value, extract_answer, format_reward,
                     language_consistency, numeric_reward, parse_number, reflection_count, score, score_batch)


def turn(answer, think=" reasoning "):
    return f"<think>{think}</think> <answer> {answer} </answer>"

# ----------------------------------------------------------------------------- format

GOOD_FORMAT = [
    "<think> 7 * 3 = 21 </think> <answer> 7 * 3 + 2 </answer>",
    "<think> x </think><answer>23</answer>",                       # no space between the blocks
    "  \n<think> x </think>\n\n<answer>\n23\n</answer>\n",          # leading and trailing whitespace
    "<think> x </think> <answer> 23 </answer><|endoftext|>",       # the sampler's end-of-text marker
    "<think> x </think> <answer> 23 </answer> \n<|endoftext|>\n ",
    "<think></think> <answer> 23 </answer>",                       # empty think is allowed
    "<think> <thinking> <answers> </ answer> <|pad|> </think> <answer> 23 </answer>",  # not tags
]

BAD_FORMAT = [
    "",
    "23",
    "<think> x </think>",
    "<answer> 23 </answer>",
    " x </think> <answer> 23 </answer>",                           # missing <think>
    "<think> x <answer> 23 </answer>",                             # missing </think>
    "<think> x </think> <answer> 23",                              # unclosed answer
    "<think> x </think> 23 </answer>",
    "<think> x </think> <answer> </answer>",                       # empty answer
    "<think> x </think> <answer>  \n </answer>",
    "<think> <answer> 24 </answer> </think> <answer> 23 </answer>",  # answer tags inside think
    "<think> x </think> <answer> 23 </answer> <answer> 24 </answer>",  # two answer blocks
    "<think> x </think> <think> y </think> <answer> 23 </answer>",   # two think blocks
    "<think> <think> x </think> </think> <answer> 23 </answer>",     # nested think
    "<think> x </think> <answer> <answer> 23 </answer> </answer>",   # nested answer
    "<think> x </think> <answer> 23 </think> </answer>",
    "<think> x </think> <answer> 23 </answer> so the answer is 23",  # text after </answer>
    "<think> x </think> <answer> 23 </answer><|endoftext|> more",   # text after end-of-text
    "<think> x </think> <answer> 23 </answer><|endoftext|><|endoftext|>",
    "<think> x <|endoftext|> </think> <answer> 23 </answer>",       # end-of-text inside
    "<think> x </think> <answer> 23 <|endoftext|></answer>",
    "Sure! <think> x </think> <answer> 23 </answer>",               # text before <think>
    "<think> x </think> so <answer> 23 </answer>",                  # text between the blocks
    "<answer> 23 </answer> <think> x </think>",                     # wrong order
    "<Think> x </Think> <Answer> 23 </Answer>",                     # tags are case-sensitive
]


@pytest.mark.parametrize("text", GOOD_FORMAT)
def test_format_accepts(text):
    assert format_reward(text) == 1.0
    assert extract_answer(text) in ("7 * 3 + 2", "23")


@pytest.mark.parametrize("text", BAD_FORMAT)
def test_format_rejects(text):
    assert format_reward(text) == 0.0
    assert extract_answer(text) is None
    assert countdown_reward(text, [23], 23) == 0.0
    assert numeric_reward(text, 23) == 0.0


def test_extract_answer_strips_and_keeps_inner_text():
    assert extract_answer("<think> a </think> <answer>\n  1 + 2\t</answer>") == "1 + 2"
    assert extract_answer("<think> a </think> <answer>The answer is 3</answer>") == "The answer is 3"

# ----------------------------------------------------------------------------- countdown

@pytest.mark.parametrize("expr, numbers, target", [
    ("7 * 3 + 2", [7, 3, 2], 23),
    ("2+3*7", [7, 3, 2], 23),                  # precedence
    ("(7 + 3) * 2", [2, 3, 7], 20),
    ("((7)+(3))*(2)", [7, 3, 2], 20),          # redundant parentheses are fine
    ("8/(3-8/3)", [3, 3, 8, 8], 24),           # exact rationals: 8 / (1/3) = 24
    ("6/4*2", [6, 4, 2], 3),                   # fraction in the middle
    ("2 - 7 + 8", [2, 7, 8], 3),               # negative intermediate
    ("10 - 4 - 3", [10, 4, 3], 3),             # left associative
    ("12 / 2 / 3", [12, 2, 3], 2),
    ("5 * 5", [5, 5], 25),                     # repeated numbers, each used once
    ("0 * 9 + 4", [0, 9, 4], 4),
    ("999999 - 999998", [999999, 999998], 1),  # six digits is the limit
    ("42", [42], 42),
])
def test_countdown_correct(expr, numbers, target):
    assert countdown_reward(turn(expr), numbers, target) == 1.0
    assert countdown_value(expr, numbers) == target
    assert countdown_reward(turn(expr), numbers, target + 1) == 0.0


def test_countdown_value_is_exact_and_usable_for_voting():
    assert countdown_value("8/(3-8/3)", [8, 3, 8, 3]) == Fraction(24)
    assert countdown_value("7 / 3 + 2", [2, 3, 7]) == Fraction(13, 3)
    assert countdown_value("7 * 3 + 2", [7, 3, 2]) == countdown_value("2 + 3 * 7", [2, 3, 7])
    assert countdown_reward(turn("7 / 3 + 2"), [7, 3, 2], 4) == 0.0  # 13/3 is not 4 (no rounding)
    assert countdown_reward(turn("7 / 3 + 2"), [7, 3, 2], Fraction(13, 3)) == 1.0


HACKS = [
    # misuse of the numbers
    "7 * 7 + 2", "7 * 3", "7 * 3 + 2 + 0", "7 * 3 + 2 * 1", "23", "7 * 3 + 2 - 3 + 3", "07 * 3 + 2",
    # division by zero, with or without the right numbers
    "7 * 3 + 2 / (3 - 3)", "(7 * 3 + 2) / 0",
    # anything outside the grammar
    "__import__('os').system('echo hi')", "(7).real * 3 + 2", "abs(7) * 3 + 2", "x * 3 + 2",
    "lambda: 7 * 3 + 2", "7 * 3 + 2 if 1 else 0", "[7 * 3 + 2]", "7 * 3 + 2, 0", "7 * 3 + 2 == 23",
    "7 * 3 + 2 < 24", "7 * 3 + 2 = 23", "7 ^ 3 + 2", "7 | 3 + 2", "7 & 3 + 2", "7 << 3 + 2", "~7 * 3 + 2",
    "7 % 3 + 2", "7 // 3 + 2", "7 ** 3 + 2", "2**10", "9**9**9", "(9**9)**9",
    # unary tricks and non-integers
    "-7 * -3 + 2", "--7 * 3 + 2", "+7 * 3 + 2", "7 * 3 - -2", "7.0 * 3 + 2", "2.5 * 3 + 2", "1e1 * 3 + 2",
    "7j * 3 + 2", "0x7 * 3 + 2", "7_0 * 3 + 2", "True * 3 + 2",
    # unicode digits and look-alikes
    "٧ * ٣ + ٢", "７ * ３ + ２", "7² * 3 + 2", "7 × 3 + 2", "7 * 3 ＋ 2", "7 * 3 + 2\u200b", "𝟕 * 3 + 2",
    # syntax junk
    "", "()", "7 * 3 +", "(7 * 3 + 2", "7 * 3 + 2)", "7 3 2", "7\t* 3 + 2", "7 *\n3 + 2",
]


@pytest.mark.parametrize("expr", HACKS)
def test_countdown_rejects_hacks(expr):
    assert countdown_value(expr, [7, 3, 2]) is None
    assert countdown_reward(turn(expr), [7, 3, 2], 23) == 0.0
    assert score(turn(expr), {"task": "countdown", "numbers": [7, 3, 2], "target": 23}).accuracy == 0.0


def test_countdown_rejects_huge_inputs_before_parsing():
    assert countdown_value("1" + "0" * 9_999, [10 ** 9_999]) is None    # 10 000-digit literal
    assert countdown_value("1234567", [1234567]) is None                # over 6 digits
    assert countdown_value("(" * 100_000 + "7" + ")" * 100_000, [7]) is None
    assert countdown_value("+".join(["1"] * 1_000), [1] * 1_000) is None  # very long answer
    assert countdown_value("+".join(["1"] * 100), [1] * 100) == 100     # 199 chars: within the limit
    assert countdown_value("(" * 20 + "7" + ")" * 20, [7]) == 7           # nesting limit is 20
    assert countdown_value("(" * 21 + "7" + ")" * 21, [7]) is None
    assert countdown_value(")" * 30 + "(" * 30, []) is None
    text = "<think> " + "x " * 100_000 + "</think> <answer> " + "9**" * 100_000 + "9 </answer>"
    assert countdown_reward(text, [9], 9) == 0.0

# ----------------------------------------------------------------------------- numeric answers

@pytest.mark.parametrize("s, value", [
    ("42", 42), (" 42 ", 42), ("-42", -42), ("+42", 42), ("0", 0), ("007", 7),
    ("3.25", Fraction(13, 4)), ("-0.5", Fraction(-1, 2)), ("0.1", Fraction(1, 10)),
    ("3/4", Fraction(3, 4)), ("-3/4", Fraction(-3, 4)), ("6/8", Fraction(3, 4)), ("3 / 4", Fraction(3, 4)),
    ("1,234", 1234), ("-1,234,567", -1234567), ("12,345.5", Fraction(24691, 2)),
])
def test_parse_number_accepts(s, value):
    assert parse_number(s) == value


@pytest.mark.parametrize("s", [
    "", " ", "-", "abc", "42 apples", "x = 42", "\\boxed{42}", "4 2", "42.", ".5", "1.2.3", "--42", "+-42",
    "1e3", "1E3", "inf", "nan", "0x2A", "4_2", "3/0", "3/4/5", "3.5/2", "1,23", "12,34,567", "1234,567", ",123",
    "٤٢", "４２", "4²", "²", "½", "42\u200b", "1" * 101, "(42)", "2+2",
])
def test_parse_number_rejects(s):
    assert parse_number(s) is None


def test_numeric_reward():
    assert numeric_reward(turn("42"), "42") == 1.0
    assert numeric_reward(turn("42"), 42) == 1.0                        # the reference may be a number
    assert numeric_reward(turn("0.75"), "3/4") == 1.0
    assert numeric_reward(turn("3/4"), Fraction(3, 4)) == 1.0
    assert numeric_reward(turn("1,234"), "1234") == 1.0
    assert numeric_reward(turn("-7"), "-7") == 1.0
    assert numeric_reward(turn("42.0"), "42") == 1.0
    assert numeric_reward(turn("41"), "42") == 0.0
    assert numeric_reward(turn("42.000001"), "42") == 0.0              # exact, no tolerance
    assert numeric_reward(turn("7"), "-7") == 0.0
    assert numeric_reward(turn("The answer is 42"), "42") == 0.0
    assert numeric_reward("<think> <answer> 42 </answer> </think> <answer> 42 </answer>", "42") == 0.0
    with pytest.raises(ValueError, match="not a number"):
        numeric_reward(turn("42"), "forty-two")


def test_numeric_reward_refuses_absurdly_long_answers():
    assert numeric_reward(turn("4" * 10_000), "4") == 0.0
    assert numeric_reward(turn("0." + "0" * 10_000 + "1"), "0") == 0.0

# ----------------------------------------------------------------------------- reflections

@pytest.mark.parametrize("text, n", [
    ("", 0),
    ("Wait, 23 is not 24.", 1),
    ("wait WAIT Wait", 3),
    ("Let me check: 7 + 3 = 10.", 1),            # one phrase, not also "check"
    ("let me  check", 1),
    ("Let me re-check. Let me recheck. Let me double-check.", 3),
    ("Let me verify: 24 = 24.", 1),
    ("I made a mistake, let me try again. Hmm.", 3),
    ("awaiting, waiter, verifying, mistakes, hmmm, checked, trying again", 0),  # whole words only
    ("check, double check, let me see, again", 0),                               # not in the list
    ("<think> Wait, 20 is not 24. Hmm. Let me try again: 7 * 3 + 2. Let me verify. </think>", 4),
    ("Warte, 23 ist nicht 24. Lass mich pruefen: 24 = 24.", 2),  # the corpus's second language
])
def test_reflection_count(text, n):
    assert reflection_count(text) == n


PLAIN_REFLECTION_RE = re.compile(  # the phrase list without rewards.py's first-letter lookahead
    r"\b(?:wait|let\s+me\s+check|re-?check|double-check|verify|mistake|try\s+again|hmm|warte|pruefen)\b",
    re.IGNORECASE)
phrase_soup = st.lists(st.sampled_from(["wait", "WAIT", "Let me check", "let  me\ncheck", "re-check", "recheck",
                                        "double-check", "Verify", "mistake", "try again", "hmm", "Warte", "pruefen", "a", "-", " ",
                                        ", ", "ß", "İ", "٣", "_", "ſ", "K"]), max_size=30).map("".join)


@given(st.one_of(st.text(max_size=200), phrase_soup))
def test_reflection_count_is_the_plain_phrase_count(text):
    assert reflection_count(text) == len(PLAIN_REFLECTION_RE.findall(text))

# ----------------------------------------------------------------------------- language consistency

ENGLISH_COT = "<think> Try 7 * 3: 7 * 3 = 21. Wait, 21 is not 24. </think> <answer> 7 * 3 </answer>"
GERMAN_COT = "<think> Versuche 7 * 3: 7 * 3 = 21. Warte, 21 ist nicht 24. </think> <answer> 7 * 3 </answer>"


@pytest.mark.parametrize("text, english, german", [
    (ENGLISH_COT, 1.0, 0.0),
    (GERMAN_COT, 0.0, 1.0),
    ("<think> Try 7 * 3: 7 * 3 = 21. Warte, 21 ist nicht 24. Let me verify: 24 = 24. </think>", 4 / 7, 3 / 7),
    ("<think> Ich rate: 7 * 3. Guess: 7 * 3. </think> <answer> 7 * 3 </answer>", 1 / 3, 2 / 3),
    ("<think> WAIT wait Wait LASS </think>", 3 / 4, 1 / 4),                 # any case
    ("<think> Try Wiat 思考 reasoning </think>", 1 / 4, 0.0),               # unknown words count against both
    ("<think> Try </think> <answer> Versuche </answer>", 1.0, 0.0),        # only the CoT counts
    ("<think> Warte, Try", 0.5, 0.5),                                      # never closed: all of it is the CoT
    ("<think><think> Try <answer> </think>", 1.0, 0.0),                   # tags are not words
    ("<think> 7 * 3 = 21, 21 + 3 = 24. </think> <answer> 24 </answer>", 1.0, 1.0),  # no words: nothing mixed
    ("", 1.0, 1.0),
    ("Try3 wait_wait 2Wait", 1.0, 0.0),                                    # digits and _ split words
])
def test_language_consistency(text, english, german):
    assert language_consistency(text) == english
    assert language_consistency(text, "de") == german


def test_language_consistency_unknown_language_and_huge_inputs():
    with pytest.raises(ValueError, match="unknown language"):
        language_consistency(ENGLISH_COT, "fr")
    huge = "<think> " + "Wait Warte 1 + " * 70_000 + "</think> <answer> 1 </answer>"  # about 1 MB
    assert len(huge) > 10**6 and language_consistency(huge) == 0.5
    assert language_consistency("<think>" + "a" * 10**6) == 0.0
    assert language_consistency("<think>" + "\u202e\x00\ufffd" * 300_000 + "</think>") == 1.0


def test_score_adds_the_weighted_language_consistency():
    mixed = ENGLISH_COT.replace("Wait", "Warte")  # words: Try, Warte, is, not -> 3/4 English
    row = {"task": "countdown", "numbers": [7, 3], "target": 21}
    for text, consistency in ((ENGLISH_COT, 1.0), (GERMAN_COT, 0.0), (mixed, 0.75)):
        base = score(text, row)
        assert base.accuracy == 1.0 and base.language_consistency == consistency
        assert score(text, row, 0.1, 0.0) == base  # the default weight leaves the reward as it was
        assert score(text, row, 0.1, 0.5).total == base.total + 0.5 * consistency
    broken = ENGLISH_COT + " extra"  # like accuracy, the language term needs the format
    assert score(broken, row, 0.1, 0.5).total == 0.0 and score(broken, row).language_consistency == 1.0

# ----------------------------------------------------------------------------- the combined scorer

COUNTDOWN = {"task": "countdown", "question": "...", "numbers": [7, 3, 2], "target": 23, "answer": "23"}
ARITHMETIC = {"task": "arithmetic", "question": "Compute 37 * 4 + 12.", "numbers": [], "target": 0, "answer": "160"}


def test_score_countdown():
    text = "<think> Try 7 * 3 - 2 = 19. Wait, 19 is not 23. Try 7 * 3 + 2 = 23. </think> <answer> 7 * 3 + 2 </answer>"
    assert score(text, COUNTDOWN) == Reward(total=1.1, format=1.0, accuracy=1.0, reflections=1,
                                            language_consistency=1.0)
    wrong = text.replace("<answer> 7 * 3 + 2", "<answer> 7 * 3 - 2")
    assert score(wrong, COUNTDOWN) == Reward(total=0.1, format=1.0, accuracy=0.0, reflections=1,
                                             language_consistency=1.0)
    broken = text + " extra"
    assert score(broken, COUNTDOWN) == Reward(total=0.0, format=0.0, accuracy=0.0, reflections=1,
                                              language_consistency=1.0)
    assert score(text, COUNTDOWN, format_weight=0.5).total == 1.5
    assert score(text, COUNTDOWN, 0.0).total == 1.0  # GRPOTrainer passes format_weight positionally


def test_score_arithmetic():
    assert score(turn("160"), ARITHMETIC) == Reward(1.1, 1.0, 1.0, 0, 0.0)  # "reasoning" is no corpus word
    assert score(turn("161", " 160 "), ARITHMETIC) == Reward(0.1, 1.0, 0.0, 0, 1.0)
    assert score("160", ARITHMETIC) == Reward(0.0, 0.0, 0.0, 0, 1.0)
    assert score(turn("3/4"), {"task": "arithmetic", "answer": "0.75"}).accuracy == 1.0


def test_score_rejects_unknown_tasks_and_bad_references():
    with pytest.raises(ValueError, match="unknown task kind"):
        score(turn("1"), {"task": "chess", "answer": "1"})
    with pytest.raises(ValueError, match="unknown task kind"):
        score(turn("1"), {"answer": "1"})
    with pytest.raises(ValueError, match="not a number"):
        score("garbage", {"task": "arithmetic", "answer": "one"})


def test_score_batch():
    texts = [turn("7 * 3 + 2"), turn("160"), "junk"]
    tasks = [COUNTDOWN, ARITHMETIC, COUNTDOWN]
    assert score_batch(texts, tasks) == [score(t, k) for t, k in zip(texts, tasks)]
    assert [r.total for r in score_batch(texts, tasks, format_weight=0.0)] == [1.0, 1.0, 0.0]
    with pytest.raises(ValueError):
        score_batch(texts, tasks[:2])

# ----------------------------------------------------------------------------- property-based

ALL_FUNCTIONS = [
    format_reward, extract_answer, reflection_count, parse_number,
    lambda s: countdown_value(s, [7, 3, 2]),
    lambda s: countdown_reward(s, [7, 3, 2], 23),
    lambda s: numeric_reward(s, "42"),
    lambda s: score(s, COUNTDOWN),
    lambda s: score(s, ARITHMETIC, language_weight=1.0),
    language_consistency,
    lambda s: language_consistency(s, "de"),
]

any_text = st.text()
expression_text = st.text(alphabet="0123456789+-*/() .", max_size=60)
tag_soup = st.lists(st.sampled_from(["<think>", "</think>", "<answer>", "</answer>", "<|endoftext|>", " ", "\n",
                                     "7 * 3 + 2", "42", "wait", "x"]), max_size=12).map("".join)


@settings(max_examples=300, deadline=None)
@given(st.one_of(any_text, expression_text, tag_soup, expression_text.map(turn), any_text.map(turn)))
def test_fuzz_never_raises(s):
    for fn in ALL_FUNCTIONS:
        fn(s)
    assert format_reward(s) in (0.0, 1.0)
    assert (extract_answer(s) is None) == (format_reward(s) == 0.0)
    assert countdown_reward(s, [7, 3, 2], 23) <= format_reward(s)
    assert 0.0 <= language_consistency(s) <= 1.0 and 0.0 <= language_consistency(s, "de") <= 1.0


@settings(max_examples=300, deadline=None)
@given(tag_soup)
def test_fuzz_format_needs_one_of_each_tag(s):
    if format_reward(s) == 1.0:
        assert all(s.count(tag) == 1 for tag in ["<think>", "</think>", "<answer>", "</answer>"])
        assert s.count("<|endoftext|>") <= 1
        body = s.strip().removesuffix("<|endoftext|>").strip()
        assert body.startswith("<think>") and body.endswith("</answer>")


@settings(max_examples=300, deadline=None)
@given(st.fractions(max_denominator=10**6).filter(lambda f: abs(f) < 10**12))
def test_parse_number_round_trips_fractions(f):
    assert parse_number(str(f)) == f
    assert numeric_reward(turn(str(f)), f) == 1.0
    assert numeric_reward(turn(str(f + 1)), f) == 0.0


@settings(max_examples=200, deadline=None)
@given(st.decimals(allow_nan=False, allow_infinity=False, places=4, min_value=-10**9, max_value=10**9))
def test_parse_number_reads_decimals_exactly(d):
    assert parse_number(f"{d:f}") == Fraction(d)
    assert parse_number(f"{d:,f}") == Fraction(d)  # with thousands separators


# Random Countdown expressions: a tree of (op, left, right) tuples over integer leaves, rendered with minimal or
# extra parentheses and random spacing, and valued by a plain evaluator that shares no code with rewards.py.
PRECEDENCE = {"+": 1, "-": 1, "*": 2, "/": 2}


def tree_value(tree):
    if isinstance(tree, int):
        return Fraction(tree)
    op, left, right = tree
    a, b = tree_value(left), tree_value(right)
    if a is None or b is None or (op == "/" and b == 0):
        return None
    return a + b if op == "+" else a - b if op == "-" else a * b if op == "*" else a / b


def prec(tree):
    return 3 if isinstance(tree, int) else PRECEDENCE[tree[0]]


@st.composite
def expression_trees(draw, leaves):
    if len(leaves) == 1:
        return leaves[0]
    k = draw(st.integers(1, len(leaves) - 1))
    return (draw(st.sampled_from("+-*/")), draw(expression_trees(leaves[:k])), draw(expression_trees(leaves[k:])))


@st.composite
def rendered(draw, tree):
    if isinstance(tree, int):
        return str(tree)
    op, left, right = tree
    a, b = draw(rendered(left)), draw(rendered(right))
    # parentheses where precedence needs them (a - (b - c), a / (b * c)), and sometimes where it does not
    if prec(left) < prec(tree) or draw(st.booleans()):
        a = f"({a})"
    if prec(right) < prec(tree) or (prec(right) == prec(tree) and op in "-/") or draw(st.booleans()):
        b = f"({b})"
    space = draw(st.sampled_from(["", " "]))
    return f"{a}{space}{op}{space}{b}"


@st.composite
def countdown_problems(draw):
    numbers = draw(st.lists(st.integers(0, 999), min_size=1, max_size=6))
    tree = draw(expression_trees(numbers))
    return draw(rendered(tree)), draw(st.permutations(numbers)), tree_value(tree)


@settings(max_examples=400, deadline=None)
@given(countdown_problems())
def test_random_expressions_are_scored_exactly(problem):
    expr, numbers, value = problem
    assume(value is not None)  # division by zero somewhere in the tree
    assert countdown_value(expr, numbers) == value
    assert countdown_reward(turn(expr), numbers, value) == 1.0
    assert countdown_reward(turn(expr), numbers, value + 1) == 0.0
    if value.denominator == 1:
        assert score(turn(expr), {"task": "countdown", "numbers": numbers, "target": int(value)}).accuracy == 1.0
    assert countdown_reward(turn(expr), numbers + [1], value) == 0.0   # a number left unused
    if len(numbers) > 1:
        assert countdown_reward(turn(expr), numbers[1:], value) == 0.0  # a number used twice or not given


def test_check_outcomes_judge_each_check_by_the_value_against_the_target():
    from rewards import check_outcomes
    text = ("<think> Try 8 + 6 + 1: 8 + 6 = 14, 14 + 1 = 15. Let me verify: 15 = 15. "  # false accept (target 9)
            "Try 3 * 3: 3 * 3 = 9. Wait, 9 is not 9. "                                 # false reject
            "Versuche 2 * 5: 2 * 5 = 10. Warte, 10 ist nicht 9. "                      # true reject, German
            "Try 3 * 3: 3 * 3 = 9. Let me verify: 9 = 9. </think> <answer> 3 * 3 </answer>")  # true accept
    assert check_outcomes(text, 9) == {"true_verify": 1, "false_verify": 1, "true_reject": 1, "false_reject": 1}
    assert check_outcomes(text, 15) == {"true_verify": 1, "false_verify": 1, "true_reject": 2, "false_reject": 0}
    assert set(check_outcomes("<think> Guess: 3 * 3. </think> <answer> 3 * 3 </answer>", 9).values()) == {0}
