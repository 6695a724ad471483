"""
Data parallelism over several GPUs (or CPU processes) with PyTorch's own engine, torch.distributed, as
nanoGPT and nanochat do it. Start any training script with torchrun instead of python:

    torchrun --standalone --nproc-per-node 8 train.py ...

torchrun starts one process per GPU and tells each its place through environment variables: RANK (0..N-1
over all machines), LOCAL_RANK (which GPU of this machine) and WORLD_SIZE (N). Every process holds a full copy
of the model and works on its share of each batch; DistributedDataParallel (DDP) averages the gradients across
processes during backward, so every copy takes the same optimizer step. Without torchrun, or with one process,
nothing here starts: no process group, no wrapper, no communication, the plain one-GPU program.

Lower than train, grpo (and any other training stage) in the import graph; imports only torch.
"""

import contextlib
import inspect
import os
import sys

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

BACKENDS = ("auto", "nccl", "gloo")  # nccl between GPUs, gloo between CPU processes; auto picks by device


def env_world_size():
    """How many processes torchrun started (1 without torchrun): known before any process group exists, so
    bad settings can be refused on every rank alike, before a collective could hang on a rank that left."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def world_size():
    return dist.get_world_size() if dist.is_initialized() else 1


def rank():
    return dist.get_rank() if dist.is_initialized() else 0


def is_main():
    """Rank 0 alone writes files and prints progress."""
    return rank() == 0


def per_rank(total, name):
    """This rank's share of a global batch of `total`; a batch the ranks cannot share equally is refused."""
    n = env_world_size()
    if total % n:
        raise ValueError(f"{name} = {total} must be divisible by the number of processes ({n}): the global "
                         "batch stays what the config says, and every process takes an equal share")
    return total // n


def check_backend(backend, device):
    """Refuse a backend that cannot run here, on every rank, before init_process_group could wait for peers."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown --dist-backend {backend!r}, expected one of {BACKENDS}")
    cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if backend == "nccl" and not (cuda and torch.cuda.is_available()):
        raise ValueError("--dist-backend nccl needs CUDA GPUs; use gloo (or auto) on CPU")
    if env_world_size() > 1:
        if cuda and device not in ("auto", "cuda"):
            raise ValueError(f"--device {device} pins one GPU; under torchrun use --device cuda (or auto): "
                             "each process takes the GPU of its LOCAL_RANK")
        if not dist.is_available():
            raise ValueError("this PyTorch build has no torch.distributed; run one process, or install one with it")
        if (backend == "gloo" or (backend == "auto" and not cuda)) and not dist.is_gloo_available():
            raise ValueError("the gloo backend is not available in this PyTorch build")
        if (backend == "nccl" or (backend == "auto" and cuda)) and not dist.is_nccl_available():
            raise ValueError("the nccl backend is not available in this PyTorch build; try --dist-backend gloo")


def setup(device="auto", backend="auto"):
    """Join the process group torchrun prepared (if it started more than one process) and return this
    process's device: cuda:LOCAL_RANK on GPUs. Seeds nothing; callers seed per rank where it matters."""
    check_backend(backend, device)
    cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if device == "auto":
        device = "cuda" if cuda else "cpu"
    if env_world_size() == 1:
        return torch.device(device)
    local_rank = int(os.environ["LOCAL_RANK"])
    if cuda:
        if local_rank >= torch.cuda.device_count():
            raise ValueError(f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} GPUs on this machine")
        device = f"cuda:{local_rank}"
        torch.cuda.set_device(device)
    if backend == "auto":
        backend = "nccl" if cuda else "gloo"
    dist.init_process_group(backend, device_id=torch.device(device) if cuda else None)
    return torch.device(device)


