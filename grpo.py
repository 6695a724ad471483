"""
GRPO, Group Relative Policy Optimization: the reinforcement learning algorithm of DeepSeek-R1-Zero.

The idea (DeepSeekMath, Shao et al. 2024, arXiv:2402.03300, sec. 4.1). PPO needs a value network, as large
as the policy, to tell a good action from a lucky one. GRPO drops it: for each question q it samples a *group*
of G answers o_1..o_G from the current (behaviour) policy pi_old, scores each with a reward r_i, and uses the
group itself as the baseline. An answer is good if it beats its siblings:

    A_i = (r_i - mean(r_1..r_G)) / std(r_1..r_G)                          (DeepSeekMath sec. 4.1.2; R1 eq. 3)

Every token t of answer o_i gets that same advantage (outcome supervision: the reward is only known at the end).
The policy then maximises PPO's clipped surrogate, with a KL penalty toward a frozen reference policy
(DeepSeekMath eq. 3; the DeepSeek-R1 paper, arXiv:2501.12948, eq. 1-3, trains R1-Zero with it):

    J(theta) = E[ 1/G sum_i 1/|o_i| sum_t { min(rho_it A_i, clip(rho_it, 1-eps, 1+eps) A_i) - beta KL_it } ]

    rho_it = pi_theta(o_it | q, o_i<t) / pi_old(o_it | q, o_i<t)      the probability ratio of token t

    KL_it  = pi_ref/pi_theta - log(pi_ref/pi_theta) - 1               (DeepSeekMath eq. 4)

The KL is Schulman's "k3" estimator (Approximating KL Divergence, 2020): unbiased for KL(pi_theta || pi_ref)
under samples from pi_theta (here pi_old, close to it), and never negative, unlike the plain log-ratio.
Why the clip: the same sampled batch serves several gradient steps, and once pi_theta drifts from pi_old the
samples stop being its own. The clip removes the incentive to push a token's ratio past 1+eps when its
advantage is positive (or below 1-eps when negative): there the clipped, constant term is the minimum and the
token's gradient is zero.

On the first step on a fresh batch pi_theta == pi_old, every ratio is 1, and the gradient is plain REINFORCE
with the group mean as baseline: -A_i grad log pi_theta(o_it), weighted by how the loss averages its tokens.

Later work changed three details, all options here:

- DAPO (Yu et al. 2025, arXiv:2503.14476). "Clip-Higher" (sec. 3.1): separate eps_low and eps_high (0.2 and
  0.28). A symmetric clip caps how fast an unlikely token can become likely (a ratio limit of 1.2 on p = 0.01
  is nothing), which collapses entropy and exploration; a higher upper bound lets rare good tokens grow.
  "Token-level policy gradient loss" (sec. 3.3): average over all tokens of the batch instead of per sequence
  first, so every token counts the same and a long answer's tokens are not diluted by 1/|o_i|.
  DAPO also drops the KL term (beta = 0) for reasoning RL, and its dynamic sampling drops groups whose
  rewards are all equal: their advantages are all zero, so they carry no gradient (we return exact zeros).
- Dr. GRPO (Liu et al. 2025, "Understanding R1-Zero-Like Training: A Critical Perspective", arXiv:2503.20783,
  sec. 3) names two biases in the formula above. Length bias: with 1/|o_i|, a wrong (negative advantage)
  answer is penalised less per token the longer it is, so the policy learns to make wrong answers long.
  Fix: sum each sequence's tokens and divide by a constant (the generation budget) instead of |o_i|.
  Difficulty bias: dividing by std(r) up-weights questions that are almost always right or almost always
  wrong (small std). Fix: A_i = r_i - mean(r).

One GRPO iteration (DeepSeekMath Algorithm 1): sample G answers per question with pi_old, score them,
compute advantages once, then take one or more gradient steps on the loss below with pi_old held fixed.
We minimise the loss, -J.
"""

import contextlib
import copy
import functools
import math
import time
from dataclasses import dataclass
from typing import Annotated

import torch

import distributed
import readable
from data import TASKS, pad_token_id, stop_token_ids
from rewards import score
from sample import generate, rollouts

LOSS_AGG_MODES = ("seq-mean-token-mean", "token-mean", "seq-mean-token-sum-norm")

