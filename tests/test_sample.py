import os
import subprocess
import sys

import pytest
import torch

from data import get_tokenizer
from model import KVCache, Transformer, make_config
from sample import SLOT_BUCKET, Decoder, bucket, generate, sample_next


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


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
@pytest.mark.parametrize("attention", ["mha", "mla"])
def test_cuda_graph_decoding_matches_eager_decoding(attention):
    torch.manual_seed(0)
    model = Transformer(make_config("small", attention=attention)).cuda()
    prompts = [torch.randint(0, 500, (n,)).tolist() for n in (30, 7, 19, 64)]
    graph = generate(model, prompts, 40, temperature=0, stop_ids=[], cuda_graph=True)
    eager = generate(model, prompts, 40, temperature=0, stop_ids=[], cuda_graph=False)
    assert graph == eager


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_decoder_graphs_follow_the_weights_across_calls():
    # RL changes the weights between calls: graphs captured by the first call must decode the new weights (the
    # fused experts' packed matrices are rewritten where the graphs read them), as a fresh eager decoder does
    torch.manual_seed(0)
    model = Transformer(make_config("small")).cuda()
    prompts = [torch.randint(0, 500, (n,)).tolist() for n in (30, 7, 19, 64)]
    decoder = Decoder(model)
    before = decoder.generate(prompts, 40, temperature=0, stop_ids=[])
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    after = decoder.generate(prompts, 40, temperature=0, stop_ids=[])
    assert after == Decoder(model, cuda_graph=False).generate(prompts, 40, temperature=0, stop_ids=[])
    assert after != before


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the decoding kernels run on a GPU")
def test_decoding_kernels_are_as_accurate_as_the_plain_bf16_copy():
    # kernels/decode.py (prefill and cached steps: RMSNorm, RoPE, attention over the cache, the router and the
    # experts) and the PyTorch ops, both in the decoder's bf16 copy, against the fp32 model, fed the same tokens
    torch.manual_seed(0)
    model = Transformer(make_config("small")).cuda()
    fused, plain = Decoder(model), Decoder(model, fused_kernels=False)
    assert fused.net.layers[1].ffn.fused_decode and not plain.net.layers[1].ffn.fused_decode
    tokens = torch.randint(0, 500, (4, 100), device="cuda")
    real = torch.ones_like(tokens, dtype=torch.bool)
    real[1, :13] = False  # a left-padded row
    real[2, 70:] = False  # a row that finished (its steps feed padding)

    def logits(net, dtype):
        cache = KVCache(model.cfg, 4, 128, "cuda", dtype)
        with torch.no_grad():
            out = [net(tokens[:, :32], pad_mask=real[:, :32], cache=cache)]
            out += [net(tokens[:, t:t + 1], pad_mask=real[:, t:t + 1], cache=cache) for t in range(32, 100)]
        return torch.cat(out, 1)[real]
    exact = logits(model.eval(), torch.float32)
    fused_err = (logits(fused.net, torch.bfloat16) - exact).abs()
    plain_err = (logits(plain.net, torch.bfloat16) - exact).abs()
    # the kernels round differently from PyTorch's ops but no worse (a wrong kernel errs by far more than bf16)
    assert fused_err.mean() < 1.25 * plain_err.mean()
    assert fused_err.quantile(0.999) < 1.5 * plain_err.quantile(0.999)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the decoding kernels run on a GPU")
