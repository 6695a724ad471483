"""
kernels.token_logprobs, and the decoding kernels of kernels/decode.py, against float64 PyTorch. Runs the Triton
kernels themselves on CPU, through Triton's interpreter, so every check here would catch a bug in the kernel, not
in a fallback.
"""

import copy
import os
import sys

import pytest
import torch

# Triton has wheels for Linux only (requirements.txt): elsewhere these tests skip, as the kernels never run there
pytest.importorskip("triton", reason="Triton is not installed (its wheels are for Linux only): no kernel to test")

import engine.decoder  # noqa: E402
import model  # noqa: E402
from engine.decoder import FusedMoE, FusedSwiGLU, cache_view  # noqa: E402


def _triton_and_kernels():
    # triton._C is the compiled extension: it can't be loaded twice and doesn't depend on the variable
    return [m for m in sys.modules if m.split(".")[0] in ("triton", "kernels") and not m.startswith("triton._C")]


def _restore_interpret_env():
    if _PREVIOUS_INTERPRET is None:
        os.environ.pop("TRITON_INTERPRET", None)
    else:
        os.environ["TRITON_INTERPRET"] = _PREVIOUS_INTERPRET


# Interpreted copies of the kernels for this module. Triton decides at decoration whether a @triton.jit function
# is interpreted, its own standard library (tl.sum, ...) included, when Triton is imported: so Triton and kernels
# are imported afresh with TRITON_INTERPRET=1, and then the modules as they were are put back, for the other test
# modules (on a GPU machine their compiled kernels launch through the first Triton, and fail in a second one).
_PREVIOUS_INTERPRET = os.environ.get("TRITON_INTERPRET")
_compiled = {name: sys.modules.pop(name) for name in _triton_and_kernels()}
os.environ["TRITON_INTERPRET"] = "1"
from kernels import decode, logprobs, token_logprobs, token_logprobs_reference  # noqa: E402

for _name in _triton_and_kernels():
    del sys.modules[_name]
sys.modules.update(_compiled)
_restore_interpret_env()  # this module's tests set it again (interpret_env below)

# relative error allowed in the grad from its rounding to logits' dtype: one ulp, as Triton's interpreter
# rounds bfloat16 toward zero (the GPU rounds to nearest, half an ulp)
EPS = {torch.float32: 1e-6, torch.bfloat16: 2.0**-7, torch.float16: 2.0**-10}

# the interpreter runs masked-off lanes through numpy too (log(0), 0 * inf), whose results are never stored
pytestmark = pytest.mark.filterwarnings("ignore:.*encountered in:RuntimeWarning")


@pytest.fixture(scope="module", autouse=True)
def interpret_env():
    os.environ["TRITON_INTERPRET"] = "1"  # kernels/logprobs.py runs CPU tensors through Triton only with it set
    yield  # the other test modules run with TRITON_INTERPRET as it was
    _restore_interpret_env()


@pytest.fixture
def triton_only(monkeypatch):
    """Fail the test if token_logprobs falls back to PyTorch instead of running the kernel."""
    def no_fallback(*args, **kwargs):
        raise AssertionError("token_logprobs took the PyTorch fallback, not the Triton kernel")
    monkeypatch.setattr(logprobs, "token_logprobs_reference", no_fallback)


def reference64(logits, targets, temperature, grad_logp):
    """logp, entropy and d(sum grad_logp * logp)/dlogits in float64, from logits as given (already rounded)."""
    x = logits.detach().double().requires_grad_()
    logp_all = torch.log_softmax(x / temperature, dim=-1)
    logp = logp_all.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    entropy = torch.special.entr(logp_all.exp()).sum(-1)
    logp.backward(grad_logp.double())
    return logp.detach(), entropy.detach(), x.grad


