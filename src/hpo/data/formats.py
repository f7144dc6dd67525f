"""Loaders for datasets in their standard on-disk formats, beside Fashion-MNIST/MNIST's IDX files:

- ``cifar10`` / ``cifar100``: the binary version (``cifar-10-batches-bin/``, ``cifar-100-binary/``: one
  label byte, or coarse and fine, then 3,072 pixel bytes per record); downloaded from the CIFAR site when
  missing. (The "python version" is a pickle, which hpo never loads.)
- ``tiny_imagenet``: ``tiny-imagenet-200/`` as distributed: ``wnids.txt``, ``words.txt``,
  ``train/<wnid>/images/*.JPEG``, ``val/images/*.JPEG`` with ``val/val_annotations.txt``. Its test images
  have no labels, so its validation set is the test set here; ``image_size: 32`` downsamples.
- ``image_folder``: ``<class>/<image>`` folders, either under ``train/`` and ``test/`` or in one folder
  split by ``test_split``.
- ``multilabel_csv``: a CSV of image paths and label columns. A column of 0/1 is one label; any other
  column gives one label per value (``colour=red``). A ``split`` column (train/test) is honoured.

Image files are decoded (and cached) by ``hpo.data.images``, or left on disk with ``dataset.stream``.
"""

from __future__ import annotations

import csv
import io
import tarfile
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hpo.config.study import DatasetConfig
from hpo.data import images
from hpo.data.images import IMAGE_SUFFIXES, FileImages, Images, SourceData, cached_decode, image_channels
from hpo.data.splits import split_indices
from hpo.errors import DataError


# ---------------------------------------------------------------------------------------------- CIFAR
@dataclass(frozen=True)
class Cifar:
    name: str
    folder: str
    train: tuple[str, ...]
    test: tuple[str, ...]
    label_bytes: int  # 1 (CIFAR-10) or 2 (CIFAR-100: coarse, fine)
    names_file: str
    url: str


CIFAR10 = Cifar(
    "CIFAR-10",
    "cifar-10-batches-bin",
    tuple(f"data_batch_{i}.bin" for i in range(1, 6)),
    ("test_batch.bin",),
    1,
    "batches.meta.txt",
    "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz",
)
CIFAR100 = Cifar(
    "CIFAR-100",
    "cifar-100-binary",
    ("train.bin",),
    ("test.bin",),
    2,
    "fine_label_names.txt",
    "https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz",
)
RECORD_PIXELS = 3 * 32 * 32


def read_cifar_bin(path: Path, label_bytes: int) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (N, 3, 32, 32), labels int64) from one binary CIFAR file; CIFAR-100's fine labels."""
    raw = np.fromfile(path, dtype=np.uint8)
    record = label_bytes + RECORD_PIXELS
    if raw.size == 0 or raw.size % record:
        raise DataError(
            f"{path}: {raw.size:,} bytes is not a whole number of {record}-byte CIFAR records "
            "(truncated, or the other CIFAR's file?)"
        )
    rows = raw.reshape(-1, record)
    return rows[:, label_bytes:].reshape(-1, 3, 32, 32).copy(), rows[:, label_bytes - 1].astype(np.int64)


def load_cifar(spec: Cifar, data_dir: Path | None, download: bool) -> SourceData:
    roots = [d for d in (data_dir, images.CACHE_DIR) if d is not None]
    candidates = [p for root in roots for p in (root / spec.folder, root)]
    folder = next((c for c in candidates if all((c / f).is_file() for f in (*spec.train, *spec.test))), None)
    if folder is None:
        if not download:
            raise DataError(_cifar_missing(spec, candidates))
        folder = _download_cifar(spec, data_dir or images.CACHE_DIR, candidates)
    parts = {name: read_cifar_bin(folder / name, spec.label_bytes) for name in (*spec.train, *spec.test)}
    x_train = np.concatenate([parts[n][0] for n in spec.train])
    y_train = np.concatenate([parts[n][1] for n in spec.train])
    x_test = np.concatenate([parts[n][0] for n in spec.test])
    y_test = np.concatenate([parts[n][1] for n in spec.test])
    names_file = folder / spec.names_file
    classes = (
        [line.strip() for line in names_file.read_text().splitlines() if line.strip()]
        if names_file.is_file()
        else [str(i) for i in range(int(max(y_train.max(), y_test.max())) + 1)]
    )
    if max(y_train.max(), y_test.max()) >= len(classes):
        raise DataError(
            f"{folder}: labels go up to {int(max(y_train.max(), y_test.max()))} but {names_file.name} "
            f"names {len(classes)} classes"
        )
    return SourceData(x_train, y_train, x_test, y_test, classes, str(folder))


