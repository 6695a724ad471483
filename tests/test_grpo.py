import contextlib
import math

import pytest
import torch

from grpo import (KL_TOKEN_MAX, LOSS_AGG_MODES, GRPOConfig, aggregate_loss, group_advantages, grpo_loss,
                  masked_mean, minibatch_rows, overlong_penalty)


# ----------------------------------------------------------------------------- plain reference implementations
# Written with python loops over sequences and tokens and scalar float64 tensors, straight from the formulas,
# sharing no code with grpo.py. Scalar tensors keep autograd, so gradients can be compared too.

def ref_advantages(rewards, scale_std):
    out = []
    for group in rewards.tolist():
        G = len(group)
        mean = sum(group) / G
        std = math.sqrt(sum((r - mean) ** 2 for r in group) / (G - 1))  # unbiased, as documented
        if all(r == group[0] for r in group):
            out.append([0.0] * G)
        elif scale_std:
            out.append([(r - mean) / (std + 1e-6) for r in group])
        else:
            out.append([r - mean for r in group])
    return torch.tensor(out, dtype=torch.float64)


def ref_loss(logp, old, ref, adv, mask, eps_low, eps_high, beta, mode, max_len, c=0.0):
    N, T = logp.shape
    seq_terms, n_valid_total = [], 0
    for i in range(N):
        total = torch.zeros((), dtype=torch.float64)
        n_valid = 0
        for t in range(T):
            if not mask[i, t]:
                continue
            n_valid += 1
            ratio = torch.exp(logp[i, t] - float(old[i, t]))
            a = float(adv[i])
            surrogate = min(ratio * a, torch.clamp(ratio, 1 - eps_low, 1 + eps_high) * a)
            term = -surrogate
            if c and a < 0:  # the dual clip: a bad token's term is at most -c * A
                term = min(term, torch.tensor(-c * a, dtype=torch.float64))
            if beta != 0:
                d = float(ref[i, t]) - logp[i, t]
                term = term + beta * torch.clamp(torch.exp(d) - d - 1, max=KL_TOKEN_MAX)
            total = total + term
        seq_terms.append((total, n_valid))
        n_valid_total += n_valid
    if mode == "seq-mean-token-mean":
        return sum(s / max(n, 1) for s, n in seq_terms) / N
    if mode == "token-mean":
        return sum(s for s, _ in seq_terms) / max(n_valid_total, 1)
    if mode == "seq-mean-token-sum-norm":
        L = T if max_len is None else max_len
        return sum(s / L for s, _ in seq_terms) / N
    raise AssertionError(mode)


def ref_stats(logp, old, ref, adv, mask, eps_low, eps_high):
    logp = logp.detach()
    ratios, kls, clipped = [], [], 0
    for i in range(logp.shape[0]):
        for t in range(logp.shape[1]):
            if mask[i, t]:
                r = math.exp(float(logp[i, t]) - float(old[i, t]))
                d = float(ref[i, t]) - float(logp[i, t])
                ratios.append(r)
                kls.append(min(math.exp(d) - d - 1, KL_TOKEN_MAX))
                a = float(adv[i])
                clipped += (a > 0 and r > 1 + eps_high) or (a < 0 and r < 1 - eps_low)
    n = len(ratios)
    return dict(kl=sum(kls) / n, clip_frac=clipped / n, ratio_mean=sum(ratios) / n, ratio_max=max(ratios))


def random_batch(seed, N=6, T=9, dtype=torch.float64, spread=0.4):
    g = torch.Generator().manual_seed(seed)
    logp = (-3 * torch.rand(N, T, generator=g, dtype=dtype)).requires_grad_()
    # old and ref differ from logp by up to +-spread in log space: ratios in ~[0.67, 1.5], across both clip edges
    old = logp.detach() + spread * (2 * torch.rand(N, T, generator=g, dtype=dtype) - 1)
    ref = logp.detach() + spread * (2 * torch.rand(N, T, generator=g, dtype=dtype) - 1)
    adv = torch.randn(N, generator=g, dtype=dtype)
    mask = torch.rand(N, T, generator=g) < 0.7
    mask[1] = False  # one sequence with no valid tokens at all
    mask[0] = True   # and one that fills the whole width
    return logp, old, ref, adv, mask


# ----------------------------------------------------------------------------- advantages

@pytest.mark.parametrize("scale_std", [True, False])
def test_advantages_match_formula(scale_std):
    g = torch.Generator().manual_seed(0)
    rewards = torch.randint(0, 3, (32, 8), generator=g).double() + 0.1 * torch.rand(32, 8, generator=g).double()
    rewards[3] = 0.7  # one group with all rewards equal
    rewards[5] = torch.tensor([1.0, 0, 0, 0, 0, 0, 0, 0])  # one lucky sample in the group
    adv = group_advantages(rewards, scale_std=scale_std)
    assert adv.shape == rewards.shape and adv.dtype == torch.float64
    torch.testing.assert_close(adv, ref_advantages(rewards, scale_std), rtol=1e-10, atol=1e-10)


