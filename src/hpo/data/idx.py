"""Reader for the IDX format of (Fashion-)MNIST, plain or gzipped."""

from __future__ import annotations

import gzip
import math
import zlib
from pathlib import Path

import numpy as np

from hpo.errors import DataError

_UBYTE = 0x08


def read_idx(path: Path) -> np.ndarray:
    """The array stored in an IDX file (``.gz`` is decompressed). Errors name the file and the fault."""
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise DataError(
            f"{path}: cannot read ({exc}); the file is truncated or corrupt: delete it and fetch it again"
        ) from None
    if not raw:
        raise DataError(f"{path}: the file is empty (an interrupted download?); delete it and fetch it again")
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != _UBYTE:
        found = raw[:4].hex() or "nothing"
        raise DataError(
            f"{path}: not an IDX file of unsigned bytes (bad magic number: expected 000008.., "
            f"found {found}); the file is corrupt or not what its name says"
        )
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated header ({len(raw)} bytes, {ndim} dimensions need {header})")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = math.prod(shape)  # Python ints: a corrupt header cannot overflow into a plausible size
    if len(raw) - header != expected:
        raise DataError(
            f"{path}: holds {len(raw) - header:,} bytes of data, but its header promises "
            f"{expected:,} for shape {shape}; the file is truncated or corrupt"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)
