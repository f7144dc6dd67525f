"""Fashion-MNIST (Xiao et al., 2017): 70,000 28x28 grayscale images of clothing, 10 classes; and MNIST
(LeCun et al.), the digits, in the same IDX files."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hpo._torchvision import import_torchvision
from hpo.config.study import DatasetConfig
from hpo.data import images
from hpo.data.idx import read_idx
from hpo.data.images import SourceData
from hpo.errors import DataError

CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")  # apt-get install dataset-fashion-mnist


@dataclass(frozen=True)
class IdxDataset:
    """One dataset in MNIST's four IDX files."""

    title: str
    torchvision: str  # torchvision's class, and its folder (``<root>/<name>/raw/``)
    classes: tuple[str, ...]
    debian_dir: Path | None


FASHION_MNIST = IdxDataset("Fashion-MNIST", "FashionMNIST", tuple(CLASSES), DEBIAN_DIR)
MNIST = IdxDataset("MNIST", "MNIST", tuple(str(d) for d in range(10)), None)


def candidate_dirs(data_dir: Path | None, spec: IdxDataset = FASHION_MNIST) -> list[Path]:
    """Where the raw files are looked for, in order: the study's data_dir (or $HPO_DATA_DIR), the
    download cache, Debian's package. Each may hold the files directly or in torchvision's
    ``FashionMNIST/raw/`` (``MNIST/raw/``) layout."""
    roots = [d for d in (data_dir, images.CACHE_DIR, spec.debian_dir) if d is not None]
    return [p for root in roots for p in (root, root / spec.torchvision / "raw")]


def _find(directory: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (directory / name).is_file():
            return directory / name
    return None


def _find_all(directory: Path) -> dict[str, Path] | None:
    """The four files in ``directory`` by key, or None unless all four are there."""
    found = {key: _find(directory, stem) for key, stem in FILES.items()}
    return {key: path for key, path in found.items() if path is not None} if all(found.values()) else None


def load_fashion_mnist(config: DatasetConfig, data_dir: Path | None) -> SourceData:
    return load_idx_dataset(FASHION_MNIST, data_dir, config.download)


def load_mnist(config: DatasetConfig, data_dir: Path | None) -> SourceData:
    return load_idx_dataset(MNIST, data_dir, config.download)


def load_idx_dataset(spec: IdxDataset, data_dir: Path | None, download: bool) -> SourceData:
    found = next(filter(None, (_find_all(d) for d in candidate_dirs(data_dir, spec))), None)
    if found is None:
        if not download:
            raise DataError(_not_found_message(data_dir, downloaded=False, spec=spec))
        found = _find_all(_download(data_dir, spec))
        if found is None:
            raise DataError(_not_found_message(data_dir, downloaded=True, spec=spec))
    directory = found["x_train"].parent

    arrays = {key: read_idx(path) for key, path in found.items()}
    for split in ("train", "test"):
        _check_pair(
            arrays[f"x_{split}"], arrays[f"y_{split}"], found[f"x_{split}"], found[f"y_{split}"], len(spec.classes)
        )
    return SourceData(
        x_train=arrays["x_train"][:, None],
        y_train=arrays["y_train"].astype(np.int64),
        x_test=arrays["x_test"][:, None],
        y_test=arrays["y_test"].astype(np.int64),
        classes=list(spec.classes),
        origin=str(directory),
    )


def _check_pair(x: np.ndarray, y: np.ndarray, x_file: Path, y_file: Path, classes: int = len(CLASSES)) -> None:
    """Images and labels that belong together: a swapped, truncated or foreign file fails here, naming
    itself, rather than as a shape error deep inside a trial."""
    if x.ndim != 3 or x.shape[1:] != (28, 28):
        raise DataError(f"{x_file}: expected images of 28x28 (shape N x 28 x 28), got shape {x.shape}")
    if y.ndim != 1:
        raise DataError(f"{y_file}: expected one label per image (shape N), got shape {y.shape}")
    if len(x) != len(y):
        raise DataError(
            f"{x_file} holds {len(x):,} images but {y_file} holds {len(y):,} labels; one of them is "
            "truncated or from another set"
        )
    if len(y) == 0:
        raise DataError(f"{y_file}: holds no examples")
    if y.max() >= classes:
        raise DataError(f"{y_file}: labels must be 0..{classes - 1}, found {int(y.max())}")


def _download(data_dir: Path | None, spec: IdxDataset = FASHION_MNIST) -> Path:
    """Fetch the files with torchvision into ``data_dir`` (or the cache)."""
    root = data_dir or images.CACHE_DIR
    dataset = getattr(import_torchvision().datasets, spec.torchvision)
    try:
        dataset(str(root), train=True, download=True)
        dataset(str(root), train=False, download=True)
    except Exception as exc:  # network errors come in many types; all mean the same to the user
        raise DataError(_not_found_message(data_dir, downloaded=True, reason=exc, spec=spec)) from None
    return root / spec.torchvision / "raw"


def _not_found_message(
    data_dir: Path | None, downloaded: bool, reason: Exception | None = None, spec: IdxDataset = FASHION_MNIST
) -> str:
    places = "\n".join(f"  - {p}" for p in candidate_dirs(data_dir, spec))
    attempt = ""
    if downloaded:
        attempt = (
            f"The download failed ({type(reason).__name__}: {reason}).\n"
            if reason is not None
            else "The download finished without leaving these files.\n"
        )
    debian = (
        (f"  - on Debian/Ubuntu: apt-get install dataset-fashion-mnist (installs them under {spec.debian_dir});\n")
        if spec.debian_dir
        else ""
    )
    return (
        f"{spec.title} not found. Looked for train-images-idx3-ubyte[.gz] and its three siblings in:\n"
        f"{places}\n{attempt}"
        "To fix it, do one of:\n"
        "  - point HPO_DATA_DIR (or dataset.data_dir in the study) at a folder holding the four files;\n"
        f"{debian}"
        "  - run once with internet access: hpo downloads them to " + str(images.CACHE_DIR)
    )
