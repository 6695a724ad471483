"""
Speed of rollouts and training for the default model, against the HBM bound and side by side with Hugging Face.

    python -m benchmarks.bench_speed --old-tree DIR   # on a GPU; DIR: a checkout of an earlier commit to time too
    python -m benchmarks.bench_speed --only-rollouts  # only the RL-workload tables (no transformers needed)
    python -m benchmarks.bench_speed --only-training small medium  # the training step, eager and compiled

Rollouts on the RL workload: one RL step's rollout batch (64 training prompts x 8) decoded to the response lengths
recorded from a trained policy (benchmarks/rl_lengths.json, written by --record-lengths CKPT), timed beside the
least HBM traffic such a decode needs, for the small preset with multi-head attention (MHA), with and without the
fused decoding kernels (kernels/decode.py), and with multi-head latent attention (MLA, absorbed decode; model.py),
and for an earlier commit's code (its Decoder, kept across calls, or before 7104019 its sample.generate). Then the
time of one decoding step with every row live, at 8, 64 and 512 rows, with and without the fused kernels.

Rollouts: tokens/s generating 256 new tokens (sampling, no early stop) from Countdown prompts at batch 64 and 256,
for (1) the engine's Decoder (engine/decoder.py: bf16, fused kernels, CUDA graphs), (2) the same model without a
cache (a full forward pass per new token), and (3) transformers' `generate` on a Mixtral-style MoE of the same shape
(hidden size, layers, heads, 16 experts of the same width, top-2) built from a config with random weights.
Policy update on the same workload: one no-grad log-prob pass padded to the longest row against length-sorted
chunks, and the whole GRPO update, eager and through compiled blocks (as train.py runs it on a GPU).
Training: tokens/s and model FLOPs utilisation of a forward+backward+AdamW step on 64 x 640 tokens (a pretraining
step), for both models, and the share of the step's forward time spent in the routers.
"""

import argparse
import json
import os
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

import data
import engine
from checkpoint import git_commit, load_checkpoint
from model import Transformer, kv_cache_bytes_per_token, make_config
from engine.decoder import Decoder

LENGTHS_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "rl_lengths.json")

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


def matmul_params(model):
    """A token's active parameters that do matmuls: all but the embedding and output tables."""
    return model.num_params(active=True) - 2 * model.cfg.vocab_size * model.cfg.dim


# -----------------------------------------------------------------------------
# Rollouts on the RL workload against the HBM bound

def rl_prompts(n_prompts=64, group_size=8):
    """An RL step's rollout batch: the default recipe's 64 training prompts x 8 samples."""
    rows = data.countdown_rows("train", seed=0)[:n_prompts]
    return [data.encode(data.make_prompt(r["question"])) for r in rows for _ in range(group_size)]


def record_lengths(ckpt, prompts, max_new_tokens=512):
    """Sample the RL batch from a trained policy (temperature 1, as RL does) and keep the response lengths."""
    model = load_checkpoint(ckpt, device="cuda")["model"]
    torch.manual_seed(0)
    lengths = [len(c) for c in Decoder(model).generate(prompts, max_new_tokens, temperature=1.0)]
    record = {"lengths": lengths, "checkpoint": ckpt, "commit": git_commit(), "max_new_tokens": max_new_tokens,
              "device": torch.cuda.get_device_name()}
    json.dump(record, open(LENGTHS_FILE, "w"))
    return record


def hbm_bound_seconds(model, prompts, lengths, bandwidth):
    """The least HBM traffic of decoding `lengths[i]` tokens after `prompts[i]`, over the bandwidth: at every
    decoding step the weights once (bf16; of the routed experts, those the live rows can reach) and the keys and
    values of the live rows over their real positions so far. The prefill (compute-bound) is left out."""
    cfg = model.cfg
    per_expert = 3 * cfg.dim * cfg.moe_hidden
    n_moe, E, k = len(model.gates()), cfg.n_routed_experts, cfg.n_activated_experts
    all_but_routed = model.num_params() - n_moe * E * per_expert
    kv = kv_cache_bytes_per_token(cfg)
    total = 0
    for t in range(1, max(lengths)):
        live = [i for i, n in enumerate(lengths) if n > t]
        experts_hit = E * (1 - (1 - k / E) ** len(live))  # expected distinct experts among the live rows' picks
        total += 2 * (all_but_routed + n_moe * experts_hit * per_expert)
        total += sum(len(prompts[i]) + t for i in live) * kv
    return total / bandwidth


