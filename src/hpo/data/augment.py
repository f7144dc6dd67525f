"""Batched augmentation on the device: each op picks its samples with its probability, then transforms
all picked samples in one tensor operation (no per-sample Python).

Flips and translation are written here: translation moves by whole pixels (pad and crop, as airbench
does), exact, with no interpolation blur, and cheaper than a resampling grid. Rotation resamples with
``grid_sample``, only for the picked samples. A picked sample is always changed: shifts of zero pixels and
near-zero angles are never drawn. The affine map, resized crop, colour jitter and random erasing are
kornia's (batched, per-sample parameters). CutMix and MixUp are written here because they also mix the
labels: they turn the targets into class probabilities that the soft-label loss takes.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from hpo.config.trial import AugmentConfig


def _pick(n: int, p: float, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    if p <= 0:
        return torch.zeros(n, dtype=torch.bool, device=device)
    return torch.rand(n, generator=generator, device=device) < p


def hflip(x: torch.Tensor, p: float, generator: torch.Generator | None = None) -> torch.Tensor:
    mask = _pick(len(x), p, generator, x.device)
    if not mask.any():
        return x
    return torch.where(mask.view(-1, 1, 1, 1), x.flip(-1), x)


def vflip(x: torch.Tensor, p: float, generator: torch.Generator | None = None) -> torch.Tensor:
    mask = _pick(len(x), p, generator, x.device)
    if not mask.any():
        return x
    return torch.where(mask.view(-1, 1, 1, 1), x.flip(-2), x)


def translate(x: torch.Tensor, p: float, max_px: int, generator: torch.Generator | None = None) -> torch.Tensor:
    mask = _pick(len(x), p, generator, x.device)
    idx = mask.nonzero().squeeze(1)
    if len(idx) == 0:
        return x
    n, (h, w) = len(idx), x.shape[-2:]
    # Draw (dy, dx) uniformly from the (2r+1)^2 - 1 non-zero shifts.
    side = 2 * max_px + 1
    centre = side * side // 2
    code = torch.randint(0, side * side - 1, (n,), generator=generator, device=x.device)
    code = code + (code >= centre).long()
    dy, dx = code // side - max_px, code % side - max_px
    padded = F.pad(x[idx], (max_px, max_px, max_px, max_px))
    rows = (torch.arange(h, device=x.device) + max_px - dy.view(-1, 1)).view(n, 1, h, 1)
    cols = (torch.arange(w, device=x.device) + max_px - dx.view(-1, 1)).view(n, 1, 1, w)
    batch = torch.arange(n, device=x.device).view(n, 1, 1, 1)
    chan = torch.arange(x.shape[1], device=x.device).view(1, -1, 1, 1)
    out = x.clone()
    out[idx] = padded[batch, chan, rows, cols]
    return out


def rotate(x: torch.Tensor, p: float, max_degrees: float, generator: torch.Generator | None = None) -> torch.Tensor:
    mask = _pick(len(x), p, generator, x.device)
    idx = mask.nonzero().squeeze(1)
    if len(idx) == 0:
        return x
    n = len(idx)
    # Magnitude in [max/10, max] with a random sign: a picked image visibly turns.
    magnitude = max_degrees * (0.1 + 0.9 * torch.rand(n, generator=generator, device=x.device))
    sign = torch.randint(0, 2, (n,), generator=generator, device=x.device) * 2 - 1
    theta = magnitude * sign * (math.pi / 180.0)
    cos, sin = torch.cos(theta), torch.sin(theta)
    zero = torch.zeros_like(cos)
    affine = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
    picked = x[idx]
    grid = F.affine_grid(affine.to(picked.dtype), list(picked.shape), align_corners=False)
    out = x.clone()
    out[idx] = F.grid_sample(picked, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out


MIN_MIX = 1e-3  # a picked sample keeps at most 1 - MIN_MIX of itself: it is always changed


def _beta(alpha: float, n: int, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """``n`` draws from Beta(alpha, alpha) within [MIN_MIX, 1 - MIN_MIX], through the generator
    (torch.distributions takes none). In float64: for small alpha a float32 gamma draw underflows to 0."""
    gamma = torch._standard_gamma  # noqa: SLF001 - the one sampler that takes a generator
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


def mixup(x: torch.Tensor, targets: torch.Tensor, p: float, alpha: float,
          generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
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


def cutmix(x: torch.Tensor, targets: torch.Tensor, p: float, alpha: float,
           generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
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
    box = ((rows >= y0.view(-1, 1, 1)) & (rows < y1.view(-1, 1, 1)) &
           (cols >= x0.view(-1, 1, 1)) & (cols < x1.view(-1, 1, 1))).unsqueeze(1)  # (n, 1, h, w)
    pasted = box.flatten(1).float().mean(1)  # the share of the image that now comes from the partner
    x, targets = x.clone(), targets.clone()
    x[idx] = torch.where(box, x[partner], x[idx])
    targets[idx] = (1 - pasted).view(-1, 1) * targets[idx] + pasted.view(-1, 1) * targets[partner]
    return x, targets


class BatchAugment:
    """The augmentations of one trial, applied to float image batches in [0, 1] and, for CutMix and
    MixUp, their targets (class probabilities, or multi-hot labels)."""

    def __init__(self, config: AugmentConfig, generator: torch.Generator | None = None, channels: int = 1) -> None:
        self.config = config
        self.generator = generator
        self.kornia = self._kornia_ops(config, channels)

    @staticmethod
    def _kornia_ops(c: AugmentConfig, channels: int) -> list:
        ops = []
        if c.affine > 0 or c.resized_crop > 0 or c.color_jitter > 0 or c.erasing > 0:
            import kornia.augmentation as K
        if c.affine > 0:
            ops.append(K.RandomAffine(degrees=0.0, translate=(c.affine_translate, c.affine_translate),
                                      scale=(1 - c.affine_scale, 1 + c.affine_scale),
                                      shear=(-c.affine_shear, c.affine_shear), p=c.affine))
        if c.resized_crop > 0:
            ops.append(_ResizedCrop(c.crop_scale, c.resized_crop))
        if c.color_jitter > 0:
            rgb = channels == 3
            ops.append(K.ColorJitter(brightness=c.jitter, contrast=c.jitter, saturation=c.jitter if rgb else 0.0,
                                     hue=c.jitter_hue if rgb else 0.0, p=c.color_jitter))
        if c.erasing > 0:
            ops.append(K.RandomErasing(scale=(0.02, c.erasing_scale), ratio=(0.3, 3.3), value=0.0, p=c.erasing))
        return ops

    @property
    def active(self) -> bool:
        c = self.config
        return any(getattr(c, name) > 0 for name in PROBABILITIES)

    @property
    def mixes_labels(self) -> bool:
        return self.config.cutmix > 0 or self.config.mixup > 0

    def __call__(self, x: torch.Tensor, targets: torch.Tensor | None = None):
        """Augmented ``x``; with ``targets`` (N, classes) given, ``(x, targets)`` with mixed targets."""
        c, g = self.config, self.generator
        x = hflip(x, c.hflip, g)
        x = vflip(x, c.vflip, g)
        x = translate(x, c.translate, c.translate_px, g)
        x = rotate(x, c.rotate, c.rotate_degrees, g)
        for op in self.kornia:
            x = op(x)
        if targets is None:
            return x
        x, targets = cutmix(x, targets, c.cutmix, c.cutmix_alpha, g)
        x, targets = mixup(x, targets, c.mixup, c.mixup_alpha, g)
        return x, targets


PROBABILITIES = ("hflip", "vflip", "translate", "rotate", "affine", "resized_crop", "color_jitter", "erasing",
                 "cutmix", "mixup")


class _ResizedCrop:
    """kornia's RandomResizedCrop back to the input's own size, created for each size it meets."""

    def __init__(self, scale: float, p: float) -> None:
        self.scale, self.p, self.ops = scale, p, {}

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        size = tuple(x.shape[-2:])
        if size not in self.ops:
            import kornia.augmentation as K

            self.ops[size] = K.RandomResizedCrop(size, scale=(self.scale, 1.0), p=self.p)
        return self.ops[size](x)
