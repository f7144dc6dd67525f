"""The ImageNet families from torchvision (ResNet, VGG, MobileNet, EfficientNet, DenseNet, Inception,
AlexNet) and any timm model, adapted to the dataset's channels, classes and image size.

Each builder takes the family's config (``hpo.config.trial``) and returns a plain ``nn.Module``; the
registry wraps it in ``Classifier`` (normalisation). Small images go through an adapted stem
(``stem: small``: a 3x3 stride-1 first convolution, no early max-pool) or a declared ``resize``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F

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


def _torchvision_model(name: str, config: ZooConfig, num_classes: int, **kwargs) -> nn.Module:
    from hpo._torchvision import import_torchvision

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
    net.conv1 = _stem(net.conv1, config, in_channels)
    if config.stem == "small":
        net.maxpool = nn.Identity()
    net.fc = nn.Sequential(nn.Dropout(config.dropout), _new_head(net.fc, num_classes))
    return _wrap(config, net, in_channels)


@register_family("vgg")
def build_vgg(config: VGGConfig, in_channels: int, num_classes: int) -> nn.Module:
    net = _torchvision_model(config.variant, config, num_classes)
    net.features[0] = _stem(net.features[0], config.model_copy(update={"stem": "imagenet"}), in_channels)
    if config.stem == "small":
        pools = [i for i, m in enumerate(net.features) if isinstance(m, nn.MaxPool2d)]
        net.features[pools[-1]] = nn.Identity()  # 28 px: 14, 7, 3, 1 after four pools instead of nothing
        net.avgpool = nn.AdaptiveAvgPool2d(1)
        features = 512
    else:
        features = 512 * 7 * 7
    w = config.head_width
    net.classifier = nn.Sequential(
        nn.Linear(features, w),
        nn.ReLU(inplace=True),
        nn.Dropout(config.dropout),
        nn.Linear(w, w),
        nn.ReLU(inplace=True),
        nn.Dropout(config.dropout),
        nn.Linear(w, num_classes),
    )
    return _wrap(config, net, in_channels)


@register_family("mobilenet")
def build_mobilenet(config: MobileNetConfig, in_channels: int, num_classes: int) -> nn.Module:
    if config.pretrained and config.width_mult != 1.0:
        raise ValueError("pretrained MobileNet weights exist for width_mult 1.0 only")
    net = _torchvision_model(config.variant, config, num_classes, width_mult=config.width_mult)
    net.features[0][0] = _stem(net.features[0][0], config, in_channels)
    last = net.classifier[-1]
    net.classifier[-1] = _new_head(last, num_classes)
    for m in net.classifier:
        if isinstance(m, nn.Dropout):
            m.p = config.dropout
    return _wrap(config, net, in_channels)


@register_family("efficientnet")
def build_efficientnet(config: EfficientNetConfig, in_channels: int, num_classes: int) -> nn.Module:
    net = _torchvision_model(config.variant, config, num_classes, stochastic_depth_prob=config.stochastic_depth)
    net.features[0][0] = _stem(net.features[0][0], config, in_channels)
    net.classifier = nn.Sequential(nn.Dropout(config.dropout), _new_head(net.classifier[-1], num_classes))
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
        from hpo._torchvision import import_torchvision

        net = import_torchvision().models.DenseNet(
            growth_rate=config.growth_rate,
            block_config=(6, 12, 24, 16),
            num_init_features=2 * config.growth_rate,
            drop_rate=config.drop_rate,
            memory_efficient=config.memory_efficient,
            num_classes=num_classes,
        )
    net.features.conv0 = _stem(net.features.conv0, config, in_channels)
    if config.stem == "small":
        net.features.pool0 = nn.Identity()
    net.classifier = nn.Sequential(nn.Dropout(config.dropout), _new_head(net.classifier, num_classes))
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
    net = _torchvision_model(
        config.variant, config, num_classes, aux_logits=False, init_weights=True, dropout=config.dropout
    )
    if config.pretrained:
        net.AuxLogits = None
        net.aux_logits = False
        net.fc = _new_head(net.fc, num_classes)
    net.Conv2d_1a_3x3.conv = _stem(net.Conv2d_1a_3x3.conv, config, in_channels)
    net.transform_input = False
    return _wrap(config, _MainLogits(net), in_channels)


@register_family("alexnet")
def build_alexnet(config: AlexNetConfig, in_channels: int, num_classes: int) -> nn.Module:
    net = _torchvision_model("alexnet", config, num_classes, dropout=config.dropout)
    net.features[0] = _stem(net.features[0], config, in_channels)  # 11x11 stride 4 would leave 28 px nothing
    if config.stem == "small":
        net.avgpool = nn.AdaptiveAvgPool2d(2)
        features = 256 * 2 * 2
    else:
        features = 256 * 6 * 6
    w = config.head_width
    net.classifier = nn.Sequential(
        nn.Dropout(config.dropout),
        nn.Linear(features, w),
        nn.ReLU(inplace=True),
        nn.Dropout(config.dropout),
        nn.Linear(w, w),
        nn.ReLU(inplace=True),
        nn.Linear(w, num_classes),
    )
    return _wrap(config, net, in_channels)


@register_family("timm")
def build_timm(config: TimmConfig, in_channels: int, num_classes: int) -> nn.Module:
    import_timm = _import_timm()
    net = import_timm.create_model(
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


def _import_timm():
    from hpo._torchvision import import_torchvision

    import_torchvision()  # timm imports torchvision: through the one place that makes that work
    import timm

    return timm


BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "resnet": build_resnet,
    "vgg": build_vgg,
    "mobilenet": build_mobilenet,
    "efficientnet": build_efficientnet,
    "densenet": build_densenet,
    "inception": build_inception,
    "alexnet": build_alexnet,
    "timm": build_timm,
}


# ------------------------------------------------------------------------------------- transfer learning
_EXPANDED = ("features", "stages", "layers", "blocks")  # containers whose children are the stages


def backbone_parts(model: nn.Module) -> tuple[list[nn.Module], nn.Module]:
    """(the backbone's stages from input to output, the classifier head) of a built model, for freezing
    and per-part learning rates."""
    net = model.net if hasattr(model, "net") and not isinstance(model, _MainLogits) else model
    while isinstance(net, nn.Sequential) and len(net) and isinstance(net[0], (Resize, RepeatChannels)):
        net = net[-1]
    if isinstance(net, _MainLogits):
        net = net.net
    head = getattr(net, "fc", None) or getattr(net, "classifier", None)
    if head is None and hasattr(net, "get_classifier"):
        head = net.get_classifier()
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
