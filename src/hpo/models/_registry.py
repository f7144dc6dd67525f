from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from hpo.config.trial import MODEL_CONFIGS

Builder = Callable[..., nn.Module]  # (config, in_channels, num_classes) -> nn.Module
_FAMILIES: dict[str, Builder] = {}


def register_family(name: str) -> Callable[[Builder], Builder]:
    """Register a builder under ``name``; its config schema must be in ``hpo.config.trial.MODEL_CONFIGS``."""
    if name not in MODEL_CONFIGS:
        raise ValueError(f"family {name!r} has no config schema in hpo.config.trial.MODEL_CONFIGS")

    def decorate(builder: Builder) -> Builder:
        _FAMILIES[name] = builder
        return builder

    return decorate


def list_families() -> list[str]:
    return sorted(_FAMILIES)


def create_model(
    config, in_channels: int, num_classes: int, mean: Sequence[float] = (0.0,), std: Sequence[float] = (1.0,)
) -> Classifier:
    """Build the network for ``config`` (a model config with ``name``), wrapped with its normalisation."""
    if config.name not in _FAMILIES:
        raise KeyError(f"unknown model family {config.name!r}; registered: {', '.join(list_families())}")
    net = _FAMILIES[config.name](config, in_channels=in_channels, num_classes=num_classes)
    return Classifier(net, mean, std)


class Classifier(nn.Module):
    """Normalise float images in [0, 1], then classify. Input (N, C, H, W), output logits (N, classes)."""

    mean: torch.Tensor  # buffers (1, C, 1, 1): saved and moved with the model
    std: torch.Tensor

    def __init__(self, net: nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.mean) / self.std)