# -----------------------------------------------------------------------------
# the GRPO objective: pure functions of tensors


def masked_mean(x, mask, dim=None):
    """Mean of x over the positions where mask is set, along dim (all of x if None); 0 where nothing is set."""
    mask = mask.bool()
    total = torch.where(mask, x, 0.0).sum(dim)  # where, not x * mask: inf * 0 would be NaN
    return total / mask.sum(dim).clamp(min=1)


def token_logprobs(logits, targets, temperature=1.0, return_entropy=False):
    """log softmax(logits / temperature)[targets] per token (float32, logits.shape[:-1]): log π of each sampled
    token. With return_entropy, also the entropy of softmax(logits / temperature) per token, logged and not
    trained on (no gradient). kernels/logprobs.py computes the same without materialising the log-softmax."""
    logp_all = torch.log_softmax(logits.float() / temperature, dim=-1)
    logp = logp_all.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    if not return_entropy:
        return logp
    with torch.no_grad():
        entropy = torch.special.entr(logp_all.exp()).sum(-1)  # entr(0) = 0 where logits are -inf
    return logp, entropy


def group_advantages(rewards, scale_std=True, eps=1e-6):
    """
    Group-relative advantages. rewards: [P, G], G sampled answers for each of P prompts -> advantages [P, G].

    scale_std=True:  A_i = (r_i - mean(r)) / (std(r) + eps)    GRPO (DeepSeekMath sec. 4.1.2, R1 eq. 3)
    scale_std=False: A_i =  r_i - mean(r)                      Dr. GRPO (no difficulty bias)

    std is the unbiased sample std (Bessel's correction, divide by G-1), torch.std's default and what TRL and
    veRL use. A group whose rewards are all equal gets exactly zero advantages (rounding in the mean would
    otherwise leave tiny nonzero values, then amplified by 1 / eps).
    """
    P, G = rewards.shape
    if G < 2:
        raise ValueError(f"GRPO needs at least 2 samples per prompt to form a baseline, got G={G}")
    if not rewards.is_floating_point():
        rewards = rewards.float()
    adv = rewards - rewards.mean(dim=1, keepdim=True)
    if scale_std:
        adv = adv / (rewards.std(dim=1, keepdim=True) + eps)
    all_equal = (rewards == rewards[:, :1]).all(dim=1, keepdim=True)
    return adv.masked_fill(all_equal, 0.0)


def overlong_penalty(lengths, max_len, buffer):
    """DAPO's soft overlong punishment (Yu et al. 2025, sec. 3.4, eq. 13), added to the rule reward: 0 up to
    max_len - buffer tokens, then falling linearly to -1 at max_len. A truncated answer is not necessarily a
    wrong one, but rewarding it like any other failure teaches nothing about length; the ramp says "shorter".
    buffer 0 turns it off. lengths: a float tensor of response lengths -> penalties of the same shape."""
    if buffer <= 0:
        return torch.zeros_like(lengths)
    return ((max_len - buffer - lengths) / buffer).clamp(-1.0, 0.0)


def aggregate_loss(loss_tok, mask, loss_agg_mode="seq-mean-token-mean", max_len=None, n_total=None):
    """
    Reduce per-token losses [N, T] to a scalar over the tokens where mask [N, T] is set. Sequences with no
    valid tokens contribute 0 (never NaN) and still count in the seq-mean modes' 1/N.

    "seq-mean-token-mean":     1/N sum_i 1/|o_i| sum_t    GRPO (DeepSeekMath eq. 3): each sequence weighs the same
    "token-mean":              1/sum_i|o_i| sum_i sum_t   DAPO (sec. 3.3): each token weighs the same
    "seq-mean-token-sum-norm": 1/N sum_i 1/max_len sum_t  Dr. GRPO: a constant instead of |o_i|; pass the
                               generation budget as max_len (default T, which changes with the batch's padding)

    n_total replaces the outer divisor (sum_i|o_i| for "token-mean", N otherwise) when this batch is one rank's
    share of a larger one (data parallel): the whole batch's count makes the ranks' losses add up to its loss.
    """
    mask = mask.bool()
    loss_tok = torch.where(mask, loss_tok, 0.0)
    if loss_agg_mode == "token-mean":
        return loss_tok.sum() / (mask.sum().clamp(min=1) if n_total is None else n_total)
    if loss_agg_mode == "seq-mean-token-mean":
        per_seq = loss_tok.sum(-1) / mask.sum(-1).clamp(min=1)
    elif loss_agg_mode == "seq-mean-token-sum-norm":
        per_seq = loss_tok.sum(-1) / (loss_tok.shape[-1] if max_len is None else max_len)
    else:
        raise ValueError(f"unknown loss_agg_mode {loss_agg_mode!r}, expected one of {LOSS_AGG_MODES}")
    return per_seq.mean() if n_total is None else per_seq.sum() / n_total