def measure_bandwidth():
    """Device-to-device copy of 1 GiB, bytes read plus written per second."""
    x = torch.empty(2 ** 29, dtype=torch.float16, device="cuda")
    y = torch.empty_like(x)
    dt = timed(lambda: y.copy_(x), repeats=10)
    return 2 * x.numel() * x.element_size() / dt


# Run inside the earlier commit's tree. A tree with a Decoder (in engine/decoder.py, or in sample.py from 7104019 on)
# keeps one across calls, as RL does, and gives each row its own budget; before it (d1a7a83), sample.generate decodes
# every row until the longest is done.
OLD_ROLLOUT = """
import json, os, sys, time, torch
import sample
from model import Transformer, make_config
work = json.load(sys.stdin)
prompts, lengths = work["prompts"], work["lengths"]
model = Transformer(make_config("small")).cuda()
if os.path.exists("engine/decoder.py"):
    from engine.decoder import Decoder
else:
    Decoder = getattr(sample, "Decoder", None)
how = "Decoder" if Decoder else "generate"
if how == "Decoder":
    decoder = Decoder(model)
    run = lambda: decoder.generate(prompts, lengths, temperature=1.0, stop_ids=[])
else:
    run = lambda: sample.generate(model, prompts, max(lengths), temperature=1.0, stop_ids=[])
run()
times = []
for _ in range(3):
    torch.cuda.synchronize(); t = time.perf_counter(); run(); torch.cuda.synchronize()
    times.append(time.perf_counter() - t)
print(how, sorted(times)[1])
"""


# label: (model overrides, Decoder options); "no fused kernels": the whole step as PyTorch ops
DECODER_VARIANTS = {"MHA": (dict(attention="mha"), {}),
                    "MHA, no fused kernels": (dict(attention="mha"), dict(fused_kernels=False)),
                    "MLA": (dict(attention="mla", mla_decode="absorb"), {})}


def rollout_roofline(old_tree=None):
    record = json.load(open(LENGTHS_FILE))
    lengths = record["lengths"]
    prompts = rl_prompts()
    assert len(prompts) == len(lengths)
    bandwidth = measure_bandwidth()
    print(f"\nRollouts on the RL workload: {len(prompts)} rows, response lengths recorded from {record['checkpoint']} "
          f"at {record['commit']} (mean {sum(lengths) / len(lengths):.0f}, max {max(lengths)}); copy bandwidth "
          f"{bandwidth / 1e12:.2f} TB/s")
    rows = []
    for label, (overrides, options) in DECODER_VARIANTS.items():
        torch.manual_seed(0)
        model = Transformer(make_config("small", **overrides)).cuda()
        decoder = Decoder(model, **options)
        t0 = time.perf_counter()
        decoder.generate(prompts, lengths, temperature=1.0, stop_ids=[])  # first call: captures the graphs
        first = time.perf_counter() - t0
        dt = timed(lambda: decoder.generate(prompts, lengths, temperature=1.0, stop_ids=[]))
        rows.append((f"Decoder, {label}", kv_cache_bytes_per_token(model.cfg), dt,
                     hbm_bound_seconds(model, prompts, lengths, bandwidth), first))
        print(f"{rows[-1][0]}: {dt:.3f} s per rollout (first call {first:.1f} s)", flush=True)
        del decoder, model
    if old_tree:  # the same workload decoded by the earlier commit's code (OLD_ROLLOUT)
        work = json.dumps(dict(prompts=prompts, lengths=lengths))
        out = subprocess.run([sys.executable, "-c", OLD_ROLLOUT], input=work, cwd=old_tree, capture_output=True,
                             text=True, check=True).stdout
        how, seconds = out.split()[-2:]
        label = f"{how} at {os.path.basename(os.path.abspath(old_tree))}, MHA"
        rows.append((label, rows[0][1], float(seconds), rows[0][3], None))
    print(f"{'decoder':>28} | {'KV B/token':>10} | {'s per rollout':>13} | {'HBM bound s':>11} | {'x bound':>7} | "
          f"{'first call s':>12}")
    for label, kv, dt, bound, first in rows:
        print(f"{label:>28} | {kv:>10,} | {dt:>13.3f} | {bound:>11.3f} | {dt / bound:>7.2f} | "
              f"{first if first else float('nan'):>12.1f}")
    if old_tree:
        print(f"MHA speed-up over the earlier commit: {rows[-1][2] / rows[0][2]:.1f}x")


