import os
import subprocess
import sys

import pytest
import torch

from chi_squared import chi_squared_p_value
from data import get_tokenizer
from model import Transformer, make_config
from sample import generate, sample_next


def greedy_without_cache(model, prompt, max_new_tokens, stop_ids):
    n_vocab = get_tokenizer().n_vocab  # generate never picks the unused rows past the tokenizer's ids
    tokens = list(prompt)
    for _ in range(max_new_tokens):
        nxt = model(torch.tensor([tokens]))[0, -1, :n_vocab].argmax().item()
        tokens.append(nxt)
        if nxt in stop_ids:
            break
    return tokens[len(prompt):]


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("attention", ["mha", "mla"])  # MLA decodes with the absorbed path (the default)
def test_greedy_generate_equals_full_forward_decoding_for_ragged_prompts(seed, attention):
    torch.manual_seed(seed)
    model = Transformer(make_config("tiny", attention=attention)).eval()
    prompts = [torch.randint(0, 450, (n,)).tolist() for n in (5, 12, 1, 9)]
    # stop ids drawn from tokens the model emits, so rows stop at different steps
    probe = greedy_without_cache(model, prompts[0], 6, stop_ids=[])
    stop_ids = [probe[3]]
    got = generate(model, prompts, max_new_tokens=20, temperature=0, stop_ids=stop_ids)
    want = [greedy_without_cache(model, p, 20, stop_ids) for p in prompts]
    assert got == want
    assert got[0][-1] == stop_ids[0] and len(got[0]) == 4


def test_top_p_keeps_only_the_nucleus():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    g = torch.Generator().manual_seed(0)
    draws = torch.stack([sample_next(logits, 1.0, 0.7, g) for _ in range(300)])
    assert set(draws.flatten().tolist()) == {0, 1}
    draws = torch.stack([sample_next(logits, 1.0, 1.0, g) for _ in range(300)])
    assert set(draws.flatten().tolist()) == {0, 1, 2, 3}


def test_generate_rejects_bad_arguments():
    model = Transformer(make_config("tiny"))
    with pytest.raises(ValueError):
        generate(model, [[]], 4)
    with pytest.raises(ValueError):
        generate(model, [[1, 2]], model.cfg.max_seq_len)


def test_rows_that_stop_or_run_out_at_different_steps_decode_as_alone():
    # generate drops a row from the batch and the cache when it stops: the others still decode exactly
    torch.manual_seed(2)
    model = Transformer(make_config("tiny")).eval()
    prompts = [torch.randint(0, 450, (n,)).tolist() for n in (3, 17, 8, 1, 12, 5, 9, 14, 2)]
    stop_ids = list(range(0, 450, 29))  # one token in 29 stops a row: rows end at many different steps
    budgets = [90, 40, 90, 7, 90, 90, 1, 90, 90]
    got = generate(model, prompts, budgets, temperature=0, stop_ids=stop_ids)
    assert got == [greedy_without_cache(model, p, n, stop_ids) for p, n in zip(prompts, budgets)]
    assert len({len(g) for g in got}) > 3  # rows really ended at different steps
    got = generate(model, prompts, budgets, temperature=0, stop_ids=[])
    assert [len(g) for g in got] == budgets


def test_sampled_tokens_follow_the_tempered_softmax():
    # the first token of 2000 rows of one prompt at temperature 0.7 against softmax(logits / 0.7): chi-squared
    # over the tokens expected 5+ times, at a significance of 1e-4 (a wrong temperature or an off-by-one row fails)
    torch.manual_seed(0)
    model = Transformer(make_config("tiny")).eval()
    prompt = torch.randint(0, 450, (6,)).tolist()
    first = torch.tensor([c[0] for c in generate(model, [prompt] * 2000, 1, temperature=0.7, stop_ids=[])])
    with torch.no_grad():
        probs = torch.softmax(model(torch.tensor([prompt]))[0, -1, :get_tokenizer().n_vocab].double() / 0.7, -1)
    assert chi_squared_p_value(first, probs) > 1e-4


def test_cli_rejects_bad_numbers_and_target_before_loading():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for args, message in [(["--numbers", "3", "--target", "3"], "2 or more numbers"),
                          (["--numbers", "3", "7", "11", "--target", "500"], "target must be in 1..100")]:
        run = subprocess.run([sys.executable, "sample.py", "--ckpt", "no-such.pt", *args], cwd=root,
                             capture_output=True, text=True, timeout=60)
        assert run.returncode == 2 and message in run.stderr, run.stderr