def test_advantages_values_by_hand():
    # unbiased std of [1, 0, 0, 0] is sqrt(0.75 / 3) = 0.5: the winner gets +1.5, each loser -0.5
    adv = group_advantages(torch.tensor([[1.0, 0.0, 0.0, 0.0]]), eps=0.0)
    torch.testing.assert_close(adv, torch.tensor([[1.5, -0.5, -0.5, -0.5]]))
    # Dr. GRPO: r - mean, no division
    adv = group_advantages(torch.tensor([[3.0, 1.0, 2.0, 6.0]]), scale_std=False)
    torch.testing.assert_close(adv, torch.tensor([[0.0, -2.0, -1.0, 3.0]]))


def test_all_equal_rewards_give_exact_zero_advantage_and_gradient():
    # in float32 the mean of eight 0.1s is off by one ulp, and a naive (r - mean) / (std + eps) turns that
    # rounding into advantages of about 0.007
    rewards = torch.tensor([[0.1] * 8, [1.0] * 8, [0.0] * 8, [0.3] * 8])
    for scale_std in (True, False):
        adv = group_advantages(rewards, scale_std=scale_std)
        assert torch.equal(adv, torch.zeros_like(adv))
    logp, old, ref, _, mask = random_batch(1, N=32)
    adv = group_advantages(rewards).flatten()
    for mode in LOSS_AGG_MODES:
        loss, _ = grpo_loss(logp, old, None, adv, mask, loss_agg_mode=mode)
        (grad,) = torch.autograd.grad(loss, logp)
        assert loss.item() == 0.0 and torch.equal(grad, torch.zeros_like(grad))


def test_advantages_need_two_samples_and_accept_integer_rewards():
    with pytest.raises(ValueError):
        group_advantages(torch.ones(4, 1))
    adv = group_advantages(torch.tensor([[1, 0], [2, 2]]), scale_std=False)
    torch.testing.assert_close(adv, torch.tensor([[0.5, -0.5], [0.0, 0.0]]))


# ----------------------------------------------------------------------------- the loss against the plain formula

@pytest.mark.parametrize("mode", LOSS_AGG_MODES)
@pytest.mark.parametrize("beta", [0.0, 0.3])
@pytest.mark.parametrize("eps_low,eps_high,c", [(0.2, 0.2, 0.0), (0.1, 0.28, 0.0), (0.2, 0.28, 1.2)])
@pytest.mark.parametrize("seed", [0, 1])
def test_loss_and_gradient_match_formula(mode, beta, eps_low, eps_high, c, seed):
    logp, old, ref, adv, mask = random_batch(seed)
    max_len = 13 if seed else None  # Dr. GRPO's constant, given or defaulting to T
    kw = dict(clip_eps_low=eps_low, clip_eps_high=eps_high, clip_ratio_c=c, kl_beta=beta, loss_agg_mode=mode,
              max_len=max_len)
    loss, stats = grpo_loss(logp, old, ref if beta else None, adv, mask, **kw)
    (grad,) = torch.autograd.grad(loss, logp)

    expected = ref_loss(logp, old, ref, adv, mask, eps_low, eps_high, beta, mode, max_len, c)
    if c and seed:  # this batch has bad tokens above c, which the dual clip caps
        assert ((torch.exp(logp - old) > c) & (adv[:, None] < 0) & mask).any()
    (expected_grad,) = torch.autograd.grad(expected, logp)
    torch.testing.assert_close(loss, expected, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-10, atol=1e-12)
    assert torch.isfinite(loss) and grad[1].abs().sum() == 0  # the empty sequence: no NaN, no gradient
    assert grad[~mask].abs().sum() == 0 and grad[mask].abs().sum() > 0

    pg_only = ref_loss(logp, old, ref, adv, mask, eps_low, eps_high, 0.0, mode, max_len, c)
    torch.testing.assert_close(stats["pg_loss"], pg_only.detach(), rtol=1e-10, atol=1e-12)
    assert all(not v.requires_grad and v.dim() == 0 for v in stats.values())


