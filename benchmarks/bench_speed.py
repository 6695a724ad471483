"""
Speed of rollouts and training for the default model, side by side with Hugging Face transformers.

    python benchmarks/bench_speed.py                    # on a GPU; prints three tables
    python benchmarks/bench_speed.py --attention-only   # only the third (MHA vs MLA), no transformers needed

Rollouts: tokens/s generating 256 new tokens (sampling, no early stop) from Countdown prompts at batch 64 and 256,
for (1) sample.generate (static KV cache, bf16, CUDA-graph decoding), (2) the same model without a cache (a full
forward pass per new token), and (3) transformers' `generate` on a Mixtral-style MoE of the same shape
(hidden size, layers, heads, 16 experts of the same width, top-2) built from a config with random weights.
Training: tokens/s and model FLOPs utilisation of a forward+backward+AdamW step on 64 x 512 tokens, for both
models, and the share of the step's forward time spent in the routers.
Attention: the default model with multi-head attention vs multi-head latent attention (model.py), KV-cache bytes
per token and for a whole rollout batch, and rollout tokens/s as above; MLA decodes with the absorbed path
(its default) and, for comparison, with the naive one that re-expands the latent of every cached token.
"""

import argparse
import os
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import data  # noqa: E402
from model import Transformer, kv_cache_bytes_per_token, make_config  # noqa: E402
from sample import generate  # noqa: E402
from checkpoint import git_commit  # noqa: E402

PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12}  # dense bf16 tensor-core peak, SXM parts


def timed(fn, repeats=3):
    fn()  # warm-up: allocation, kernel selection, graph capture
    times = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def hf_mixtral(cfg):
    from transformers import MixtralConfig, MixtralForCausalLM
    hf_cfg = MixtralConfig(vocab_size=cfg.vocab_size, hidden_size=cfg.dim, intermediate_size=cfg.moe_hidden,
                           num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads,
                           num_key_value_heads=cfg.n_heads, num_local_experts=cfg.n_routed_experts,
                           num_experts_per_tok=cfg.n_activated_experts, max_position_embeddings=cfg.max_seq_len,
                           rope_theta=cfg.rope_theta, tie_word_embeddings=False)
    return MixtralForCausalLM(hf_cfg)


def decode_without_cache(model, prompts, new_tokens):
    """The baseline a KV cache removes: re-run the whole sequence for every new token."""
    seqs = torch.tensor(prompts, device="cuda")
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        for _ in range(new_tokens):
            logits = model(seqs)[:, -1]
            nxt = torch.multinomial(torch.softmax(logits, -1), 1)
            seqs = torch.cat([seqs, nxt], 1)
    return seqs


def active_flops_per_token(n_active_params, n_layers, dim, seq_len):
    # 6 N per token for forward+backward of the weights, plus attention scores and values (causal: half)
    return 6 * n_active_params + 6 * n_layers * dim * seq_len


ATTENTION_VARIANTS = {  # label -> make_config overrides of the small preset
    "MHA": dict(attention="mha"),
    "MLA absorb": dict(attention="mla", mla_decode="absorb"),
    "MLA naive": dict(attention="mla", mla_decode="naive"),
}


def attention_rows(prompt, new, batches):
    """(label, KV bytes per token, KV bytes of the largest batch's whole cache, {batch: rollout tok/s}) per
    variant."""
    rows = []
    for label, overrides in ATTENTION_VARIANTS.items():
        torch.manual_seed(0)
        cfg = make_config("small", **overrides)
        model = Transformer(cfg).cuda()
        per_token = kv_cache_bytes_per_token(cfg)  # bf16, as sample.generate caches on a GPU
        speed = {}
        for batch in batches:
            t = timed(lambda: generate(model, [prompt] * batch, new, temperature=1.0, stop_ids=[]))
            speed[batch] = batch * new / t
        rows.append((label, per_token, per_token * max(batches) * (len(prompt) + new), speed))
        del model
    return rows


