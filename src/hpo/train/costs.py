"""What a network costs to run, measured once per trial: the objectives besides accuracy.

``params`` counts every parameter (a backbone frozen for transfer learning still ships with the model);
``flops`` counts one image's forward pass (torch's FlopCounterMode: a multiply-add is two FLOPs, and only
the operators it knows, convolutions and matrix products, which are nearly all of a CNN's work);
``latency_ms`` times one image's forward pass in eval mode on the trial's device, with its plan's
precision and memory layout, as the median of a few runs after a warm-up (the first runs build oneDNN or
cuDNN primitives and are never timed).

Measured on the 2-core CPU (AMD EPYC Zen 3, one thread) for CNNs of 178 to 1.1 M parameters: ``params``
takes microseconds and ``latency_ms`` 10-75 ms, next to an epoch's seconds, so every trial measures them
and its MLflow run shows them; ``flops`` costs ~2.3 s the first time in a process (FlopCounterMode imports
torch._dynamo), then milliseconds, so trials count it only when an objective names it."""

from __future__ import annotations

import statistics
import time
from collections.abc import Collection, Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from hpo.names import COST_METRICS, Metric
from hpo.train.plan import ExecutionPlan

__all__ = ["ALWAYS_MEASURED", "COST_METRICS", "count_flops", "count_params", "measure_costs", "measure_latency_ms"]

LATENCY_WARMUP = 3
LATENCY_RUNS = 10


def count_params(model: nn.Module) -> int:
    """Every parameter of ``model``, trainable or frozen."""
    return sum(p.numel() for p in model.parameters())


def _image(shape: Sequence[int], device: torch.device, memory_format: torch.memory_format) -> torch.Tensor:
    """One float image in [0, 1] (what hpo's networks take), as a batch of one."""
    generator = torch.Generator().manual_seed(0)
    x = torch.rand((1, *shape), generator=generator).to(device)
    return x.contiguous(memory_format=memory_format)


def count_flops(model: nn.Module, image_shape: Sequence[int], device: torch.device | str = "cpu") -> int:
    """FLOPs of one image's forward pass (``image_shape``: channels, height, width)."""
    x = _image(image_shape, torch.device(device), torch.contiguous_format)
    with _evaluating(model), torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    return int(counter.get_total_flops())


def measure_latency_ms(model: nn.Module, image_shape: Sequence[int], plan: ExecutionPlan) -> float:
    """Milliseconds of one image's forward pass on ``plan``'s device, precision and layout (median)."""
    device = plan.torch_device
    x = _image(image_shape, device, plan.memory_format)
    cuda = device.type == "cuda"
    times = []
    with _evaluating(model), torch.no_grad(), plan.autocast():
        for i in range(LATENCY_WARMUP + LATENCY_RUNS):
            if cuda:
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            model(x)
            if cuda:  # the kernels run asynchronously: the time is theirs once the device is done
                torch.cuda.synchronize(device)
            if i >= LATENCY_WARMUP:
                times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000.0


def measure_costs(
    model: nn.Module, image_shape: Sequence[int], plan: ExecutionPlan, which: Collection[str] = COST_METRICS
) -> dict[str, float]:
    """The costs in ``which`` (``params``, ``flops``, ``latency_ms``) of ``model``, on ``plan``'s device as
    it trains."""
    costs: dict[str, float] = {}
    if Metric.PARAMS in which:
        costs[Metric.PARAMS.value] = float(count_params(model))
    if Metric.FLOPS in which:
        costs[Metric.FLOPS.value] = float(count_flops(model, image_shape, plan.torch_device))
    if Metric.LATENCY_MS in which:
        costs[Metric.LATENCY_MS.value] = measure_latency_ms(model, image_shape, plan)
    return costs


# What every trial measures whether or not an objective names it: cheap next to an epoch. ``flops`` is
# measured only when an objective names it: FlopCounterMode's first use in a process imports
# torch._dynamo, ~2.3 s on the 2-core CPU.
ALWAYS_MEASURED = (Metric.PARAMS, Metric.LATENCY_MS)


class _evaluating:
    """Eval mode for the measurement (batch norm on its running statistics, no dropout), then back."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.was_training = model.training

    def __enter__(self) -> nn.Module:
        self.model.eval()
        return self.model

    def __exit__(self, *exc: object) -> None:
        self.model.train(self.was_training)