def check(logits, targets, temperature=1.0, seed=0):
    """Run the kernel forward (logp, entropy) and backward with a random upstream grad; compare to float64."""
    x = logits.detach().requires_grad_()  # detach keeps the strides: a non-contiguous view stays one
    logp, entropy = token_logprobs(x, targets, temperature=temperature, return_entropy=True)
    assert logp.dtype == entropy.dtype == torch.float32 and logp.shape == entropy.shape == x.shape[:-1]
    assert not entropy.requires_grad
    grad_logp = torch.randn(logp.shape, generator=torch.Generator().manual_seed(seed + 1))
    logp.backward(grad_logp)
    assert x.grad.dtype == x.dtype and x.grad.shape == x.shape

    ref_logp, ref_entropy, ref_grad = reference64(x, targets, temperature, grad_logp)
    # float32 arithmetic inside the kernel: errors grow with the size of logits / temperature
    scale = 1 + x.detach().double().masked_fill(x.isinf(), 0).abs().max().item() / temperature
    torch.testing.assert_close(logp.double(), ref_logp, rtol=1e-5, atol=2e-6 * scale)
    torch.testing.assert_close(entropy.double(), ref_entropy, rtol=1e-5, atol=2e-6 * scale)
    # the grad is rounded to logits' dtype; p = exp(z - lse) inherits lse's float32 error, relative
    eps = EPS[x.dtype]
    g_max = grad_logp.abs().max().item() / temperature
    torch.testing.assert_close(x.grad.double(), ref_grad, rtol=eps, atol=g_max * (1e-6 + 4e-7 * scale))


def randn(*shape, dtype=torch.float32, seed=0, scale=1.0):
    return (scale * torch.randn(*shape, generator=torch.Generator().manual_seed(seed))).to(dtype)


def randint(V, shape, seed=0):
    return torch.randint(V, shape, generator=torch.Generator().manual_seed(seed + 7))


# -----------------------------------------------------------------------------


@pytest.mark.parametrize("V, rows", [(1, 5), (2, 5), (17, 9), (1000, 20), (50257, 3)])
def test_vocab_sizes(triton_only, V, rows):
    check(randn(rows, V, seed=V, scale=3.0), randint(V, (rows,), seed=V))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("temperature", [0.7, 1.0, 1.3])
def test_dtypes_and_temperatures(triton_only, dtype, temperature):
    seed = int(10 * temperature)
    check(randn(2, 5, 333, dtype=dtype, seed=seed, scale=4.0), randint(333, (2, 5), seed=seed), temperature)


@pytest.mark.parametrize("shape", [(37,), (6, 37), (2, 3, 37), (2, 2, 3, 37)])
def test_leading_dims(triton_only, shape):
    check(randn(*shape, seed=len(shape)), randint(37, shape[:-1], seed=len(shape)), temperature=0.7)


@pytest.mark.parametrize("view", ["transpose", "slice", "vocab_stride", "permute_4d"])
def test_non_contiguous(triton_only, view):
    base = randn(4, 6, 2 * 129, dtype=torch.bfloat16, seed=3)
    logits = {
        "transpose": base.transpose(0, 1),  # (T, B, V) from (B, T, V)
        "slice": base[:, 1:-1],  # the completion region, as grpo.py takes it
        "vocab_stride": base[..., ::2],  # every other vocab entry
        "permute_4d": base.view(2, 2, 6, -1).permute(1, 0, 2, 3),
    }[view]
    assert not logits.is_contiguous()
    if view != "permute_4d":  # these the kernel reads in place, through their strides
        assert logprobs._as_3d(logits).data_ptr() == logits.data_ptr()
    targets = randint(logits.shape[-1], (*logits.shape[:-1], 2), seed=4)[..., 0]  # strided too
    check(logits, targets)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_large_logits(triton_only, dtype):
    # exp(1e4) overflows any float: only the online max keeps this finite
    check(randn(8, 1500, dtype=dtype, seed=5, scale=1e4), randint(1500, (8,), seed=5), temperature=1.3)


def test_masked_logits(triton_only):
    logits = randn(3, 4, 700, seed=6, scale=2.0)
    targets = randint(700, (3, 4), seed=6)
    masked = torch.rand(logits.shape, generator=torch.Generator().manual_seed(6)) < 0.5
    masked.scatter_(-1, targets.unsqueeze(-1), False)  # keep the targets themselves finite
    masked[0, 0] = True  # one row with every entry masked but the target: logp 0, entropy 0
    masked[0, 0, targets[0, 0]] = False
    masked[1, :, :512] = True  # whole -inf blocks before any finite entry of the row
    logits = logits.masked_fill(masked, float("-inf"))
    check(logits, targets)
    logp, entropy = token_logprobs(logits, targets, return_entropy=True)
    assert logp[0, 0] == 0 and entropy[0, 0] == 0


