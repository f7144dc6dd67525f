"""Images as every loader hands them on: decoded uint8 arrays (N, C, H, W), or image files left on disk
(:class:`FileImages`, ``dataset.stream``); and the two records built from them, a dataset as its loader
read it (:class:`SourceData`) and the splits one study uses (:class:`ImageData`).

Decoded images are cached (``~/.cache/hpo/datasets/decoded/``) so the second run reads one file.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hpo.errors import DataError

# Downloads and decoded images. Read at call time (``images.CACHE_DIR``): tests point it elsewhere.
CACHE_DIR = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "hpo" / "datasets"
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
PARALLEL_FROM = 2000  # images: below this, decoding in one process is faster than starting a pool
_GREY_MODES = ("L", "1", "I;16", "I")


# ------------------------------------------------------------------------------------------- decoding
def decode_image(path: str | Path, size: int | None, channels: int) -> np.ndarray:
    """One image file as uint8 (C, H, W): converted to ``channels`` (1: grey, 3: RGB), resized to ``size``
    x ``size`` if given."""
    from PIL import Image

    try:
        with Image.open(path) as opened:
            img = opened.convert("L" if channels == 1 else "RGB")
            if size and img.size != (size, size):
                img = img.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=2.0)
            array = np.asarray(img, dtype=np.uint8)
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot read this image ({exc})") from None
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)


def _decode_job(job: tuple[str, int | None, int]) -> np.ndarray:
    return decode_image(*job)


def image_channels(path: str | Path) -> int:
    """The channels an image file's mode calls for: 1 for grey, else 3."""
    from PIL import Image

    with Image.open(path) as first:
        return 1 if first.mode in _GREY_MODES else 3


def decode_images(paths: Sequence[Path], size: int | None, channels: int | None) -> np.ndarray:
    """Decode ``paths`` into one uint8 array (N, C, H, W), in worker processes for many files. Without
    ``size`` every image must have the first one's size; without ``channels``, the first one's mode
    decides (grey: 1, else 3)."""
    if not paths:
        raise DataError("no images to read")
    chosen = channels if channels is not None else image_channels(paths[0])
    jobs = [(str(p), size, chosen) for p in paths]
    if len(jobs) >= PARALLEL_FROM and (os.cpu_count() or 1) > 1:
        with ProcessPoolExecutor(os.cpu_count()) as pool:
            arrays = list(pool.map(_decode_job, jobs, chunksize=256))
    else:
        arrays = [_decode_job(j) for j in jobs]
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        raise DataError(
            f"images of different sizes ({', '.join(str(s[1:]) for s in sorted(shapes)[:4])}, ...): "
            "set dataset.image_size to resize them all"
        )
    return np.stack(arrays)


def cached_decode(key: str, paths: Sequence[Path], size: int | None, channels: int | None) -> np.ndarray:
    """``decode_images`` once per (files as they are now, size, channels): later runs read one .npy file.
    A file that changes (size or modification time) or moves makes a new entry."""
    h = hashlib.sha256(f"{key}|{size}|{channels}|{len(paths)}".encode())
    for p in paths:
        st = p.stat()
        h.update(f"\n{p}|{st.st_size}|{st.st_mtime_ns}".encode())
    digest = h.hexdigest()[:20]
    cache = CACHE_DIR / "decoded" / f"{digest}.npy"
    if cache.is_file():
        try:
            return np.load(cache, allow_pickle=False)
        except (OSError, ValueError):
            cache.unlink(missing_ok=True)
    array = decode_images(paths, size, channels)
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(f".{os.getpid()}.tmp.npy")
        np.save(tmp, array, allow_pickle=False)
        tmp.replace(cache)
    except OSError:
        pass  # a read-only cache only costs time
    return array


# ------------------------------------------------------------------------------------- files on disk
@dataclass(frozen=True)
class FileImages:
    """Image files standing in for a uint8 array (N, C, H, W). Indexing with an array or slice gives
    another ``FileImages`` (nothing decoded); an integer index, ``decode`` or ``np.asarray`` decodes."""

    paths: tuple[str, ...]
    size: int
    channels: int

    ndim = 4
    dtype = np.dtype(np.uint8)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return len(self.paths), self.channels, self.size, self.size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, (int, np.integer)):
            return self.decode([int(index)])[0]
        if isinstance(index, slice):
            return FileImages(self.paths[index], self.size, self.channels)
        chosen = np.asarray(index)
        if chosen.dtype == bool:
            chosen = np.flatnonzero(chosen)
        return FileImages(tuple(self.paths[i] for i in chosen.tolist()), self.size, self.channels)

    def decode(self, indices: Sequence[int] | None = None) -> np.ndarray:
        chosen = range(len(self.paths)) if indices is None else indices
        arrays = [decode_image(self.paths[i], self.size, self.channels) for i in chosen]
        if not arrays:
            return np.zeros((0, self.channels, self.size, self.size), np.uint8)
        return np.stack(arrays)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        array = self.decode()
        return array if dtype is None else array.astype(dtype)

    def digest(self) -> str:
        """What ``split_record`` reports for these images: the files, not their pixels (which it would
        have to read)."""
        return hashlib.sha256("\n".join(self.paths).encode()).hexdigest()

    @staticmethod
    def concat(parts: Sequence[FileImages]) -> FileImages:
        return FileImages(tuple(p for part in parts for p in part.paths), parts[0].size, parts[0].channels)


Images = np.ndarray | FileImages  # what a split's images are: decoded, or streamed from files


# -------------------------------------------------------------------------------------------- records
@dataclass
class SourceData:
    """A dataset as its loader returns it: train and test images (uint8 (N, C, H, W), or files) and labels."""

    x_train: Images
    y_train: np.ndarray
    x_test: Images
    y_test: np.ndarray
    classes: list[str]
    origin: str  # where the files were read from


@dataclass
class ImageData:
    """The splits one study uses. Train/val come from the dataset's training part; the test set is only
    read by the final evaluation. Index arrays refer to the source arrays, so another backend can be
    handed exactly the same examples."""

    x_train: Images
    y_train: np.ndarray
    x_val: Images
    y_val: np.ndarray
    x_test: Images
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


def split_record(arrays: Mapping[str, Any]) -> dict[str, dict]:
    """Counts and SHA-256 digests of each split's source indices, images and labels: two backends that
    report the same record trained, validated and tested on the same examples."""

    def digest(array: Any) -> str:
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
