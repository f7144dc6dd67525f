"""Batched augmentation on the device: each op picks its samples with its probability, then transforms
all picked samples in one tensor operation (no per-sample Python).

Translation moves by whole pixels (pad and crop, as airbench does): exact, no interpolation blur, and
cheaper than a resampling grid. Rotation, the affine map (translate, scale, shear) and the resized crop
are composed into one affine matrix per sample and resampled together, once, with ``grid_sample``, for
the samples that any of them picked. Colour jitter is one brightness factor and one 3x3 colour matrix per
sample (contrast, saturation, and hue as a rotation in YIQ space). A picked sample is always changed:
shifts of zero pixels and near-zero angles are never drawn. CutMix and MixUp also mix the labels: they
turn the targets into class probabilities that the soft-label loss takes.

Random erasing is kornia's. kornia has the others too (but not CutMix/MixUp's label mixing); measured
(benchmarks/augmentation.py), its colour jitter (HSV round trips) is ~5x slower on CPU batches, and its
geometric ops resample once each where the composed map resamples once for all, so those are written
out below.

Each op is registered once (``register_augmentation``) under the ``AugmentConfig`` probabilities it reads,
and runs in registration order. The config declares which fields are probabilities (``Probability``);
``check_registry`` runs at import, so a probability without an op, or an op without its probability,
stops hpo from starting. Adding an augmentation: its fields in ``AugmentConfig``, its op here.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import overload

import torch
import torch.nn.functional as F

from hpo.config.trial import AugmentConfig


def _pick(n: int, p: float, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    if p <= 0:
        return torch.zeros(n, dtype=torch.bool, device=device)
    return torch.rand(n, generator=generator, device=device) < p


def _flip(x: torch.Tensor, p: float, dim: int, generator: torch.Generator | None) -> torch.Tensor:
    idx = _pick(len(x), p, generator, x.device).nonzero().squeeze(1)
    if len(idx) == 0:
        return x
    # index_copy_ of the picked samples: ~10x faster on CPU than torch.where over the whole batch
    return x.clone().index_copy_(0, idx, x.index_select(0, idx).flip(dim))


def hflip(x: torch.Tensor, p: float, generator: torch.Generator | None = None) -> torch.Tensor:
    return _flip(x, p, -1, generator)


def vflip(x: torch.Tensor, p: float, generator: torch.Generator | None = None) -> torch.Tensor:
    return _flip(x, p, -2, generator)


def translate(x: torch.Tensor, p: float, max_px: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Shift each picked sample by whole pixels, (dy, dx) drawn uniformly from the (2r+1)^2 - 1 non-zero
    shifts up to ``max_px``, filling with zeros. One slice copy per distinct shift (at most 24 for r = 2):
    3x faster on CPU than gathering every pixel by index."""
    idx = _pick(len(x), p, generator, x.device).nonzero().squeeze(1)
    if len(idx) == 0:
        return x
    n, (h, w), r = len(idx), x.shape[-2:], max_px
    side = 2 * r + 1
    centre = side * side // 2
    code = torch.randint(0, side * side - 1, (n,), generator=generator, device=x.device)
    code = code + (code >= centre).long()
    padded = F.pad(x.index_select(0, idx), (r, r, r, r))
    moved = torch.empty_like(padded[:, :, :h, :w])
    for value in code.unique().tolist():
        sel = (code == value).nonzero().squeeze(1)
        dy, dx = value // side - r, value % side - r
        moved[sel] = padded[sel, :, r - dy : r - dy + h, r - dx : r - dx + w]
    return x.clone().index_copy_(0, idx, moved)


MIN_MIX = 1e-3  # a picked sample keeps at most 1 - MIN_MIX of itself: it is always changed