def decode_step_times(row_counts=(8, 64, 512), short=128, long=512):
    """Milliseconds per decoding step with every row live, MHA with and without the fused kernels: a Decoder
    generates `short` and `long` new tokens for `rows` RL prompts (no stop ids, so no row ends early), and a step
    is the difference over long - short steps (prefill and per-call costs cancel; the steps span slots ~240-626)."""
    prompts = rl_prompts()
    print(f"\nDecoding step, every row live, mean over new tokens {short}..{long} (ms per step)")
    print(f"{'rows':>5} | " + " | ".join(f"{label:>21}" for label in DECODER_VARIANTS if label.startswith("MHA")))
    decoders = {}
    for label, (overrides, options) in DECODER_VARIANTS.items():
        if label.startswith("MHA"):
            torch.manual_seed(0)
            decoders[label] = Decoder(Transformer(make_config("small", **overrides)).cuda(), **options)
    for rows in row_counts:
        steps = []
        for decoder in decoders.values():
            run = lambda n: timed(lambda: decoder.generate(prompts[:rows], n, temperature=1.0, stop_ids=[]))
            steps.append((run(long) - run(short)) / (long - short))
        print(f"{rows:>5} | " + " | ".join(f"{dt * 1000:>21.3f}" for dt in steps), flush=True)