def test_modes_weigh_sequences_differently():
    # a short and a long sequence, both with advantage 1, at ratio 1: the per-token weights differ by mode
    logp = torch.zeros(2, 4, dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([[1, 0, 0, 0], [1, 1, 1, 1]], dtype=torch.float64)  # a float mask works too
    adv = torch.tensor([1.0, 1.0], dtype=torch.float64)
    weights = {"seq-mean-token-mean": [1 / 2, 1 / 8],        # 1/N * 1/|o_i|
               "token-mean": [1 / 5, 1 / 5],                 # 1/sum|o_i|
               "seq-mean-token-sum-norm": [1 / 8, 1 / 8]}    # 1/N * 1/T
    for mode, (w_short, w_long) in weights.items():
        loss, _ = grpo_loss(logp, logp.detach(), None, adv, mask, loss_agg_mode=mode)
        (grad,) = torch.autograd.grad(loss, logp)
        torch.testing.assert_close(grad[0, 0], torch.tensor(-w_short, dtype=torch.float64))
        torch.testing.assert_close(grad[1], torch.full((4,), -w_long, dtype=torch.float64))


@pytest.mark.parametrize("mode", LOSS_AGG_MODES)
def test_shares_normalised_by_the_whole_batch_add_up_to_its_loss(mode):
    # data parallel: each rank aggregates its rows over the whole batch's token (or sequence) count
    logp, old, ref, adv, mask = random_batch(5, N=6)
    whole, _ = grpo_loss(logp, old, ref, adv, mask, kl_beta=0.1, loss_agg_mode=mode, max_len=12)
    n_total = mask.sum() if mode == "token-mean" else 6
    shares = [grpo_loss(logp[rows], old[rows], ref[rows], adv[rows], mask[rows], kl_beta=0.1, loss_agg_mode=mode,
                        max_len=12, n_total=n_total)[0] for rows in (slice(0, 2), slice(2, 6))]
    torch.testing.assert_close(sum(shares), whole)


def test_minibatches_take_an_equal_share_of_every_group():
    G, n_prompts = 8, 3
    for minibatches, sizes in ((4, [2] * 4), (3, [3, 3, 2]), (1, [8]), (10, [1] * 8)):  # more than G: G of them
        parts = minibatch_rows(n_prompts, G, minibatches, torch.Generator().manual_seed(0))
        assert sorted(torch.cat(parts).tolist()) == list(range(n_prompts * G))  # a partition of the rows
        for part, size in zip(parts, sizes, strict=True):
            assert (torch.bincount(part // G, minlength=n_prompts) == size).all()
    first, again = (minibatch_rows(n_prompts, G, 4, torch.Generator().manual_seed(s)) for s in (0, 1))
    assert any(not torch.equal(a, b) for a, b in zip(first, again))  # random within each group


@pytest.mark.parametrize("mode", LOSS_AGG_MODES)
def test_first_step_is_policy_gradient(mode):
    # pi_theta == pi_old: every ratio is 1, nothing clips, and the gradient is -A * grad log pi, per token,
    # weighted by the mode's aggregation weight
    logp, _, _, adv, mask = random_batch(3)
    N, T = logp.shape
    loss, stats = grpo_loss(logp, logp.detach(), None, adv, mask, loss_agg_mode=mode, max_len=20)
    (grad,) = torch.autograd.grad(loss, logp)
    expected = torch.zeros(N, T, dtype=torch.float64)
    for i in range(N):
        n_i = int(mask[i].sum())
        for t in range(T):
            if mask[i, t]:
                w = {"seq-mean-token-mean": 1 / (N * n_i), "token-mean": 1 / int(mask.sum()),
                     "seq-mean-token-sum-norm": 1 / (N * 20)}[mode]
                expected[i, t] = -adv[i] * w
    torch.testing.assert_close(grad, expected, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(loss.detach(), expected.sum())  # at ratio 1 the loss is -sum_it w_i A_i too
    assert stats["clip_frac"] == 0 and stats["ratio_mean"] == 1 and stats["ratio_max"] == 1


# ----------------------------------------------------------------------------- KL

def test_kl_is_zero_with_zero_gradient_when_policy_is_reference():
    logp, old, _, adv, mask = random_batch(4)
    base, _ = grpo_loss(logp, old, None, adv, mask, kl_beta=0.0)
    (base_grad,) = torch.autograd.grad(base, logp)
    loss, stats = grpo_loss(logp, old, logp.detach(), adv, mask, kl_beta=0.5)
    (grad,) = torch.autograd.grad(loss, logp)
    assert stats["kl"] == 0
    torch.testing.assert_close(loss, base, rtol=0, atol=1e-15)
    torch.testing.assert_close(grad, base_grad, rtol=0, atol=1e-15)


def test_kl_is_positive_k3_and_pulls_toward_reference():
    logp, old, ref, adv, mask = random_batch(5)
    _, stats = grpo_loss(logp, old, ref, adv, mask, kl_beta=0.1)
    expected = ref_stats(logp, old, ref, adv, mask, 0.2, 0.2)
    torch.testing.assert_close(stats["kl"].item(), expected["kl"], rtol=1e-10, atol=0)
    assert stats["kl"] > 0
    # with no advantage, the loss is beta * KL alone; a gradient step must move logp toward ref
    loss, _ = grpo_loss(logp, old, ref, torch.zeros_like(adv), mask, kl_beta=1.0)
    (grad,) = torch.autograd.grad(loss, logp)
    step = -grad[mask]
    assert (step * (ref - logp.detach())[mask] > 0).all()


def test_kl_of_a_token_far_below_the_reference_is_bounded():
    # ref - logp of 3 and 200 nats: k3 would be e^3 - 4 ~ 16 and overflow; each counts KL_TOKEN_MAX, with a
    # finite gradient, and a token inside the bound keeps the plain k3 and its pull
    logp = torch.tensor([[-1.0, -5.0, -202.0]], dtype=torch.float64, requires_grad=True)
    ref = torch.tensor([[-0.5, -2.0, -2.0]], dtype=torch.float64)
    mask = torch.ones(1, 3, dtype=torch.bool)
    loss, stats = grpo_loss(logp, logp.detach(), ref, torch.zeros(1, dtype=torch.float64), mask, kl_beta=1.0,
                            loss_agg_mode="token-mean")
    (grad,) = torch.autograd.grad(loss, logp)
    plain = math.exp(0.5) - 0.5 - 1
    torch.testing.assert_close(stats["kl"].item(), (plain + 2 * KL_TOKEN_MAX) / 3, rtol=1e-12, atol=0)
    assert torch.isfinite(grad).all() and grad[0, 0] < 0 and grad[0, 1:].abs().sum() == 0


def test_beta_zero_needs_no_reference_and_beta_nonzero_does():
    logp, old, ref, adv, mask = random_batch(6)
    loss, stats = grpo_loss(logp, old, None, adv, mask, kl_beta=0.0)
    assert stats["kl"] == 0 and torch.isfinite(loss)
    with pytest.raises(ValueError):
        grpo_loss(logp, old, None, adv, mask, kl_beta=0.1)
    # given a reference with beta = 0, the KL is reported but does not enter the loss
    loss_with_ref, stats = grpo_loss(logp, old, ref, adv, mask, kl_beta=0.0)
    assert stats["kl"] > 0 and torch.equal(loss_with_ref, loss)


# ----------------------------------------------------------------------------- clipping

def clip_case(ratios, advs, eps_low=0.2, eps_high=0.2, c=0.0):
    # one token per sequence, with the given ratio and advantage; returns the gradient per token and clip_frac
    old = torch.zeros(len(ratios), 1, dtype=torch.float64)
    logp = torch.log(torch.tensor(ratios, dtype=torch.float64))[:, None].requires_grad_()
    adv = torch.tensor(advs, dtype=torch.float64)
    loss, stats = grpo_loss(logp, old, None, adv, torch.ones(len(ratios), 1), clip_eps_low=eps_low,
                            clip_eps_high=eps_high, clip_ratio_c=c, loss_agg_mode="token-mean")
    (grad,) = torch.autograd.grad(loss, logp)
    return grad[:, 0], stats["clip_frac"].item()


def test_clip_silences_exactly_the_tokens_it_should():
    #          too likely & good   too unlikely & bad   low & good   high & bad   inside range
    ratios = [1.5, 0.5, 0.5, 1.5, 1.1]
    advs = [1.0, -1.0, 1.0, -1.0, 1.0]
    grad, clip_frac = clip_case(ratios, advs)
    assert grad[0] == 0 and grad[1] == 0  # the clip removes the incentive to move further
    # elsewhere the unclipped term rho * A is the minimum: d(-rho A)/d logp = -rho A, averaged over 5 tokens
    torch.testing.assert_close(grad[2:], torch.tensor([-0.5, 1.5, -1.1], dtype=torch.float64) / 5)
    assert clip_frac == pytest.approx(2 / 5)


def test_asymmetric_clip_respects_each_bound():
    # DAPO clip-higher: eps_high = 0.28 lets a good token reach ratio 1.25, which eps = 0.2 would clip
    grad, clip_frac = clip_case([1.25, 1.25], [1.0, 1.0], eps_low=0.2, eps_high=0.28)
    assert (grad != 0).all() and clip_frac == 0
    grad, clip_frac = clip_case([1.25, 1.25], [1.0, 1.0], eps_low=0.28, eps_high=0.2)
    assert (grad == 0).all() and clip_frac == 1
    # and the lower bound is eps_low's alone: ratio 0.75 with a bad token
    grad, clip_frac = clip_case([0.75], [-1.0], eps_low=0.2, eps_high=0.3)
    assert grad[0] == 0 and clip_frac == 1
    grad, clip_frac = clip_case([0.75], [-1.0], eps_low=0.3, eps_high=0.2)
    assert grad[0] != 0 and clip_frac == 0


def test_dual_clip_caps_only_bad_tokens_far_above_one():
    #          bad, far above c   bad, between 1+eps and c   good, far above   bad, below 1-eps
    ratios, advs = [5.0, 2.0, 5.0, 0.5], [-1.0, -1.0, 1.0, -1.0]
    grad, clip_frac = clip_case(ratios, advs, c=3.0)
    assert grad[0] == 0 and grad[2] == 0 and grad[3] == 0  # capped by the dual clip; the usual clips
    torch.testing.assert_close(grad[1], torch.tensor(2.0 / 4, dtype=torch.float64))  # d(-rho A)/d logp = -rho A
    assert clip_frac == pytest.approx(3 / 4)
    grad, clip_frac = clip_case(ratios, advs)  # without it, the bad token at ratio 5 pulls hardest of all
    torch.testing.assert_close(grad[0], torch.tensor(5.0 / 4, dtype=torch.float64))
    assert clip_frac == pytest.approx(2 / 4)


def test_dual_clip_must_exceed_one():
    for bad in (1.0, 0.5, -3.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="clip_ratio_c"):
            GRPOConfig(clip_ratio_c=bad).validate()
    GRPOConfig(clip_ratio_c=3.0).validate()


@pytest.mark.parametrize("eps_low,eps_high", [(0.2, 0.2), (0.1, 0.28)])
def test_stats_match_formula(eps_low, eps_high):
    logp, old, ref, adv, mask = random_batch(7, N=16, T=12)
    _, stats = grpo_loss(logp, old, ref, adv, mask, clip_eps_low=eps_low, clip_eps_high=eps_high, kl_beta=0.1)
    expected = ref_stats(logp, old, ref, adv, mask, eps_low, eps_high)
    for k, v in expected.items():
        assert stats[k].item() == pytest.approx(v, rel=1e-10), k
    assert 0 < expected["clip_frac"] < 1  # the random batch does exercise the clip


# ----------------------------------------------------------------------------- edge cases

def test_padding_garbage_and_empty_batches_stay_finite():
    # float32, padding holding huge or -inf log-probs: exp() there would overflow, masked or not
    logp, old, ref, adv, mask = random_batch(8, dtype=torch.float32)
    logp = logp.detach().masked_fill(~mask, 200.0).requires_grad_()
    old = old.masked_fill(~mask, -float("inf"))
    ref = ref.masked_fill(~mask, 300.0)
    for mode in LOSS_AGG_MODES:
        loss, stats = grpo_loss(logp, old, ref, adv, mask, kl_beta=0.1, loss_agg_mode=mode)
        (grad,) = torch.autograd.grad(loss, logp)
        assert torch.isfinite(loss) and torch.isfinite(grad).all() and grad[~mask].abs().sum() == 0
        assert all(torch.isfinite(v) for v in stats.values())
        # no valid token anywhere: the loss is 0, not NaN
        empty = torch.zeros_like(mask)
        loss, stats = grpo_loss(logp, old, ref, adv, empty, kl_beta=0.1, loss_agg_mode=mode)
        (grad,) = torch.autograd.grad(loss, logp)
        assert loss.item() == 0 and not grad.any() and all(v.item() == 0 for v in stats.values())


def test_unknown_mode_raises():
    logp, old, _, adv, mask = random_batch(9)
    with pytest.raises(ValueError):
        grpo_loss(logp, old, None, adv, mask, loss_agg_mode="seq-mean")
    with pytest.raises(ValueError):
        aggregate_loss(logp, mask, "sum")


def test_masked_mean():
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, float("nan"), 6.0]])
    mask = torch.tensor([[1, 1, 0], [0, 0, 0]])
    assert masked_mean(x, mask).item() == 1.5
    torch.testing.assert_close(masked_mean(x, mask, dim=1), torch.tensor([1.5, 0.0]))
    torch.testing.assert_close(masked_mean(x, mask, dim=0), torch.tensor([1.0, 2.0, 0.0]))


# ----------------------------------------------------------------------------- the loop, end to end on a toy task

def float64_model(**overrides):
    """The tiny model, seeded, in float64: for the tests of two ways to compute one update or one log-prob. In
    float32 they round differently by CPU (the kernels PyTorch picks for each shape); in float64 they agree to the
    float32 steps model.py keeps (RMSNorm, the router, the float32 logits and so log-probs and losses)."""
    from model import Transformer, make_config
    torch.manual_seed(0)
    return Transformer(make_config("tiny", **overrides)).double()


def test_tiny_grpo_run_raises_reward_on_a_toy_task():
    """Reward 1 when the response starts with a digit (about 20 of the ~450 tokens do, so a few percent of
    random samples): a few dozen GRPO steps must make the tiny random model prefer such answers."""
    import re

    from grpo import GRPOConfig, GRPOTrainer
    from model import Transformer, make_config
    from rewards import Reward

    def reward_fn(text, row, format_weight, language_weight):
        hit = float(bool(re.match(r"<think> ?[0-9]", text)))
        return Reward(total=hit, format=0.0, accuracy=hit, reflections=0, language_consistency=1 - hit)

    torch.manual_seed(0)
    model = Transformer(make_config("tiny"))
    cfg = GRPOConfig(group_size=8, max_new_tokens=2, lr=3e-3, kl_beta=0.01, minibatches=1)
    trainer = GRPOTrainer(model, cfg, torch.device("cpu"), reward_fn=reward_fn)
    rows = [{"question": f"What is {i} + {i}?"} for i in range(8)]
    stats = [trainer.step(rows)[0] for _ in range(40)]
    accuracy = [s["accuracy"] for s in stats]
    assert all(s["language_consistency"] == 1 - s["accuracy"] for s in stats)  # logged every step
    assert sum(accuracy[:5]) / 5 < 0.2, accuracy
    assert sum(accuracy[-5:]) / 5 > 0.6, accuracy


def test_overlong_penalty_is_dapo_ramp():
    lengths = torch.tensor([0.0, 400.0, 412.0, 450.0, 500.0, 512.0])
    # DAPO eq. 13 with L_max = 512, L_cache = 100: 0 up to 412 tokens, then ((512 - 100) - |y|) / 100
    assert overlong_penalty(lengths, 512, 100).tolist() == pytest.approx([0, 0, 0, -0.38, -0.88, -1.0])
    assert overlong_penalty(lengths, 512, 0).tolist() == [0.0] * 6  # off


def test_overlong_filter_drops_truncated_rollouts_from_the_loss():
    """With overlong filtering, a rollout that ran out of budget gets no gradient; the others are unchanged."""
    from grpo import GRPOConfig, GRPOTrainer
    from data import stop_token_ids

    stop = stop_token_ids()[0]
    prompts = [[5, 6, 7]] * 4
    completions = [[9, 10, stop], [11, 12, 13], [9, stop], [14, 15, 16]]  # rows 1 and 3: truncated at budget 3
    reward = torch.tensor([[1.0, 0.0, 0.5, 0.0]])
    grads = {}
    for keep in (None, torch.tensor([True, False, True, False]), torch.tensor([True, True, True, True])):
        torch.manual_seed(0)
        model = float64_model()
        trainer = GRPOTrainer(model, GRPOConfig(group_size=4, max_new_tokens=3, minibatches=1, kl_beta=0.0),
                              torch.device("cpu"))
        trainer.opt.step = lambda: None  # keep the gradient, skip the update
        trainer.update(prompts, completions, reward, keep=keep)
        grads[None if keep is None else tuple(keep.tolist())] = model.head.weight.grad.clone()
    assert torch.equal(grads[None], grads[(True, True, True, True)])
    assert not torch.allclose(grads[None], grads[(True, False, True, False)])
    # the kept rows alone (the dropped ones given zero advantage and no tokens) give the same gradient
    torch.manual_seed(0)
    model = float64_model()
    trainer = GRPOTrainer(model, GRPOConfig(group_size=4, max_new_tokens=3, minibatches=1, kl_beta=0.0),
                          torch.device("cpu"))
    trainer.opt.step = lambda: None
    trainer.update(prompts, [completions[0], [], completions[2], []], reward)
    assert torch.allclose(model.head.weight.grad, grads[(True, False, True, False)], atol=1e-6)


def test_a_step_subtracts_the_repeat_penalty_and_logs_repeats_and_groups_cut_whole():
    """With GRPOConfig.repeat_penalty, the reward the update sees is the rule reward minus the penalty times
    readable.repeated_share; every step logs the share of answers that repeat and of groups whose every answer was
    cut at the budget."""
    from data import get_tokenizer
    from grpo import GRPOConfig, GRPOTrainer
    from rewards import Reward

    enc = get_tokenizer()
    once, loop = " Try 5 * 7: 5 * 7 = 35. Wait, 35 is not 50.", " Try 5 * 7: 5 * 7 = 35. Wait, 35 is not 50." * 3
    answers = [enc.encode(text) for text in (once, loop, loop, loop)]  # group 1: once, loop; group 2: loop, loop
    budget = max(len(a) for a in answers)
    for penalty in (0.0, 0.5):
        trainer = GRPOTrainer(float64_model(), GRPOConfig(group_size=2, max_new_tokens=budget, minibatches=1,
                                                          repeat_penalty=penalty), torch.device("cpu"),
                              reward_fn=lambda text, row, fw, lw: Reward(1.0, 1.0, 1.0, 0, 1.0))
        trainer.generate = lambda prompts, *args: [list(a) for a in answers]
        seen = {}

        def update(prompts, completions, reward, keep=None):
            seen["reward"] = reward
            return {}
        trainer.update = update
        stats = trainer.step([{"task": "countdown", "question": "a"}, {"task": "countdown", "question": "b"}])[0]
        assert seen["reward"].flatten().tolist() == pytest.approx([1.0] + [1 - penalty * 2 / 3] * 3)
        assert (stats["repeat_rate"], stats["truncated"], stats["truncated_groups"]) == (0.75, 0.75, 0.5)


def test_overlong_buffer_must_fit_the_budget():
    from grpo import GRPOConfig
    with pytest.raises(ValueError):
        GRPOConfig(max_new_tokens=100, overlong_buffer=100).validate()
    GRPOConfig(max_new_tokens=100, overlong_buffer=20, overlong_filter=True).validate()


def test_a_step_that_mixes_tasks_logs_each_tasks_accuracy():
    """R1's RL for all scenarios mixes Countdown and arithmetic prompts: each gets its own accuracy; a step of
    one task logs only the overall accuracy."""
    from grpo import GRPOConfig, GRPOTrainer
    from model import Transformer, make_config
    from rewards import Reward

    def reward_fn(text, row, format_weight, language_weight):  # every arithmetic answer right, no Countdown one
        hit = float(row["task"] == "arithmetic")
        return Reward(total=hit, format=0.0, accuracy=hit, reflections=0, language_consistency=1.0)

    torch.manual_seed(0)
    trainer = GRPOTrainer(Transformer(make_config("tiny")), GRPOConfig(group_size=2, max_new_tokens=2, minibatches=1),
                          torch.device("cpu"), reward_fn=reward_fn)
    mixed = [{"task": "countdown", "question": "a"}] * 3 + [{"task": "arithmetic", "question": "b"}]
    stats = trainer.step(mixed)[0]
    assert (stats["accuracy"], stats["accuracy_countdown"], stats["accuracy_arithmetic"]) == (0.25, 0.0, 1.0)
    one_task = trainer.step([{"task": "countdown", "question": "a"}] * 2)[0]
    assert not any(key.startswith("accuracy_") for key in one_task)


def test_aha_examples_are_correct_reflective_answers_in_any_language():
    """A step keeps up to two answers that reflected and ended right, whatever language they reflect in (the default
    corpus reflects mostly in German: "Warte" has no "wait" in it)."""
    from grpo import GRPOConfig, GRPOTrainer
    from model import Transformer, make_config
    from rewards import Reward

    verdicts = iter([(1.0, 2), (1.0, 0), (0.0, 3), (1.0, 1)])  # (accuracy, reflections) of the step's 4 answers

    def reward_fn(text, row, format_weight, language_weight):
        accuracy, reflections = next(verdicts)
        return Reward(total=accuracy, format=1.0, accuracy=accuracy, reflections=reflections, language_consistency=0.0)

    torch.manual_seed(0)
    trainer = GRPOTrainer(Transformer(make_config("tiny")), GRPOConfig(group_size=2, max_new_tokens=2, minibatches=1),
                          torch.device("cpu"), reward_fn=reward_fn)
    aha = trainer.step([{"task": "countdown", "question": "a"}, {"task": "countdown", "question": "b"}])[1]
    assert [(example["question"], example["reflections"]) for example in aha] == [("a", 2), ("b", 1)]


@pytest.mark.parametrize("mode", LOSS_AGG_MODES)
def test_micro_batches_accumulate_the_gradient_of_the_whole_minibatch(mode):
    """Gradient accumulation (micro_batch_rows) gives the minibatch's gradient and loss, whatever the split."""
    from grpo import GRPOConfig, GRPOTrainer

    g = torch.Generator().manual_seed(0)
    prompts = [[5, 6, 7]] * 4 + [[8, 9]] * 4
    lengths = torch.randint(1, 6, (8,), generator=g)
    completions = [torch.randint(0, 400, (int(n),), generator=g).tolist() for n in lengths]
    reward = torch.tensor([[1.0, 0.0, 0.5, 0.0], [0.0, 1.0, 1.0, 0.0]])
    results = []
    for micro_batch_rows in (0, 3, 1):
        torch.manual_seed(0)
        model = float64_model()
        cfg = GRPOConfig(group_size=4, max_new_tokens=5, minibatches=1, kl_beta=0.01, loss_agg_mode=mode,
                         max_grad_norm=1e9, micro_batch_rows=micro_batch_rows)
        trainer = GRPOTrainer(model, cfg, torch.device("cpu"))
        trainer.opt.step = lambda: None  # keep the gradient, skip the update
        stats = trainer.update(prompts, completions, reward)
        results.append((stats, [p.grad.clone() for p in model.parameters()]))
    (whole, grads), *split = results
    assert any(g.abs().sum() > 0 for g in grads)
    for stats, micro_grads in split:
        # the loss is float32 (the log-probs are): sums of <= 40 token terms <= ~1.5 in other orders round by
        # <= (log2(40) + 2) * 2**-24 * 1.5 = 7e-7
        assert stats["loss"] == pytest.approx(whole["loss"], abs=1e-6)
        assert stats["grad_norm"] == pytest.approx(whole["grad_norm"], rel=1e-5)
        for a, b in zip(micro_grads, grads):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)


