"""Per-trial memory caps, and telling an out-of-memory failure apart from other errors.

A trial whose batch is too big for the device should fail alone, as *infeasible*, not take the machine
(and every other trial on it) down. On a CPU the cap is ``RLIMIT_DATA`` (private memory the process may
allocate beyond what it holds when the trial starts; Ray's shared object store is not counted), so an
oversized allocation fails with an error instead of waking the kernel's OOM killer. On a GPU shared by
fractional trials, each is held to its fraction of the card with ``set_per_process_memory_fraction``.
"""

from __future__ import annotations

import resource
from collections.abc import Iterator
from contextlib import contextmanager

_CPU_OOM_MARKERS = ("can't allocate memory", "cannot allocate memory", "out of memory")


class TrialOutOfMemory(RuntimeError):
    """The trial needed more memory than its device (or its cap) has: infeasible as configured."""


def is_out_of_memory(exc: BaseException) -> bool:
    import torch

    if isinstance(exc, (MemoryError, torch.OutOfMemoryError)):
        return True
    return isinstance(exc, RuntimeError) and any(m in str(exc).lower() for m in _CPU_OOM_MARKERS)


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
    card (CUDA). The previous limits come back afterwards: Ray reuses trial processes."""
    previous = None
    if cpu_bytes and device == "cpu":
        previous = resource.getrlimit(resource.RLIMIT_DATA)
        soft = _private_bytes() + int(cpu_bytes)
        if previous[1] != resource.RLIM_INFINITY:
            soft = min(soft, previous[1])  # an unprivileged process cannot raise its hard limit
        resource.setrlimit(resource.RLIMIT_DATA, (soft, previous[1]))
    if gpu_fraction and device.startswith("cuda"):
        import torch

        torch.cuda.set_per_process_memory_fraction(min(1.0, gpu_fraction))
    try:
        yield
    finally:
        if previous is not None:
            resource.setrlimit(resource.RLIMIT_DATA, previous)
        if gpu_fraction and device.startswith("cuda"):
            import torch

            torch.cuda.empty_cache()
            torch.cuda.set_per_process_memory_fraction(1.0)
