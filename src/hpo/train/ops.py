"""What a training step is made of, shared by the loop (``hpo.train.loop``) and the execution plan's
measurements (``hpo.train.plan``), so that the plan times the step training takes."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn


def pick_device(device: str = "auto") -> torch.device:
    """``auto``: the GPU this process may use, else the CPU; a named device as named. Which GPUs a process
    may use is its assignment, and it reaches torch through ``CUDA_VISIBLE_DEVICES``, read when CUDA first
    initialises: Ray sets it for a task holding GPUs, and ``hpo.engine.devices`` empties it for one holding
    none, so ``auto`` follows the assignment. A named CUDA device torch cannot use fails here, saying so,
    not at the first kernel."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    chosen = torch.device(device)
    if chosen.type == "cuda" and not torch.cuda.is_available():
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        raise RuntimeError(
            f"device {device!r} asked for, but torch {torch.__version__} cannot use CUDA here "
            f"(built with CUDA: {torch.backends.cuda.is_built()}, CUDA_VISIBLE_DEVICES={visible!r})"
        )
    return chosen


def to_device(model: nn.Module, device: torch.device, memory_format: torch.memory_format) -> nn.Module:
    """``model.to(device, memory_format=...)``: ``Module.to`` takes a memory format (for 4-D parameters),
    though torch's type stub does not say so."""
    return model.to(device, memory_format=memory_format)  # type: ignore[call-overload]


def to_float(x: torch.Tensor) -> torch.Tensor:
    return x.float().div_(255.0)


def loss_fn(
    logits: torch.Tensor,
    targets: torch.Tensor,
    *,
    multilabel: bool = False,
    label_smoothing: float = 0.0,
    reduction: Literal["mean", "sum"] = "mean",
) -> torch.Tensor:
    """Binary cross-entropy per label for a multi-label task (0/1 or mixed targets, shaped as the
    logits); otherwise cross-entropy against class indices or class probabilities (CutMix/MixUp).
    ``reduction``: the mean over samples (over every label, multi-label), or the sum."""
    if multilabel:
        return F.binary_cross_entropy_with_logits(logits, targets.float(), reduction=reduction)
    return F.cross_entropy(logits, targets, label_smoothing=label_smoothing, reduction=reduction)


def hits(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """How many samples ``logits`` classify right, as a tensor on their device (summed there, read once);
    for multi-label ``y`` (N, labels), each sample counts its share of labels right."""
    if y.ndim == 2:
        return ((logits > 0) == (y > 0.5)).float().mean(1).sum()
    return (logits.argmax(1) == y).sum()


def accuracy(logits: torch.Tensor, y: torch.Tensor) -> float:
    """The share of samples classified right (multi-label: of labels, 1 - Hamming loss)."""
    return hits(logits, y).item() / len(y)


class _ChannelsLastGrad(torch.autograd.Function):
    """Identity forward; the gradient goes back channels_last."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad.contiguous(memory_format=torch.channels_last)


def _flatten_input(module: nn.Module, args: tuple) -> tuple | None:
    x = args[0]
    if x.ndim == 4 and x.requires_grad and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return (_ChannelsLastGrad.apply(x), *args[1:])
    return None


@contextmanager
def channels_last_gradients(model: nn.Module) -> Iterator[None]:
    """While training, send the gradient of each ``nn.Flatten`` of a channels_last feature map back
    channels_last. Flatten makes its own (N, C*H*W) copy in NCHW order, so its gradient arrives NCHW, and
    the layer before it (typically a max-pool) then converts layouts in its backward: on a 2-conv CNN on
    the CPU, two full-size copies per step that cost more than the pool itself
    (benchmarks/trainer_vs_baseline.py). The hooks are removed afterwards."""
    handles = [m.register_forward_pre_hook(_flatten_input) for m in model.modules() if isinstance(m, nn.Flatten)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