def test_packed_rows_score_each_token_as_the_row_alone():
    """pack_sequences puts padding only after each row, so the training forward needs no pad mask: every
    completion token's log-prob in the packed batch is the one of its row run alone, unpadded."""
    from grpo import GRPOConfig, GRPOTrainer, pack_sequences

    torch.manual_seed(0)
    model = float64_model().eval()
    trainer = GRPOTrainer(model, GRPOConfig(group_size=2, kl_beta=0.0), torch.device("cpu"))
    g = torch.Generator().manual_seed(2)
    prompts = [torch.randint(0, 400, (int(n),), generator=g).tolist() for n in (3, 6, 2, 5)]
    completions = [torch.randint(0, 400, (int(n),), generator=g).tolist() for n in (7, 1, 0, 4)]
    tokens, response = pack_sequences(prompts, completions, trainer.pad_id, width=14)
    assert tokens.shape == (4, 14) and response.sum(1).tolist() == [7, 1, 0, 4]
    with torch.no_grad():
        packed = trainer.token_logprobs(model, tokens)
        for i, (p, c) in enumerate(zip(prompts, completions)):
            if not c:
                continue
            alone = trainer.token_logprobs(model, torch.tensor([p + c]))[0]
            torch.testing.assert_close(packed[i, len(p) - 1:len(p) + len(c) - 1], alone[len(p) - 1:],
                                       rtol=1e-5, atol=1e-6)
            assert response[i, len(p):len(p) + len(c)].all() and tokens[i, len(p) + len(c):].eq(trainer.pad_id).all()


