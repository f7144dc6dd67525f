"""Batched augmentation on the device: each op draws, for every sample of the batch, whether it is
picked (with its probability) and its parameters, then transforms the whole batch in a few tensor
operations, the unpicked samples with identity parameters or blended back (``torch.where``). No op asks
the device anything: no ``nonzero``, boolean indexing, ``.item()`` or ``if tensor``, whose answers a GPU
would have to finish the batch to give (a host sync per op per batch; ``tests/unit/test_host_syncs.py``
counts them). Shapes stay static, and an op with probability 0 is left out once, by ``BatchAugment``.

Translation moves by whole pixels (pad, then each sample reads its own window: airbench's crop): exact,
no interpolation blur, and cheaper than a resampling grid. Rotation, the affine map (translate, scale,
shear) and the resized crop are composed into one affine matrix per sample and resampled together, once,
with ``grid_sample``. Colour jitter is one brightness factor and one 3x3 colour matrix per sample
(contrast, saturation, and hue as a rotation in YIQ space). Random erasing zeroes one rectangle per
sample, drawn as kornia's ``RandomErasing`` draws it (kornia's picks samples by boolean indexing: a sync).
A picked sample is always changed: shifts of zero pixels and near-zero angles are never drawn. CutMix and
MixUp also mix the labels: they turn the targets into class probabilities that the soft-label loss takes.

kornia has most of these too (not CutMix/MixUp's label mixing); measured (benchmarks/augmentation.py), its
colour jitter (HSV round trips) is ~5x slower on CPU batches, and its geometric ops resample once each
where the composed map resamples once for all, so they are written out below.

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

# The accelerator formulation everywhere: every op static-shape and sync-free. Off, a CPU takes the cheaper
# data-dependent path where one exists (the geometric resample); tests/unit/test_host_syncs.py turns it on
# to count, on a CPU, what a GPU would wait for.
STATIC_SHAPES_ON_CPU = False


def _pick(n: int, p: float, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """Which of ``n`` samples an op with probability ``p`` picks: a bool mask, never read on the host."""
    if p <= 0:
        return torch.zeros(n, dtype=torch.bool, device=device)
    return torch.rand(n, generator=generator, device=device) < p


def _per_sample(mask: torch.Tensor) -> torch.Tensor:
    return mask.view(-1, 1, 1, 1)


def _uniform(low, high, n: int, generator, device) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=generator, device=device)


def _flip(x: torch.Tensor, p: float, dim: int, generator: torch.Generator | None) -> torch.Tensor:
    picked = _pick(len(x), p, generator, x.device)
    if dim != -1:  # rows are whole slices: a flipped copy blended in is the cheaper way on CPU
        return torch.where(_per_sample(picked), x.flip(dim), x)
    # columns: each sample reads them in its own order, reversed where picked; one gather, ~1.5x faster on
    # CPU than the blend (benchmarks/augmentation.py), ~5x slower for rows
    forward = torch.arange(x.shape[-1], device=x.device)
    order = torch.where(picked.view(-1, 1), forward.flip(0), forward)
    return x.gather(-1, order.view(len(x), 1, 1, -1).expand_as(x))


def hflip(x: torch.Tensor, p: float, generator: torch.Generator | None = None) -> torch.Tensor:
    return _flip(x, p, -1, generator)


def vflip(x: torch.Tensor, p: float, generator: torch.Generator | None = None) -> torch.Tensor:
    return _flip(x, p, -2, generator)


def translate(x: torch.Tensor, p: float, max_px: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Shift each picked sample by whole pixels, (dy, dx) drawn uniformly from the (2r+1)^2 - 1 non-zero
    shifts up to ``max_px``, filling with zeros. The batch is padded once; each sample then reads its
    window of the padded image (``unfold`` views, one indexed copy), the unpicked ones the centre window,
    which is the sample itself."""
    n, dev, r = len(x), x.device, max_px
    side = 2 * r + 1
    centre = side * side // 2
    code = torch.randint(0, side * side - 1, (n,), generator=generator, device=dev)
    code = code + (code >= centre).long()  # never the centre: a picked sample always moves
    code = torch.where(_pick(n, p, generator, dev), code, centre)
    h, w = x.shape[-2:]
    # (n, C, side, side, h, w): the window at offset (i, j) of every sample, a view of the padded batch
    windows = F.pad(x, (r, r, r, r)).unfold(2, h, 1).unfold(3, w, 1)
    # a shift by (dy, dx) reads the window at offset (r - dy, r - dx)
    return windows[torch.arange(n, device=dev), :, side - 1 - code // side, side - 1 - code % side]


MIN_MIX = 1e-3  # a picked sample keeps at most 1 - MIN_MIX of itself: it is always changed


def _beta(alpha: float, n: int, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """``n`` draws from Beta(alpha, alpha) within [MIN_MIX, 1 - MIN_MIX], through the generator
    (torch.distributions takes none). In float64: for small alpha a float32 gamma draw underflows to 0."""
    gamma = torch._standard_gamma
    a = torch.full((n,), float(alpha), device=device, dtype=torch.float64)
    g1, g2 = gamma(a, generator=generator), gamma(a, generator=generator)
    lam = torch.where(g1 + g2 > 0, g1 / (g1 + g2), torch.full_like(g1, 0.5))
    return lam.clamp(MIN_MIX, 1 - MIN_MIX).float()


def _partners(n: int, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """For each sample, another sample of the batch (never itself, when the batch has two)."""
    own = torch.arange(n, device=device)
    if n < 2:
        return own
    return (own + torch.randint(1, n, (n,), generator=generator, device=device)) % n


def mixup(
    x: torch.Tensor, targets: torch.Tensor, p: float, alpha: float, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each picked sample becomes ``lam * itself + (1 - lam) * a partner`` (another sample of the batch),
    and so does its target, with ``lam`` ~ Beta(alpha, alpha). The unpicked keep ``lam = 1``: ``lerp``
    returns its end point exactly at weight 1."""
    n, dev = len(x), x.device
    partner = _partners(n, generator, dev)
    lam = torch.where(_pick(n, p, generator, dev), _beta(alpha, n, generator, dev), 1.0)
    mixed = torch.lerp(x[partner], x, _per_sample(lam).to(x.dtype))
    return mixed, torch.lerp(targets[partner], targets, lam.view(-1, 1).to(targets.dtype))


def _boxes(y0: torch.Tensor, y1: torch.Tensor, x0: torch.Tensor, x1: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """(n, 1, h, w) masks of the rectangles rows [y0, y1) x columns [x0, x1), one per sample."""
    rows = torch.arange(h, device=y0.device).view(1, h, 1)
    cols = torch.arange(w, device=y0.device).view(1, 1, w)
    inside = (rows >= y0.view(-1, 1, 1)) & (rows < y1.view(-1, 1, 1))
    return (inside & (cols >= x0.view(-1, 1, 1)) & (cols < x1.view(-1, 1, 1))).unsqueeze(1)


def cutmix(
    x: torch.Tensor, targets: torch.Tensor, p: float, alpha: float, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each picked sample gets a rectangle pasted from a partner (area ``1 - lam`` of the image, ``lam`` ~
    Beta(alpha, alpha), clipped at the border); its target mixes by the area actually pasted. The
    unpicked get an empty rectangle."""
    n, (h, w), dev = len(x), x.shape[-2:], x.device
    picked = _pick(n, p, generator, dev)
    partner = _partners(n, generator, dev)
    cut = torch.sqrt(1 - _beta(alpha, n, generator, dev))
    ch, cw = (cut * h).round().long().clamp(min=1), (cut * w).round().long().clamp(min=1)
    ch, cw = ch * picked, cw * picked
    cy = torch.randint(0, h, (n,), generator=generator, device=dev)
    cx = torch.randint(0, w, (n,), generator=generator, device=dev)
    y0, y1 = (cy - ch // 2).clamp(0, h), (cy + ch - ch // 2).clamp(0, h)
    x0, x1 = (cx - cw // 2).clamp(0, w), (cx + cw - cw // 2).clamp(0, w)
    box = _boxes(y0, y1, x0, x1, h, w)
    pasted = box.flatten(1).float().mean(1)  # the share of the image that now comes from the partner
    mixed = torch.lerp(targets, targets[partner], pasted.view(-1, 1).to(targets.dtype))  # exact at weight 0
    return torch.where(box, x[partner], x), mixed


def _affine_matrices(
    a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, d: torch.Tensor, e: torch.Tensor, f: torch.Tensor
) -> torch.Tensor:
    """(n, 3, 3) matrices [[a, b, c], [d, e, f], [0, 0, 1]] from (n,) entries."""
    zero, one = torch.zeros_like(a), torch.ones_like(a)
    return torch.stack([a, b, c, d, e, f, zero, zero, one], 1).view(-1, 3, 3)


def geometric(x: torch.Tensor, c: AugmentConfig, generator: torch.Generator | None = None) -> torch.Tensor:
    """Rotation, affine (translate, scale, shear) and resized crop, each on the samples it picks with its
    probability, composed into one output-to-input affine map per sample (the identity for what an op
    did not pick) and resampled once (bilinear, zeros outside). The samples no op picked are taken back
    unresampled: bilinear resampling on an identity grid is not exact in floating point."""
    if not (c.rotate > 0 or c.affine > 0 or c.resized_crop > 0):
        return x
    n, dev = len(x), x.device
    theta = torch.eye(3, device=dev).expand(n, 3, 3)
    moved = torch.zeros(n, dtype=torch.bool, device=dev)
    zero = torch.zeros(n, device=dev)
    if c.rotate > 0:
        picked = _pick(n, c.rotate, generator, dev)
        magnitude = c.rotate_degrees * _uniform(0.1, 1.0, n, generator, dev)
        sign = torch.randint(0, 2, (n,), generator=generator, device=dev) * 2 - 1
        angle = torch.where(picked, magnitude * sign * (math.pi / 180.0), 0.0)
        cos, sin = torch.cos(angle), torch.sin(angle)
        theta = _affine_matrices(cos, -sin, zero, sin, cos, zero) @ theta
        moved = moved | picked
    if c.affine > 0:
        picked = _pick(n, c.affine, generator, dev)
        scale = torch.where(picked, _uniform(1 - c.affine_scale, 1 + c.affine_scale, n, generator, dev), 1.0)
        shear = torch.where(
            picked, torch.tan(_uniform(-c.affine_shear, c.affine_shear, n, generator, dev) * (math.pi / 180.0)), 0.0
        )
        shift = 2 * c.affine_translate  # normalised coordinates span 2
        tx = torch.where(picked, _uniform(-shift, shift, n, generator, dev), 0.0)
        ty = torch.where(picked, _uniform(-shift, shift, n, generator, dev), 0.0)
        theta = _affine_matrices(1 / scale, shear / scale, tx, zero, 1 / scale, ty) @ theta
        moved = moved | picked
    if c.resized_crop > 0:
        picked = _pick(n, c.resized_crop, generator, dev)
        area = _uniform(c.crop_scale, 1.0, n, generator, dev)
        ratio = torch.exp(_uniform(math.log(3 / 4), math.log(4 / 3), n, generator, dev))
        w, h = torch.sqrt(area * ratio).clamp(max=1.0), torch.sqrt(area / ratio).clamp(max=1.0)
        cx, cy = _uniform(-1, 1, n, generator, dev) * (1 - w), _uniform(-1, 1, n, generator, dev) * (1 - h)
        crop = _affine_matrices(
            torch.where(picked, w, 1.0), zero, torch.where(picked, cx, 0.0),
            zero, torch.where(picked, h, 1.0), torch.where(picked, cy, 0.0),
        )  # fmt: skip
        theta = crop @ theta
        moved = moved | picked
    theta = theta[:, :2].to(x.dtype)
    if x.device.type == "cpu" and not STATIC_SHAPES_ON_CPU:
        # A CPU waits for nothing: resampling only the moved samples (a gather whose size depends on the
        # draws) is cheaper than resampling the batch (0.6-0.8x at p = 0.5 otherwise, benchmarks/
        # augmentation.py). On an accelerator that size would cost a host sync per batch.
        idx = moved.nonzero().squeeze(1)
        grid = F.affine_grid(theta[idx], [len(idx), *x.shape[1:]], align_corners=False)
        out = x.clone()
        out[idx] = F.grid_sample(x[idx], grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        return out
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    resampled = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return torch.where(_per_sample(moved), resampled, x)


_YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
_GREY = torch.tensor([0.299, 0.587, 0.114])


@functools.lru_cache(maxsize=8)
def _colour_constants(device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """YIQ, its inverse and the grey weights on ``device``, copied there once: a copy from the host per
    batch would wait for the device (and ``linalg.inv`` there checks its result on the host)."""
    return _YIQ.to(device), torch.linalg.inv(_YIQ).to(device), _GREY.to(device)


def color_jitter(
    x: torch.Tensor, p: float, strength: float, hue: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Brightness and contrast by factors in [1 - strength, 1 + strength]; on RGB also saturation (the
    same range) and hue (a turn of up to ``hue`` of the colour wheel, as a rotation in YIQ space).

    All one affine map per sample: ``scale * x + shift`` on grey (factors of 1 and a shift of 0 leave the
    unpicked exactly as they were), a 3x3 matrix and an offset on RGB (blended, as a matrix product on
    TF32 tensor cores would round the unpicked)."""
    n, dev = len(x), x.device
    picked = _pick(n, p, generator, dev)
    brightness = torch.where(picked, _uniform(1 - strength, 1 + strength, n, generator, dev), 1.0)
    contrast = torch.where(picked, _uniform(1 - strength, 1 + strength, n, generator, dev), 1.0)
    rgb = x.shape[1] == 3
    yiq, yiq_inverse, grey_weights = _colour_constants(dev)
    grey = torch.einsum("c,nchw->nhw", grey_weights.to(x.dtype), x) if rgb else x[:, 0]
    mean = brightness * grey.mean((1, 2))  # the mean grey level after the brightness factor
    # (brightness * x - mean) * contrast + mean
    scale, shift = brightness * contrast, (1 - contrast) * mean
    if not rgb:
        return torch.addcmul(_per_sample(shift), x, _per_sample(scale)).clamp_(0.0, 1.0)
    saturation = _uniform(1 - strength, 1 + strength, n, generator, dev)
    turn = _uniform(-hue, hue, n, generator, dev) * (2 * math.pi)
    sat = saturation.view(-1, 1, 1) * torch.eye(3, device=dev) + (1 - saturation).view(-1, 1, 1) * grey_weights
    zero, one, cos, sin = torch.zeros_like(turn), torch.ones_like(turn), torch.cos(turn), torch.sin(turn)
    rot = torch.stack([one, zero, zero, zero, cos, -sin, zero, sin, cos], 1).view(-1, 3, 3)
    matrix = yiq_inverse @ rot @ yiq @ sat
    offset = shift.view(-1, 1) * matrix.sum(2)  # the matrix applied to the shift on every channel
    out = torch.einsum("nij,njhw->nihw", (scale.view(-1, 1, 1) * matrix).to(x.dtype), x)
    out = out.add_(offset.view(n, 3, 1, 1).to(x.dtype)).clamp_(0.0, 1.0)
    return torch.where(_per_sample(picked), out, x)


def erase(x: torch.Tensor, p: float, max_area: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Set one rectangle of each picked sample to zero, drawn as kornia's ``RandomErasing`` draws it: an
    area of U(0.02, ``max_area``) of the image, an aspect ratio (height / width) U(0.3, 1) or U(1, 3.3)
    with even odds, rounded to whole pixels and clipped to the image, at a uniform position inside it."""
    n, (h, w), dev = len(x), x.shape[-2:], x.device
    picked = _pick(n, p, generator, dev)
    area = _uniform(0.02, max_area, n, generator, dev) * (h * w)
    wide = torch.rand(n, generator=generator, device=dev) < 0.5
    ratio = torch.where(wide, _uniform(0.3, 1.0, n, generator, dev), _uniform(1.0, 3.3, n, generator, dev))
    eh = torch.sqrt(area * ratio).round().clamp(1, h)
    ew = torch.sqrt(area / ratio).round().clamp(1, w)
    y0 = (torch.rand(n, generator=generator, device=dev) * (h - eh + 1)).floor()
    x0 = (torch.rand(n, generator=generator, device=dev) * (w - ew + 1)).floor()
    y1 = torch.where(picked, y0 + eh, y0)  # an empty rectangle for the unpicked
    return x.masked_fill(_boxes(y0, y1, x0, x0 + ew, h, w), 0.0)


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


@register_augmentation("erasing")
def _erasing(
    x: torch.Tensor, targets: Targets, c: AugmentConfig, g: torch.Generator | None
) -> tuple[torch.Tensor, Targets]:
    return erase(x, c.erasing, c.erasing_scale, g), targets


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