def finish():
    """A training script's last call. Under torchrun: leave the process group together, then end the process
    without the interpreter's teardown; without torchrun, nothing.

    Together, because a rank that leaves while its peer still works (rank 0 writes the plots) can abort gloo.
    Without teardown, because gloo's worker threads drop their share of a finished collective a moment after the
    caller's wait returns, and dropping the last reference to a tensor that Python made takes the GIL; a thread
    that asks for the GIL while the interpreter shuts down is ended by it, and the C++ destructor it was in aborts
    the process ("terminate called without an active exception", c10d::ProcessGroupGloo::runLoop destroying an
    AsyncBarrierWork). The callers have closed their files; the console is flushed here."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


def wrap(model):
    """The module to run forward and backward through for gradients: DDP over several processes, else the
    model itself. Generation, checkpoints and no-grad passes use the plain model (its state_dict has no
    "module." prefix). DDP checks at construction that every rank starts from the same weights.
    No buffer sync before each forward: the routers' load counts are per-rank buffers that sum_router_load adds
    up, and DDP's default would overwrite them with rank 0's."""
    if not dist.is_initialized():
        return model
    device = next(model.parameters()).device
    no_forward_sync = ({"forward_sync_buffers": False}  # the flag's name since PyTorch 2.13
                       if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
                       else {"broadcast_buffers": False})
    # 200 MB gradient buckets, not 25: fewer all-reduces, and torch.compile splits its graph at every bucket; a
    # compiled medium pretraining step on 2 H200s took 53.0 ms against 54.3 (a 64-window batch) and 171.7 ms against
    # 181.1 (256 windows in micro-batches of 64), small 18.5 against 19.5 (benchmarks/RESULTS.md)
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                   bucket_cap_mb=200, **no_forward_sync)


def gradient_sync(train_model, last):
    """The context of one micro-batch's forward and backward in gradient accumulation: under DDP only the last
    micro-batch of a step all-reduces the gradients; the earlier ones add to them locally (no_sync). `train_model`
    is what wrap returned, or torch.compile of it (which passes no_sync on to the DDP module)."""
    if last or not dist.is_initialized():
        return contextlib.nullcontext()
    return train_model.no_sync()


def all_reduce_(tensors, op="sum"):
    """In-place sum/max/min of a list of tensors across ranks, in one collective."""
    if not dist.is_initialized() or not tensors:
        return tensors
    flat = torch.cat([t.reshape(-1).to(torch.float64) for t in tensors])
    dist.all_reduce(flat, op={"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}[op])
    for t, part in zip(tensors, flat.split([t.numel() for t in tensors])):
        t.copy_(part.view_as(t))
    return tensors


def all_reduce_metrics(metrics, op="mean"):
    """A dict of floats (None allowed, kept as None) reduced across ranks by mean, sum or max."""
    if not dist.is_initialized():
        return dict(metrics)
    keys = [k for k, v in metrics.items() if v is not None]
    values = torch.tensor([float(metrics[k]) for k in keys], dtype=torch.float64, device=_collective_device())
    all_reduce_([values], "max" if op == "max" else "sum")
    if op == "mean":
        values /= world_size()
    return {**metrics, **dict(zip(keys, values.tolist()))}


def reduce_stats(stats, op="mean"):
    """A dict of floats (None kept as None) reduced over ranks: op is "mean", "sum" or "max" for every entry, or a
    dict {key: op} (an entry it does not name: mean). One collective per kind of reduction."""
    if not dist.is_initialized():
        return dict(stats)
    out = dict(stats)
    for kind in ("sum", "max", "mean"):
        part = {k: v for k, v in stats.items() if (op if isinstance(op, str) else op.get(k, "mean")) == kind}
        if part:
            out.update(all_reduce_metrics(part, kind))
    return out


def sum_over_ranks(tensor):
    """A tensor's sum over the ranks (a float64 copy; the tensor itself under one process)."""
    return all_reduce_([tensor.double()])[0] if dist.is_initialized() else tensor


def max_over_ranks(number):
    """An integer's maximum over the ranks."""
    if not dist.is_initialized():
        return number
    return int(all_reduce_([torch.tensor([number], device=_collective_device())], "max")[0])


def scale_for_gradient_average(loss):
    """A rank's loss is its share of the global batch's; DDP averages the gradients over the W ranks, so W x the
    share gives the gradient of the global loss."""
    return loss * world_size() if world_size() > 1 else loss


def _collective_device():
    return "cuda" if dist.get_backend() == "nccl" else "cpu"


def sum_router_load(model):
    """Add up the MoE routers' token counts over all ranks before the aux-loss-free bias update (model.py), so
    every rank moves its biases by the global load, exactly as one process on the whole batch would."""
    all_reduce_([gate.load for gate in model.gates()], "sum")
