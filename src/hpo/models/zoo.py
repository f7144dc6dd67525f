"""The ImageNet families from torchvision (ResNet, VGG, MobileNet, EfficientNet, DenseNet, Inception,
AlexNet) and any timm model, adapted to the dataset's channels, classes and image size.

Each builder takes the family's config (``hpo.config.trial``) and returns a plain ``nn.Module``; the
registry wraps it in ``Classifier`` (normalisation). Small images go through an adapted stem
(``stem: small``: a 3x3 stride-1 first convolution, no early max-pool) or a declared ``resize``.
"""

from __future__ import annotations

from typing import Any, TypeVar

import torch
from torch import nn
from torch.nn import functional as F

from hpo._torchvision import import_timm, import_torchvision
from hpo.config.trial import (
    AlexNetConfig,
    DenseNetConfig,
    EfficientNetConfig,
    InceptionConfig,
    MobileNetConfig,
    ResNetConfig,
    TimmConfig,
    VGGConfig,
    ZooConfig,
)
from hpo.models._registry import register_family
from hpo.models.weights import load_pretrained

M = TypeVar("M", bound=nn.Module)


def _part(net: nn.Module, path: str, kind: type[M]) -> M:
    """The submodule at ``path`` (``features.0.0``) of a torchvision network, checked to be a ``kind``."""
    found = net.get_submodule(path)
    if not isinstance(found, kind):
        raise TypeError(f"{type(net).__name__}.{path} is a {type(found).__name__}, expected {kind.__name__}")
    return found


class Resize(nn.Module):
    """Scale every batch to ``size`` x ``size`` (bilinear), inside the model: exports carry it along."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] == (self.size, self.size):
            return x
        return F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False, antialias=False)


class RepeatChannels(nn.Module):
    """Grey images into a network pretrained on RGB: repeat the one channel three times."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x


def _stem(conv: nn.Conv2d, config: ZooConfig, in_channels: int, *, small_kernel: int | None = 3) -> nn.Conv2d:
    """The first convolution for this dataset. ``stem: small``: stride 1 (and a ``small_kernel`` x
    ``small_kernel`` kernel unless pretrained, whose trained kernel stays); the dataset's channels unless
    pretrained (then grey images are repeated to RGB in front, see ``_wrap``)."""
    small = config.stem == "small"
    if config.pretrained:
        if small:
            conv.stride = (1, 1)
        return conv
    k = (small_kernel or conv.kernel_size[0]) if small else conv.kernel_size[0]
    return nn.Conv2d(
        in_channels,
        conv.out_channels,
        k,
        stride=1 if small else conv.stride[0],
        padding=k // 2 if small else conv.padding[0],
        bias=conv.bias is not None,
    )


def _wrap(config: ZooConfig, net: nn.Module, in_channels: int) -> nn.Module:
    """Put the declared resize, and channel repetition for pretrained RGB weights, in front of ``net``."""
    front: list[nn.Module] = []
    if config.pretrained and in_channels == 1:
        front.append(RepeatChannels())
    if config.resize:
        front.append(Resize(config.resize))
    return nn.Sequential(*front, net) if front else net


def _torchvision_model(name: str, config: ZooConfig, num_classes: int, **kwargs: object) -> nn.Module:
    models = import_torchvision().models
    if config.pretrained:
        net = models.get_model(name, weights=None, **kwargs)
        load_pretrained(net, name)
        return net
    return models.get_model(name, weights=None, num_classes=num_classes, **kwargs)


def _new_head(linear: nn.Linear, num_classes: int) -> nn.Linear:
    return nn.Linear(linear.in_features, num_classes)


@register_family("resnet")
def build_resnet(config: ResNetConfig, in_channels: int, num_classes: int) -> nn.Module:
    net = _torchvision_model(config.variant, config, num_classes, zero_init_residual=config.zero_init_residual)
    net.set_submodule("conv1", _stem(_part(net, "conv1", nn.Conv2d), config, in_channels))
    if config.stem == "small":
        net.set_submodule("maxpool", nn.Identity())
    net.set_submodule(
        "fc", nn.Sequential(nn.Dropout(config.dropout), _new_head(_part(net, "fc", nn.Linear), num_classes))
    )
    return _wrap(config, net, in_channels)