def test_logprobs_by_length_match_one_pass_over_the_padded_batch():
    """The no-grad passes (behaviour and reference log-probs) run in chunks of similar length, each cut after its
    longest row: every response token's log-prob is the one of a single pass over the whole padded batch."""
    from grpo import GRPOConfig, GRPOTrainer, pack_sequences, row_ends

    torch.manual_seed(0)
    model = float64_model().eval()
    trainer = GRPOTrainer(model, GRPOConfig(group_size=2, kl_beta=0.0), torch.device("cpu"))
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(0, 400, (int(n),), generator=g).tolist() for n in torch.randint(2, 7, (7,), generator=g)]
    completions = [torch.randint(0, 400, (int(n),), generator=g).tolist() for n in [0, 9, 1, 4, 9, 2, 6]]
    tokens, response = pack_sequences(prompts, completions, trainer.pad_id)
    ends = row_ends(prompts, completions)
    with torch.no_grad():
        whole = trainer.token_logprobs(model, tokens)
    mask = response[:, 1:]
    for chunk_rows in (1, 3, 64):
        chunked = trainer.token_logprobs_by_length(model, tokens, ends, chunk_rows=chunk_rows)
        assert chunked.shape == whole.shape
        torch.testing.assert_close(chunked[mask], whole[mask], rtol=1e-5, atol=1e-5)
        assert (chunked[mask] != 0).all()