def _beta(alpha: float, n: int, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """``n`` draws from Beta(alpha, alpha) within [MIN_MIX, 1 - MIN_MIX], through the generator
    (torch.distributions takes none). In float64: for small alpha a float32 gamma draw underflows to 0."""
    gamma = torch._standard_gamma
    a = torch.full((n,), float(alpha), device=device, dtype=torch.float64)
    g1, g2 = gamma(a, generator=generator), gamma(a, generator=generator)
    lam = torch.where(g1 + g2 > 0, g1 / (g1 + g2), torch.full_like(g1, 0.5))
    return lam.clamp(MIN_MIX, 1 - MIN_MIX).float()


def _partners(idx: torch.Tensor, n: int, generator: torch.Generator | None) -> torch.Tensor:
    """For each picked sample, another sample of the batch (never itself, when the batch has two)."""
    if n < 2:
        return idx
    offset = torch.randint(1, n, (len(idx),), generator=generator, device=idx.device)
    return (idx + offset) % n


def mixup(
    x: torch.Tensor, targets: torch.Tensor, p: float, alpha: float, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each picked sample becomes ``lam * itself + (1 - lam) * a partner`` (another sample of the batch),
    and so does its target, with ``lam`` ~ Beta(alpha, alpha)."""
    idx = _pick(len(x), p, generator, x.device).nonzero().squeeze(1)
    if len(idx) == 0:
        return x, targets
    partner = _partners(idx, len(x), generator)
    lam = _beta(alpha, len(idx), generator, x.device)
    x, targets = x.clone(), targets.clone()
    x[idx] = lam.view(-1, 1, 1, 1) * x[idx] + (1 - lam.view(-1, 1, 1, 1)) * x[partner]
    targets[idx] = lam.view(-1, 1) * targets[idx] + (1 - lam.view(-1, 1)) * targets[partner]
    return x, targets


def cutmix(
    x: torch.Tensor, targets: torch.Tensor, p: float, alpha: float, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each picked sample gets a rectangle pasted from a partner (area ``1 - lam`` of the image, ``lam`` ~
    Beta(alpha, alpha), clipped at the border); its target mixes by the area actually pasted."""
    idx = _pick(len(x), p, generator, x.device).nonzero().squeeze(1)
    if len(idx) == 0:
        return x, targets
    n, (h, w), dev = len(idx), x.shape[-2:], x.device
    partner = _partners(idx, len(x), generator)
    lam = _beta(alpha, n, generator, dev)
    cut = torch.sqrt(1 - lam)
    ch, cw = (cut * h).round().long().clamp(min=1), (cut * w).round().long().clamp(min=1)
    cy = torch.randint(0, h, (n,), generator=generator, device=dev)
    cx = torch.randint(0, w, (n,), generator=generator, device=dev)
    y0, y1 = (cy - ch // 2).clamp(0, h), (cy + ch - ch // 2).clamp(0, h)
    x0, x1 = (cx - cw // 2).clamp(0, w), (cx + cw - cw // 2).clamp(0, w)
    rows, cols = torch.arange(h, device=dev).view(1, h, 1), torch.arange(w, device=dev).view(1, 1, w)
    box = (
        (rows >= y0.view(-1, 1, 1))
        & (rows < y1.view(-1, 1, 1))
        & (cols >= x0.view(-1, 1, 1))
        & (cols < x1.view(-1, 1, 1))
    ).unsqueeze(1)  # (n, 1, h, w)
    pasted = box.flatten(1).float().mean(1)  # the share of the image that now comes from the partner
    x, targets = x.clone(), targets.clone()
    x[idx] = torch.where(box, x[partner], x[idx])
    targets[idx] = (1 - pasted).view(-1, 1) * targets[idx] + pasted.view(-1, 1) * targets[partner]
    return x, targets


def _uniform(low, high, n: int, generator, device) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=generator, device=device)


def geometric(x: torch.Tensor, c: AugmentConfig, generator: torch.Generator | None = None) -> torch.Tensor:
    """Rotation, affine (translate, scale, shear) and resized crop, each on the samples it picks with its
    probability, composed into one output-to-input affine map per sample and resampled once (bilinear,
    zeros outside)."""
    n, dev = len(x), x.device
    rot, aff, crop = (_pick(n, p, generator, dev) for p in (c.rotate, c.affine, c.resized_crop))
    idx = (rot | aff | crop).nonzero().squeeze(1)
    if len(idx) == 0:
        return x
    m = len(idx)
    eye = torch.eye(3, device=dev).expand(m, 3, 3)
    theta = eye.clone()
    if rot.any():
        magnitude = c.rotate_degrees * _uniform(0.1, 1.0, m, generator, dev)
        sign = torch.randint(0, 2, (m,), generator=generator, device=dev) * 2 - 1
        angle = torch.where(rot[idx], magnitude * sign * (math.pi / 180.0), torch.zeros(m, device=dev))
        cos, sin = torch.cos(angle), torch.sin(angle)
        r = eye.clone()
        r[:, 0, 0], r[:, 0, 1], r[:, 1, 0], r[:, 1, 1] = cos, -sin, sin, cos
        theta = r @ theta
    if aff.any():
        picked = aff[idx]
        a = eye.clone()
        scale = torch.where(picked, _uniform(1 - c.affine_scale, 1 + c.affine_scale, m, generator, dev), 1.0)
        shear = torch.where(
            picked, torch.tan(_uniform(-c.affine_shear, c.affine_shear, m, generator, dev) * (math.pi / 180.0)), 0.0
        )
        shift = 2 * c.affine_translate  # normalised coordinates span 2
        tx = torch.where(picked, _uniform(-shift, shift, m, generator, dev), 0.0)
        ty = torch.where(picked, _uniform(-shift, shift, m, generator, dev), 0.0)
        a[:, 0, 0], a[:, 0, 1], a[:, 0, 2] = 1 / scale, shear / scale, tx
        a[:, 1, 1], a[:, 1, 2] = 1 / scale, ty
        theta = a @ theta
    if crop.any():
        picked = crop[idx]
        area = _uniform(c.crop_scale, 1.0, m, generator, dev)
        ratio = torch.exp(_uniform(math.log(3 / 4), math.log(4 / 3), m, generator, dev))
        w, h = torch.sqrt(area * ratio).clamp(max=1.0), torch.sqrt(area / ratio).clamp(max=1.0)
        cx, cy = _uniform(-1, 1, m, generator, dev) * (1 - w), _uniform(-1, 1, m, generator, dev) * (1 - h)
        k = eye.clone()
        k[:, 0, 0], k[:, 0, 2] = torch.where(picked, w, 1.0), torch.where(picked, cx, 0.0)
        k[:, 1, 1], k[:, 1, 2] = torch.where(picked, h, 1.0), torch.where(picked, cy, 0.0)
        theta = k @ theta
    grid = F.affine_grid(theta[:, :2].to(x.dtype), [m, *x.shape[1:]], align_corners=False)
    moved = F.grid_sample(x.index_select(0, idx), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return x.clone().index_copy_(0, idx, moved)


_YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
_GREY = torch.tensor([0.299, 0.587, 0.114])


def color_jitter(
    x: torch.Tensor, p: float, strength: float, hue: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Brightness and contrast by factors in [1 - strength, 1 + strength]; on RGB also saturation (the
    same range) and hue (a turn of up to ``hue`` of the colour wheel, as a rotation in YIQ space)."""
    idx = _pick(len(x), p, generator, x.device).nonzero().squeeze(1)
    if len(idx) == 0:
        return x
    m, dev = len(idx), x.device
    picked = x[idx]
    brightness = _uniform(1 - strength, 1 + strength, m, generator, dev).view(-1, 1, 1, 1)
    contrast = _uniform(1 - strength, 1 + strength, m, generator, dev).view(-1, 1, 1, 1)
    picked = picked * brightness
    rgb = x.shape[1] == 3
    grey = torch.einsum("c,nchw->nhw", _GREY.to(dev, x.dtype), picked) if rgb else picked[:, 0]
    mean = grey.mean((1, 2)).view(-1, 1, 1, 1)
    picked = (picked - mean) * contrast + mean
    if rgb:
        saturation = _uniform(1 - strength, 1 + strength, m, generator, dev)
        turn = _uniform(-hue, hue, m, generator, dev) * (2 * math.pi)
        yiq, grey_rows = _YIQ.to(dev), _GREY.to(dev).expand(3, 3)
        sat = saturation.view(-1, 1, 1) * torch.eye(3, device=dev) + (1 - saturation).view(-1, 1, 1) * grey_rows
        rot = torch.zeros(m, 3, 3, device=dev)
        rot[:, 0, 0] = 1
        rot[:, 1, 1], rot[:, 1, 2], rot[:, 2, 1], rot[:, 2, 2] = (
            torch.cos(turn),
            -torch.sin(turn),
            torch.sin(turn),
            torch.cos(turn),
        )
        matrix = torch.linalg.inv(yiq) @ rot @ yiq @ sat
        picked = torch.einsum("nij,njhw->nihw", matrix.to(x.dtype), picked)
    out = x.clone()
    out[idx] = picked.clamp_(0.0, 1.0)
    return out


# ------------------------------------------------------------------------------------------- registry
Targets = torch.Tensor | None
AugmentOp = Callable[[torch.Tensor, Targets, AugmentConfig, torch.Generator | None], tuple[torch.Tensor, Targets]]


@dataclass(frozen=True)
class Augmentation:
    """One registered op: the ``AugmentConfig`` probabilities that pick its samples, and the function that
    augments a batch ``(x, targets, config, generator) -> (x, targets)``."""

    reads: tuple[str, ...]
    apply: AugmentOp
    mixes_labels: bool = False  # changes the targets too: runs only where they are given (as probabilities)


# By name (its first probability), in the order a batch goes through them.
AUGMENTATIONS: dict[str, Augmentation] = {}


def register_augmentation(*reads: str, mixes_labels: bool = False) -> Callable[[AugmentOp], AugmentOp]:
    """Register an op under the ``AugmentConfig`` probabilities it reads (each field a ``Probability``).
    Ops run in the order they are registered; ``check_registry`` holds the registry and config together."""

    def decorate(apply: AugmentOp) -> AugmentOp:
        taken = {name for aug in AUGMENTATIONS.values() for name in aug.reads}
        if not reads or taken & set(reads):
            raise ValueError(f"augmentation probabilities {sorted(taken & set(reads))} already have an op")
        AUGMENTATIONS[reads[0]] = Augmentation(tuple(reads), apply, mixes_labels)
        return apply

    return decorate


def check_registry(config: type[AugmentConfig] = AugmentConfig) -> None:
    """Raise unless each probability ``config`` declares has exactly one registered op, and every op
    reads only declared probabilities: an op left out would never run, silently."""
    declared = config.probabilities()
    read = [name for aug in AUGMENTATIONS.values() for name in aug.reads]
    unimplemented = [name for name in declared if name not in read]
    undeclared = [name for name in read if name not in declared]
    if unimplemented or undeclared:
        raise RuntimeError(
            f"hpo.data.augment and {config.__name__} disagree: probabilities without an op: "
            f"{unimplemented or 'none'}; ops reading no declared probability: {undeclared or 'none'}"
        )


@register_augmentation("hflip")
def _hflip(
    x: torch.Tensor, targets: Targets, c: AugmentConfig, g: torch.Generator | None
) -> tuple[torch.Tensor, Targets]:
    return hflip(x, c.hflip, g), targets


@register_augmentation("vflip")
def _vflip(
    x: torch.Tensor, targets: Targets, c: AugmentConfig, g: torch.Generator | None
) -> tuple[torch.Tensor, Targets]:
    return vflip(x, c.vflip, g), targets


@register_augmentation("translate")
def _translate(
    x: torch.Tensor, targets: Targets, c: AugmentConfig, g: torch.Generator | None
) -> tuple[torch.Tensor, Targets]:
    return translate(x, c.translate, c.translate_px, g), targets


@register_augmentation("rotate", "affine", "resized_crop")  # one resampling for the three
def _geometric(
    x: torch.Tensor, targets: Targets, c: AugmentConfig, g: torch.Generator | None
) -> tuple[torch.Tensor, Targets]:
    return geometric(x, c, g), targets


@register_augmentation("color_jitter")
def _color_jitter(
    x: torch.Tensor, targets: Targets, c: AugmentConfig, g: torch.Generator | None
) -> tuple[torch.Tensor, Targets]:
    return color_jitter(x, c.color_jitter, c.jitter, c.jitter_hue if x.shape[1] == 3 else 0.0, g), targets


@functools.lru_cache(maxsize=8)
def _kornia_erasing(p: float, scale: float) -> torch.nn.Module:
    import kornia.augmentation as K  # as fast as a hand-written one (benchmarks/augmentation.py)

    return K.RandomErasing(scale=(0.02, scale), ratio=(0.3, 3.3), value=0.0, p=p)


@register_augmentation("erasing")
def _erasing(
    x: torch.Tensor, targets: Targets, c: AugmentConfig, g: torch.Generator | None
) -> tuple[torch.Tensor, Targets]:
    # kornia draws from torch's global generator (seeded by the trainer), not from ``g``
    return _kornia_erasing(c.erasing, c.erasing_scale)(x), targets


@register_augmentation("cutmix", mixes_labels=True)
def _cutmix(
    x: torch.Tensor, targets: Targets, c: AugmentConfig, g: torch.Generator | None
) -> tuple[torch.Tensor, Targets]:
    assert targets is not None  # BatchAugment runs label-mixing ops only with targets
    return cutmix(x, targets, c.cutmix, c.cutmix_alpha, g)


@register_augmentation("mixup", mixes_labels=True)
def _mixup(
    x: torch.Tensor, targets: Targets, c: AugmentConfig, g: torch.Generator | None
) -> tuple[torch.Tensor, Targets]:
    assert targets is not None  # BatchAugment runs label-mixing ops only with targets
    return mixup(x, targets, c.mixup, c.mixup_alpha, g)


check_registry()


class BatchAugment:
    """The augmentations of one trial, applied to float image batches in [0, 1] and, for CutMix and
    MixUp, their targets (class probabilities, or multi-hot labels). The ops whose probabilities are all
    zero are left out here, once, not per batch."""

    def __init__(self, config: AugmentConfig, generator: torch.Generator | None = None, channels: int = 1) -> None:
        self.config = config
        self.generator = generator
        self.channels = channels
        self.ops = [aug for aug in AUGMENTATIONS.values() if any(getattr(config, name) > 0 for name in aug.reads)]

    @property
    def active(self) -> bool:
        return bool(self.ops)

    @property
    def mixes_labels(self) -> bool:
        return any(aug.mixes_labels for aug in self.ops)

    @overload
    def __call__(self, x: torch.Tensor) -> torch.Tensor: ...
    @overload
    def __call__(self, x: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...

    def __call__(
        self, x: torch.Tensor, targets: torch.Tensor | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Augmented ``x``; with ``targets`` (N, classes) given, ``(x, targets)`` with mixed targets."""
        mixed: Targets = targets
        for aug in self.ops:
            if aug.mixes_labels and targets is None:
                continue
            x, mixed = aug.apply(x, mixed, self.config, self.generator)
        if mixed is None:
            return x
        return x, mixed
