import pytest
import torch

from model import KVCache, MoE, SwiGLU, Transformer, kv_cache_bytes_per_token, make_config

ATTENTION = ["mha", "mla"]


def tiny_model(seed=0, **overrides):
    torch.manual_seed(seed)
    return Transformer(make_config("tiny", **overrides))


def float64_model(seed=0, **overrides):
    """tiny_model in float64, for the tests of two ways to compute the same thing: in float32 they round
    differently by CPU (the kernels PyTorch picks for each shape): 2e-7 apart in logits of ~1 here, how far on
    another CPU no test can know. In float64 they agree but for the float32 steps model.py keeps (RMSNorm, RoPE,
    the router, the logits it returns): 3e-8 apart here, rounding that no CPU changes much."""
    return tiny_model(seed, **overrides).double()


@pytest.mark.parametrize("attention", ATTENTION)
def test_forward_shape_and_param_counts(attention):
    model = tiny_model(attention=attention)
    logits = model(torch.randint(0, 512, (2, 9)))
    assert logits.shape == (2, 9, model.cfg.vocab_size) and logits.dtype == torch.float32
    assert model.num_params(active=True) < model.num_params()
    small = Transformer(make_config("small", attention=attention))
    assert 10e6 < small.num_params() < 100e6  # "tens of millions"


def test_medium_preset_is_at_least_8x_small_in_active_parameters():
    with torch.device("meta"):  # shapes only: no memory, no time
        small, medium = Transformer(make_config("small")), Transformer(make_config("medium"))
    assert medium.num_params(active=True) >= 8 * small.num_params(active=True)


@pytest.mark.parametrize("attention", ATTENTION)
def test_causal(attention):
    model = float64_model(attention=attention)
    tokens = torch.randint(0, 512, (3, 16))
    changed = tokens.clone()
    changed[:, 10] = (changed[:, 10] + 1) % 512
    a, b = model(tokens), model(changed)
    assert torch.allclose(a[:, :10], b[:, :10], atol=1e-6)
    assert not torch.allclose(a[:, 10:], b[:, 10:], atol=1e-3)


@pytest.mark.parametrize("attention", ATTENTION)
def test_left_padding_matches_unpadded(attention):
    model = float64_model(attention=attention)
    row = torch.randint(0, 512, (1, 7))
    padded = torch.cat([torch.full((1, 4), 3), row], dim=1)
    mask = torch.cat([torch.zeros(1, 4, dtype=torch.bool), torch.ones(1, 7, dtype=torch.bool)], dim=1)
    assert torch.allclose(model(padded, pad_mask=mask)[:, 4:], model(row), atol=1e-5)


def test_router_bias_moves_load_toward_balance():
    # Affinities favour experts 0 and 1 for almost every token; the bias alone (no loss) must even this out.
    model = tiny_model(n_layers=2, n_dense_layers=0, n_routed_experts=8, bias_update_rate=0.01)
    gate = model.gates()[0]
    u = torch.randn(64)
    with torch.no_grad():
        gate.weight.normal_(0, 0.1)
        gate.weight[:2] += u / u.norm()
    x = torch.randn(32, 16, 64) + u / u.norm()
    model.train()

    def imbalance():
        gate.load.zero_()
        with torch.no_grad():
            model.layers[0].ffn(x)
        return (gate.load.max() / gate.load.mean()).item()

    before = imbalance()
    for _ in range(300):
        with torch.no_grad():
            model.layers[0].ffn(x)
        gate.update_bias()
    after = imbalance()
    assert before > 2.0 and after < 1.3, (before, after)


def test_expert_counts_match_bincount_and_an_idle_router_keeps_its_bias():
    from model import expert_counts
    idx = torch.randint(0, 8, (50, 2))
    assert torch.equal(expert_counts(idx, 8), torch.bincount(idx.flatten(), minlength=8))
    assert torch.equal(expert_counts(torch.zeros(3, 2, dtype=torch.long), 8), torch.tensor([6] + [0] * 7))
    gate = tiny_model(n_layers=2, n_dense_layers=0).gates()[0]
    gate.bias.copy_(torch.randn_like(gate.bias))
    before = gate.bias.clone()
    gate.update_bias()  # no training forward since the last update: no load, no move
    assert torch.equal(gate.bias, before)