def test_a_non_finite_loss_stops_the_update_before_the_optimizer_step():
    from grpo import GRPOConfig, GRPOTrainer
    from model import Transformer, make_config

    torch.manual_seed(0)
    model = Transformer(make_config("tiny"))
    trainer = GRPOTrainer(model, GRPOConfig(group_size=2, max_new_tokens=3, minibatches=1, kl_beta=0.0),
                          torch.device("cpu"))
    steps = []
    trainer.opt.step = lambda: steps.append(1)
    with torch.no_grad():
        model.head.weight[0, 0] = float("nan")  # every logit row mixes it in: the log-probs go NaN
    with pytest.raises(FloatingPointError, match="GRPO loss is nan; lower GRPOConfig.lr"):
        trainer.update([[5, 6], [5, 6]], [[7, 8], [9]], torch.tensor([[1.0, 0.0]]))
    assert steps == []


def rollout_batch(n_prompts=2, group_size=4, seed=0):
    """Ragged prompts and completions of random tokens, with rewards: the input of GRPOTrainer.update."""
    g = torch.Generator().manual_seed(seed)
    randoms = lambda low, high: torch.randint(0, 400, (int(torch.randint(low, high, (1,), generator=g)),),
                                              generator=g).tolist()
    prompts = [prompt for prompt in (randoms(2, 6) for _ in range(n_prompts)) for _ in range(group_size)]
    completions = [randoms(1, 9) for _ in prompts]
    return prompts, completions, torch.rand(n_prompts, group_size, generator=g).round()


