import numpy as np
import pytest

from hpo.config.study import DATASET_FORMATS, DATASET_NAMES, FILE_DATASETS, MULTILABEL_DATASETS, DatasetConfig
from hpo.data import get_loader, list_datasets, load_data, stratified_sample
from hpo.data.fashion_mnist import CLASSES, FILES
from hpo.data.idx import read_idx
from hpo.errors import DataError
from hpo.testing import write_idx


@pytest.mark.parametrize("name", DATASET_NAMES)
def test_every_declared_dataset_has_its_loader(name):
    loader = get_loader(name)
    assert callable(loader) and loader.__module__.startswith("hpo.data.")
    assert f"{loader.__module__}:{loader.__name__}" == DATASET_FORMATS[name].loader


def test_the_dataset_lists_derive_from_the_declarations():
    assert list_datasets() == sorted(DATASET_NAMES) == sorted(DATASET_FORMATS)
    assert FILE_DATASETS == ("tiny_imagenet", "image_folder", "multilabel_csv")
    assert MULTILABEL_DATASETS == ("multilabel_csv",)
    with pytest.raises(KeyError, match="unknown dataset 'svhn'; known: cifar10, cifar100, fashion_mnist"):
        get_loader("svhn")


@pytest.fixture
def small_idx(tmp_path, rng):
    """Fashion-MNIST's four IDX files, small: 10 classes x 100 train and x 20 test images of noise."""
    y_train = rng.permutation(np.repeat(np.arange(10), 100)).astype(np.uint8)
    y_test = rng.permutation(np.repeat(np.arange(10), 20)).astype(np.uint8)
    write_idx(tmp_path / FILES["x_train"], rng.integers(0, 256, size=(1000, 28, 28), dtype=np.uint8))
    write_idx(tmp_path / FILES["y_train"], y_train)
    write_idx(tmp_path / FILES["x_test"], rng.integers(0, 256, size=(200, 28, 28), dtype=np.uint8))
    write_idx(tmp_path / FILES["y_test"], y_test)
    return tmp_path


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_idx_round_trip(tmp_path, rng, suffix):
    array = rng.integers(0, 256, size=(5, 28, 28), dtype=np.uint8)
    path = write_idx(tmp_path / f"images{suffix}", array)
    assert np.array_equal(read_idx(path), array)


def test_truncated_idx_names_the_file(tmp_path, rng):
    path = write_idx(tmp_path / "images", rng.integers(0, 256, size=(5, 28, 28), dtype=np.uint8))
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DataError, match=f"{path}: holds .* truncated or corrupt"):
        read_idx(path)


def test_loads_files_written_in_the_original_layout(tmp_path, rng):
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    y_train = np.repeat(np.arange(10), 30).astype(np.uint8)
    y_test = np.repeat(np.arange(10), 5).astype(np.uint8)
    write_idx(raw / (FILES["x_train"] + ".gz"), rng.integers(0, 256, size=(300, 28, 28), dtype=np.uint8))
    write_idx(raw / (FILES["y_train"] + ".gz"), y_train)
    write_idx(raw / FILES["x_test"], rng.integers(0, 256, size=(50, 28, 28), dtype=np.uint8))
    write_idx(raw / FILES["y_test"], y_test)
    data = load_data(
        DatasetConfig(name="fashion_mnist", data_dir=str(tmp_path), validation_split=0.2, download=False), seed=0
    )
    assert data.x_train.shape == (240, 1, 28, 28) and data.x_train.dtype == np.uint8
    assert data.x_val.shape == (60, 1, 28, 28)
    assert data.x_test.shape == (50, 1, 28, 28)
    assert data.classes == CLASSES
    assert np.bincount(data.y_val).tolist() == [6] * 10  # stratified


def test_not_found_offline_says_what_to_do(tmp_path, monkeypatch):
    import dataclasses

    import hpo.data.fashion_mnist as fm
    import hpo.data.images as images

    monkeypatch.setattr(images, "CACHE_DIR", tmp_path / "cache")
    monkeypatch.setattr(fm, "FASHION_MNIST", dataclasses.replace(fm.FASHION_MNIST, debian_dir=tmp_path / "debian"))
    with pytest.raises(DataError) as info:
        load_data(DatasetConfig(name="fashion_mnist", data_dir=str(tmp_path / "empty"), download=False), 0)
    message = str(info.value)
    assert "HPO_DATA_DIR" in message and "apt-get install dataset-fashion-mnist" in message
    assert str(tmp_path / "empty") in message and str(tmp_path / "debian") in message


def test_split_is_stratified_disjoint_and_seeded(small_idx):
    config = DatasetConfig(
        name="fashion_mnist", data_dir=str(small_idx), validation_split=0.1, subset={"train": 500, "test": 100}
    )
    a, b = load_data(config, seed=3), load_data(config, seed=3)
    assert np.array_equal(a.val_index, b.val_index) and np.array_equal(a.train_index, b.train_index)
    assert not set(a.train_index) & set(a.val_index)
    assert len(a.train_index) + len(a.val_index) == 500
    assert np.bincount(a.y_val).tolist() == [5] * 10
    assert np.bincount(a.y_test).tolist() == [10] * 10
    c = load_data(config, seed=4)
    assert not np.array_equal(a.val_index, c.val_index)
    # the normalisation statistics are the training split's, per channel
    pixels = a.x_train.astype(np.float64) / 255.0
    assert a.mean[0] == pytest.approx(pixels.mean(), rel=1e-5) and a.std[0] == pytest.approx(pixels.std(), rel=1e-5)


def test_split_indices_refer_to_the_source_arrays(small_idx):
    from hpo.data.fashion_mnist import FASHION_MNIST, load_idx_dataset

    source = load_idx_dataset(FASHION_MNIST, small_idx, download=False)
    config = DatasetConfig(name="fashion_mnist", data_dir=str(small_idx), validation_split=0.2)
    data = load_data(config, seed=0)
    assert len(data.y_train) == 800 and len(data.y_val) == 200 and len(data.y_test) == 200
    assert np.array_equal(data.x_val, source.x_train[data.val_index])
    assert np.array_equal(data.y_train, source.y_train[data.train_index])
    assert np.array_equal(data.x_test, source.x_test)


def test_full_dataset_shapes(data_dir):
    """The one test on all 70,000 real images: the files hpo finds are the real set, split 54k/6k/10k."""
    data = load_data(DatasetConfig(name="fashion_mnist", data_dir=str(data_dir), validation_split=0.1), 0)
    assert len(data.y_train) == 54_000 and len(data.y_val) == 6_000 and len(data.y_test) == 10_000
    assert data.in_channels == 1 and data.image_size == (28, 28) and data.num_classes == 10


def test_stratified_sample_keeps_proportions(rng):
    labels = np.array([0] * 700 + [1] * 200 + [2] * 100)
    picked = stratified_sample(labels, 100, rng)
    assert np.bincount(labels[picked]).tolist() == [70, 20, 10]
    assert len(set(picked)) == 100