@register_family("vgg")
def build_vgg(config: VGGConfig, in_channels: int, num_classes: int) -> nn.Module:
    net = _torchvision_model(config.variant, config, num_classes)
    imagenet_stem = config.model_copy(update={"stem": "imagenet"})
    net.set_submodule("features.0", _stem(_part(net, "features.0", nn.Conv2d), imagenet_stem, in_channels))
    if config.stem == "small":
        layers = _part(net, "features", nn.Sequential)
        pools = [i for i, m in enumerate(layers) if isinstance(m, nn.MaxPool2d)]
        layers[pools[-1]] = nn.Identity()  # 28 px: 14, 7, 3, 1 after four pools instead of nothing
        net.set_submodule("avgpool", nn.AdaptiveAvgPool2d(1))
        features = 512
    else:
        features = 512 * 7 * 7
    w = config.head_width
    classifier = nn.Sequential(
        nn.Linear(features, w),
        nn.ReLU(inplace=True),
        nn.Dropout(config.dropout),
        nn.Linear(w, w),
        nn.ReLU(inplace=True),
        nn.Dropout(config.dropout),
        nn.Linear(w, num_classes),
    )
    net.set_submodule("classifier", classifier)
    return _wrap(config, net, in_channels)


@register_family("mobilenet")
def build_mobilenet(config: MobileNetConfig, in_channels: int, num_classes: int) -> nn.Module:
    if config.pretrained and config.width_mult != 1.0:
        raise ValueError("pretrained MobileNet weights exist for width_mult 1.0 only")
    net = _torchvision_model(config.variant, config, num_classes, width_mult=config.width_mult)
    net.set_submodule("features.0.0", _stem(_part(net, "features.0.0", nn.Conv2d), config, in_channels))
    classifier = _part(net, "classifier", nn.Sequential)
    classifier[-1] = _new_head(_part(classifier, str(len(classifier) - 1), nn.Linear), num_classes)
    for m in classifier:
        if isinstance(m, nn.Dropout):
            m.p = config.dropout
    return _wrap(config, net, in_channels)


@register_family("efficientnet")
def build_efficientnet(config: EfficientNetConfig, in_channels: int, num_classes: int) -> nn.Module:
    net = _torchvision_model(config.variant, config, num_classes, stochastic_depth_prob=config.stochastic_depth)
    net.set_submodule("features.0.0", _stem(_part(net, "features.0.0", nn.Conv2d), config, in_channels))
    classifier = _part(net, "classifier", nn.Sequential)
    last = _part(classifier, str(len(classifier) - 1), nn.Linear)
    net.set_submodule("classifier", nn.Sequential(nn.Dropout(config.dropout), _new_head(last, num_classes)))
    return _wrap(config, net, in_channels)


@register_family("densenet")
def build_densenet(config: DenseNetConfig, in_channels: int, num_classes: int) -> nn.Module:
    if config.pretrained and config.growth_rate != 32:
        raise ValueError("pretrained DenseNet-121 weights exist for growth_rate 32 only")
    if config.pretrained:
        net = _torchvision_model(
            config.variant, config, num_classes, drop_rate=config.drop_rate, memory_efficient=config.memory_efficient
        )
    else:  # DenseNet-121's blocks with any growth rate
        net = import_torchvision().models.DenseNet(
            growth_rate=config.growth_rate,
            block_config=(6, 12, 24, 16),
            num_init_features=2 * config.growth_rate,
            drop_rate=config.drop_rate,
            memory_efficient=config.memory_efficient,
            num_classes=num_classes,
        )
    net.set_submodule("features.conv0", _stem(_part(net, "features.conv0", nn.Conv2d), config, in_channels))
    if config.stem == "small":
        net.set_submodule("features.pool0", nn.Identity())
    head = _new_head(_part(net, "classifier", nn.Linear), num_classes)
    net.set_submodule("classifier", nn.Sequential(nn.Dropout(config.dropout), head))
    return _wrap(config, net, in_channels)


