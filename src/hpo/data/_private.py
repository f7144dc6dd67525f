from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hpo.config.study import DatasetConfig
from hpo.data.fashion_mnist import load_fashion_mnist, load_mnist
from hpo.data.formats import load_cifar10, load_cifar100, load_image_folder, load_multilabel_csv, load_tiny_imagenet
from hpo.data.streaming import FileImages

STATS_SAMPLE = 2000  # streamed images: how many the normalisation statistics are taken from


@dataclass
class SourceData:
    """A dataset as its loader returns it: train and test arrays, uint8 images (N, C, H, W)."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    classes: list[str]
    origin: str  # where the files were read from


@dataclass
class ImageData:
    """The splits one study uses. Train/val come from the dataset's training part; the test set is only
    read by the final evaluation. Index arrays refer to the source arrays, so another backend can be
    handed exactly the same examples."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    classes: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    train_index: np.ndarray
    val_index: np.ndarray
    test_index: np.ndarray
    origin: str = ""

    @property
    def num_classes(self) -> int:
        """Classes, or labels of a multi-label dataset (the model's outputs)."""
        return len(self.classes)

    @property
    def multilabel(self) -> bool:
        return self.y_train.ndim == 2

    @property
    def in_channels(self) -> int:
        return int(self.x_train.shape[1])

    @property
    def image_size(self) -> tuple[int, int]:
        return int(self.x_train.shape[2]), int(self.x_train.shape[3])

    def split_record(self) -> dict[str, dict]:
        return split_record(vars(self))

    def summary(self) -> str:
        c, (h, w) = self.in_channels, self.image_size
        return (
            f"{len(self.y_train):,} train / {len(self.y_val):,} val / {len(self.y_test):,} test images, "
            f"{c}x{h}x{w}, {self.num_classes} classes"
        )


Loader = Callable[[DatasetConfig, Path | None], SourceData]  # (the study's dataset, its data folder)
DATASETS: dict[str, Loader] = {
    "fashion_mnist": lambda config, data_dir: load_fashion_mnist(data_dir, config.download),
    "mnist": lambda config, data_dir: load_mnist(data_dir, config.download),
    "cifar10": load_cifar10,
    "cifar100": load_cifar100,
    "tiny_imagenet": load_tiny_imagenet,
    "image_folder": load_image_folder,
    "multilabel_csv": load_multilabel_csv,
}


def list_datasets() -> list[str]:
    return sorted(DATASETS)


def load_data(config: DatasetConfig, seed: int) -> ImageData:
    """Load the dataset named in the study, then take its seeded, stratified subset and split."""
    if config.name not in DATASETS:
        raise KeyError(f"unknown dataset {config.name!r}; known: {', '.join(list_datasets())}")
    data_dir = config.data_dir or os.environ.get("HPO_DATA_DIR")
    source = DATASETS[config.name](config, Path(data_dir).expanduser() if data_dir else None)

    rng = np.random.default_rng(seed)
    strata_train, strata_test = _strata(source.y_train), _strata(source.y_test)
    train_pool = np.arange(len(source.y_train))
    test_index = np.arange(len(source.y_test))
    if config.subset and config.subset.train:
        train_pool = stratified_sample(strata_train, config.subset.train, rng)
    if config.subset and config.subset.test:
        test_index = stratified_sample(strata_test, config.subset.test, rng)
    n_val = min(
        len(train_pool) - 1,
        max(len(np.unique(strata_train[train_pool])), round(len(train_pool) * config.validation_split)),
    )
    val_local = stratified_sample(strata_train[train_pool], n_val, rng)
    val_index = train_pool[val_local]
    train_index = np.setdiff1d(train_pool, val_index)  # sorted; the trainer shuffles every epoch

    x_train = source.x_train[train_index]
    # normalisation statistics; streamed images: from a seeded sample of them (reading all is the point
    # streaming avoids)
    sample = x_train
    if isinstance(x_train, FileImages) and len(x_train) > STATS_SAMPLE:
        sample = x_train[np.sort(rng.choice(len(x_train), STATS_SAMPLE, replace=False))]
    pixels = np.asarray(sample).astype(np.float32) / 255.0
    mean = tuple(float(m) for m in pixels.mean(axis=(0, 2, 3)))
    std = tuple(float(s) for s in pixels.std(axis=(0, 2, 3)))
    return ImageData(
        x_train=x_train,
        y_train=source.y_train[train_index],
        x_val=source.x_train[val_index],
        y_val=source.y_train[val_index],
        x_test=source.x_test[test_index],
        y_test=source.y_test[test_index],
        classes=source.classes,
        mean=mean,
        std=std,
        train_index=train_index,
        val_index=val_index,
        test_index=test_index,
        origin=source.origin,
    )


def _strata(labels: np.ndarray) -> np.ndarray:
    """What stratified sampling keeps in proportion: the class, or a multi-label row's label combination."""
    return np.unique(labels, axis=0, return_inverse=True)[1].ravel() if labels.ndim == 2 else labels


def split_record(arrays: Mapping[str, np.ndarray]) -> dict[str, dict]:
    """Counts and SHA-256 digests of each split's source indices, images and labels: two backends that
    report the same record trained, validated and tested on the same examples."""

    def digest(array) -> str:
        if isinstance(array, FileImages):  # streamed: the files (reading every pixel is what it avoids)
            return array.digest()
        return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()

    return {
        part: {
            "count": len(arrays[f"y_{part}"]),
            "index_sha256": digest(arrays[f"{part}_index"]),
            "images_sha256": digest(arrays[f"x_{part}"]),
            "labels_sha256": digest(arrays[f"y_{part}"]),
        }
        for part in ("train", "val", "test")
    }


def stratified_sample(labels: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` indices into ``labels`` keeping class proportions (largest remainders), sorted."""
    if n >= len(labels):
        return np.arange(len(labels))
    classes, counts = np.unique(labels, return_counts=True)
    exact = counts / counts.sum() * n
    take = np.floor(exact).astype(int)
    for i in np.argsort(exact - take)[::-1][: n - take.sum()]:
        take[i] += 1
    chosen = [rng.choice(np.flatnonzero(labels == c), size=k, replace=False) for c, k in zip(classes, take)]
    return np.sort(np.concatenate(chosen))
