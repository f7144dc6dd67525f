"""Datasets larger than memory: images left on disk and decoded per batch by worker processes.

With ``dataset.stream: true`` an image-file dataset (tiny_imagenet, image_folder, multilabel_csv) yields
:class:`FileImages` in place of uint8 arrays: the paths, the size and the channels. Splitting it indexes
paths, not pixels; the trainer asks :func:`iterate_batches` for each batch, which a ``DataLoader`` with
worker processes decodes ahead of the model; the batched augmentations then run on the decoded batch as
for in-memory data.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch

from hpo.data.images import FileImages, Images

__all__ = ["FileImages", "concat_images", "head", "iterate_batches"]

PREFETCH = 4  # batches each worker decodes ahead


def concat_images(parts: Sequence[Any]) -> Any:
    """``np.concatenate`` for arrays, ``FileImages.concat`` for files."""
    if isinstance(parts[0], FileImages):
        return FileImages.concat(parts)
    return np.concatenate(parts)


def head(images: Images, n: int) -> np.ndarray:
    """The first ``n`` images as a uint8 array, decoded if they are files."""
    return np.asarray(images[:n])


class _Batches(torch.utils.data.Dataset):
    """A map-style dataset whose items are whole batches: ``DataLoader(batch_size=None)`` hands each to
    a worker, which decodes the files of that batch."""

    def __init__(self, images: FileImages, batches: list[np.ndarray]) -> None:
        self.images, self.batches = images, batches

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.from_numpy(self.images.decode(self.batches[i].tolist()))


def iterate_batches(
    images: torch.Tensor | FileImages, batches: list[np.ndarray], workers: int = 2
) -> Iterator[torch.Tensor]:
    """uint8 tensors, one per index array in ``batches``, in order: sliced from a tensor, or decoded
    from files by ``workers`` processes ahead of the consumer."""
    if not isinstance(images, FileImages):
        for batch in batches:
            yield images[torch.as_tensor(batch, device=images.device)]
        return
    if workers <= 0:
        for batch in batches:
            yield torch.from_numpy(images.decode(batch.tolist()))
        return
    loader: torch.utils.data.DataLoader[torch.Tensor] = torch.utils.data.DataLoader(
        _Batches(images, batches),
        batch_size=None,
        shuffle=False,
        num_workers=workers,
        prefetch_factor=PREFETCH,
        persistent_workers=False,
        multiprocessing_context="spawn" if torch.cuda.is_initialized() else None,
    )
    yield from loader
