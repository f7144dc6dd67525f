"""Small datasets written in the real on-disk formats (CIFAR binary, Tiny ImageNet's folders, class
folders, a multi-label CSV), for tests of the loaders and of whole studies. Every image carries its
class as a pattern (a bright square whose place depends on the class, on noise), so a model can learn it.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from hpo.data.formats import CIFAR10, CIFAR100


def pattern_images(labels: np.ndarray, size: int, channels: int, seed: int = 0) -> np.ndarray:
    """uint8 (N, C, size, size): noise plus a bright square placed by the label (and coloured by it on RGB)."""
    rng = np.random.default_rng(seed)
    n = len(labels)
    images = rng.integers(0, 90, (n, channels, size, size), dtype=np.uint8)
    cell = max(2, size // 4)
    for i, label in enumerate(labels):
        row, col = divmod(int(label) % 16, 4)
        y, x = row * size // 4, col * size // 4
        if channels == 3:
            images[i, int(label) % 3, y : y + cell, x : x + cell] = 255
            images[i, (int(label) // 3) % 3, y : y + cell, x : x + cell] = 200
        else:
            images[i, :, y : y + cell, x : x + cell] = 255
    return images


def write_cifar(
    folder: Path, *, fine: bool, train_per_class: int, test_per_class: int, classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """CIFAR's binary version in ``folder/<cifar-10-batches-bin|cifar-100-binary>/``; returns the
    (train, test) labels in file order."""
    spec = CIFAR100 if fine else CIFAR10
    out = folder / spec.folder
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    y_train = rng.permutation(np.repeat(np.arange(classes), train_per_class))
    y_test = rng.permutation(np.repeat(np.arange(classes), test_per_class))

    def records(labels: np.ndarray, seed: int) -> bytes:
        pixels = pattern_images(labels, 32, 3, seed).reshape(len(labels), -1)
        heads = [labels // 5 % 20, labels] if fine else [labels]  # CIFAR-100: coarse, then fine
        return np.concatenate([np.stack(heads, 1).astype(np.uint8), pixels], axis=1).tobytes()

    chunks = np.array_split(np.arange(len(y_train)), len(spec.train))
    for name, chunk in zip(spec.train, chunks, strict=True):
        (out / name).write_bytes(records(y_train[chunk], seed=len(chunk)))
    (out / spec.test[0]).write_bytes(records(y_test, seed=99))
    names = [f"class_{i}" for i in range(classes)] + (
        [f"unused_{i}" for i in range(100 - classes)] if fine else [f"unused_{i}" for i in range(10 - classes)]
    )
    (out / spec.names_file).write_text("\n".join(names) + "\n")
    ordered = np.concatenate([y_train[c] for c in chunks])
    return ordered, y_test


def _save(array: np.ndarray, path: Path, fmt: str) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(array[0] if array.shape[0] == 1 else array.transpose(1, 2, 0))
    img.save(path, format=fmt)


def write_tiny_imagenet(root: Path, *, classes: int, train_per_class: int, val_per_class: int, size: int = 64) -> Path:
    """``root/tiny-imagenet-200/`` in the distributed layout (JPEG images)."""
    base = root / "tiny-imagenet-200"
    wnids = [f"n{1440000 + i:08d}" for i in range(classes)]
    base.mkdir(parents=True, exist_ok=True)
    (base / "wnids.txt").write_text("\n".join(wnids) + "\n")
    (base / "words.txt").write_text("".join(f"{w}\tthing {i}, other name\n" for i, w in enumerate(wnids)))
    for c, wnid in enumerate(wnids):
        images = pattern_images(np.full(train_per_class, c), size, 3, seed=c)
        for i, image in enumerate(images):
            _save(image, base / "train" / wnid / "images" / f"{wnid}_{i}.JPEG", "JPEG")
        (base / "train" / wnid / f"{wnid}_boxes.txt").write_text("")
    lines = []
    labels = np.repeat(np.arange(classes), val_per_class)
    for i, (label, image) in enumerate(zip(labels, pattern_images(labels, size, 3, seed=77), strict=True)):
        _save(image, base / "val" / "images" / f"val_{i}.JPEG", "JPEG")
        lines.append(f"val_{i}.JPEG\t{wnids[label]}\t0\t0\t{size - 1}\t{size - 1}")
    (base / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    return base


def write_image_folder(
    root: Path,
    *,
    classes: list[str],
    per_class: int,
    size: int = 32,
    channels: int = 3,
    split: bool = False,
    test_per_class: int = 0,
) -> Path:
    """PNG images in ``root/<class>/`` (or ``root/train/<class>/`` and ``root/test/<class>/``)."""
    parts = [("train", per_class), ("test", test_per_class)] if split else [("", per_class)]
    for part, count in parts:
        for c, name in enumerate(classes):
            for i, image in enumerate(pattern_images(np.full(count, c), size, channels, seed=c * 7 + len(part))):
                _save(image, root / part / name / f"{name}_{i}.png", "PNG")
    return root


APPAREL_CATEGORIES = ("shirt", "dress", "shoe")
APPAREL_COLOURS = ("red", "blue")


def write_apparel_csv(root: Path, *, per_combination: int, size: int = 32) -> tuple[Path, list[dict]]:
    """A multi-label clothing set: ``root/images/*.png`` and ``root/labels.csv`` with columns path,
    category, colour (one of each per image) and sale (0/1). The category draws the square's place, the
    colour its colour channel; sale is random."""
    rng = np.random.default_rng(5)
    rows = []
    n = 0
    for c, category in enumerate(APPAREL_CATEGORIES):
        for k, colour in enumerate(APPAREL_COLOURS):
            for _ in range(per_combination):
                image = rng.integers(0, 60, (3, size, size), dtype=np.uint8)
                y, x = (c * size) // 3, (c * size) // 3
                image[k * 2, y : y + size // 3, x : x + size // 3] = 255
                path = f"images/{n:04d}.png"
                _save(image, root / path, "PNG")
                rows.append(
                    {"path": path, "category": category, "colour": colour, "sale": str(int(rng.random() < 0.5))}
                )
                n += 1
    table = root / "labels.csv"
    with table.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["path", "category", "colour", "sale"])
        writer.writeheader()
        writer.writerows(rows)
    return table, rows
