"""Every dataset loader on small files written in the real on-disk format: shapes, classes, counts, and the
pixels and labels that went in."""

from __future__ import annotations

import numpy as np
import pytest

from hpo.config.study import DatasetConfig
from hpo.data import get_loader, load_data
from hpo.errors import DataError
from hpo.testing import write_idx
from hpo.testing.datasets import (
    APPAREL_CATEGORIES,
    APPAREL_COLOURS,
    pattern_images,
    write_apparel_csv,
    write_cifar,
    write_image_folder,
    write_tiny_imagenet,
)


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    """Decoded images go to this test's folder, not the user's cache."""
    import hpo.data.images as images

    monkeypatch.setattr(images, "CACHE_DIR", tmp_path / "cache")


def _load(name: str, data_dir, **extra):
    config = DatasetConfig(name=name, data_dir=str(data_dir), download=False, **extra)
    return get_loader(name)(config, data_dir)


def test_mnist_reads_the_four_idx_files(tmp_path):
    rng = np.random.default_rng(0)
    x_train, x_test = (
        rng.integers(0, 256, (30, 28, 28), dtype=np.uint8),
        rng.integers(0, 256, (12, 28, 28), dtype=np.uint8),
    )
    y_train, y_test = np.arange(30) % 10, np.arange(12) % 10
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for stem, array in (
        ("train-images-idx3-ubyte", x_train),
        ("train-labels-idx1-ubyte", y_train),
        ("t10k-images-idx3-ubyte", x_test),
        ("t10k-labels-idx1-ubyte", y_test),
    ):
        write_idx(raw / (stem + ".gz"), array)
    source = _load("mnist", tmp_path)
    assert source.x_train.shape == (30, 1, 28, 28) and source.x_test.shape == (12, 1, 28, 28)
    assert source.classes == [str(d) for d in range(10)]
    assert np.array_equal(source.x_train[:, 0], x_train) and np.array_equal(source.y_test, y_test)


@pytest.mark.parametrize("fine", [False, True], ids=["cifar10", "cifar100"])
def test_cifar_reads_the_binary_version(tmp_path, fine):
    y_train, y_test = write_cifar(tmp_path, fine=fine, train_per_class=5, test_per_class=3, classes=10)
    source = _load("cifar100" if fine else "cifar10", tmp_path)
    assert source.x_train.shape == (50, 3, 32, 32) and source.x_test.shape == (30, 3, 32, 32)
    assert np.array_equal(source.y_train, y_train) and np.array_equal(source.y_test, y_test)  # fine labels
    assert len(source.classes) == (100 if fine else 10) and source.classes[3] == "class_3"
    assert np.array_equal(source.x_test, pattern_images(y_test, 32, 3, seed=99))


def test_cifar_missing_offline_says_what_to_do(tmp_path):
    with pytest.raises(DataError, match=r"(?s)CIFAR-10 \(binary version\) not found.*cifar-10-binary.tar.gz"):
        _load("cifar10", tmp_path)


def test_a_truncated_cifar_file_names_itself(tmp_path):
    write_cifar(tmp_path, fine=False, train_per_class=2, test_per_class=1, classes=10)
    batch = tmp_path / "cifar-10-batches-bin" / "test_batch.bin"
    batch.write_bytes(batch.read_bytes()[:-5])
    with pytest.raises(DataError, match=r"test_batch\.bin: .* not a whole number of 3073-byte"):
        _load("cifar10", tmp_path)


@pytest.mark.parametrize("size", [None, 32])
def test_tiny_imagenet_reads_its_folders_and_downsamples(tmp_path, size):
    write_tiny_imagenet(tmp_path, classes=3, train_per_class=4, val_per_class=2)
    source = _load("tiny_imagenet", tmp_path, image_size=size)
    side = size or 64
    assert source.x_train.shape == (12, 3, side, side) and source.x_test.shape == (6, 3, side, side)
    assert source.classes == ["thing 0", "thing 1", "thing 2"]
    assert np.array_equal(np.bincount(source.y_train), [4, 4, 4]) and np.array_equal(
        np.bincount(source.y_test), [2, 2, 2]
    )
    # JPEG is lossy: the class's bright square is where it was drawn (class 1: top row, second quarter)
    q = side // 4
    square = source.x_train[4:8, 1, :q, q : 2 * q].astype(float)
    assert square.mean() > 200 and source.x_train[4:8, 1, 2 * q :, 2 * q :].mean() < 100
    # a second load reads the decoded cache
    assert list((tmp_path / "cache" / "decoded").glob("*.npy"))
    again = _load("tiny_imagenet", tmp_path, image_size=size)
    assert np.array_equal(again.x_train, source.x_train)


