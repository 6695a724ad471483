import os
import subprocess
import sys

import pytest
import torch

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
def test_greedy_generate_equals_full_forward_decoding_for_ragged_prompts(seed):
    torch.manual_seed(seed)
    model = Transformer(make_config("tiny")).eval()
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


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_cuda_graph_decoding_matches_eager_decoding():
    torch.manual_seed(0)
    model = Transformer(make_config("small")).cuda()
    prompts = [torch.randint(0, 500, (n,)).tolist() for n in (30, 7, 19, 64)]
    graph = generate(model, prompts, 40, temperature=0, stop_ids=[], cuda_graph=True)
    eager = generate(model, prompts, 40, temperature=0, stop_ids=[], cuda_graph=False)
    assert graph == eager


def test_cli_rejects_bad_numbers_and_target_before_loading():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for args, message in [(["--numbers", "3", "--target", "3"], "2 or more numbers"),
                          (["--numbers", "3", "7", "11", "--target", "500"], "target must be in 1..100")]:
        run = subprocess.run([sys.executable, "sample.py", "--ckpt", "no-such.pt", *args], cwd=root,
                             capture_output=True, text=True, timeout=60)
        assert run.returncode == 2 and message in run.stderr, run.stderr