def update_on_rl_workload():
    """The policy update of one RL step on the same workload (512 rollouts of the recorded lengths): the
    behaviour-policy log-prob pass over all rows padded to the longest against the same pass in length-sorted
    chunks (GRPOTrainer.token_logprobs_by_length), and the whole GRPOTrainer.update (old and reference passes, 4
    minibatch steps)."""
    from grpo import GRPOConfig, GRPOTrainer, pack_sequences, row_ends
    lengths, prompts = json.load(open(LENGTHS_FILE))["lengths"], rl_prompts()
    g = torch.Generator().manual_seed(0)
    completions = [torch.randint(0, 400, (n,), generator=g).tolist() for n in lengths]
    torch.manual_seed(0)
    model = Transformer(make_config("small")).cuda()
    trainer = engine.speed_up_grpo(GRPOTrainer(model, GRPOConfig(), torch.device("cuda")), compile_blocks=False)
    tokens, response = (t.cuda() for t in pack_sequences(prompts, completions, trainer.pad_id))
    ends = row_ends(prompts, completions)
    model.eval()
    padded = timed(lambda: trainer.token_logprobs_by_length(model, tokens, ends, chunk_rows=len(prompts)))
    chunked = timed(lambda: trainer.token_logprobs_by_length(model, tokens, ends))
    reward = torch.rand(len(prompts) // 8, 8, generator=g).round()
    update = timed(lambda: trainer.update(prompts, completions, reward))
    # as train.py runs it on a GPU: the minibatch steps through compiled blocks, rows padded to the context
    engine.speed_up_grpo(trainer, compile_blocks=True)
    t0 = time.time()
    trainer.update(prompts, completions, reward)
    first = time.time() - t0
    compiled = timed(lambda: trainer.update(prompts, completions, reward))
    print(f"\nPolicy update on the RL workload: {len(prompts)} rows, {tokens.shape[1]} columns padded; "
          f"real tokens {int(ends.sum()):,} of {tokens.numel():,}")
    print(f"{'step':>44} | {'s':>6}")
    for label, dt in (("no-grad log-prob pass, one padded batch", padded),
                      ("no-grad log-prob pass, length-sorted chunks", chunked), ("GRPOTrainer.update, eager", update),
                      ("GRPOTrainer.update, compiled blocks", compiled),
                      ("its first call (compiling, cold caches)", first)):
        print(f"{label:>44} | {dt:>6.3f}")


def gpu_busy_fraction(fn, repeats=3):
    """Kernel time over wall time of `fn` (torch.profiler): far under 1 means the GPU waits on the host between
    kernels (launch-bound), which CUDA graphs remove; near 1, only fewer or faster kernels help. The profiler's
    own overhead lengthens the wall time a little, so this errs low."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile
    fn()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(repeats):
            fn()
        torch.cuda.synchronize()
        wall = time.perf_counter() - t
    # the device's own events only (kernels, copies): an operator's entry also counts the kernels it launched
    kernel_us = sum(e.self_device_time_total for e in prof.key_averages() if e.device_type == DeviceType.CUDA)
    return kernel_us / 1e6 / wall


def training_step(forward, params, tokens):
    """One training step (forward+backward+fused AdamW, bf16 autocast, next-token loss on tokens [B, T + 1]) as
    a function to time; forward returns logits, or an output with .logits (Hugging Face)."""
    opt = torch.optim.AdamW(params, lr=1e-4, fused=True)

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = forward(tokens[:, :-1])
            logits = out if torch.is_tensor(out) else out.logits
        loss = F.cross_entropy(logits.float().view(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def training_step_variants(presets, B=64, T=640):
    """The pretraining step (forward+backward+fused AdamW on B x T tokens, bf16 autocast) eager and under
    torch.compile, with its MFU and the share of its time the GPU is busy."""
    name = torch.cuda.get_device_name()
    peak = next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), float("nan"))
    print(f"\nTraining step variants: {B}x{T} tokens, bf16 autocast, fused AdamW; MFU against {peak / 1e12:.0f} "
          f"TFLOP/s; GPU busy = kernel time / wall time (torch.profiler)")
    print(f"{'preset':>7} | {'variant':>30} | {'ms/step':>8} | {'tokens/s':>10} | {'MFU':>6} | {'GPU busy':>8} | "
          f"{'first step s':>12}")
    for preset in presets:
        cfg = make_config(preset)
        tokens = torch.randint(0, cfg.vocab_size, (B, T + 1), device="cuda")
        for label, compile_kwargs in (("eager", None), ("torch.compile", {}),
                                      ("torch.compile, reduce-overhead", {"mode": "reduce-overhead"})):
            torch.manual_seed(0)
            model = Transformer(cfg).cuda().train()
            forward = model if compile_kwargs is None else torch.compile(model, **compile_kwargs)
            step = training_step(forward, model.parameters(), tokens)
            t0 = time.perf_counter()
            step()
            torch.cuda.synchronize()
            first = time.perf_counter() - t0
            dt = timed(step, repeats=10)
            mfu = active_flops_per_token(matmul_params(model), cfg.n_layers, cfg.dim, T) * B * T / dt / peak
            print(f"{preset:>7} | {label:>30} | {dt * 1000:>8.1f} | {B * T / dt:>10,.0f} | {mfu:>6.1%} | "
                  f"{gpu_busy_fraction(step):>8.0%} | {first:>12.1f}", flush=True)
            del model, forward, step
            torch._dynamo.reset()


def main():
    parser = argparse.ArgumentParser(description="rollout and training speed on one GPU")
    parser.add_argument("--record-lengths", metavar="CKPT", help="first record the RL workload's lengths from CKPT")
    parser.add_argument("--old-tree", help="a checkout of an earlier commit to time its rollouts beside ours")
    parser.add_argument("--only-rollouts", action="store_true", help="skip the Hugging Face and training tables")
    parser.add_argument("--only-training", nargs="*", metavar="PRESET",
                        help="only the training step, eager and compiled, for these presets (default: small)")
    args = parser.parse_args()
    print(f"device: {torch.cuda.get_device_name()}; torch {torch.__version__}; commit {git_commit()}")
    if args.only_training is not None:
        training_step_variants(args.only_training or ["small"])
        return
    if args.record_lengths:
        record_lengths(args.record_lengths, rl_prompts())
    rollout_roofline(args.old_tree)
    decode_step_times()
    update_on_rl_workload()
    if not args.only_rollouts:
        compare_with_hf()


def compare_with_hf():
    name = torch.cuda.get_device_name()
    peak = next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), None)
    commit = git_commit()
    import transformers
    print(f"device: {name}; torch {torch.__version__}; transformers {transformers.__version__}; commit {commit}")
    torch.manual_seed(0)
    cfg = make_config("small")
    ours = Transformer(cfg).cuda()
    hf = hf_mixtral(cfg).cuda().to(torch.bfloat16).eval()
    hf_total = sum(p.numel() for p in hf.parameters())
    print(f"nanoR1 small: {ours.num_params() / 1e6:.1f}M params ({ours.num_params(active=True) / 1e6:.1f}M active); "
          f"HF Mixtral: {hf_total / 1e6:.1f}M params")

    question = data.countdown_question([3, 7, 11], 54)
    prompt = data.encode(data.make_prompt(question))
    new = 256
    rows = []
    for batch in (64, 256):
        prompts = [prompt] * batch
        decoder = Decoder(ours)
        t_ours = timed(lambda: decoder.generate(prompts, new, temperature=1.0, stop_ids=[]))
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
    B, T = 64, 640
    tokens = torch.randint(0, 500, (B, T + 1), device="cuda")
    hf_train = hf_mixtral(cfg).cuda()  # fp32 master weights + autocast, as ours
    per_expert = 3 * cfg.dim * cfg.moe_hidden
    active = {"nanoR1": matmul_params(ours),
              "HF Mixtral": hf_total - 2 * cfg.vocab_size * cfg.dim - cfg.n_layers * (
                  cfg.n_routed_experts - cfg.n_activated_experts) * per_expert}
    # eager, and under torch.compile (train.py compiles its pretraining forward; a Trainer runs eagerly by default)
    results = {}
    for label, model in (("nanoR1", ours), ("HF Mixtral", hf_train)):
        model.train()
        for compiled in (False, True):
            try:
                step = training_step(torch.compile(model) if compiled else model, model.parameters(), tokens)
                step()  # compiles
                dt = timed(step, repeats=5)
            except Exception as err:  # a peer that fails to compile loses its row, not the table
                print(f"{label}, {'compiled' if compiled else 'eager'}: failed, {type(err).__name__}: {str(err)[:200]}")
                continue
            finally:
                torch._dynamo.reset()
            flops = active_flops_per_token(active[label], cfg.n_layers, cfg.dim, T) * B * T
            results[label, compiled] = (B * T / dt, flops / dt / peak if peak else float("nan"), dt)
            del step

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

    print(f"\nTraining step: forward+backward+fused AdamW, {B}x{T} tokens, bf16 autocast, MFU against "
          f"{peak / 1e12 if peak else 0:.0f} TFLOP/s")
    print(f"{'model':>11} | {'variant':>13} | {'tokens/s':>10} | {'ms/step':>8} | {'MFU':>6}")
    for (label, compiled), (tps, mfu, dt) in results.items():
        print(f"{label:>11} | {'torch.compile' if compiled else 'eager':>13} | {tps:>10,.0f} | {dt * 1000:>8.1f} | "
              f"{mfu:>6.1%}")
    ratio = lambda a, b: (f"{results[a][0] / results[b][0]:.2f}x" if a in results and b in results else "n/a")
    print(f"nanoR1 vs HF: eager {ratio(('nanoR1', False), ('HF Mixtral', False))}, compiled "
          f"{ratio(('nanoR1', True), ('HF Mixtral', True))}, as each trains by default (train.py compiled, HF eager) "
          f"{ratio(('nanoR1', True), ('HF Mixtral', False))}; routers take {router_ms:.2f} ms of a {fwd_ms:.2f} ms "
          f"forward ({router_ms / fwd_ms:.1%})")


if __name__ == "__main__":
    main()