def test_fused_sampling_follows_the_models_distribution_and_the_seed():
    # the RL's sampling (temperature 1, top-p 1) runs as one kernel inside the CUDA graphs: one prompt in 4096 rows,
    # its first token's frequencies against the decoder's own softmax (total variation; the plain sampler, with
    # sampling error of the same size, is the yardstick), 64 rows of one prompt drawing 64 different completions,
    # and torch.manual_seed making a call repeatable
    torch.manual_seed(0)
    model = Transformer(make_config("small")).cuda()
    decoder = Decoder(model)
    prompt = torch.randint(0, 450, (20,)).tolist()
    assert decoder.fused_sampling(1.0) and not decoder.fused_sampling(0.95)
    with torch.no_grad():
        logits = decoder.net(torch.tensor([prompt], device="cuda"))[0, -1, :get_tokenizer().n_vocab]
    probs = torch.softmax(logits.float(), -1)

    def first_token_frequencies(top_p):
        firsts = torch.tensor([c[0] for c in decoder.generate([prompt] * 4096, 3, 1.0, top_p, stop_ids=[])])
        return torch.bincount(firsts, minlength=len(probs)).double().cuda() / len(firsts)
    fused_tv = 0.5 * (first_token_frequencies(1.0) - probs).abs().sum().item()
    plain_tv = 0.5 * (first_token_frequencies(0.999999) - probs).abs().sum().item()  # PyTorch's sort, as it was
    assert fused_tv < 1.5 * plain_tv + 0.02
    torch.manual_seed(5)
    once = decoder.generate([prompt] * 64, 30, stop_ids=[])
    torch.manual_seed(5)
    assert decoder.generate([prompt] * 64, 30, stop_ids=[]) == once
    assert len({tuple(c) for c in once}) == 64 and decoder.generate([prompt] * 64, 30, stop_ids=[]) != once


@pytest.mark.parametrize("attention", ["mha", "mla"])
def test_compaction_slot_buckets_and_row_budgets_keep_greedy_exact(monkeypatch, attention):
    """Many rows that stop at different steps (the decoder compacts them away), generations that cross slot
    buckets, and a budget per row: each row still decodes exactly as the uncached forward alone."""
    torch.manual_seed(2)
    model = Transformer(make_config("tiny", attention=attention)).eval()
    prompts = [torch.randint(0, 450, (n,)).tolist() for n in (3, 17, 8, 1, 12, 5, 9, 14, 2)]
    stop_ids = list(range(0, 450, 29))  # one token in 29 stops a row: rows end at many different steps
    budgets = [90, 40, 90, 7, 90, 90, 1, 90, 90]
    batch_sizes = []
    monkeypatch.setattr(KVCache, "keep_rows", lambda self, order, slots, real=KVCache.keep_rows:
                        batch_sizes.append(len(order)) or real(self, order, slots))
    got = Decoder(model).generate(prompts, budgets, temperature=0, stop_ids=stop_ids)
    want = [greedy_without_cache(model, p, n, stop_ids) for p, n in zip(prompts, budgets)]
    assert got == want
    assert len({len(g) for g in got}) > 3  # rows really ended at different steps
    assert batch_sizes and batch_sizes == sorted(batch_sizes, reverse=True) and batch_sizes[-1] < 12
    # without stop tokens the budgets alone end the rows, and the long ones cross slot buckets
    got = Decoder(model).generate(prompts, budgets, temperature=0, stop_ids=[])
    assert got == [greedy_without_cache(model, p, n, []) for p, n in zip(prompts, budgets)]
    assert [len(g) for g in got] == budgets and max(map(len, prompts)) + max(budgets) > SLOT_BUCKET


def test_bucket_sizes():
    assert [bucket(n) for n in (1, 2, 3, 4, 5, 7, 9, 13, 100, 500, 512, 513)] == \
        [2, 2, 3, 4, 6, 8, 12, 16, 128, 512, 512, 768]


def test_cli_rejects_bad_numbers_and_target_before_loading():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for args, message in [(["--numbers", "3", "--target", "3"], "2 or more numbers"),
                          (["--numbers", "3", "7", "11", "--target", "500"], "target must be in 1..100")]:
        run = subprocess.run([sys.executable, "sample.py", "--ckpt", "no-such.pt", *args], cwd=root,
                             capture_output=True, text=True, timeout=60)
        assert run.returncode == 2 and message in run.stderr, run.stderr
