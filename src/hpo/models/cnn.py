"""The configurable CNN: depth, width, kernel size, batch-norm and dropout placement, activation, head."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from hpo.config.trial import CNNConfig
from hpo.models._registry import register_family

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "leaky_relu": lambda: nn.LeakyReLU(0.1),
    "gelu": nn.GELU,
}
MAX_STAGES = 3  # 28 -> 14 -> 7 -> 3 px; a fourth pool would leave too little to convolve


def conv_block(c_in: int, c_out: int, config: CNNConfig) -> nn.Sequential:
    bn = config.batchnorm
    layers: list[nn.Module] = [
        nn.Conv2d(c_in, c_out, config.kernel_size, padding=config.kernel_size // 2, bias=bn == "none")
    ]
    if bn == "before_activation":
        layers.append(nn.BatchNorm2d(c_out))
    layers.append(ACTIVATIONS[config.activation]())
    if bn == "after_activation":
        layers.append(nn.BatchNorm2d(c_out))
    return nn.Sequential(*layers)


def stage_sizes(depth: int) -> list[int]:
    """Split ``depth`` conv blocks over up to three stages, later stages getting the extra blocks."""
    stages = min(depth, MAX_STAGES)
    base, extra = divmod(depth, stages)
    return [base + (1 if i >= stages - extra else 0) for i in range(stages)]


@register_family("cnn")
def build_cnn(config: CNNConfig, in_channels: int, num_classes: int) -> nn.Module:
    drop = config.dropout
    pool_dropout = drop.placement in ("after_pool", "everywhere") and drop.rate > 0
    head_dropout = drop.placement in ("head", "everywhere") and drop.rate > 0

    layers: list[nn.Module] = []
    c_in, width = in_channels, config.width
    for blocks in stage_sizes(config.depth):
        for _ in range(blocks):
            layers.append(conv_block(c_in, width, config))
            c_in = width
        layers.append(nn.MaxPool2d(2, ceil_mode=True))
        if pool_dropout:
            layers.append(nn.Dropout2d(drop.rate))
        width *= 2

    head: list[nn.Module] = [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    features = c_in
    if config.head_width:
        head += [nn.Linear(features, config.head_width), ACTIVATIONS[config.activation]()]
        features = config.head_width
    if head_dropout:
        head.append(nn.Dropout(drop.rate))
    head.append(nn.Linear(features, num_classes))
    return nn.Sequential(nn.Sequential(*layers), nn.Sequential(*head))
