import hashlib
import json
import random
from fractions import Fraction

import pytest
from hypothesis import given, settings, strategies as st

import data
from languages import PHRASES
from rewards import language_consistency, reflection_count


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",))))
def test_tokenizer_round_trips_any_text(text):
    enc = data.get_tokenizer()
    assert enc.decode(enc.encode(text, disallowed_special=())) == text


def test_special_tokens_are_single_tokens():
    enc = data.get_tokenizer()
    for tok in data.SPECIAL_TOKENS:
        assert len(data.encode(tok)) == 1
    assert enc.n_vocab <= 512  # fits the model presets' vocab_size
    ids = data.encode("<think> 7 * 3 = 21 </think> <answer> 21 </answer><|endoftext|>")
    assert enc.decode(ids) == "<think> 7 * 3 = 21 </think> <answer> 21 </answer><|endoftext|>"
    assert len(data.encode(" 123")) == 3  # one digit per token


def value_of(expr):
    # a tiny exact evaluator for the generator's own output (only + - * / and parentheses)
    import ast
    def ev(node):
        if isinstance(node, ast.Constant):
            return Fraction(node.value)
        a, b = ev(node.left), ev(node.right)
        return {ast.Add: a + b, ast.Sub: a - b, ast.Mult: a * b}.get(type(node.op)) if not isinstance(
            node.op, ast.Div) else a / b
    return ev(ast.parse(expr, mode="eval").body)


def test_every_problem_solvable_and_splits_disjoint():
    pools = {split: set(data.countdown_problems(split)) for split in data.SPLITS}
    train, test, pretrain = pools["train"], pools["test"], pools["pretrain"]
    assert len(train) > 2000 and len(pretrain) > 2000 and 0.05 < len(test) / sum(map(len, pools.values())) < 0.15
    assert not train & test and not train & pretrain and not test & pretrain
    with pytest.raises(ValueError, match="split"):
        data.countdown_problems("dev")
    train, test = sorted(train), sorted(test)
    for numbers, target in random.Random(0).sample(train + test, 300):
        solutions = [e for e in data.clean_expressions(numbers) if e.value == target]
        assert solutions
        for e in solutions[:3]:
            assert value_of(e.text) == target
            assert sorted(int(t) for t in e.text.replace("(", " ").replace(")", " ").split() if t.isdigit()) \
                == sorted(numbers)


def test_dataset_and_corpus_deterministic_per_seed():
    a = data.countdown_dataset("test", n=20, seed=3)
    b = data.countdown_dataset("test", n=20, seed=3)
    c = data.countdown_dataset("test", n=20, seed=4)
    assert a.to_list() == b.to_list() and a.to_list() != c.to_list()
    assert data.corpus_tokens(2000, seed=1) == data.corpus_tokens(2000, seed=1)
    assert data.corpus_tokens(2000, seed=1) != data.corpus_tokens(2000, seed=2)
    row = a[0]
    assert f"equals {row['target']}" in row["question"] and row["task"] == "countdown"


def is_reflect(text):
    """A reflect-style answer, in either language: it says Wait, or it verifies its first candidate."""
    return any(p["wait"] in text or p["verify"] in text for p in PHRASES.values())


def test_corpus_styles_and_rates():
    rng = random.Random(0)
    problem = ((3, 7, 11), 54)
    styles = [data.countdown_response(rng, problem).split(":")[0].split()[0] for _ in range(4000)]
    reflective = [r for r in (data.countdown_response(random.Random(i), problem) for i in range(4000))
                  if is_reflect(r)]
    assert 0.6 < styles.count("Guess") / 4000 < 0.8
    assert 0.07 < len(reflective) / 4000 < 0.13
    german = sum(language_consistency(r.split("<answer>")[0]) < 0.5 for r in reflective) / len(reflective)
    assert 0.85 < german < 0.95  # the default corpus's p_second_language_reflect: 0.9
    always = data.CorpusConfig(p_reflect=1.0)
    for i in range(50):  # the reflect style ends on a solution unless it gives up after max_attempts
        text = data.countdown_response(random.Random(i), problem, always)
        answer = text.split("<answer>")[1].split("</answer>")[0].strip()
        assert value_of(answer) == 54 or reflection_count(text) == always.max_attempts
    doc = data.corpus_document(random.Random(0))
    assert doc.startswith(data.TEMPLATE.split("{question}")[0]) and doc.endswith(data.EOT)


def test_check_countdown_accepts_the_tasks_problems_only():
    for numbers, target in data.countdown_problems("test")[:50]:
        data.check_countdown(numbers, target)
    for numbers, target, message in [([5], 5, "2 or more"), ([3, 0, 4], 7, "1..12"), ([3, 13], 16, "1..12"),
                                     ([3, 7, 11], 0, "1..100"), ([3, 7, 11], 101, "1..100")]:
        with pytest.raises(ValueError, match=message):
            data.check_countdown(numbers, target)


def test_load_jsonl(tmp_path):
    path = tmp_path / "mine.jsonl"
    path.write_text(json.dumps({"numbers": [3, 7, 11], "target": 54}) + "\n\n"
                    + json.dumps({"question": "What is 6 * 7?", "answer": "42"}) + "\n")
    ds = data.load_jsonl(path)
    assert ds[0]["task"] == "countdown" and ds[0]["target"] == 54 and ds[1]["answer"] == "42"
    for bad in ['{"numbers": [1, 2]}', "not json", '{"numbers": ["1"], "target": 3}', "[1, 2]",
                '{"question": "2+2?", "answer": "four"}']:
        path.write_text(bad + "\n")
        with pytest.raises(ValueError, match=":1:"):
            data.load_jsonl(path)
    path.write_text("")
    with pytest.raises(ValueError, match="no problems"):
        data.load_jsonl(path)


