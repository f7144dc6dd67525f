"""Damaged dataset files fail with a DataError that names the file and the fault, never as a numpy error
deep inside a trial. Each case writes a small Fashion-MNIST-shaped dataset into tmp_path and breaks one
file."""

from __future__ import annotations

import gzip
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from hpo.config.study import DatasetConfig
from hpo.data import load_data
from hpo.data.fashion_mnist import FILES
from hpo.data.idx import read_idx
from hpo.errors import DataError
from hpo.testing import run_hpo, write_idx


def arrays(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """A valid small dataset: 100 training and 20 test images, every class present."""
    return {
        "x_train": rng.integers(0, 256, size=(100, 28, 28), dtype=np.uint8),
        "y_train": np.arange(100, dtype=np.uint8) % 10,
        "x_test": rng.integers(0, 256, size=(20, 28, 28), dtype=np.uint8),
        "y_test": np.arange(20, dtype=np.uint8) % 10,
    }


def write_dataset(root: Path, data: dict[str, np.ndarray], gz: bool = True) -> dict[str, Path]:
    return {key: write_idx(root / (FILES[key] + (".gz" if gz else "")), array) for key, array in data.items()}


def load(root: Path):
    return load_data(DatasetConfig(name="fashion_mnist", data_dir=str(root), download=False), seed=0)


# -------------------------------------------------------------------------------- one file, read_idx


def _truncated_gz(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _flipped_gz_byte(path: Path) -> None:
    blob = bytearray(path.read_bytes())
    blob[len(blob) // 2] ^= 0xFF  # the deflate stream or its CRC no longer checks out
    path.write_bytes(bytes(blob))


def _not_gzip(path: Path) -> None:
    path.write_bytes(gzip.decompress(path.read_bytes()))  # plain IDX bytes under a .gz name


def _wrong_magic(path: Path) -> None:
    raw = bytearray(gzip.decompress(path.read_bytes()))
    raw[2] = 0x0B  # IDX type code of int16, not unsigned bytes
    path.write_bytes(gzip.compress(bytes(raw)))


def _foreign_file(path: Path) -> None:
    path.write_bytes(gzip.compress(b"<html>404 Not Found</html>"))  # what a failed download leaves


def _truncated_header(path: Path) -> None:
    path.write_bytes(gzip.compress(gzip.decompress(path.read_bytes())[:9]))


def _truncated_data(path: Path) -> None:
    path.write_bytes(gzip.compress(gzip.decompress(path.read_bytes())[:-1000]))


def _absurd_shape(path: Path) -> None:
    header = bytes([0, 0, 0x08, 3]) + (0xFFFFFFFF).to_bytes(4, "big") * 3  # 2**96 bytes: must not overflow
    path.write_bytes(gzip.compress(header + bytes(10)))


def _empty(path: Path) -> None:
    path.write_bytes(b"")


@pytest.mark.parametrize(
    "damage, message",
    [
        (_truncated_gz, r"cannot read \(.*\); the file is truncated or corrupt"),
        (_flipped_gz_byte, r"cannot read \(.*\); the file is truncated or corrupt"),
        (_not_gzip, r"cannot read \(Not a gzipped file"),
        (_wrong_magic, r"not an IDX file of unsigned bytes \(bad magic number: expected 000008\.\., found 00000b03\)"),
        (_foreign_file, r"not an IDX file of unsigned bytes \(bad magic number: expected 000008\.\., found 3c68746d\)"),
        (_truncated_header, r"truncated header \(9 bytes, 3 dimensions need 16\)"),
        (_truncated_data, r"holds 77,400 bytes of data, but its header promises 78,400 for shape \(100, 28, 28\)"),
        (_absurd_shape, r"holds 10 bytes of data, but its header promises 79,228,162,458,924,105,385,300,197,375"),
        (_empty, r"the file is empty \(an interrupted download\?\)"),
    ],
)
def test_a_damaged_idx_file_names_itself_and_the_fault(tmp_path, rng, damage: Callable[[Path], None], message):
    path = write_dataset(tmp_path, arrays(rng))["x_train"]
    damage(path)
    with pytest.raises(DataError, match=rf"^{path}: ({message})"):
        read_idx(path)
    with pytest.raises(DataError, match=rf"^{path}: "):  # the same through the dataset loader
        load(tmp_path)


# ------------------------------------------------------------------------ files that do not fit together


def test_images_and_labels_of_different_counts_name_both_files(tmp_path, rng):
    data = arrays(rng)
    data["y_train"] = data["y_train"][:99]
    files = write_dataset(tmp_path, data)
    with pytest.raises(DataError) as info:
        load(tmp_path)
    assert str(info.value) == (
        f"{files['x_train']} holds 100 images but {files['y_train']} holds 99 labels; "
        "one of them is truncated or from another set"
    )


@pytest.mark.parametrize(
    "key, array, message",
    [
        (
            "x_train",
            np.zeros((100, 32, 32), np.uint8),
            r"expected images of 28x28 \(shape N x 28 x 28\), got shape \(100, 32, 32\)",
        ),
        ("x_test", np.zeros((20, 784), np.uint8), r"expected images of 28x28 .* got shape \(20, 784\)"),
        ("y_train", np.zeros((100, 1), np.uint8), r"expected one label per image \(shape N\), got shape \(100, 1\)"),
        ("y_test", np.full(20, 10, np.uint8), r"labels must be 0\.\.9, found 10"),
    ],
)
def test_wrong_shapes_and_labels_name_the_file(tmp_path, rng, key, array, message):
    data = arrays(rng)
    data[key] = array
    files = write_dataset(tmp_path, data, gz=False)
    with pytest.raises(DataError, match=rf"^{files[key]}: {message}"):
        load(tmp_path)


def test_an_empty_dataset_is_an_error(tmp_path):
    files = write_dataset(
        tmp_path,
        {
            "x_train": np.zeros((0, 28, 28), np.uint8),
            "y_train": np.zeros(0, np.uint8),
            "x_test": np.zeros((0, 28, 28), np.uint8),
            "y_test": np.zeros(0, np.uint8),
        },
    )
    with pytest.raises(DataError, match=rf"^{files['y_train']}: holds no examples"):
        load(tmp_path)


# -------------------------------------------------------------------------------------- through the CLI

STUDY = """\
name: damaged-data
dataset: {{name: fashion_mnist, data_dir: {data}, download: false, validation_split: 0.2}}
search_space: {{model: {{depth: 1, width: 4}}}}
budget: {{trials: 1, max_epochs: 1}}
scheduler: {{type: none}}
final: {{enabled: false}}
"""


@pytest.mark.integration  # starts Ray: the data loads while Ray starts
def test_hpo_run_on_damaged_data_names_the_file_and_tracks_nothing(tmp_path, rng):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    files = write_dataset(data_dir, arrays(rng))
    _truncated_gz(files["y_test"])
    (tmp_path / "study.yaml").write_text(STUDY.format(data=data_dir))
    result = run_hpo(["run", "study.yaml"], tmp_path, timeout=300)
    flat = " ".join(result.stderr.split())
    assert result.returncode == 2, result.stderr  # unreadable data is bad input, like a bad study
    assert f"error: {files['y_test']}: cannot read" in flat, result.stderr
    assert "truncated or corrupt" in flat and "Traceback" not in flat
    assert not (tmp_path / "mlflow").exists()  # nothing tracked for a study that never started
    assert not list((tmp_path / "runs").glob("*/*"))  # and no run left behind to "resume"