def attention_table(prompt, new=256, batches=(64, 256)):
    rows = attention_rows(prompt, new, batches)
    print(f"\nAttention: small preset, MHA vs MLA; KV cache in bf16; {new} new tokens, sampling, prompt {len(prompt)} "
          f"tokens; batch cache = batch {max(batches)} x {len(prompt) + new} tokens")
    print(f"{'attention':>10} | {'KV B/token':>10} | {'batch cache':>11} | "
          + " | ".join(f"{f'tok/s b{b}':>12}" for b in batches))
    for label, per_token, batch_bytes, speed in rows:
        print(f"{label:>10} | {per_token:>10,} | {batch_bytes / 2**20:>7.1f} MiB | "
              + " | ".join(f"{speed[b]:>12,.0f}" for b in batches))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--attention-only", action="store_true", help="only the MHA vs MLA table")
    args = parser.parse_args()
    name = torch.cuda.get_device_name()
    peak = next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), None)
    commit = git_commit()
    question = data.countdown_question([3, 7, 11], 54)
    prompt = data.encode(data.make_prompt(question))
    if args.attention_only:
        print(f"device: {name}; torch {torch.__version__}; commit {commit}")
        attention_table(prompt)
        return
    import transformers
    print(f"device: {name}; torch {torch.__version__}; transformers {transformers.__version__}; commit {commit}")
    torch.manual_seed(0)
    cfg = make_config("small")
    ours = Transformer(cfg).cuda()
    hf = hf_mixtral(cfg).cuda().to(torch.bfloat16).eval()
    ours_active = ours.num_params(active=True) - 2 * cfg.vocab_size * cfg.dim
    hf_total = sum(p.numel() for p in hf.parameters())
    print(f"nanoR1 small: {ours.num_params() / 1e6:.1f}M params ({ours.num_params(active=True) / 1e6:.1f}M active); "
          f"HF Mixtral: {hf_total / 1e6:.1f}M params")

    new = 256
    rows = []
    for batch in (64, 256):
        prompts = [prompt] * batch
        t_ours = timed(lambda: generate(ours, prompts, new, temperature=1.0, stop_ids=[]))
        t_nocache = timed(lambda: decode_without_cache(ours, prompts, new), repeats=1)
        ids = torch.tensor(prompts, device="cuda")
        t_hf = timed(lambda: hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new,
                                         min_new_tokens=new, do_sample=True, pad_token_id=0), repeats=1)
        tok = batch * new
        rows.append((batch, tok / t_ours, tok / t_nocache, tok / t_hf))
    print(f"\nRollouts: {new} new tokens, sampling, prompt {len(prompt)} tokens")
    print(f"{'batch':>6} | {'nanoR1 tok/s':>13} | {'no cache':>10} | {'HF generate':>12} | {'vs HF':>6} | {'vs no cache':>11}")
    for b, a, nc, h in rows:
        print(f"{b:>6} | {a:>13,.0f} | {nc:>10,.0f} | {h:>12,.0f} | {a / h:>5.1f}x | {a / nc:>10.1f}x")

    # training step
    B, T = 64, 512
    tokens = torch.randint(0, 500, (B, T + 1), device="cuda")
    hf_train = hf_mixtral(cfg).cuda()  # fp32 master weights + autocast, as ours
    results = []
    for label, model in (("nanoR1", ours), ("HF Mixtral", hf_train)):
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)

        def step():
            with torch.autocast("cuda", dtype=torch.bfloat16):
                out = model(tokens[:, :-1])
                logits = out if torch.is_tensor(out) else out.logits
            loss = F.cross_entropy(logits.float().view(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        dt = timed(step, repeats=5)
        if label == "nanoR1":
            active = ours_active
        else:
            per_expert = 3 * cfg.dim * cfg.moe_hidden
            active = hf_total - 2 * cfg.vocab_size * cfg.dim - cfg.n_layers * (
                cfg.n_routed_experts - cfg.n_activated_experts) * per_expert
        flops = active_flops_per_token(active, cfg.n_layers, cfg.dim, T) * B * T
        results.append((label, B * T / dt, flops / dt / peak if peak else float("nan"), dt))
        del opt

    # router share of our forward: CUDA events around every Gate call
    events = []
    hooks = []
    for gate in ours.gates():
        hooks.append(gate.register_forward_pre_hook(lambda m, a: events.append([torch.cuda.Event(True)]) or
                                                    events[-1][0].record()))
        hooks.append(gate.register_forward_hook(lambda m, a, o: events[-1].append(torch.cuda.Event(True)) or
                                                events[-1][1].record()))
    fwd_start, fwd_end = torch.cuda.Event(True), torch.cuda.Event(True)
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        ours(tokens[:, :-1])
        events.clear()
        fwd_start.record()
        ours(tokens[:, :-1])
        fwd_end.record()
    torch.cuda.synchronize()
    router_ms = sum(s.elapsed_time(e) for s, e in events)
    fwd_ms = fwd_start.elapsed_time(fwd_end)
    for h in hooks:
        h.remove()

    print(f"\nTraining step: forward+backward+AdamW, {B}x{T} tokens, bf16 autocast, MFU against {peak / 1e12 if peak else 0:.0f} TFLOP/s")
    print(f"{'model':>11} | {'tokens/s':>10} | {'ms/step':>8} | {'MFU':>6}")
    for label, tps, mfu, dt in results:
        print(f"{label:>11} | {tps:>10,.0f} | {dt * 1000:>8.1f} | {mfu:>6.1%}")
    print(f"nanoR1 vs HF: {results[0][1] / results[1][1]:.2f}x; routers take {router_ms:.2f} ms of a {fwd_ms:.2f} ms "
          f"forward ({router_ms / fwd_ms:.1%})")
    attention_table(prompt)


if __name__ == "__main__":
    main()