def test_tiny_model_overfits_small_batch():
    model = tiny_model()
    tokens = torch.randint(0, 512, (4, 24))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(150):
        logits = model(tokens[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        model.update_router_bias()
    assert loss.item() < 0.1, loss.item()


def test_moe_dense_and_grouped_paths_agree():
    model = float64_model()
    moe = model.layers[1].ffn
    x = torch.randn(300, 64, dtype=torch.float64, requires_grad=True)
    weights, idx = moe.gate(x)  # both paths take the same routing
    dense, grouped = moe.routed_dense(x, weights, idx), moe.routed_grouped(x, weights, idx)
    # the experts' float64 sums of <= 128 products, in other orders: ~1e-16 of their size; outputs are ~1e-3
    exact = dict(rtol=1e-10, atol=1e-13)
    torch.testing.assert_close(dense, grouped, **exact)
    g = torch.randn_like(dense)
    grads_dense = torch.autograd.grad((dense * g).sum(), [x, moe.w1, moe.w2], retain_graph=True)
    grads_grouped = torch.autograd.grad((grouped * g).sum(), [x, moe.w1, moe.w2])
    for a, b in zip(grads_dense, grads_grouped):
        torch.testing.assert_close(a, b, **exact)


def test_packed_segments_match_each_example_alone():
    # Document masking: in a row packed with several examples (and end padding), each example's logits are
    # those of the example run alone; attention never crosses a boundary and RoPE restarts per example.
    model = float64_model()
    examples = [torch.randint(0, 450, (n,)) for n in (7, 1, 12)]
    row = torch.cat(examples + [torch.zeros(4, dtype=torch.long)])[None]
    segment_ids = torch.cat([torch.full((len(e),), i) for i, e in enumerate(examples)] + [torch.full((4,), -1)])
    packed = model(row, segment_ids=segment_ids[None])[0]
    start = 0
    for e in examples:
        assert torch.allclose(packed[start:start + len(e)], model(e[None])[0], atol=1e-5)
        start += len(e)
    assert torch.isfinite(packed).all()
    # the same row without segments is plain causal: later examples then differ
    assert not torch.allclose(model(row)[0, 8:20], packed[8:20], atol=1e-3)


@pytest.mark.parametrize("overrides", [dict(attention="gqa"), dict(n_heads=5), dict(attention="mla", kv_lora_rank=0),
                                       dict(attention="mla", qk_rope_head_dim=7),
                                       dict(attention="mla", q_lora_rank=-1),
                                       dict(attention="mla", mla_decode="fast")])
def test_config_rejects_bad_attention_settings(overrides):
    with pytest.raises(ValueError):
        make_config("tiny", **overrides)


def test_mla_with_query_compression_is_causal_and_trains_every_attention_weight():
    model = float64_model(attention="mla", q_lora_rank=24)
    tokens = torch.randint(0, 512, (2, 12))
    changed = tokens.clone()
    changed[:, 8] = (changed[:, 8] + 1) % 512
    a, b = model(tokens), model(changed)
    assert torch.allclose(a[:, :8], b[:, :8], atol=1e-6) and not torch.allclose(a[:, 8:], b[:, 8:], atol=1e-3)
    a.square().mean().backward()
    names = [n for n, _ in model.layers[0].attn.named_parameters()]
    assert {"wq_a.weight", "q_norm.weight", "wq_b.weight", "wkv_a.weight", "kv_norm.weight", "wkv_b.weight",
            "wo.weight"} == set(names)
    for layer in model.layers:
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in layer.attn.parameters())


@pytest.mark.parametrize("preset", ["tiny", "small"])
def test_kv_cache_bytes_per_token_matches_the_cache_and_mla_is_smaller(preset):
    per_token = {}
    for attention in ATTENTION:
        cfg = make_config(preset, attention=attention)
        cache = KVCache(cfg, batch_size=3, max_len=5, device="meta", dtype=torch.bfloat16)
        buffers = cache.per_token_buffers().values()
        assert all(b.shape[:2] == (cfg.n_layers, 3) and b.shape[3] == 5 for b in buffers)
        per_token[attention] = kv_cache_bytes_per_token(cfg)
        assert per_token[attention] * 3 * 5 == sum(b.numel() * b.element_size() for b in buffers)
    assert per_token["mla"] < per_token["mha"]


def decode_logits(model, prompts, steps, dtype=torch.float32):
    """Logits of a cached prefill of left-padded ragged prompts, then of `steps` cached single-token steps on
    fixed tokens (row 1 turns into padding after two steps, as a finished row does), and the same logits from
    one uncached forward over the whole padded sequence."""
    B, P = len(prompts), max(map(len, prompts))
    tokens = torch.zeros(B, P + steps, dtype=torch.long)
    real = torch.zeros(B, P + steps, dtype=torch.bool)
    for i, p in enumerate(prompts):
        tokens[i, P - len(p):P] = torch.tensor(p)
        real[i, P - len(p):P] = True
    tokens[:, P:] = torch.randint(0, 512, (B, steps), generator=torch.Generator().manual_seed(1))
    real[:, P:] = True
    real[1, P + 2:] = False
    cache = KVCache(model.cfg, B, P + steps, "cpu", dtype)
    cached = [model(tokens[:, :P], pad_mask=real[:, :P], cache=cache)[:, -1]]
    for t in range(P, P + steps - 1):
        cached.append(model(tokens[:, t:t + 1], pad_mask=real[:, t:t + 1], cache=cache)[:, -1])
    full = model(tokens, pad_mask=real)[:, P - 1:-1]
    keep = real[:, P - 1:-1]  # a padding position's logits mean nothing
    return torch.stack(cached, 1)[keep], full[keep]


def rel_err(a, b):
    return ((a - b).norm() / b.norm()).item()


def test_mla_absorbed_decode_equals_naive_decode_and_the_uncached_forward():
    torch.manual_seed(0)
    prompts = [torch.randint(0, 512, (n,)).tolist() for n in (5, 9, 1)]
    absorb = float64_model(attention="mla").eval()
    naive = Transformer(make_config("tiny", attention="mla", mla_decode="naive")).double().eval()
    naive.load_state_dict(absorb.state_dict())
    with torch.no_grad():
        a, full = decode_logits(absorb, prompts, steps=6, dtype=torch.float64)
        n, _ = decode_logits(naive, prompts, steps=6, dtype=torch.float64)
    assert rel_err(a, n) < 1e-5 and rel_err(a, full) < 1e-5 and rel_err(n, full) < 1e-5
    absorb, naive = absorb.float(), naive.float()
    # with float32 weights under bf16 autocast with a bf16 cache (a bf16 decode on a GPU) the two paths round
    # differently, but both stay within bf16 rounding of the float32 logits
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, cache_enabled=False):
        a16, _ = decode_logits(absorb, prompts, steps=6, dtype=torch.bfloat16)
        n16, _ = decode_logits(naive, prompts, steps=6, dtype=torch.bfloat16)
    assert rel_err(a16, n16) < 2e-2 and rel_err(a16, full) < 2e-2 and rel_err(n16, full) < 2e-2


@pytest.mark.parametrize("preset", ["dense-1m", "dense-4m", "dense-12m"])
def test_dense_student_presets_have_no_experts_and_train(preset):
    torch.manual_seed(0)
    model = Transformer(make_config(preset))
    assert not model.gates() and model.num_params(active=True) == model.num_params()
    with torch.device("meta"):
        teacher = Transformer(make_config("small"))
    assert model.num_params() < teacher.num_params(active=True) < teacher.num_params()  # smaller than the teacher
    tokens = torch.randint(0, 512, (2, 12))
    logits = model(tokens[:, :-1])
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1))
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    assert model.router_stats() == [] and model.update_router_bias() is None
