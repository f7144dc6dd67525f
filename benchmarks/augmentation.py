"""Augmentation throughput: hpo's batched path vs the same transforms applied per sample with PIL.

Per-sample path (what a torchvision ``Dataset`` does): each uint8 image becomes a PIL image, goes
through ``torchvision.transforms`` (flip, translation, rotation, affine scale/shear, resized crop, colour
jitter, each with its probability), then ``ToTensor`` and ``RandomErasing``. Batched path:
``hpo.data.augment.BatchAugment`` on the whole uint8 batch turned float, the same transforms and
probabilities. Images/s on CIFAR-sized RGB (32x32x3) and Fashion-MNIST-sized grey (28x28x1) batches of
256, on the CPU, one thread each (as one trial gets), rounds alternating (this VM's speed drifts): the
ratio is the median of the rounds' ratios, with the range.

A second table times each resampling or colour op alone, kornia's against hpo's own, on the RGB batch:
why hpo writes them out rather than calling kornia (where kornia is installed).

    python benchmarks/augmentation.py [--rounds 5] [--batches 8] [--no-record]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from _common import markdown_table, record

P = 0.5  # every transform's probability, on both paths
SHAPES = {"32x32 RGB (CIFAR)": (3, 32), "28x28 grey (Fashion-MNIST)": (1, 28)}


def per_sample_pipeline(channels: int, size: int):
    from PIL import Image

    from hpo._torchvision import import_torchvision

    T = import_torchvision().transforms
    apply = T.RandomApply
    transform = T.Compose(
        [
            T.RandomHorizontalFlip(P),
            apply([T.RandomAffine(0, translate=(2 / size, 2 / size))], P),
            apply([T.RandomRotation(10)], P),
            apply([T.RandomAffine(0, translate=(0.1, 0.1), scale=(0.9, 1.1), shear=10)], P),
            apply([T.RandomResizedCrop(size, scale=(0.5, 1.0), antialias=True)], P),
            apply([T.ColorJitter(0.2, 0.2, 0.2 if channels == 3 else 0, 0.05 if channels == 3 else 0)], P),
            T.ToTensor(),
            T.RandomErasing(P, scale=(0.02, 0.2)),
        ]
    )

    def run(batch: np.ndarray) -> torch.Tensor:
        out = []
        for image in batch:
            pil = Image.fromarray(image[0] if channels == 1 else image.transpose(1, 2, 0))
            out.append(transform(pil))
        return torch.stack(out)

    return run


def batched_pipeline(channels: int):
    from hpo.config.trial import AugmentConfig
    from hpo.data.augment import BatchAugment
    from hpo.train.loop import to_float

    augment = BatchAugment(
        AugmentConfig(
            hflip=P,
            translate=P,
            translate_px=2,
            rotate=P,
            rotate_degrees=10,
            affine=P,
            resized_crop=P,
            color_jitter=P,
            erasing=P,
        ),
        torch.Generator().manual_seed(0),
        channels,
    )

    def run(batch: np.ndarray) -> torch.Tensor:
        return augment(to_float(torch.as_tensor(batch)))

    return run


def images_per_second(run, batches: list[np.ndarray]) -> float:
    run(batches[0])  # warm-up: lazy imports, first-call allocations
    start = time.perf_counter()
    for batch in batches:
        run(batch)
    return sum(len(b) for b in batches) / (time.perf_counter() - start)


def kornia_vs_own(batch: torch.Tensor, rounds: int) -> list[list[str]]:
    """Per-op milliseconds for a batch, kornia vs hpo (each op at p = 1), median of rounds."""
    try:
        import kornia.augmentation as K
    except ImportError:
        return []
    from hpo.config.trial import AugmentConfig
    from hpo.data import augment as A

    g = torch.Generator().manual_seed(0)
    size = tuple(batch.shape[-2:])
    rotation = K.RandomRotation(10.0, p=1.0)
    affine = K.RandomAffine(0, translate=(0.1, 0.1), scale=(0.9, 1.1), shear=(-10, 10), p=1.0)
    crop = K.RandomResizedCrop(size, scale=(0.5, 1.0), p=1.0)
    only = {name: AugmentConfig(**{name: 1.0}) for name in ("rotate", "affine", "resized_crop")}
    together = AugmentConfig(rotate=1.0, affine=1.0, resized_crop=1.0)
    pairs = {
        "rotation": (rotation, lambda x: A.geometric(x, only["rotate"], g)),
        "affine (translate, scale, shear)": (affine, lambda x: A.geometric(x, only["affine"], g)),
        "resized crop": (crop, lambda x: A.geometric(x, only["resized_crop"], g)),
        "rotation + affine + resized crop": (
            lambda x: crop(affine(rotation(x))),
            lambda x: A.geometric(x, together, g),
        ),
        "colour jitter (RGB)": (
            K.ColorJitter(0.2, 0.2, 0.2, 0.05, p=1.0),
            lambda x: A.color_jitter(x, 1.0, 0.2, 0.05, g),
        ),
    }

    def ms(op) -> float:
        op(batch)
        times = []
        for _ in range(rounds):
            start = time.perf_counter()
            op(batch)
            times.append((time.perf_counter() - start) * 1000)
        return statistics.median(times)

    rows = []
    for name, (kornia_op, own) in pairs.items():
        k, o = ms(kornia_op), ms(own)
        rows.append([name, f"{k:.1f}", f"{o:.1f}", f"{k / o:.1f}x"])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batches", type=int, default=8, help="batches of 256 per measurement")
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    rows = []
    for label, (channels, size) in SHAPES.items():
        batches = [rng.integers(0, 256, (256, channels, size, size), dtype=np.uint8) for _ in range(args.batches)]
        pil, batched = per_sample_pipeline(channels, size), batched_pipeline(channels)
        pairs = []
        for _ in range(args.rounds):
            pairs.append((images_per_second(pil, batches), images_per_second(batched, batches)))
        ratios = [b / p for p, b in pairs]
        rows.append(
            [
                label,
                f"{statistics.median(p for p, _ in pairs):,.0f}",
                f"{statistics.median(b for _, b in pairs):,.0f}",
                f"**{statistics.median(ratios):.1f}x** ({min(ratios):.1f}-{max(ratios):.1f})",
            ]
        )
    table = markdown_table(
        ["images", "per-sample PIL (images/s)", "batched hpo (images/s)", "batched / PIL, median of rounds (range)"],
        rows,
    )
    notes = (
        f"Transforms on both paths, each with p = {P}: horizontal flip, 2-pixel translation, rotation up "
        "to 10 degrees, affine (translate 0.1, scale 0.9-1.1, shear 10), resized crop (scale 0.5-1), "
        "colour jitter (brightness/contrast 0.2; saturation 0.2 and hue 0.05 on RGB), random erasing "
        f"(2-20 % of the area). One CPU thread; {args.batches} batches of 256 per measurement, "
        f"{args.rounds} alternating rounds. Target: batched >= 5x per-sample PIL."
    )
    per_op = kornia_vs_own(torch.rand(256, 3, 32, 32), max(5, args.rounds))
    if per_op:
        table += "\n\n" + markdown_table(
            ["op, on 256 RGB 32x32 images, p = 1", "kornia 0.9 (ms)", "hpo (ms)", "kornia / hpo"], per_op
        )
    record("Augmentation throughput: batched vs per-sample PIL", table, notes, dry_run=args.no_record)


if __name__ == "__main__":
    main()