@pytest.mark.parametrize("block_v", [16, 64])
def test_many_chunks(triton_only, monkeypatch, block_v):
    # small chunks: many of them per row, so the online max and its rescaling get exercised
    monkeypatch.setattr(logprobs, "_config", lambda V, max_block: (block_v, 1))
    logits = randn(3, 5, 203, seed=10, scale=5.0)
    logits[0, :, :100] = float("-inf")  # several all -inf chunks before the first finite one
    logits[..., 150:170] = float("-inf")
    check(logits, 180 + randint(23, (3, 5), seed=10), temperature=0.7)


def test_logp_only_and_expanded_grad(triton_only):
    logits = randn(3, 5, 77, seed=8).requires_grad_()
    targets = randint(77, (3, 5), seed=8)
    logp = token_logprobs(logits, targets, temperature=0.9)  # a tensor, not a tuple
    logp.sum().backward()  # upstream grad arrives expanded, with stride 0
    ref = logits.detach().clone().requires_grad_()
    token_logprobs_reference(ref, targets, temperature=0.9).sum().backward()
    torch.testing.assert_close(logp, token_logprobs_reference(logits.detach(), targets, temperature=0.9))
    torch.testing.assert_close(logits.grad, ref.grad)


def test_without_grad(triton_only, monkeypatch):
    # no gradient wanted: the kernel runs without autograd (no saved tensors, nothing to backward through)
    def no_autograd(*args):
        raise AssertionError("took the autograd path although no gradient was wanted")
    logits = randn(2, 7, 300, dtype=torch.bfloat16, seed=11, scale=3.0)
    targets = randint(300, (2, 7), seed=11)
    with_grad = token_logprobs(logits.clone().requires_grad_(), targets, 0.8, return_entropy=True)
    monkeypatch.setattr(logprobs._TokenLogprobs, "apply", no_autograd)
    ref_logp, ref_entropy, _ = reference64(logits, targets, 0.8, torch.zeros(2, 7))
    for grad_wanted in (False, True):  # logits that don't require grad; or no_grad mode
        x = logits.clone().requires_grad_(grad_wanted)
        with torch.set_grad_enabled(not grad_wanted):
            logp, entropy = token_logprobs(x, targets, 0.8, return_entropy=True)
            logp_only = token_logprobs(x, targets, 0.8)
        assert not logp.requires_grad and logp.shape == entropy.shape == (2, 7)
        assert torch.equal(logp, with_grad[0].detach()) and torch.equal(entropy, with_grad[1])
        assert torch.equal(logp_only, logp)
        torch.testing.assert_close(logp.double(), ref_logp, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(entropy.double(), ref_entropy, rtol=1e-5, atol=1e-5)


def test_cpu_fallback(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET")
    logits, targets = randn(2, 3, 50, seed=9), randint(50, (2, 3), seed=9)
    assert not logprobs._use_triton(logits)
    check(logits, targets, temperature=1.3)


# ---------------------------------------------------------------------------------------------------------------
# kernels/decode.py: forward only (decoding runs without gradients). Their outputs are rounded to the input's
# dtype, one ulp by the interpreter's rounding toward zero.

@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("D", [384, 96])  # 96: a row narrower than its power-of-two block
def test_rms_norm(dtype, D):
    x, w = randn(5, 3, D, dtype=dtype, seed=1, scale=3.0), randn(D, dtype=dtype, seed=2)
    out = decode.rms_norm(x, w, 1e-6)
    x64, w64 = x.double(), w.double()
    ref = x64 * torch.rsqrt(x64.pow(2).mean(-1, keepdim=True) + 1e-6) * w64
    assert out.dtype == dtype and out.shape == x.shape
    torch.testing.assert_close(out.double(), ref, rtol=2 * EPS[dtype], atol=1e-6)


def rope_reference(x, cos, sin):
    """model.apply_rope in float64: rotate the pairs (x[i], x[i + D/2]) by the position's angle."""
    x1, x2 = x.double().chunk(2, dim=-1)
    cos, sin = cos.double(), sin.double()
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("H,D", [(6, 64), (3, 12)])  # (3, 12): 2H and D/2 not powers of two
def test_rope_queries_keys(dtype, H, D):
    B, T = 3, 5
    qkv = randn(B, T, 3, H, D, dtype=dtype, seed=3)
    cos, sin = model.rope_tables(D, 64, 10000.0)
    positions = torch.randint(0, 64, (B, T), generator=torch.Generator().manual_seed(4))
    q, k = decode.rope_queries_keys(qkv, cos[positions], sin[positions])
    # every query and key head [2, B, H, T, D] by its position's angle [B, 1, T, D/2]
    ref = rope_reference(qkv[:, :, :2].permute(2, 0, 3, 1, 4), cos[positions][:, None], sin[positions][:, None])
    assert q.dtype == k.dtype == dtype and q.shape == k.shape == (B, H, T, D)
    torch.testing.assert_close(torch.stack([q, k]).double(), ref, rtol=2 * EPS[dtype], atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("H,D,slot", [(6, 64, 140), (3, 12, 9)])  # 140: three blocks of past slots; 12: D/2 = 6
def test_attend_one_step(dtype, H, D, slot):
    B, S = 3, 150
    qkv = randn(B, 1, 3, H, D, dtype=dtype, seed=7)
    cos, sin = model.rope_tables(D, 256, 10000.0)
    positions = torch.tensor([slot, 5, 77])
    # views of larger buffers, as KVCache.view gives them: the kernel must follow their strides
    k_buf, v_buf = randn(B + 1, H, S + 20, D, dtype=dtype, seed=8), randn(B + 1, H, S + 20, D, dtype=dtype, seed=9)
    k_cache, v_cache = k_buf[:B, :, :S], v_buf[:B, :, :S]
    valid = torch.rand(B, S, generator=torch.Generator().manual_seed(10)) < 0.7
    valid[0, slot] = valid[2, slot] = True
    valid[1, slot] = False  # a finished row (its token is padding): it attends to its own token only
    valid[2, :slot] = False  # a row with no valid past: the same
    k_past, v_past = k_cache.double().clone(), v_cache.double().clone()
    out = decode.attend_one_step(qkv, cos[positions][:, None], sin[positions][:, None], k_cache, v_cache, valid,
                                 torch.tensor([slot]))
    # float64 reference: rotate q and k (rounded to dtype, as the kernel and the plain path round them), then
    # softmax attention over the valid slots before `slot` (none for a finished row) and the token itself
    rotated = rope_reference(qkv[:, 0, :2], cos[positions][:, None, None], sin[positions][:, None, None])
    q, k = rotated.to(dtype).double().unbind(1)                                  # [B, H, D] each
    v = qkv[:, 0, 2].double()
    torch.testing.assert_close(k_cache[:, :, slot].double(), k, rtol=2 * EPS[dtype], atol=1e-6)
    assert torch.equal(v_cache[:, :, slot].double(), v)
    keys = torch.cat([k_past[:, :, :slot], k[:, :, None]], 2)                    # [B, H, slot + 1, D]
    values = torch.cat([v_past[:, :, :slot], v[:, :, None]], 2)
    seen = torch.cat([valid[:, :slot] & valid[:, slot:slot + 1], torch.ones(B, 1, dtype=torch.bool)], 1)[:, None]
    scores = torch.einsum("bhd,bhsd->bhs", q, keys).masked_fill(~seen, float("-inf")) / D ** 0.5
    ref = torch.einsum("bhs,bhsd->bhd", scores.softmax(-1), values).reshape(B, 1, H * D)
    assert out.dtype == dtype and out.shape == (B, 1, H * D)
    torch.testing.assert_close(out.double(), ref, rtol=4 * EPS[dtype], atol=4 * EPS[dtype])
    assert torch.equal(k_cache[:, :, :slot], k_past[:, :, :slot].to(dtype))  # the past is not touched


@pytest.mark.parametrize("E,topk", [(16, 2), (6, 3), (0, 0)])  # E 0: a dense SwiGLU layer, no router
def test_swiglu_experts(E, topk):
    cfg = model.make_config("tiny", dim=48, n_routed_experts=max(E, 1), n_activated_experts=max(topk, 1),
                            moe_hidden=24, dense_hidden=40, route_scale=2.5)
    torch.manual_seed(11)
    ffn = model.MoE(cfg) if E else model.SwiGLU(cfg.dim, cfg.dense_hidden)
    for p in ffn.parameters():
        torch.nn.init.normal_(p, std=0.3)
    if E:
        ffn.gate.bias.copy_(randn(E, seed=12, scale=0.1))
    plain = copy.deepcopy(ffn).double()  # the plain module (its router computes in float32)
    ffn.__class__ = FusedMoE if E else FusedSwiGLU
    ffn.eval().pack()
    x = randn(7, cfg.dim, seed=13)
    out = decode.swiglu_experts(x, *ffn.packed, ffn.gate, E, cfg.moe_hidden) if E else \
        decode.swiglu_experts(x, *ffn.packed)
    with torch.no_grad():
        ref = plain(x.double())
    # float32 sums of F products each, in the kernel's and BLAS's orders (the CPU's): rounding errors of ~2^-24
    # of the output's size that add up like a random walk, ~sqrt(F) of them; 16x that. (The bound was 1e-5: 30
    # reorderings of the sums used 74% of it, 9% of this one.) A wrong kernel errs by far more: a bf16 hidden layer
    # alone, by 0.1
    F = ffn.packed[1].shape[1]
    torch.testing.assert_close(out.double(), ref, rtol=0, atol=16 * 2**-24 * F**0.5 * ref.abs().max().item())


def test_step_positions_matches_the_models_bookkeeping():
    # a decoding step's positions, angles, slot validity and real-token counts, as model.Transformer computes them
    # in PyTorch (positions_and_mask), on a view of a larger cache: a real token, padding after real tokens, and
    # padding with no real token yet (position 0)
    net = model.Transformer(model.make_config("tiny"))
    real = torch.tensor([[True], [False], [False], [True]])

    def cache():
        c = cache_view(model.KVCache(net.cfg, 6, 40, "cpu", torch.float32), 4, 32)
        c.n_real.copy_(torch.tensor([7, 12, 0, 0]))
        c.pos.fill_(15)
        c.valid[:, :15] = True
        return c
    plain, fused = cache(), cache()
    cos, sin, _, slots = net.positions_and_mask(real, True, plain, None)
    got_cos, got_sin = decode.step_positions(real, fused.n_real, fused.valid, fused.pos, net.rope_cos, net.rope_sin)
    assert torch.equal(slots, torch.tensor([15])) and got_cos.shape == cos.shape == (4, 1, 1, net.rope_cos.shape[1])
    assert torch.equal(got_cos, cos) and torch.equal(got_sin, sin)
    assert torch.equal(got_cos[:, 0, 0], net.rope_cos[torch.tensor([7, 11, 0, 0])])
    assert torch.equal(fused.valid, plain.valid) and torch.equal(fused.n_real, plain.n_real)
    assert fused.n_real.tolist() == [8, 12, 0, 1] and fused.valid[:, 15].tolist() == [True, False, False, True]


def sample_step(logits, temperature, t=0, row_of=None, budget=None, stops=(), seed=1234, out_slots=8):
    """decode.sample_step on fresh buffers of a decoder: returns (tokens, done, out)."""
    B = logits.shape[0]
    row_of = torch.arange(B) if row_of is None else row_of
    budget = torch.full((B,), 100) if budget is None else budget
    tokens, done = torch.zeros(B + 2, dtype=torch.long), torch.zeros(B + 2, dtype=torch.bool)
    out = torch.zeros(B + 2, out_slots, dtype=torch.long)
    decode.sample_step(logits, temperature, torch.tensor([seed]), torch.tensor([t]), row_of, budget, done[:B],
                       tokens[:B], out, torch.tensor(stops, dtype=torch.long))
    assert not done[B:].any() and not tokens[B:].any()  # the rows past B are not touched
    return tokens[:B], done[:B], out


def test_sample_step_greedy_writes_the_argmax_and_finishes_rows_like_the_decoder():
    # greedy (temperature 0) through a view of padded logits (the decoder drops the unused vocabulary rows), rows
    # held out of their callers' order (compaction), one row at a stop token, one at the end of its budget
    padded = randn(5, 512, seed=20)
    logits = padded[:, :454]
    best = logits.argmax(-1)
    row_of, t = torch.tensor([3, 0, 4, 1, 2]), 5
    budget = torch.tensor([100, 6, 100, 100, 100])  # row 1: step 5 is its 6th and last token
    tokens, done, out = sample_step(logits, 0.0, t=t, row_of=row_of, budget=budget, stops=(int(best[2]), 453))
    assert torch.equal(tokens, best)
    assert done.tolist() == [False, True, True, False, False]
    assert torch.equal(out[row_of, t], best) and out[:, :t].eq(0).all() and out[:, t + 1:].eq(0).all()


def test_sample_step_draws_from_the_tempered_softmax():
    # the same logits in 800 rows: the tokens drawn follow softmax(logits / T) (Pearson's chi-squared, 3 degrees of
    # freedom: 16.27 is its 0.1% point), and not softmax(logits) or the argmax
    logits = torch.tensor([0.0, 1.0, 2.0, -1.0]).repeat(800, 1)
    counts = torch.bincount(sample_step(logits, 0.7)[0], minlength=4).double()

    def chi2(probs):
        expected = 800 * probs.double()
        return ((counts - expected) ** 2 / expected).sum().item()
    assert chi2(torch.softmax(logits[0] / 0.7, 0)) < 16.27
    assert chi2(torch.softmax(logits[0], 0)) > 16.27


def test_sample_step_draws_afresh_at_every_step_and_row_and_repeats_with_the_seed():
    logits = torch.zeros(16, 454)  # uniform: any repetition would come from reusing random numbers
    first = sample_step(logits, 1.0, t=0)[0]
    assert len(set(first.tolist())) > 12  # rows differ
    second = sample_step(logits, 1.0, t=1)[0]
    assert (second != first).sum() > 12  # steps differ
    # and no draw repeats another row's at another step (more callers' rows, 18, than out's slots, 8: the count
    # of random numbers must not run on by slots): ~0.6 coincidences expected among these 256 pairs
    assert (second[:, None] == first[None, :]).sum() <= 3
    assert (sample_step(logits, 1.0, t=0, seed=99)[0] != first).sum() > 12  # calls (seeds) differ
    assert torch.equal(sample_step(logits, 1.0, t=0)[0], first)  # the same seed, step and rows: the same draws
    # a row draws by its caller's row, not its place in the batch: compaction does not change what it draws
    moved = sample_step(logits, 1.0, t=0, row_of=torch.arange(16).flip(0))[0]
    assert torch.equal(moved, first.flip(0))


def test_model_with_decoding_kernels_matches_the_model(monkeypatch):
    # the fused modules the Decoder swaps into its copy: the same logits for a prefill and cached steps (MHA, the
    # router, the experts), with a left-padded row and a row that finishes (its later steps feed padding, whose
    # logits are never used: the kernel does not attend over their past)
    monkeypatch.setattr(engine.decoder, "_kernels", lambda: decode)  # this module's interpreted kernels
    torch.manual_seed(0)
    net = model.Transformer(model.make_config("tiny")).eval()
    tokens = torch.randint(0, 500, (3, 12))
    real = torch.ones_like(tokens, dtype=torch.bool)
    real[0, :2] = False  # a left-padded row
    real[2, 9:] = False  # a row that finished after 9 tokens

    def run(net):
        cache = model.KVCache(net.cfg, 3, 16, "cpu", torch.float32)
        with torch.no_grad():
            out = [net(tokens[:, :7], pad_mask=real[:, :7], cache=cache)]
            out += [net(tokens[:, t:t + 1], pad_mask=real[:, t:t + 1], cache=cache) for t in range(7, 12)]
        return torch.cat(out, 1)
    fused = engine.decoder.fuse(copy.deepcopy(net))
    assert {type(m).__name__ for m in fused.modules()} >= {"FusedRMSNorm", "FusedAttention", "FusedSwiGLU",
                                                          "FusedMoE", "FusedTransformer"}
    torch.testing.assert_close(run(fused)[real], run(net)[real], rtol=1e-5, atol=1e-5)
