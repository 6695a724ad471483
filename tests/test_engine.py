"""The engine against the plain paths it accelerates: engine/decoder.py's Decoder against sample.generate (greedy
tokens equal, draws from the same distribution; on a GPU its CUDA graphs and fused kernels), and how the engine is
swapped in."""
import functools
import os
import subprocess
import sys

import pytest
import torch

import data
import engine
import engine.decoder as decoder_module
import engine.pretraining
import sample
from chi_squared import chi_squared_p_value
from config import TrainConfig
from data import get_tokenizer
from engine.decoder import SLOT_BUCKET, Decoder, FusedMoE, FusedSwiGLU, bucket
from grpo import GRPOConfig, GRPOTrainer
from model import KVCache, Transformer, make_config
from pretrain import pretrain_tokens
from test_sample import greedy_without_cache

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("attention", ["mha", "mla"])
def test_greedy_decoder_equals_plain_generate(attention):
    torch.manual_seed(1)
    model = Transformer(make_config("tiny", attention=attention)).eval()
    prompts = [torch.randint(0, 450, (n,)).tolist() for n in (5, 12, 1, 9, 30)]
    stop_ids = list(range(0, 450, 37))
    assert (Decoder(model).generate(prompts, 70, temperature=0, stop_ids=stop_ids)
            == sample.generate(model, prompts, 70, temperature=0, stop_ids=stop_ids))


@pytest.mark.parametrize("top_p", [1.0, 0.9])
def test_decoder_draws_from_the_same_distribution_as_plain_generate(top_p):
    # first tokens of 2000 rows of one prompt from each, against the tempered (nucleus) softmax: chi-squared
    torch.manual_seed(0)
    model = Transformer(make_config("tiny")).eval()
    prompt = torch.randint(0, 450, (6,)).tolist()
    with torch.no_grad():
        probs = torch.softmax(model(torch.tensor([prompt]))[0, -1, :get_tokenizer().n_vocab].double() / 0.7, -1)
    if top_p < 1:
        sorted_probs, order = probs.sort(descending=True)
        outside = sorted_probs.cumsum(0) - sorted_probs > top_p
        probs = probs.scatter(0, order, sorted_probs.masked_fill(outside, 0.0))
        probs /= probs.sum()
    for generate in (Decoder(model).generate, functools.partial(sample.generate, model)):
        first = torch.tensor([c[0] for c in generate([prompt] * 2000, 1, 0.7, top_p, stop_ids=[])])
        assert chi_squared_p_value(first, probs) > 1e-4


def test_the_engine_swaps_in_only_on_a_gpu():
    model = Transformer(make_config("tiny"))
    generate = engine.decoder_for(model)
    assert generate.func is sample.generate and generate.args == (model,)
    trainer = GRPOTrainer(model, GRPOConfig(), torch.device("cpu"))
    plain = (trainer.generate, trainer.logprobs_of_logits, trainer.update_context, trainer.pad_to)
    engine.speed_up_grpo(trainer)
    assert (trainer.generate, trainer.logprobs_of_logits, trainer.update_context, trainer.pad_to) == plain


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
    real = decoder_module.move_rows_to_front
    monkeypatch.setattr(decoder_module, "move_rows_to_front",
                        lambda cache, order, slots: batch_sizes.append(len(order)) or real(cache, order, slots))
    got = Decoder(model).generate(prompts, budgets, temperature=0, stop_ids=stop_ids)
    want = [greedy_without_cache(model, p, n, stop_ids) for p, n in zip(prompts, budgets)]
    assert got == want
    assert len({len(g) for g in got}) > 3  # rows really ended at different steps
    assert batch_sizes and batch_sizes == sorted(batch_sizes, reverse=True) and batch_sizes[-1] < 12
    # without stop tokens the budgets alone end the rows, and the long ones cross slot buckets
    got = Decoder(model).generate(prompts, budgets, temperature=0, stop_ids=[])
    assert got == [greedy_without_cache(model, p, n, []) for p, n in zip(prompts, budgets)]
    assert [len(g) for g in got] == budgets and max(map(len, prompts)) + max(budgets) > SLOT_BUCKET


