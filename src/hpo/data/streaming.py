"""Datasets larger than memory: images left on disk and decoded per batch by worker processes.

With ``dataset.stream: true`` an image-file dataset (tiny_imagenet, image_folder, multilabel_csv) yields
:class:`FileImages` in place of uint8 arrays: the paths, the size and the channels. Splitting it indexes
paths, not pixels; the trainer asks :func:`iterate_batches` for each batch, which a ``DataLoader`` with
worker processes decodes ahead of the model; the batched augmentations then run on the decoded batch as
for in-memory data.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

PREFETCH = 4  # batches each worker decodes ahead


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

    def __getitem__(self, index):
        if isinstance(index, (int, np.integer)):
            return self.decode([int(index)])[0]
        if isinstance(index, slice):
            return FileImages(self.paths[index], self.size, self.channels)
        chosen = np.asarray(index)
        if chosen.dtype == bool:
            chosen = np.flatnonzero(chosen)
        return FileImages(tuple(self.paths[i] for i in chosen.tolist()), self.size, self.channels)

    def decode(self, indices: Sequence[int] | None = None) -> np.ndarray:
        from hpo.data.formats import _decode

        chosen = range(len(self.paths)) if indices is None else indices
        arrays = [_decode((self.paths[i], self.size, self.channels)) for i in chosen]
        if not arrays:
            return np.zeros((0, self.channels, self.size, self.size), np.uint8)
        return np.stack(arrays)

    def __array__(self, dtype=None, copy=None):
        array = self.decode()
        return array if dtype is None else array.astype(dtype)

    def digest(self) -> str:
        """What ``split_record`` reports for these images: the files, not their pixels (which it would
        have to read)."""
        return hashlib.sha256("\n".join(self.paths).encode()).hexdigest()

    @staticmethod
    def concat(parts: Sequence[FileImages]) -> FileImages:
        return FileImages(tuple(p for part in parts for p in part.paths), parts[0].size, parts[0].channels)


def concat_images(parts: Sequence) -> object:
    """``np.concatenate`` for arrays, ``FileImages.concat`` for files."""
    if isinstance(parts[0], FileImages):
        return FileImages.concat(parts)
    return np.concatenate(parts)


def head(images, n: int) -> np.ndarray:
    """The first ``n`` images as a uint8 array, decoded if they are files."""
    return np.asarray(images[:n])


class _Batches:
    """A map-style dataset whose items are whole batches: ``DataLoader(batch_size=None)`` hands each to
    a worker, which decodes the files of that batch."""

    def __init__(self, images: FileImages, batches: list[np.ndarray]) -> None:
        self.images, self.batches = images, batches

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int):
        import torch

        return torch.from_numpy(self.images.decode(self.batches[i].tolist()))


def iterate_batches(images, batches: list[np.ndarray], workers: int = 2) -> Iterator:
    """uint8 tensors, one per index array in ``batches``, in order: sliced from a tensor, or decoded
    from files by ``workers`` processes ahead of the consumer."""
    import torch

    if not isinstance(images, FileImages):
        for batch in batches:
            yield images[torch.as_tensor(batch, device=images.device)]
        return
    if workers <= 0:
        for batch in batches:
            yield torch.from_numpy(images.decode(batch.tolist()))
        return
    loader = torch.utils.data.DataLoader(
        _Batches(images, batches),
        batch_size=None,
        shuffle=False,
        num_workers=workers,
        prefetch_factor=PREFETCH,
        persistent_workers=False,
        multiprocessing_context="spawn" if torch.cuda.is_initialized() else None,
    )
    yield from loader