def _cifar_missing(spec: Cifar, candidates: Sequence[Path], reason: Exception | None = None) -> str:
    places = "\n".join(f"  - {c}" for c in candidates)
    failed = f"The download failed ({type(reason).__name__}: {reason}).\n" if reason else ""
    return (
        f"{spec.name} (binary version) not found. Looked for "
        f"{', '.join((*spec.train, *spec.test))} in:\n{places}\n{failed}To fix it: download {spec.url} on a "
        f"machine with internet, unpack it into dataset.data_dir (or $HPO_DATA_DIR), or run once online."
    )


def _download_cifar(spec: Cifar, root: Path, candidates: Sequence[Path]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    try:
        with urllib.request.urlopen(spec.url, timeout=60) as response:
            blob = response.read()
        with tarfile.open(fileobj=io.BytesIO(blob), mode="r:gz") as tar:
            tar.extractall(root, filter="data")
    except Exception as exc:
        raise DataError(_cifar_missing(spec, candidates, exc)) from None
    return root / spec.folder


def load_cifar10(config: DatasetConfig, data_dir: Path | None) -> SourceData:
    return load_cifar(CIFAR10, data_dir, config.download)


def load_cifar100(config: DatasetConfig, data_dir: Path | None) -> SourceData:
    return load_cifar(CIFAR100, data_dir, config.download)


# ------------------------------------------------------------------------------------------ image files
def images_from(config: DatasetConfig, key: str, paths: Sequence[Path]) -> Images:
    """The images of ``paths``: decoded into memory (cached), or with ``dataset.stream`` left on disk as
    ``FileImages`` for worker processes to decode per batch (``dataset.image_size`` is required then)."""
    if not config.stream:
        return cached_decode(key, paths, config.image_size, config.channels)
    if config.image_size is None:
        raise DataError("streamed images need dataset.image_size (every batch is decoded to that size)")
    channels = config.channels or (image_channels(paths[0]) if paths else 3)
    return FileImages(tuple(str(p) for p in paths), config.image_size, channels)


def _require(data_dir: Path | None, name: str) -> Path:
    if data_dir is None:
        raise DataError(f"dataset {name} needs dataset.data_dir (or $HPO_DATA_DIR): the folder that holds it")
    if not data_dir.exists():
        raise DataError(f"dataset {name}: {data_dir} does not exist")
    return data_dir


# ------------------------------------------------------------------------------------- Tiny ImageNet
def load_tiny_imagenet(config: DatasetConfig, data_dir: Path | None) -> SourceData:
    root = _require(data_dir, "tiny_imagenet")
    if (root / "tiny-imagenet-200").is_dir():
        root = root / "tiny-imagenet-200"
    wnids_file, annotations = root / "wnids.txt", root / "val" / "val_annotations.txt"
    for needed in (wnids_file, annotations, root / "train"):
        if not needed.exists():
            raise DataError(
                f"{root} is not a Tiny ImageNet folder: {needed.relative_to(root)} is missing "
                "(expected wnids.txt, train/<wnid>/images/, val/images/ and val/val_annotations.txt)"
            )
    wnids = [w.strip() for w in wnids_file.read_text().splitlines() if w.strip()]
    index = {w: i for i, w in enumerate(wnids)}
    words = {}
    if (root / "words.txt").is_file():
        for line in (root / "words.txt").read_text().splitlines():
            wnid, _, text = line.partition("\t")
            words[wnid] = text.split(",")[0].strip()
    train_paths, train_labels = [], []
    for wnid in wnids:
        files = sorted(p for p in (root / "train" / wnid / "images").glob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise DataError(f"{root / 'train' / wnid / 'images'}: no images for class {wnid}")
        train_paths += files
        train_labels += [index[wnid]] * len(files)
    test_paths, test_labels = [], []
    for line in annotations.read_text().splitlines():
        fields = line.split("\t")
        if len(fields) < 2:
            continue
        if fields[1] not in index:
            raise DataError(f"{annotations}: {fields[0]} has class {fields[1]}, which wnids.txt does not list")
        test_paths.append(root / "val" / "images" / fields[0])
        test_labels.append(index[fields[1]])
    config = config.model_copy(update={"channels": config.channels or 3})
    key = f"tiny_imagenet:{root.resolve()}"
    return SourceData(
        images_from(config, key + ":train", train_paths),
        np.array(train_labels),
        images_from(config, key + ":val", test_paths),
        np.array(test_labels),
        [words.get(w, w) for w in wnids],
        str(root),
    )


# -------------------------------------------------------------------------------------- image folders
def _class_folders(folder: Path) -> dict[str, list[Path]]:
    classes = {}
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        files = sorted(p for p in sub.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if files:
            classes[sub.name] = files
    return classes


def load_image_folder(config: DatasetConfig, data_dir: Path | None) -> SourceData:
    root = _require(data_dir, "image_folder")
    if (root / "train").is_dir() and (root / "test").is_dir():
        train_folders, test_folders = _class_folders(root / "train"), _class_folders(root / "test")
        classes = sorted(set(train_folders) | set(test_folders))
        if set(test_folders) - set(train_folders):
            unseen = sorted(set(test_folders) - set(train_folders))
            raise DataError(f"{root / 'test'}: classes {unseen} have no training images")
        parts = {}
        for name, found in (("train", train_folders), ("test", test_folders)):
            paths = [p for c in classes for p in found.get(c, [])]
            labels = np.array([i for i, c in enumerate(classes) for _ in found.get(c, [])], dtype=np.int64)
            parts[name] = (images_from(config, f"image_folder:{root.resolve()}:{name}", paths), labels)
        return SourceData(*parts["train"], *parts["test"], classes, str(root))
    folders = _class_folders(root)
    if len(folders) < 2:
        raise DataError(
            f"{root}: expected one sub-folder of images per class (at least two), or train/ and test/ "
            f"folders holding those; found {len(folders)} class folder(s)"
        )
    classes = sorted(folders)
    paths = [p for c in classes for p in folders[c]]
    labels = np.array([i for i, c in enumerate(classes) for _ in folders[c]], dtype=np.int64)
    images = images_from(config, f"image_folder:{root.resolve()}", paths)
    train, test = split_indices(labels, config.test_split, seed=0)
    return SourceData(images[train], labels[train], images[test], labels[test], classes, str(root))


# -------------------------------------------------------------------------------------- multi-label CSV
def load_multilabel_csv(config: DatasetConfig, data_dir: Path | None) -> SourceData:
    root = _require(data_dir, "multilabel_csv")
    table = root / (config.csv or "labels.csv")
    if not table.is_file():
        raise DataError(f"{table}: no such CSV file (dataset.csv names it, relative to dataset.data_dir)")
    with table.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        raise DataError(f"{table}: no rows")
    columns = list(rows[0])
    path_column = config.path_column
    if path_column not in columns:
        raise DataError(f"{table}: no column {path_column!r} (dataset.path_column); columns: {', '.join(columns)}")
    label_columns = config.label_columns or [c for c in columns if c not in (path_column, "split")]
    missing = [c for c in label_columns if c not in columns]
    if missing:
        raise DataError(f"{table}: no column(s) {', '.join(missing)}; columns: {', '.join(columns)}")
    names: list[str] = []
    encoders: list[tuple[str, list[str] | None]] = []  # (column, its values; None for a 0/1 column)
    for column in label_columns:
        values = sorted({r[column].strip() for r in rows})
        if set(values) <= {"0", "1"}:
            names.append(column)
            encoders.append((column, None))
        else:
            names += [f"{column}={v}" for v in values]
            encoders.append((column, values))
    labels = np.zeros((len(rows), len(names)), dtype=np.uint8)
    for i, row in enumerate(rows):
        j = 0
        for column, column_values in encoders:
            if column_values is None:
                labels[i, j] = row[column].strip() == "1"
                j += 1
            else:
                labels[i, j + column_values.index(row[column].strip())] = 1
                j += len(column_values)
    paths = [root / r[path_column] for r in rows]
    absent = [str(p) for p in paths if not p.is_file()]
    if absent:
        raise DataError(f"{table}: {len(absent)} image file(s) listed but missing, e.g. {absent[0]}")
    images = images_from(config, f"multilabel_csv:{table.resolve()}", paths)
    if "split" in columns:
        split = np.array([r["split"].strip().lower() for r in rows])
        train, test = np.flatnonzero(split != "test"), np.flatnonzero(split == "test")
        if not len(test) or not len(train):
            raise DataError(f"{table}: the split column must mark some rows 'test' and some others")
    else:
        train, test = split_indices(labels, config.test_split, seed=0)
    return SourceData(images[train], labels[train], images[test], labels[test], names, str(table))