@pytest.mark.parametrize("ffn", ["moe", "swiglu"])
def test_packed_decoding_weights_follow_the_weights_in_place(ffn):
    # the Decoder's CUDA graphs read the packed matrices where the first pack put them
    cfg = make_config("tiny")
    torch.manual_seed(0)
    module = FusedMoE(cfg) if ffn == "moe" else FusedSwiGLU(cfg.dim, cfg.dense_hidden)
    for p in module.parameters():  # MoE's expert weights start uninitialised (Transformer initialises them)
        torch.nn.init.normal_(p, std=0.02)
    module.pack()
    where = [w.data_ptr() for w in module.packed]
    with torch.no_grad():
        for p in module.parameters():
            p.mul_(2.0)
    module.pack()
    assert [w.data_ptr() for w in module.packed] == where
    fresh = FusedMoE(cfg) if ffn == "moe" else FusedSwiGLU(cfg.dim, cfg.dense_hidden)
    fresh.load_state_dict(module.state_dict())
    fresh.pack()
    for mine, theirs in zip(module.packed, fresh.packed):
        assert torch.equal(mine, theirs)


TINY_PRETRAINING = TrainConfig(preset="tiny", device="cpu", pretrain_steps=1, pretrain_batch_size=2,
                               pretrain_seq_len=16, pretrain_unique_tokens=5000, seed=3)


def test_the_corpus_made_in_another_process_is_the_one_made_here_while_the_warm_up_runs_here(monkeypatch):
    ran = []
    monkeypatch.setattr(engine.pretraining, "compile_warm_up", lambda *args: ran.append(True))
    stream = engine.pretraining.corpus_while_compiling(Transformer(make_config("tiny")), TINY_PRETRAINING,
                                                       torch.device("cpu"))
    assert ran == [True] and stream.dtype == torch.long
    assert stream.tolist() == data.corpus_tokens(pretrain_tokens(TINY_PRETRAINING), seed=3)


def test_a_script_without_a_main_guard_still_gets_its_corpus(tmp_path):
    """The spawned child re-runs an unguarded script, which Python stops; the stream then comes from this process,
    the same stream."""
    script = tmp_path / "unguarded.py"
    script.write_text(f"""import sys; sys.path.insert(0, {ROOT!r})
import torch, data, engine.pretraining, pretrain
from config import TrainConfig
from model import Transformer, make_config
cfg = TrainConfig(preset="tiny", device="cpu", pretrain_steps=1, pretrain_batch_size=2, pretrain_seq_len=16,
                  pretrain_unique_tokens=3000, seed=4)
stream = engine.pretraining.corpus_while_compiling(Transformer(make_config("tiny")), cfg, torch.device("cpu"))
assert stream.tolist() == data.corpus_tokens(pretrain.pretrain_tokens(cfg), seed=4)
print("same stream")
""")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "same stream" in done.stdout, done.stderr[-2000:]
    assert "generating the corpus here" in done.stderr


def test_the_compile_warm_up_leaves_no_trace():
    # on the CPU the step is eager, but the warm-up's promise is the same: weights, gradients, router loads as
    # they were (a training forward counts tokens into the routers' load)
    torch.manual_seed(0)
    model = Transformer(make_config("tiny")).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    engine.pretraining.compile_warm_up(model, 2, 16, torch.device("cpu"))
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())
    assert all(g.load.sum() == 0 for g in model.gates())


def test_compiled_blocks_are_undone_on_exit_even_after_an_error():
    from engine import compiled_blocks
    model = Transformer(make_config("tiny"))
    try:
        with compiled_blocks(model):
            assert all("forward" in vars(block) for block in model.layers)  # torch.compile is lazy: no compile here
            raise FloatingPointError("a diverged step")
    except FloatingPointError:
        pass
    assert not any("forward" in vars(block) for block in model.layers)
    assert all(type(block).forward is block.forward.__func__ for block in model.layers)


def test_bucket_sizes():
    assert [bucket(n) for n in (1, 2, 3, 4, 5, 7, 9, 13, 100, 500, 512, 513)] == \
        [2, 2, 3, 4, 6, 8, 12, 16, 128, 512, 512, 768]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
@pytest.mark.parametrize("attention", ["mha", "mla"])
def test_cuda_graph_decoding_matches_eager_decoding(attention):
    torch.manual_seed(0)
    model = Transformer(make_config("small", attention=attention)).cuda()
    prompts = [torch.randint(0, 500, (n,)).tolist() for n in (30, 7, 19, 64)]
    graph = Decoder(model).generate(prompts, 40, temperature=0, stop_ids=[])
    eager = Decoder(model, cuda_graph=False).generate(prompts, 40, temperature=0, stop_ids=[])
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
    assert isinstance(fused.net.layers[1].ffn, FusedMoE) and not isinstance(plain.net.layers[1].ffn, FusedMoE)
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
