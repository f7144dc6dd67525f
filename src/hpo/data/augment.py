"""Batched augmentation on the device: each op picks its samples with its probability, then transforms
all picked samples in one tensor operation (no per-sample Python).

Translation moves by whole pixels (pad and crop, as airbench does): exact, no interpolation blur, and
cheaper than a resampling grid. Rotation resamples with ``grid_sample``, only for the picked samples.
A picked sample is always changed: shifts of zero pixels and near-zero angles are never drawn.
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


class BatchAugment:
    """The augmentations of one trial, applied to float image batches in [0, 1]."""

    def __init__(self, config: AugmentConfig, generator: torch.Generator | None = None) -> None:
        self.config = config
        self.generator = generator

    @property
    def active(self) -> bool:
        c = self.config
        return c.hflip > 0 or c.translate > 0 or c.rotate > 0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        c, g = self.config, self.generator
        x = hflip(x, c.hflip, g)
        x = translate(x, c.translate, c.translate_px, g)
        x = rotate(x, c.rotate, c.rotate_degrees, g)
        return x