def one_update(device, compile_blocks, max_seq_len=640, compile_context=None, dtype=torch.float32):
    """A tiny model's gradient from one GRPO update on rollout_batch (one minibatch of 4 micro-batches, the
    optimizer step skipped), the update's statistics, and the model. compile_blocks: as engine.speed_up_grpo sets
    the trainer up, through compile_context (default: engine.compiled_blocks)."""
    import engine
    from grpo import GRPOConfig, GRPOTrainer
    from model import Transformer, make_config

    torch.manual_seed(0)
    model = Transformer(make_config("tiny", max_seq_len=max_seq_len)).to(device, dtype)
    cfg = GRPOConfig(group_size=4, minibatches=1, micro_batch_rows=2, kl_beta=0.01, max_grad_norm=1e9)
    trainer = GRPOTrainer(model, cfg, torch.device(device))
    if compile_blocks:
        compile_context = compile_context or engine.compiled_blocks
        trainer.update_context = lambda: compile_context(model)
        trainer.pad_to = max_seq_len + 1
    trainer.opt.step = lambda: None  # keep the gradient, skip the update
    stats = trainer.update(*rollout_batch())
    return torch.cat([p.grad.flatten() for p in model.parameters()]).cpu(), stats, model


def test_padding_rows_to_the_context_changes_no_update(monkeypatch):
    """The engine pads every row to the model's context (max_seq_len + 1 columns), the shape of pretraining's
    windows: padding only follows each row's tokens, so the update is the one on rows padded to the longest.
    (torch.compile is left out here, on the CPU, so that only the padding differs.)"""
    import grpo

    widths, pack = [], grpo.pack_sequences
    monkeypatch.setattr(grpo, "pack_sequences", lambda *args: widths.append(args[3]) or pack(*args))
    longest, stats_longest, _ = one_update("cpu", compile_blocks=False, dtype=torch.float64)
    context, stats_context, _ = one_update("cpu", compile_blocks=True, max_seq_len=24, dtype=torch.float64,
                                           compile_context=lambda model: contextlib.nullcontext())
    assert widths[0] < widths[1] == 25
    assert stats_context["loss"] == pytest.approx(stats_longest["loss"], rel=1e-5, abs=1e-7)
    assert longest.abs().max() > 0
    torch.testing.assert_close(context, longest, rtol=1e-4, atol=1e-7)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the blocks are compiled on a GPU only")
def test_the_update_through_compiled_blocks_follows_the_eager_one_and_leaves_the_blocks_eager():
    eager, stats_eager, _ = one_update("cuda", compile_blocks=False)
    compiled, stats_compiled, model = one_update("cuda", compile_blocks=True)
    assert not any("forward" in vars(block) for block in model.layers)
    # bf16 autocast either way, its kernels fused differently: the same loss and gradient, to bf16's precision
    assert stats_compiled["loss"] == pytest.approx(stats_eager["loss"], rel=0.02, abs=1e-3)
    assert compiled.norm() == pytest.approx(eager.norm(), rel=0.02) and eager.norm() > 0
    assert torch.nn.functional.cosine_similarity(compiled, eager, dim=0) > 0.99
