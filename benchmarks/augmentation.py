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

``--reference REF`` instead times hpo's augmentation against its own version at git commit REF (loaded
from ``git show REF:src/hpo/data/augment.py`` into this process), side by side in interleaved rounds:
whole pipelines and each op alone, Fashion-MNIST-sized grey batches of 128-512 and a CIFAR-sized one. It
is how the sync-free ops (no ``nonzero``, no boolean indexing: they transform whole batches) were checked
against the index-based ones they replaced (REF 607999f... up to c70d44b).

    python benchmarks/augmentation.py [--rounds 5] [--batches 8] [--no-record] [--reference REF]
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import statistics
import subprocess
import sys
import time
from types import ModuleType

import numpy as np
import torch
from _common import ROOT, markdown_table, record

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


# ---------------------------------------------------------------------------------- against an older hpo
def load_reference(ref: str) -> ModuleType:
    """``hpo.data.augment`` as it was at git commit ``ref``, as a module of its own (its own registry)."""
    source = subprocess.run(
        ["git", "show", f"{ref}:src/hpo/data/augment.py"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    spec = importlib.util.spec_from_loader(f"hpo_augment_at_{ref}", loader=None)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    exec(compile(source, f"{ref}:src/hpo/data/augment.py", "exec"), module.__dict__)
    return module


def reference_configs() -> dict[str, dict[str, float]]:
    """The pipelines compared: the Fashion-MNIST space's most augmented corner, every op at once, and each
    op alone (p = 0.5: half the batch picked, where the index-based ops saved most by skipping)."""
    from hpo.config.trial import AugmentConfig

    names = AugmentConfig.probabilities()
    configs = {
        "Fashion-MNIST space corner (hflip 0.5, translate 0.8)": {"hflip": 0.5, "translate": 0.8},
        f"every op, p = {P}": dict.fromkeys(names, P),
    }
    return configs | {f"{name} alone, p = {P}": {name: P} for name in names}


def old_vs_new(ref: str, rounds: int, batches: int) -> tuple[str, str]:
    from hpo.config.trial import AugmentConfig
    from hpo.data import augment as new

    old = load_reference(ref)
    gen = np.random.default_rng(0)
    pipelines = [(1, 28, 128), (1, 28, 256), (1, 28, 512), (3, 32, 256)]  # (channels, size, batch)
    single_ops = [(1, 28, 256), (3, 32, 256)]
    rows = []
    for label, probs in reference_configs().items():
        for channels, size, batch in single_ops if "alone" in label else pipelines:
            x = torch.as_tensor(gen.random((batch, channels, size, size), dtype=np.float32))
            targets = torch.nn.functional.one_hot(torch.as_tensor(gen.integers(0, 10, batch)), 10).float()
            config = AugmentConfig(**probs)
            runs = {
                name: functools.partial(
                    module.BatchAugment(config, torch.Generator().manual_seed(0), channels), x, targets
                )
                for name, module in (("old", old), ("new", new))
            }
            times: dict[str, list[float]] = {"old": [], "new": []}
            for name in runs:
                runs[name]()  # warm-up
            for r in range(rounds):
                for name in ("old", "new") if r % 2 == 0 else ("new", "old"):  # alternate who goes first
                    torch.manual_seed(r)  # the old erasing (kornia's) draws from the global generator
                    start = time.perf_counter()
                    for _ in range(batches):
                        runs[name]()
                    times[name].append((time.perf_counter() - start) * 1000 / batches)
            ratios = [o / n for o, n in zip(times["old"], times["new"], strict=True)]
            rows.append(
                [
                    label,
                    f"{batch} x {channels}x{size}x{size}",
                    f"{statistics.median(times['old']):.2f}",
                    f"{statistics.median(times['new']):.2f}",
                    f"**{statistics.median(ratios):.2f}x** ({min(ratios):.2f}-{max(ratios):.2f})",
                ]
            )
    table = markdown_table(
        ["pipeline", "batch", f"at {ref} (ms/batch)", "sync-free (ms/batch)", "speed, new / old (range)"], rows
    )
    notes = (
        f"Both versions in one process on the same batches (float images, one-hot targets for CutMix and "
        f"MixUp), one CPU thread, {batches} batches per measurement, {rounds} rounds alternating which "
        "version goes first; milliseconds are medians of rounds, speed the median of the rounds' ratios "
        "(above 1: the sync-free version is faster)."
    )
    return table, notes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batches", type=int, default=8, help="batches of 256 per measurement")
    parser.add_argument("--no-record", action="store_true")
    parser.add_argument("--reference", metavar="REF", help="compare with hpo's augmentation at this git commit")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.reference:
        table, notes = old_vs_new(args.reference, args.rounds, args.batches)
        title = f"Augmentation: sync-free ops vs those at {args.reference} (CPU)"
        record(title, table, notes, dry_run=args.no_record)
        return
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
