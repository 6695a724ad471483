"""
Benchmark kernels.token_logprobs on a GPU against PyTorch eager (log_softmax in float32 + gather),
torch.compile of the same function, and Liger-Kernel where it is importable. First checks the
compiled kernel against float64 on the GPU, at every benchmark shape.

    python -m kernels.bench [--vocab 1024]       # from the repository root

Time is the median of triton.testing.do_bench, which flushes L2 before every call, so no timing is
a cache hit; at small shapes it times the host (Python, autograd, launches), so a second time, "GPU
ms", replays the calls in a CUDA graph, also after L2 flushes (gpu_ms). GB/s counts the logits' bytes
once for the forward and three times for forward+backward (forward read, backward read, grad write).
Extra memory is the peak allocated during one call minus what was allocated before it: outputs
included, so for forward+backward the gradient itself (a logits-sized tensor) is part of it.
"""

import argparse

import torch
import triton
from triton.testing import do_bench

from checkpoint import git_commit
from kernels import token_logprobs, token_logprobs_reference

try:
    from liger_kernel.ops.grpo_loss import fused_selective_log_softmax
    from liger_kernel.transformers.functional import liger_cross_entropy
except ImportError:
    fused_selective_log_softmax = liger_cross_entropy = None


# -----------------------------------------------------------------------------
# correctness of the compiled kernel, against float64


def check(logits, targets, temperature, rows=2):
    """Kernel forward + backward on all of logits, float64 reference on the first `rows` of dim 0."""
    x = logits.detach().requires_grad_()
    logp, entropy = token_logprobs(x, targets, temperature, return_entropy=True)
    g = torch.randn_like(logp)
    (grad,) = torch.autograd.grad(logp, x, g)
    x64 = logits[:rows].detach().double().requires_grad_()
    logp_all = torch.log_softmax(x64 / temperature, dim=-1)
    ref_logp = logp_all.gather(-1, targets[:rows].unsqueeze(-1)).squeeze(-1)
    ref_entropy = torch.special.entr(logp_all.exp()).sum(-1)
    (ref_grad,) = torch.autograd.grad(ref_logp, x64, g[:rows].double())
    logp_err = (logp[:rows] - ref_logp).abs().max().item()
    entropy_err = (entropy[:rows] - ref_entropy).abs().max().item()
    # the grad is rounded to logits' dtype: half an ulp, relative, or of the subnormal spacing, absolute
    eps, tiny = {torch.float32: (1e-5, 1e-9), torch.bfloat16: (2.0**-8, 1e-9), torch.float16: (2.0**-11, 2.0**-25)}[
        logits.dtype]
    grad_err = (grad[:rows] - ref_grad).abs()
    n_bad = (grad_err > eps * ref_grad.abs() + tiny).sum().item()
    ok = logp_err < 1e-4 and entropy_err < 1e-4 and n_bad == 0
    print(f"{str(tuple(logits.shape)):>22} {str(logits.dtype)[6:]:>8} T={temperature:<4} "
          f"contiguous={logits.is_contiguous()!s:<5} max|dlogp| {logp_err:.1e}  max|dH| {entropy_err:.1e}  "
          f"max|dgrad| {grad_err.max().item():.1e}, {n_bad} beyond rounding  {'ok' if ok else 'FAIL'}")
    return ok


def run_checks(shapes):
    print("correctness vs float64 on the GPU (reference over the first 2 rows of dim 0):")
    torch.manual_seed(0)
    ok = True
    for B, L, V in shapes:
        logits = torch.randn(B, L, V, device="cuda", dtype=torch.bfloat16) * 3
        ok &= check(logits, torch.randint(V, (B, L), device="cuda"), 1.0)
        del logits
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        logits = torch.randn(4, 33, 50257, device="cuda", dtype=dtype) * 3
        ok &= check(logits[:, 1:-1], torch.randint(50257, (4, 33), device="cuda")[:, 1:-1], 0.7)
        ok &= check(logits.transpose(0, 1), torch.randint(50257, (33, 4), device="cuda"), 1.3)
    torch.cuda.empty_cache()
    return ok


# -----------------------------------------------------------------------------
# timing


