"""Helpers for hpo's tests (and for plugins' tests): locating the real Fashion-MNIST files, writing
IDX files, tiny configs."""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from hpo.data.fashion_mnist import DEBIAN_DIR, FILES

REPO_ROOT = Path(__file__).resolve().parents[3]


def find_fashion_mnist() -> Path | None:
    """A directory holding the four Fashion-MNIST files: $HPO_DATA_DIR, ../shared/datasets beside the
    repository, or Debian's package. None if there is none."""
    candidates: list[str | Path | None] = [
        os.environ.get("HPO_DATA_DIR"),
        REPO_ROOT.parent / "shared" / "datasets",
        DEBIAN_DIR,
    ]
    for root in [c for c in candidates if c]:
        for d in (Path(root), Path(root) / "FashionMNIST" / "raw"):
            if all((d / s).is_file() or (d / (s + ".gz")).is_file() for s in FILES.values()):
                return Path(root)
    return None


def write_idx(path: Path, array: np.ndarray, *, gz: bool | None = None) -> Path:
    """Write ``array`` (uint8) in IDX format; gzip it when the name ends in .gz."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    blob = header + array.tobytes()
    gz = path.suffix == ".gz" if gz is None else gz
    path.write_bytes(gzip.compress(blob) if gz else blob)
    return path


def hpo_env(data_dir: Path | None = None, env: dict[str, str] | None = None) -> dict[str, str]:
    """The environment tests run ``hpo`` in: data found, usage stats off, no tracking URI inherited;
    ``env`` adds to (or overrides) it."""
    full = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    if data_dir is not None:
        full["HPO_DATA_DIR"] = str(data_dir)
    full.pop("MLFLOW_TRACKING_URI", None)
    full.update(env or {})
    return full


def run_hpo(
    args: list[str], cwd: Path, data_dir: Path | None = None, timeout: int = 600, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """Run the ``hpo`` CLI in a subprocess (as a user would), with data found and usage stats off; ``env``
    adds to (or overrides) the environment."""
    full = hpo_env(data_dir, env)
    return subprocess.run(
        [sys.executable, "-m", "hpo.cli", *args],
        check=False,
        cwd=cwd,
        env=full,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def probe_shared_arrays(data) -> dict:
    """Run inside a Ray worker: how the worker holds ``data.x_train`` (a module-level function, so Ray can
    import it there)."""
    import torch

    from hpo.train import TrainData

    x = data.x_train
    wrapped = TrainData.from_arrays(x, data.y_train, data.x_val, data.y_val, data.num_classes, data.mean, data.std)
    assert isinstance(wrapped.x_train, torch.Tensor)  # in-memory images: a tensor over the same memory
    return {
        "pid": os.getpid(),
        "owndata": x.flags.owndata,
        "writeable": x.flags.writeable,
        "torch_shares": wrapped.x_train.data_ptr() == x.__array_interface__["data"][0],
    }


def wait_ended(processes: list, timeout: float) -> list:
    """Wait until each ``psutil.Process`` has ended; return those still running after ``timeout`` s. A
    zombie has ended: once its parent is killed, an orphan that exits waits for whoever adopted it to reap
    it, and a container's PID 1 may never do so."""
    import time

    import psutil

    def ended(p) -> bool:
        try:
            return p.status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not all(ended(p) for p in processes):
        time.sleep(0.2)
    return [p for p in processes if not ended(p)]