KL_TOKEN_MAX = 10.0      # the most one token's k3 term counts (reached at ref - logp ~ 2.6)
KL_LOG_RATIO_MAX = 20.0  # keeps exp() finite in the forward and the backward beyond that bound


def grpo_loss(logp, old_logp, ref_logp, advantages, mask, clip_eps_low=0.2, clip_eps_high=0.2, clip_ratio_c=0.0,
              kl_beta=0.0, loss_agg_mode="seq-mean-token-mean", max_len=None, n_total=None):
    """
    The GRPO loss, -J(theta) of DeepSeekMath eq. 3, with DAPO's decoupled clip, an optional dual clip and a choice
    of aggregation.

    logp       [N, T] log pi_theta of the sampled tokens (carries the gradient)
    old_logp   [N, T] log pi_old, the policy that sampled them (a constant)
    ref_logp   [N, T] log pi_ref, the frozen reference (a constant); may be None when kl_beta == 0
    advantages [N]    one per sequence, shared by all its tokens (see group_advantages)
    mask       [N, T] 1 (or True) on the response tokens that count, 0 on prompt and padding
    clip_ratio_c  the dual clip's c > 1, or 0 for none (see below)
    max_len    the constant of "seq-mean-token-sum-norm" (see aggregate_loss)
    n_total    the whole batch's token (or sequence) count when this is one rank's share of it (aggregate_loss)

    Returns (loss, stats). stats holds detached 0-d tensors (no host sync; .item() them to log):
      pg_loss     the clipped policy-gradient part of the loss alone, aggregated like the loss
      kl          mean k3 KL to the reference over valid tokens, each at most KL_TOKEN_MAX (0 when ref_logp is None)
      clip_frac   fraction of valid tokens the clip silences: rho > 1+eps_high with A > 0, or rho < 1-eps_low
                  with A < 0 (or, dual-clipped, rho > c with A < 0), i.e. where the gradient is zero (as TRL and
                  veRL count it)
      ratio_mean  mean of rho over valid tokens
      ratio_max   max of rho over valid tokens (0 if there are none)
    """
    if loss_agg_mode not in LOSS_AGG_MODES:
        raise ValueError(f"unknown loss_agg_mode {loss_agg_mode!r}, expected one of {LOSS_AGG_MODES}")
    if kl_beta != 0 and ref_logp is None:
        raise ValueError("kl_beta != 0 needs ref_logp")
    mask = mask.bool()
    A = advantages.detach().to(logp.dtype)[:, None]  # [N, 1], broadcast over the sequence's tokens
    # Padding positions may hold anything; zero their log-ratios so that exp() can overflow neither the value
    # nor the gradient into inf/NaN. They get rho = 1 and are dropped by the aggregation anyway.
    log_ratio = torch.where(mask, logp - old_logp.detach(), 0.0)
    ratio = torch.exp(log_ratio)
    # clipped surrogate (DeepSeekMath eq. 3), lower and upper clip decoupled (DAPO sec. 3.1, clip-higher)
    unclipped = ratio * A
    clipped = torch.clamp(ratio, 1 - clip_eps_low, 1 + clip_eps_high) * A
    pg_tok = -torch.minimum(unclipped, clipped)
    if clip_ratio_c:
        # dual clip (Ye et al. 2020, "Mastering Complex Control in MOBA Games", eq. 5): with A < 0 the term
        # -rho * A grows without bound in rho, so a token that became far likelier within the step's minibatches
        # can dominate the gradient; it counts at most -c * A
        pg_tok = torch.where(A < 0, torch.minimum(pg_tok, -clip_ratio_c * A), pg_tok)
    loss_tok = pg_tok
    kl_tok = None
    if ref_logp is not None:
        # k3 estimator (DeepSeekMath eq. 4): exp(ref - logp) - (ref - logp) - 1 >= 0, zero iff pi_theta == pi_ref.
        # It grows like exp(ref - logp): one token the policy has made far less likely than the reference would
        # outweigh the whole batch, so a token's term stops at KL_TOKEN_MAX, as veRL bounds it
        log_ref_ratio = torch.where(mask, ref_logp.detach() - logp, 0.0).clamp(max=KL_LOG_RATIO_MAX)
        kl_tok = (torch.exp(log_ref_ratio) - log_ref_ratio - 1).clamp(max=KL_TOKEN_MAX)
        if kl_beta != 0:
            loss_tok = pg_tok + kl_beta * kl_tok  # inside the token average, as in eq. 3
    loss = aggregate_loss(loss_tok, mask, loss_agg_mode, max_len, n_total)

    with torch.no_grad():
        silenced = ((ratio > 1 + clip_eps_high) & (A > 0)) | ((ratio < 1 - clip_eps_low) & (A < 0))
        if clip_ratio_c:
            silenced |= (ratio > clip_ratio_c) & (A < 0)
        stats = {
            "pg_loss": aggregate_loss(pg_tok, mask, loss_agg_mode, max_len, n_total),
            "kl": masked_mean(kl_tok, mask) if kl_tok is not None else logp.new_zeros(()),
            "clip_frac": masked_mean(silenced.to(logp.dtype), mask),
            "ratio_mean": masked_mean(ratio, mask),
            "ratio_max": torch.where(mask, ratio, 0.0).max(),
        }
    return loss, stats