def gpu_ms(fn, n=10, reps=10):
    """Median GPU time of fn() with a cold L2 and no host overhead: n calls, each after an L2 flush, are
    captured in one CUDA graph, and a graph of the n flushes alone is timed and subtracted. At small shapes
    a call costs more host time (Python, autograd, launches) than GPU time, and do_bench times the host;
    in a training step the host runs ahead of the GPU, so this is the cost that remains."""
    flush = torch.empty(256 * 2**20, dtype=torch.int8, device="cuda")  # > the H100's 50 MB L2
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm up on a side stream, as CUDA graph capture wants
        fn()
    torch.cuda.current_stream().wait_stream(side)
    times = []
    for body in (lambda: (flush.zero_(), fn()), flush.zero_):
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for _ in range(n):
                body()
        samples = []
        for _ in range(reps):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            graph.replay()
            end.record()
            end.synchronize()
            samples.append(start.elapsed_time(end))
        times.append(sorted(samples)[reps // 2])
        del graph
    return (times[0] - times[1]) / n


def measure(fn, graphable=True):
    """(median ms of do_bench, median GPU ms in a CUDA graph or nan, peak extra bytes) of fn()."""
    fn()  # compile / autotune outside the measurement
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - before
    ms = do_bench(fn, return_mode="median")
    graph_ms = float("nan")
    if graphable:
        try:
            graph_ms = gpu_ms(fn)
        except (RuntimeError, torch.OutOfMemoryError) as err:  # a capture that fails costs its column only
            print(f"  CUDA-graph timing failed: {str(err).splitlines()[0]}")
            torch.cuda.synchronize()
    torch.cuda.empty_cache()
    return ms, graph_ms, extra


def methods(V):
    """name -> (forward fn, forward+backward fn), each taking (logits, targets)."""
    compiled = torch.compile(token_logprobs_reference, dynamic=False)
    out = {
        "triton (ours)": (token_logprobs, token_logprobs),
        "pytorch eager": (token_logprobs_reference, token_logprobs_reference),
        "torch.compile": (compiled, compiled),
    }
    if fused_selective_log_softmax is not None:
        # Liger's selective log-softmax is forward only and expects (B, L+1, V) logits with L targets, so
        # it reads L-1 of our L positions (its GB/s below are 1/L too high). Its nearest forward+backward
        # op is its fused cross entropy, -sum(logp), which writes the gradient into the logits' own
        # storage during the forward: no grad buffer, and the logits are gone.
        out["liger"] = (lambda x, t: fused_selective_log_softmax(x, t[:, 1:], 1.0),
                        lambda x, t: liger_cross_entropy(x.view(-1, V), t.view(-1), reduction="sum"))
    return out


def bench_shape(B, L, V, table):
    torch.manual_seed(0)
    logits = torch.randn(B, L, V, device="cuda", dtype=torch.bfloat16)
    targets = torch.randint(V, (B, L), device="cuda")
    size = logits.numel() * logits.element_size()
    compile_ms = {}
    for name, (fwd, fwd_bwd) in methods(V).items():

        def forward():
            with torch.no_grad():
                return fwd(logits, targets)

        x = logits.clone().requires_grad_() if name == "liger" else logits.detach().requires_grad_()
        g = torch.randn(B, L, device="cuda") if name != "liger" else torch.ones((), device="cuda")  # 1: no rescale pass

        def forward_backward():
            return torch.autograd.grad(fwd_bwd(x, targets), x, g)  # the gradient, not accumulated into .grad

        for mode, fn, passes in (("fwd", forward, 1), ("fwd+bwd", forward_backward, 3)):
            # Liger's cross entropy reads a count back to the host (.item()): it can't be graph-captured
            ms, graph_ms, extra = measure(fn, graphable=not (name == "liger" and mode == "fwd+bwd"))
            if name == "torch.compile":
                compile_ms[mode] = ms, graph_ms
            vs_compile = [c / t for c, t in zip(compile_ms.get(mode, (float("nan"),) * 2), (ms, graph_ms))]
            table.append((f"{B}x{L}x{V}", name, mode, ms, passes * size / ms / 1e6, graph_ms,
                          passes * size / graph_ms / 1e6, extra / 2**20, extra / size, *vs_compile))
        del x
        torch.cuda.empty_cache()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--vocab", type=int, default=1024, help="the project's vocabulary size (first shape)")
    args = parser.parse_args()
    shapes = [(64, 256, args.vocab), (64, 256, 4096), (32, 512, 32768), (16, 512, 151936)]

    print(f"device: {torch.cuda.get_device_name()}  torch {torch.__version__}  triton {triton.__version__}  "
          f"git {git_commit()}")
    if not run_checks(shapes):
        print("CORRECTNESS CHECK FAILED: the timings below are of a wrong kernel")

    x = torch.empty(2**30, device="cuda", dtype=torch.bfloat16)  # 2 GiB
    copy_ms = do_bench(x.clone, return_mode="median")
    copy_gpu_ms = gpu_ms(x.clone)
    copy_gbs, copy_gpu_gbs = (2 * x.numel() * x.element_size() / t / 1e6 for t in (copy_ms, copy_gpu_ms))
    del x
    torch.cuda.empty_cache()

    table = []
    for B, L, V in shapes:
        bench_shape(B, L, V, table)
    if fused_selective_log_softmax is None:
        print("liger: not importable (pip install liger-kernel), its rows are left out")

    print_table((copy_ms, copy_gbs, copy_gpu_ms, copy_gpu_gbs), table)


def print_table(copy, table):
    columns = [("B x L x V (bf16)", 18), ("method", 14), ("pass", 7), ("ms", 7), ("GB/s", 6), ("GPU ms", 7),
               ("GPU GB/s", 8), ("extra MiB", 9), ("extra/logits", 12), ("compile/this", 12), ("GPU: compile/this", 17)]
    print("\nms: do_bench median, host time included. GPU ms: CUDA-graph replay with a cold L2 (gpu_ms)")
    print(" | ".join(f"{title:>{width}}" for title, width in columns))
    ms, gbs, gpu, gpu_gbs = copy
    copy_row = ["copy ceiling", "x.clone() 2GiB", "r+w", f"{ms:.3f}", f"{gbs:.0f}", f"{gpu:.3f}", f"{gpu_gbs:.0f}"]
    rows = [copy_row] + [[shape, name, mode, f"{ms:.3f}", f"{gbs:.0f}", f"{gpu:.3f}", f"{gpu_gbs:.0f}",
                          f"{mib:.1f}", f"{ratio:.2f}", f"{vs:.2f}", f"{gpu_vs:.2f}"]
                         for shape, name, mode, ms, gbs, gpu, gpu_gbs, mib, ratio, vs, gpu_vs in table]
    for row in rows:
        print(" | ".join(f"{cell:>{width}}" for cell, (_, width) in zip(row, columns)))


if __name__ == "__main__":
    main()
