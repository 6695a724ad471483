import torch

from model import Transformer, make_config


def tiny_model(seed=0, **overrides):
    torch.manual_seed(seed)
    return Transformer(make_config("tiny", **overrides))


def test_forward_shape_and_param_counts():
    model = tiny_model()
    logits = model(torch.randint(0, 512, (2, 9)))
    assert logits.shape == (2, 9, model.cfg.vocab_size) and logits.dtype == torch.float32
    assert model.num_params(active=True) < model.num_params()
    small = Transformer(make_config("small"))
    assert 10e6 < small.num_params() < 100e6  # "tens of millions"


def test_medium_preset_is_at_least_8x_small_in_active_parameters():
    with torch.device("meta"):  # shapes only: no memory, no time
        small, medium = Transformer(make_config("small")), Transformer(make_config("medium"))
    assert medium.num_params(active=True) >= 8 * small.num_params(active=True)


def test_causal():
    model = tiny_model()
    tokens = torch.randint(0, 512, (3, 16))
    changed = tokens.clone()
    changed[:, 10] = (changed[:, 10] + 1) % 512
    a, b = model(tokens), model(changed)
    assert torch.allclose(a[:, :10], b[:, :10], atol=1e-6)
    assert not torch.allclose(a[:, 10:], b[:, 10:], atol=1e-3)


def test_left_padding_matches_unpadded():
    model = tiny_model()
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
    model = tiny_model()
    moe = model.layers[1].ffn
    x = torch.randn(300, 64, requires_grad=True)
    weights, idx = moe.gate(x)
    dense, grouped = moe.routed_dense(x, weights, idx), moe.routed_grouped(x, weights, idx)
    assert torch.allclose(dense, grouped, atol=1e-5)
    g = torch.randn_like(dense)
    grads_dense = torch.autograd.grad((dense * g).sum(), [x, moe.w1, moe.w2], retain_graph=True)
    grads_grouped = torch.autograd.grad((grouped * g).sum(), [x, moe.w1, moe.w2])
    for a, b in zip(grads_dense, grads_grouped):
        assert torch.allclose(a, b, atol=1e-5)