def test_image_folder_with_train_and_test_parts(tmp_path):
    write_image_folder(
        tmp_path, classes=["cat", "dog", "owl"], per_class=4, test_per_class=2, split=True, channels=1, size=20
    )
    source = _load("image_folder", tmp_path)
    assert source.classes == ["cat", "dog", "owl"]
    assert source.x_train.shape == (12, 1, 20, 20) and source.x_test.shape == (6, 1, 20, 20)
    assert np.array_equal(source.x_train[4:8], pattern_images(np.full(4, 1), 20, 1, seed=7 * 1 + 5))  # PNG: exact


def test_image_folder_in_one_folder_is_split_by_test_split(tmp_path):
    write_image_folder(tmp_path, classes=["a", "b"], per_class=10, size=16)
    source = _load("image_folder", tmp_path, test_split=0.3, image_size=24)
    assert source.x_train.shape == (14, 3, 24, 24) and source.x_test.shape == (6, 3, 24, 24)
    assert np.array_equal(np.bincount(source.y_test), [3, 3])


def test_a_changed_image_is_decoded_again(tmp_path):
    import os

    write_image_folder(tmp_path / "data", classes=["a", "b"], per_class=3, size=8, channels=1)
    first = _load("image_folder", tmp_path / "data", test_split=0.34)
    target = tmp_path / "data" / "a" / "a_0.png"
    write_image_folder(tmp_path / "other", classes=["y", "z"], per_class=1, size=8, channels=1)
    os.replace(tmp_path / "other" / "z" / "z_0.png", target)  # new pixels, same name
    second = _load("image_folder", tmp_path / "data", test_split=0.34)
    assert len(list((tmp_path / "cache" / "decoded").glob("*.npy"))) == 2
    assert not np.array_equal(
        np.concatenate([first.x_train, first.x_test]), np.concatenate([second.x_train, second.x_test])
    )


def test_image_folder_needs_class_folders(tmp_path):
    (tmp_path / "only").mkdir()
    with pytest.raises(DataError, match="one sub-folder of images per class"):
        _load("image_folder", tmp_path)


def test_multilabel_csv_expands_value_columns_and_keeps_binary_ones(tmp_path):
    _, rows = write_apparel_csv(tmp_path, per_combination=5, size=24)
    source = _load("multilabel_csv", tmp_path, test_split=0.2)
    expected = (
        [f"category={c}" for c in sorted(APPAREL_CATEGORIES)]
        + [f"colour={c}" for c in sorted(APPAREL_COLOURS)]
        + ["sale"]
    )
    assert source.classes == expected
    assert source.x_train.shape == (24, 3, 24, 24) and source.x_test.shape == (6, 3, 24, 24)
    assert source.y_train.shape == (24, 6) and source.y_train.dtype == np.uint8
    both = np.concatenate([source.y_train, source.y_test])
    assert (both[:, :3].sum(1) == 1).all() and (both[:, 3:5].sum(1) == 1).all()  # one category, one colour
    assert both[:, 5].sum() == sum(r["sale"] == "1" for r in rows)


def test_multilabel_data_splits_by_label_combination(tmp_path):
    write_apparel_csv(tmp_path, per_combination=8, size=16)
    config = DatasetConfig(
        name="multilabel_csv", data_dir=str(tmp_path), validation_split=0.25, label_columns=["category", "colour"]
    )
    data = load_data(config, seed=0)
    assert data.multilabel and data.num_classes == 5
    assert len(data.y_train) + len(data.y_val) + len(data.y_test) == 48
    combos = {tuple(r) for r in data.y_val}
    assert len(combos) == 6  # every category x colour combination in the validation part


def test_multilabel_csv_names_a_missing_column(tmp_path):
    write_apparel_csv(tmp_path, per_combination=1)
    with pytest.raises(DataError, match=r"no column\(s\) size; columns: path, category, colour, sale"):
        _load("multilabel_csv", tmp_path, label_columns=["category", "size"])
