"""Per-trial memory caps, and telling an out-of-memory failure apart from other errors.

A trial whose batch is too big for the device should fail alone, as *infeasible*, not take the machine
(and every other trial on it) down. On a CPU the cap is ``RLIMIT_DATA`` (private memory the process may
allocate beyond what it holds when the trial starts; Ray's shared object store is not counted), so an
oversized allocation fails with an error instead of waking the kernel's OOM killer. On a GPU shared by
fractional trials, each is held to its fraction of the card with ``set_per_process_memory_fraction``,
less what its CUDA context takes: that fraction caps PyTorch's caching allocator only, and the context
(kernels, cuBLAS/cuDNN handles and workspaces) comes on top, so four 0.25 trials each allowed a full
quarter would overflow the card by four contexts.

An out-of-memory failure is deterministic where a cap holds: the same configuration at the same batch size
runs out again, so it is not retried (``hpo.engine.trial_book.may_retry``).
"""

from __future__ import annotations

import resource
from collections.abc import Iterator
from contextlib import contextmanager

# What the allocators and CUDA libraries say when memory runs out, lower-cased: the CPU allocator
# ("DefaultCPUAllocator: can't allocate memory"), the CUDA runtime ("CUDA error: out of memory", raised as
# torch.AcceleratorError, not torch.OutOfMemoryError), and the libraries that allocate outside PyTorch's
# allocator (cuBLAS handles and workspaces, cuDNN, cuFFT, cuSOLVER, cuSPARSE).
_OOM_MARKERS = (
    "can't allocate memory",
    "cannot allocate memory",
    "out of memory",
    "cublas_status_alloc_failed",
    "cudnn_status_alloc_failed",
    "cufft_alloc_failed",
    "cusolver_status_alloc_failed",
    "cusparse_status_alloc_failed",
)
# What a CUDA context costs beside the allocator's pool, counted against a fractional trial's share: the
# context itself (~300-500 MiB with lazy module loading, torch's default since CUDA 11.7, on A100/H100),
# cuBLAS's workspaces and cuDNN's handle. A fixed reserve, not a measurement: mem_get_info sees the whole
# card, other trials included, and NVML (per-process use) is not in the images.
CUDA_CONTEXT_RESERVE = 768 * 2**20


class TrialOutOfMemory(RuntimeError):
    """The trial needed more memory than its device (or its cap) has: infeasible as configured."""


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` (or what it was raised from) is running out of memory, on the CPU or a GPU."""
    import torch

    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, (MemoryError, torch.OutOfMemoryError, TrialOutOfMemory)):
            return True
        if isinstance(current, RuntimeError) and any(m in str(current).lower() for m in _OOM_MARKERS):
            return True
        current = current.__cause__ or current.__context__
    return False


def allocator_fraction(share: float, total_bytes: int, context_bytes: int = CUDA_CONTEXT_RESERVE) -> float:
    """The fraction of a ``total_bytes`` card PyTorch's allocator may hold for a trial that holds ``share``
    of it, its CUDA context counted in the share."""
    fraction = min(1.0, share) - context_bytes / total_bytes
    if fraction <= 0:
        raise TrialOutOfMemory(
            f"a share of {share:g} of a {total_bytes / 2**30:.1f} GiB GPU leaves nothing beside the "
            f"{context_bytes / 2**20:.0f} MiB a CUDA context takes: raise resources.gpus_per_trial"
        )
    return fraction


def _private_bytes() -> int:
    """This process's data segment (VmData): what RLIMIT_DATA counts."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmData:"):
                return int(line.split()[1]) * 1024
    return 0


@contextmanager
def memory_cap(cpu_bytes: int | None, gpu_fraction: float | None, device: str) -> Iterator[None]:
    """Hold the code in the block to ``cpu_bytes`` more private memory (CPU) or ``gpu_fraction`` of the
    card, its CUDA context included (CUDA). The previous limits come back afterwards: Ray reuses trial
    processes."""
    previous = None
    if cpu_bytes and device == "cpu":
        previous = resource.getrlimit(resource.RLIMIT_DATA)
        soft = _private_bytes() + int(cpu_bytes)
        if previous[1] != resource.RLIM_INFINITY:
            soft = min(soft, previous[1])  # an unprivileged process cannot raise its hard limit
        resource.setrlimit(resource.RLIMIT_DATA, (soft, previous[1]))
    capped_gpu = bool(gpu_fraction) and device.startswith("cuda")
    if capped_gpu:
        import torch

        torch.cuda.init()  # the context exists from here on; its cost is what the reserve stands for
        _, total = torch.cuda.mem_get_info()
        torch.cuda.set_per_process_memory_fraction(allocator_fraction(gpu_fraction or 1.0, total))
    try:
        yield
    finally:
        if previous is not None:
            resource.setrlimit(resource.RLIMIT_DATA, previous)
        if capped_gpu:
            import torch

            torch.cuda.empty_cache()
            torch.cuda.set_per_process_memory_fraction(1.0)


@contextmanager
def out_of_memory_as_infeasible(batch_size: int, device: str, cap: str = "") -> Iterator[None]:
    """Turn running out of memory in the block into ``TrialOutOfMemory`` (the trial is infeasible as
    configured: recorded as such, not retried), naming the batch size, the device and the ``cap``."""
    try:
        yield
    except (RuntimeError, MemoryError) as exc:
        if isinstance(exc, TrialOutOfMemory) or not is_out_of_memory(exc):
            raise
        detail = str(exc).strip().splitlines()[0][-200:] if str(exc).strip() else type(exc).__name__
        capped = f", capped at {cap}" if cap else ""
        raise TrialOutOfMemory(f"out of memory with batch size {batch_size} on {device}{capped} ({detail})") from None
