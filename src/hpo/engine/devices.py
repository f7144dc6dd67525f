"""The device a task trains on is the one Ray assigned it.

Ray sets ``CUDA_VISIBLE_DEVICES`` for a task or actor that holds GPUs, and since 2.50 leaves it untouched
for one that holds none (``ray._private.utils.set_visible_accelerator_ids`` skips an empty assignment
unless ``RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO=1``): a ``gpus_per_trial: 0`` trial on a GPU node would see every
card and take cuda:0, with no memory cap. torch reads the variable once, when CUDA first initialises in the
process (``cuInit``, reached from ``torch.cuda.is_available()``), so ``assigned_device`` empties it first
thing in the task, before anything asks torch about CUDA. Ray does not run a GPU task in a process that ran a
CPU-only one or the other way round, so a CUDA context made under another assignment is not inherited.

The opposite mistake is the silent one: a task that holds a GPU share but cannot use CUDA (a CPU build of
torch, a driver too old for its CUDA, a card its kernels do not cover) would train on the CPU for hours.
It fails at once instead, naming the assignment and why (``DeviceUnusable``)."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass

from hpo.names import Tag

CUDA_VISIBLE_DEVICES = "CUDA_VISIBLE_DEVICES"


class DeviceUnusable(RuntimeError):
    """The task holds a GPU share that torch cannot use: training on the CPU instead would be wrong."""


@dataclass(frozen=True)
class Device:
    """Where a task trains, as assigned: ``device`` is the torch device (``cuda`` is the first GPU the
    process sees, which is the first it holds)."""

    device: str  # cpu | cuda
    name: str  # the GPU's name, or the CPU's model
    capability: str  # CUDA compute capability ("8.0"), or torch's CPU kernel level ("AVX2")
    share: float = 0.0  # GPUs held; a fraction of one where trials share it
    gpu_ids: tuple[str, ...] = ()

    def tags(self) -> dict[str, str]:
        """The device as run tags (``hpo.device`` ...), plain strings: they cross processes."""
        tags = {
            Tag.DEVICE: self.device,
            Tag.DEVICE_NAME: self.name,
            Tag.DEVICE_CAPABILITY: self.capability,
            Tag.GPU_SHARE: f"{self.share:g}",
        }
        if self.gpu_ids:
            tags[Tag.GPU_IDS] = ",".join(self.gpu_ids)
        return {key.value: value for key, value in tags.items()}


def holding(gpu_ids: Sequence[str], share: float) -> str:
    """``GPU 0 (0.25 of it)``, ``GPUs 0,1``: what a task holds, in words."""
    if len(gpu_ids) == 1:
        return f"GPU {gpu_ids[0]}" + (f" ({share:g} of it)" if 0 < share < 1 else "")
    return f"GPUs {','.join(gpu_ids)}"


def assigned_device(gpus: float, *, gpu_ids: Sequence[str] | None = None, who: str = "trial") -> Device:
    """The device this Ray task (trial, re-check run) must train on, from Ray's assignment (``gpu_ids``,
    default ``ray.get_gpu_ids()``). Call it before anything initialises CUDA in the process: a task holding
    no GPU gets ``CUDA_VISIBLE_DEVICES=""`` and the CPU; one holding GPUs gets ``cuda`` or, if torch cannot
    use it, ``DeviceUnusable``. ``gpus`` is what the task asked for (the share, when fractional)."""
    if gpu_ids is None:
        import ray

        gpu_ids = [str(i) for i in ray.get_gpu_ids()]
    ids = tuple(str(i) for i in gpu_ids)
    if not ids:
        os.environ[CUDA_VISIBLE_DEVICES] = ""
        return cpu_device()
    reason = cuda_unusable_reason()
    if reason is not None:
        raise DeviceUnusable(f"this {who} holds {holding(ids, gpus)} but torch cannot use CUDA: {reason}")
    return cuda_device(share=gpus, gpu_ids=ids)


def cpu_device() -> Device:
    import torch

    from hpo.train.plan import describe_machine

    machine = describe_machine()
    return Device("cpu", machine.cpu_model, torch.backends.cpu.get_cpu_capability())


def cuda_device(index: int = 0, *, share: float = 1.0, gpu_ids: tuple[str, ...] = ()) -> Device:
    import torch

    major, minor = torch.cuda.get_device_capability(index)
    return Device("cuda", torch.cuda.get_device_name(index), f"{major}.{minor}", share, gpu_ids)


def cuda_unusable_reason() -> str | None:
    """Why torch cannot train on the first GPU this process sees, or None when it can: a CPU build, no
    driver or one too old (torch's own message), no device visible, a card the build has no kernels for
    (a V100, sm_70, under a CUDA 13 build), or a first kernel that fails."""
    import torch

    if not torch.backends.cuda.is_built():
        return f"this torch ({torch.__version__}) is a build without CUDA"
    try:
        torch.cuda.init()
    except Exception as exc:  # torch's message names the driver problem
        return _first_line(exc)
    if torch.cuda.device_count() == 0:
        return f"no CUDA device is visible (CUDA_VISIBLE_DEVICES={os.environ.get(CUDA_VISIBLE_DEVICES)!r})"
    capability = torch.cuda.get_device_capability(0)
    archs = torch.cuda.get_arch_list()
    if not has_kernels(capability, archs):
        return (
            f"this torch ({torch.__version__}) has kernels for {', '.join(archs)}, none of which runs on "
            f"{torch.cuda.get_device_name(0)} (sm_{capability[0]}{capability[1]})"
        )
    try:
        torch.ones(2, device="cuda").add_(1).cpu()  # one real kernel: what the checks above cannot see
    except Exception as exc:
        return _first_line(exc)
    return None


_ARCH = re.compile(r"(sm|compute)_(\d+)(\d)([a-z]?)")


def has_kernels(capability: tuple[int, int], archs: Sequence[str]) -> bool:
    """Whether a torch build whose ``torch.cuda.get_arch_list()`` is ``archs`` runs on a GPU of compute
    ``capability``: a cubin ``sm_XY`` runs on major X with minor >= Y, PTX ``compute_XY`` is compiled for
    any card from X.Y up, an architecture-specific ``sm_90a`` only on 9.0. An empty list (unknown) passes."""
    if not archs:
        return True
    major, minor = capability
    for arch in archs:
        match = _ARCH.fullmatch(arch)
        if match is None:
            continue
        kind, built = match[1], (int(match[2]), int(match[3]))
        if match[4]:  # sm_90a: this architecture only
            runs = built == (major, minor)
        elif kind == "sm":  # a cubin: the same major, an equal or later minor
            runs = built[0] == major and built[1] <= minor
        else:  # PTX: compiled by the driver for this card or any later one
            runs = built <= (major, minor)
        if runs:
            return True
    return False


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__