def test_problem_rows_from_a_file_or_a_split(tmp_path):
    assert data.problem_rows("test", 5, seed=1) == data.countdown_dataset("test", n=5, seed=1).to_list()
    assert data.problem_rows("train", seed=0) == data.countdown_dataset("train", seed=0).to_list()
    path = tmp_path / "mine.jsonl"
    path.write_text("".join(json.dumps({"question": f"What is {i} + 1?", "answer": i + 1}) + "\n" for i in range(6)))
    every = data.problem_rows("train", path=str(path))
    assert [row["answer"] for row in every] == [str(i + 1) for i in range(6)]
    drawn = data.problem_rows("train", 4, seed=2, path=str(path))
    assert drawn == data.problem_rows("train", 4, seed=2, path=str(path)) and len(drawn) == 4
    assert len(data.problem_rows("test", 50, path=str(path))) == 6


def test_corpus_never_shows_rl_or_test_problems():
    # RL must not be able to raise its reward by recalling answers memorised in pretraining
    enc, seen = data.get_tokenizer(), set()
    text = enc.decode(data.corpus_tokens(50_000, seed=0))
    for question in text.split("Using the numbers ")[1:]:
        numbers, rest = question.split("]", 1)
        target = int(rest.split("equals ")[1].split(".")[0])
        seen.add((tuple(sorted(int(n) for n in numbers.strip("[").split(","))), target))
    assert len(seen) > 100 and seen <= set(data.countdown_problems("pretrain"))


def test_default_corpus_unchanged_byte_for_byte():
    # sha256 of str(corpus_tokens(1, seed=0)) (one batch of 1024 documents) computed at commit 7104019, before
    # the second-language options existed: the English corpus (the default until issue 15, the CPU setup's since)
    # is exactly the stream its models saw
    english = dict(p_second_language_reflect=0.0)
    for cfg, digest in ((data.CorpusConfig(**english), "442e66b27acd59551f8c6f1756be717702d44bf94391ad7599f2946c8ef1a900"),
                        (data.CorpusConfig(p_reflect=0.5, p_correct=0.3, **english),
                         "baefff8a407485fd55383121d6509a4195c2ec53b41e82c21970a4b7e22d8127")):
        assert hashlib.sha256(str(data.corpus_tokens(1, seed=0, cfg=cfg)).encode()).hexdigest() == digest


def test_second_language_reasoning():
    problem = ((3, 7, 11), 54)
    german = data.CorpusConfig(p_reflect=1.0, p_second_language_reflect=1.0)
    for i in range(30):  # reflect responses wholly in the second language: no English word in the CoT
        cot = "<think>" + data.countdown_response(random.Random(i), problem, german)
        assert language_consistency(cot) == 0.0 and language_consistency(cot, "de") == 1.0
        assert "Warte" in cot or "pruefen" in cot
    # the other option sets the guess and try styles, and leaves reflect responses English
    other = data.CorpusConfig(p_try=0.5, p_reflect=0.1, p_second_language_other=1.0)
    for i in range(200):
        cot = "<think>" + data.countdown_response(random.Random(i), problem, other)
        reflect = "Wait" in cot or "verify" in cot
        assert language_consistency(cot, "en" if reflect else "de") == 1.0
    half = data.CorpusConfig(p_reflect=1.0, p_second_language_reflect=0.5)
    share = sum(language_consistency("<think>" + data.countdown_response(random.Random(i), problem, half)) == 0
                for i in range(1000)) / 1000
    assert 0.44 < share < 0.56
    # prompts stay English: every question of a document is, whatever language its reasoning is in
    doc = data.corpus_document(random.Random(0), cfg=data.CorpusConfig(p_arithmetic=0, p_reflect=1.0,
                                                                       p_second_language_reflect=1.0))
    turns = doc.split("User: ")[1:]
    assert turns and all(t.startswith("Using the numbers ") and "Warte" not in t.split("<think>")[0]
                         for t in turns)
    assert doc.startswith(data.TEMPLATE.split("{question}")[0]) and "Versuche" in doc
    for name in ("p_second_language_reflect", "p_second_language_other"):
        for bad in (-0.1, 1.5):
            with pytest.raises(ValueError, match=f"CorpusConfig.{name} must be a probability"):
                data.CorpusConfig(**{name: bad}).validate()


def test_first_turn_reflect_scale():
    def reflect_shares(cfg):
        """Shares of reflect answers among Countdown answers in documents' first turns and in their later turns."""
        rng, counts = random.Random(0), {True: [0, 0], False: [0, 0]}
        for _ in range(1500):
            turns = data.corpus_document(rng, cfg=cfg).split(" User: ")[1:]  # [0] is the template's own text
            for i, turn in enumerate(turns):
                if "Using the numbers" in turn:
                    counts[i == 0][0] += is_reflect(turn)
                    counts[i == 0][1] += 1
        return counts[True][0] / counts[True][1], counts[False][0] / counts[False][1]
    first, later = reflect_shares(data.CorpusConfig(p_reflect=0.4, first_turn_reflect_scale=0.25))
    assert 0.07 < first < 0.13 and 0.36 < later < 0.44
    first, later = reflect_shares(data.CorpusConfig(p_reflect=0.4))
    assert 0.36 < first < 0.44 and 0.36 < later < 0.44
    for scale in (-0.5, 2.0):  # 0.4 * 2 + p_try 0.25 > 1
        with pytest.raises(ValueError, match="first_turn_reflect_scale"):
            data.CorpusConfig(p_reflect=0.4, first_turn_reflect_scale=scale).validate()