# -----------------------------------------------------------------------------
# The loop: sample G completions per prompt, score them, and take μ passes of clipped policy-gradient steps.

@dataclass
class GRPOConfig:
    group_size: Annotated[int, "G: answers sampled per prompt, each compared with its group"] = 8
    max_new_tokens: Annotated[int, "the response budget in tokens, of rollouts and of the evaluation"] = 512
    temperature: Annotated[float, "sampling temperature of the rollouts (and of the log-probs)"] = 1.0
    lr: Annotated[float, "learning rate: the length/reflection rise spans ~20-40 steps (1e-4: ~15)"] = 3e-5
    epochs: Annotated[int, "μ: passes over each batch of rollouts"] = 1
    minibatches: Annotated[int, "optimizer steps per pass; later ones are off-policy, hence the clip"] = 4
    clip_eps_low: Annotated[float, "the ratio's lower clip, 1 - eps_low"] = 0.2
    clip_eps_high: Annotated[float, "its upper clip, 1 + eps_high: DAPO's clip-higher lets unlikely tokens grow"] = 0.28
    # off in R1-Zero's RL, the paper's GRPO; on in R1's RL stages after SFT (config.R1Config.clip_ratio_c)
    clip_ratio_c: Annotated[float, "dual clip: with a negative advantage the ratio counts at most c (> 1); 0: "
                            "off"] = 0.0
    kl_beta: Annotated[float, "weight of the KL penalty to the reference; 0 skips the reference model"] = 0.001
    loss_agg_mode: Annotated[str, "how token losses average (LOSS_AGG_MODES, see aggregate_loss)"] = "token-mean"
    scale_std: Annotated[bool, "divide advantages by the group's std (False: Dr. GRPO's advantages)"] = True
    format_weight: Annotated[float, "reward = accuracy + format_weight * format (+ the language term)"] = 0.1
    language_weight: Annotated[float, "+ language_weight * language consistency (R1 sec. 2.3.2; 0: R1-Zero)"] = 0.0
    max_grad_norm: Annotated[float, "gradients are clipped to this norm"] = 1.0
    rollout_batch_size: Annotated[int, "rows decoded together (by each rank)"] = 512
    micro_batch_rows: Annotated[int, "rows per forward/backward of a minibatch, gradients accumulated (0: all)"] = 64
    # DAPO's overlong reward shaping (sec. 3.4), off by default: R1-Zero's recipe has neither (R1's RL stages
    # punish overlong answers: config.R1Config.overlong_buffer_frac)
    overlong_filter: Annotated[bool, "truncated responses (no stop token within the budget) carry no gradient"] = False
    overlong_buffer: Annotated[int, "soft punishment over the budget's last N tokens (see overlong_penalty)"] = 0
    # off in R1-Zero's RL; R1's RL stages take config.R1Config.repeat_penalty
    repeat_penalty: Annotated[float, "reward - repeat_penalty * the share of an answer's candidates that repeat "
                              "one it tried before (readable.repeated_share)"] = 0.0

    def validate(self):
        if self.group_size < 2:
            raise ValueError("GRPOConfig.group_size must be >= 2: advantages compare samples within a group")
        for name in ("max_new_tokens", "epochs", "minibatches", "rollout_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"GRPOConfig.{name} must be >= 1")
        if self.micro_batch_rows < 0:
            raise ValueError("GRPOConfig.micro_batch_rows must be >= 0 (0: the whole minibatch at once)")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError("GRPOConfig.lr must be a positive number")
        if self.temperature <= 0:
            raise ValueError("GRPOConfig.temperature must be > 0 (GRPO needs diverse samples)")
        if not (0 <= self.clip_eps_low < 1 and self.clip_eps_high >= 0):
            raise ValueError("need 0 <= GRPOConfig.clip_eps_low < 1 and GRPOConfig.clip_eps_high >= 0")
        if not (self.clip_ratio_c == 0 or 1 < self.clip_ratio_c < float("inf")):
            raise ValueError(f"GRPOConfig.clip_ratio_c must be 0 (off) or a number > 1, got {self.clip_ratio_c}")
        if self.kl_beta < 0:
            raise ValueError("GRPOConfig.kl_beta must be >= 0")
        if not (self.language_weight >= 0 and math.isfinite(self.language_weight)):
            raise ValueError("GRPOConfig.language_weight must be a number >= 0")
        if self.loss_agg_mode not in LOSS_AGG_MODES:
            raise ValueError(f"GRPOConfig.loss_agg_mode must be one of {LOSS_AGG_MODES}")
        if not 0 <= self.overlong_buffer < self.max_new_tokens:
            raise ValueError("need 0 <= GRPOConfig.overlong_buffer < GRPOConfig.max_new_tokens")
        if not (self.repeat_penalty >= 0 and math.isfinite(self.repeat_penalty)):
            raise ValueError(f"GRPOConfig.repeat_penalty must be a number >= 0, got {self.repeat_penalty}")


def row_ends(prompts, completions):
    """[N] (long): one past each prompt + completion row's last token, as pack_sequences lays the rows out."""
    return torch.tensor([len(p) + len(c) for p, c in zip(prompts, completions)], dtype=torch.long)


def pack_sequences(prompts, completions, pad_id, width=None):
    """Lay out prompt + completion rows for one training forward pass: each row's prompt and completion from
    column 0, then padding to `width` (at least the longest row, the default). Padding only ever follows a row's
    tokens, so a plain causal forward without a pad mask computes every real token exactly as if it were alone
    (no real token attends to padding; positions count from 0), on the fast causal attention kernels.
    Returns tokens [N, L] and response [N, L] (True on completion tokens)."""
    ends = row_ends(prompts, completions).tolist()
    tokens = torch.full((len(prompts), width or max(ends)), pad_id, dtype=torch.long)
    response = torch.zeros_like(tokens, dtype=torch.bool)
    for i, (p, c) in enumerate(zip(prompts, completions)):
        tokens[i, :ends[i]] = torch.tensor(p + c)
        response[i, len(p):ends[i]] = True
    return tokens, response


def minibatch_rows(n_prompts, G, minibatches, generator):
    """Split this rank's n_prompts x G rollouts (laid out group by group) into minibatches: minibatch j takes
    the samples at positions j, j + minibatches, ... of a random order of each group. Every rank draws the
    order of all ranks' groups from the same generator state and keeps its own, so each rank's minibatch is
    its share of one global minibatch, equal in size on every rank, and the split of the global batch does
    not depend on how many ranks share it (a G-sample group's samples are i.i.d., so it loses nothing against
    a shuffle of the whole batch). Returns one index tensor per non-empty minibatch."""
    W, r = distributed.world_size(), distributed.rank()
    keys = torch.rand(n_prompts * W, G, generator=generator)[r * n_prompts:(r + 1) * n_prompts]
    order = keys.argsort(dim=1) + G * torch.arange(n_prompts)[:, None]  # row ids, each group shuffled
    return [order[:, j::minibatches].flatten() for j in range(min(minibatches, G))]


class GRPOTrainer:
    """Owns the policy's optimizer and the frozen reference; `step(rows)` is one GRPO iteration.
    reward_fn(text, row, format_weight, language_weight) scores one response (default: rewards.score).

    What runs each part is an attribute the engine may swap (engine.speed_up_grpo, on a GPU): `generate` samples
    the rollouts (plain: sample.generate on the model), `logprobs_of_logits` turns logits into token
    log-probabilities (plain: token_logprobs below), `update_context` wraps the update's forwards and backwards
    (plain: nothing), and `pad_to` is the width the update pads its rows to (plain: the longest row).

    Data parallel (distributed.py): each rank decodes and scores whole prompt groups of its own, so advantages
    need no communication; the loss is normalised by the whole batch's counts and gradients are averaged by
    DDP, so an update equals one process's on all ranks' rollouts together."""

    def __init__(self, model, cfg: GRPOConfig, device, reward_fn=score, seed=0):
        self.model, self.cfg, self.device, self.reward_fn = model, cfg, device, reward_fn
        self.train_model = distributed.wrap(model)  # forward + backward through it: gradients are averaged
        self.ref = None
        if cfg.kl_beta > 0:  # the reference is the policy as RL found it (the base model), frozen
            self.ref = copy.deepcopy(model).eval().requires_grad_(False)
        self.opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.99), weight_decay=0.0,
                                     fused=device.type == "cuda")  # one kernel per step on a GPU
        self.autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
        self.pad_id = pad_token_id()
        self.stop_ids = set(stop_token_ids())
        self.split_rng = torch.Generator().manual_seed(seed)  # minibatch splits; the same on every rank
        self.generate = functools.partial(generate, model)
        self.logprobs_of_logits = token_logprobs
        self.update_context = contextlib.nullcontext
        self.pad_to = 0

    def state_dict(self):
        return {"opt": self.opt.state_dict(), "ref": self.ref.state_dict() if self.ref is not None else None,
                "split_rng": self.split_rng.get_state()}

    def load_state_dict(self, state):
        self.opt.load_state_dict(state["opt"])
        if self.ref is not None and state["ref"] is not None:
            self.ref.load_state_dict(state["ref"])
        self.split_rng.set_state(state["split_rng"])

    def step(self, rows):
        """One GRPO iteration on rows, this rank's prompts (task dicts of data.py). Returns (statistics over all
        ranks, this rank's aha examples)."""
        cfg, G = self.cfg, self.cfg.group_size

        # 1. Rollouts: G samples per prompt from the current policy, scored by the rule-based rewards
        t0 = time.time()
        prompts, completions, texts, scores = rollouts(
            self.generate, rows, G, cfg.max_new_tokens, cfg.temperature, batch_size=cfg.rollout_batch_size,
            score=lambda text, row: self.reward_fn(text, row, cfg.format_weight, cfg.language_weight))
        t_rollout = time.time() - t0

        # 2. The reward of each rollout: the rule reward, with the shaping R1's RL stages add when asked for
        #    (DAPO's overlong punishment; a penalty on candidates tried again, the loops that never finish)
        lengths = torch.tensor([len(c) for c in completions], dtype=torch.float)
        truncated = torch.tensor([len(c) == cfg.max_new_tokens and c[-1] not in self.stop_ids for c in completions])
        repeated = torch.tensor([readable.repeated_share(text) for text in texts])
        reward = (torch.tensor([s.total for s in scores]) - cfg.repeat_penalty * repeated
                  + overlong_penalty(lengths, cfg.max_new_tokens, cfg.overlong_buffer))
        reward = reward.view(len(rows), G)

        # 3. The update: advantages, old and reference log-probs, μ passes of minibatch steps
        t1 = time.time()
        summary = self.update(prompts, completions, reward, keep=~truncated if cfg.overlong_filter else None)
        summary.update(rollout_stats(rows, G, scores, reward, lengths, truncated, repeated, t_rollout,
                                     time.time() - t1))

        # "aha" examples: the model reflected ("Wait", "Warte", ...: rewards.reflection_count), and ended correct
        aha = [{"question": rows[i // G]["question"], "response": texts[i], "reflections": scores[i].reflections}
               for i in range(len(texts)) if scores[i].accuracy == 1 and scores[i].reflections > 0][:2]
        return summary, aha

    def update(self, prompts, completions, reward, keep=None):
        """One GRPO update on given rollouts: prompts and completions (token-id lists, G consecutive rows per
        prompt) and their rewards [n_prompts, G]; `keep` [n] (optional) says which rollouts the loss may use
        (DAPO's overlong filtering drops the truncated ones; they still count in their group's baseline).
        Returns the loss statistics averaged over the optimizer steps, over all ranks."""
        cfg, model = self.cfg, self.model
        advantages = group_advantages(reward, scale_std=cfg.scale_std).flatten().to(self.device)

        # every rank pads to the same width (its rows are then exactly one process's rows, padding included:
        # padding tokens pass through the routers and count in their load)
        ends = row_ends(prompts, completions)
        width = distributed.max_over_ranks(max(int(ends.max()), self.pad_to))
        tokens, response = (t.to(self.device) for t in pack_sequences(prompts, completions, self.pad_id, width))
        mask = response[:, 1:]
        if keep is not None:
            mask = mask & keep.to(self.device)[:, None]

        # log-probs of the behaviour policy (old) and of the reference, before any update
        model.eval()
        old_logp = self.token_logprobs_by_length(model, tokens, ends)
        ref_logp = self.token_logprobs_by_length(self.ref, tokens, ends) if self.ref is not None else None
        model.train()

        logs = []
        with self.update_context():
            for _ in range(cfg.epochs):  # μ passes over the batch
                for idx in minibatch_rows(len(reward), cfg.group_size, cfg.minibatches, self.split_rng):
                    idx = idx.to(self.device)
                    logs.append(self.minibatch_step(tokens, mask, advantages, old_logp, ref_logp, idx))
        summary = {key: sum(log[key] for log in logs) / len(logs) for key in logs[0] if logs[0][key] is not None}
        return distributed.reduce_stats(summary, STAT_REDUCE)

    def minibatch_step(self, tokens, mask, advantages, old_logp, ref_logp, idx):
        """One optimizer step on the clipped objective over the rollouts idx, in micro-batches of
        cfg.micro_batch_rows rows with gradients accumulated. Returns the step's statistics."""
        cfg, model = self.cfg, self.model
        chunks = idx.split(cfg.micro_batch_rows) if cfg.micro_batch_rows else (idx,)
        # what the whole minibatch's loss divides by (its tokens, or its sequences, over all ranks), so that the
        # losses of its micro-batches and ranks add up to the loss of the whole
        count = mask[idx].sum() if cfg.loss_agg_mode == "token-mean" else idx.new_tensor(len(idx))
        n_total = None
        if len(chunks) > 1 or distributed.world_size() > 1:
            n_total = distributed.sum_over_ranks(count).clamp(min=1).float()
        self.opt.zero_grad(set_to_none=True)
        parts = []
        for k, rows in enumerate(chunks):
            with distributed.gradient_sync(self.train_model, last=k == len(chunks) - 1):
                logp, entropy = self.token_logprobs(self.train_model, tokens[rows], return_entropy=True)
                loss, stats = grpo_loss(logp, old_logp[rows], None if ref_logp is None else ref_logp[rows],
                                        advantages[rows], mask[rows], cfg.clip_eps_low, cfg.clip_eps_high,
                                        cfg.clip_ratio_c, cfg.kl_beta, cfg.loss_agg_mode, max_len=cfg.max_new_tokens,
                                        n_total=n_total)
                distributed.scale_for_gradient_average(loss).backward()
            parts.append({**stats, "loss": loss.detach(), "entropy": masked_mean(entropy, mask[rows])})
        # checked once the backward passes are queued, not between forward and backward (a host sync there would
        # leave the GPU idle while the backward is launched), and before the step can apply it
        loss = sum(p["loss"] for p in parts)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"GRPO loss is {loss.item()}; lower GRPOConfig.lr")
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
        self.opt.step()
        distributed.sum_router_load(model)  # the bias update follows the load of all ranks' tokens
        router = model.router_stats()
        model.update_router_bias()
        stats = {key: combine([float(p[key]) for p in parts], STAT_REDUCE.get(key, "mean")) for key in parts[0]}
        return {**stats, "grad_norm": grad_norm.item(),
                "router_max_over_mean": sum(router) / len(router) if router else None}

    def token_logprobs(self, model, tokens, return_entropy=False):
        """log π(token | prefix) at every position of rows laid out by pack_sequences, [N, L-1] (what follows a
        row's end is padding's, which the loss masks out)."""
        with self.autocast:
            logits = model(tokens[:, :-1])  # no pad mask: padding only follows each row's tokens
        return self.logprobs_of_logits(logits, tokens[:, 1:], temperature=self.cfg.temperature,
                                       return_entropy=return_entropy)

    @torch.no_grad()
    def token_logprobs_by_length(self, model, tokens, ends, chunk_rows=128):
        """token_logprobs without a gradient, in chunks of rows of similar length, each cut after its longest row
        (ends [N]: one past each row's last token, on the host so that slicing waits for nothing). A batch of
        rollouts runs from tens of tokens to the cap; one pass over all of it pays for the cap on every row.
        Cutting right padding changes no row's log-probs: attention is causal and, in eval mode, the routers
        count no load."""
        out = torch.zeros(tokens.shape[0], tokens.shape[1] - 1, device=tokens.device)
        for rows in ends.argsort().split(chunk_rows):
            width, rows = int(ends[rows].max()), rows.to(tokens.device)
            out[rows, :width - 1] = self.token_logprobs(model, tokens[rows, :width])
        return out


# how a statistic of micro-batches or ranks makes one: loss and pg_loss are shares that add up, the longest answer
# and the slowest rank's times are maxima, the rest per-part means
STAT_REDUCE = {"loss": "sum", "pg_loss": "sum", "ratio_max": "max", "response_len_max": "max", "rollout_s": "max",
               "train_s": "max"}


def combine(values, op):
    """The sum, max or mean of a list of numbers: how one statistic of several micro-batches makes one."""
    return sum(values) if op == "sum" else max(values) if op == "max" else sum(values) / len(values)


def rollout_stats(rows, G, scores, reward, lengths, truncated, repeated, rollout_s, train_s):
    """What a step's rollouts show, over all ranks (each rank holds the same number of rollouts, so means
    average): reward, accuracy, format, length, reflections (and among correct answers), language consistency,
    groups that carry a gradient, truncation (and groups truncated whole: no gradient tells them to stop), answers
    that try a candidate again, speed, and each task's accuracy where a step mixes tasks."""
    n = len(scores)
    accuracy = torch.tensor([s.accuracy for s in scores])
    reflections = torch.tensor([float(s.reflections) for s in scores])
    stats = distributed.reduce_stats(dict(
        reward=reward.mean().item(), accuracy=accuracy.mean().item(), format=sum(s.format for s in scores) / n,
        response_len_mean=lengths.mean().item(), reflection_rate=reflections.mean().item(),
        language_consistency=sum(s.language_consistency for s in scores) / n,
        groups_with_signal=(reward.std(1) > 0).float().mean().item(), truncated=truncated.float().mean().item(),
        truncated_groups=truncated.view(-1, G).all(1).float().mean().item(),
        repeat_rate=(repeated > 0).float().mean().item(),
        response_len_max=lengths.max().item(), rollout_s=rollout_s, train_s=train_s), STAT_REDUCE)
    tasks = [rows[i // G].get("task") for i in range(n)]
    totals = {"tokens": lengths.sum().item(), "correct": accuracy.sum().item(),
              "reflections_correct": reflections[accuracy == 1].sum().item()}
    for task in TASKS:  # every rank reduces the same keys, whichever tasks it drew
        totals[f"correct_{task}"] = sum(s.accuracy for s, t in zip(scores, tasks) if t == task)
        totals[f"n_{task}"] = tasks.count(task)
    totals = distributed.reduce_stats(totals, "sum")
    stats.update(
        reflection_rate_correct=totals["reflections_correct"] / totals["correct"] if totals["correct"] else 0.0,
        rollout_tokens_per_s=totals["tokens"] / stats["rollout_s"])
    mixed = [task for task in TASKS if totals[f"n_{task}"]]
    if len(mixed) > 1:  # R1's RL for all scenarios: Countdown and arithmetic
        stats.update({f"accuracy_{task}": totals[f"correct_{task}"] / totals[f"n_{task}"] for task in mixed})
    return stats