class _MainLogits(nn.Module):
    """Inception v3 returns (logits, aux) while training with aux_logits; we train without the aux head."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(x)
        return out.logits if hasattr(out, "logits") else out


@register_family("inception")
def build_inception(config: InceptionConfig, in_channels: int, num_classes: int) -> nn.Module:
    # Trained without the auxiliary head, and without torchvision's input re-normalisation (Classifier
    # normalises). ImageNet weights were saved with the head: a pretrained net is built with it, loaded
    # strictly, then the head is dropped.
    net = _torchvision_model(
        config.variant,
        config,
        num_classes,
        aux_logits=config.pretrained,
        transform_input=False,
        init_weights=True,
        dropout=config.dropout,
    )
    if config.pretrained:
        inception: Any = net  # torchvision's Inception3 (untyped): its head slot takes None
        inception.AuxLogits, inception.aux_logits = None, False
        net.set_submodule("fc", _new_head(_part(net, "fc", nn.Linear), num_classes))
    stem = _stem(_part(net, "Conv2d_1a_3x3.conv", nn.Conv2d), config, in_channels)
    net.set_submodule("Conv2d_1a_3x3.conv", stem)
    return _wrap(config, _MainLogits(net), in_channels)


@register_family("alexnet")
def build_alexnet(config: AlexNetConfig, in_channels: int, num_classes: int) -> nn.Module:
    net = _torchvision_model("alexnet", config, num_classes, dropout=config.dropout)
    # 11x11 stride 4 would leave 28 px nothing
    net.set_submodule("features.0", _stem(_part(net, "features.0", nn.Conv2d), config, in_channels))
    if config.stem == "small":
        net.set_submodule("avgpool", nn.AdaptiveAvgPool2d(2))
        features = 256 * 2 * 2
    else:
        features = 256 * 6 * 6
    w = config.head_width
    classifier = nn.Sequential(
        nn.Dropout(config.dropout),
        nn.Linear(features, w),
        nn.ReLU(inplace=True),
        nn.Dropout(config.dropout),
        nn.Linear(w, w),
        nn.ReLU(inplace=True),
        nn.Linear(w, num_classes),
    )
    net.set_submodule("classifier", classifier)
    return _wrap(config, net, in_channels)


@register_family("timm")
def build_timm(config: TimmConfig, in_channels: int, num_classes: int) -> nn.Module:
    net = import_timm().create_model(
        config.model,
        pretrained=False,
        num_classes=num_classes,
        in_chans=in_channels,
        drop_rate=config.dropout,
        drop_path_rate=config.drop_path or None,
    )
    if config.pretrained:
        load_pretrained(net, f"timm/{config.model}", in_channels=in_channels)
    return _wrap(config.model_copy(update={"pretrained": False}), net, in_channels)


# ------------------------------------------------------------------------------------- transfer learning
_EXPANDED = ("features", "stages", "layers", "blocks")  # containers whose children are the stages


def backbone_parts(model: nn.Module) -> tuple[list[nn.Module], nn.Module]:
    """(the backbone's stages from input to output, the classifier head) of a built model, for freezing
    and per-part learning rates."""
    inner = getattr(model, "net", None)  # Classifier's network
    net = inner if isinstance(inner, nn.Module) and not isinstance(model, _MainLogits) else model
    while isinstance(net, nn.Sequential) and len(net) and isinstance(net[0], (Resize, RepeatChannels)):
        net = net[-1]
    if isinstance(net, _MainLogits):
        net = net.net
    head = getattr(net, "fc", None) or getattr(net, "classifier", None)
    get_classifier = getattr(net, "get_classifier", None)  # timm's
    if head is None and callable(get_classifier):
        head = get_classifier()
    children = [(n, c) for n, c in net.named_children() if any(True for _ in c.parameters())]
    if head is None:
        head = children[-1][1]
    stages: list[nn.Module] = []
    for i, (name, child) in enumerate(children):
        if child is head or any(m is head for m in child.modules()):
            continue
        if name in _EXPANDED or (isinstance(net, nn.Sequential) and i == 0 and isinstance(child, nn.Sequential)):
            stages += [c for c in child.children() if any(True for _ in c.parameters())]
        else:
            stages.append(child)
    return stages, head
