"""dataset.stream: images stay on disk and worker processes decode each batch; everything else is as if
they had been read into memory."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hpo.config.study import DatasetConfig
from hpo.data import load_data
from hpo.data.streaming import FileImages
from hpo.testing.datasets import write_image_folder


@pytest.fixture()
def folder(tmp_path, monkeypatch):
    import hpo.data.images as images

    monkeypatch.setattr(images, "CACHE_DIR", tmp_path / "cache")
    return write_image_folder(tmp_path / "data", classes=["a", "b", "c"], per_class=30, size=16, channels=3)


def _both(folder):
    common = {
        "name": "image_folder",
        "data_dir": str(folder),
        "image_size": 16,
        "validation_split": 0.2,
        "test_split": 0.2,
    }
    return (load_data(DatasetConfig(**common), seed=1), load_data(DatasetConfig(**common, stream=True), seed=1))


def test_streamed_splits_are_the_in_memory_ones_left_on_disk(folder):
    memory, streamed = _both(folder)
    assert isinstance(streamed.x_train, FileImages) and isinstance(streamed.x_test, FileImages)
    assert streamed.x_train.shape == memory.x_train.shape
    for part in ("train", "val", "test"):
        assert np.array_equal(getattr(streamed, f"{part}_index"), getattr(memory, f"{part}_index"))
        assert np.array_equal(np.asarray(getattr(streamed, f"x_{part}")), getattr(memory, f"x_{part}"))
    assert streamed.mean == pytest.approx(memory.mean) and streamed.std == pytest.approx(memory.std)
    assert streamed.x_train[5].shape == (3, 16, 16)  # one image, decoded
    assert isinstance(streamed.x_train[np.arange(4)], FileImages)  # a subset, not decoded


def test_training_on_streamed_images_matches_training_in_memory(folder):
    from hpo.config.trial import TrialConfig
    from hpo.train import TrainData, predict_logits, train

    config = TrialConfig.model_validate(
        {
            "model": {"depth": 2, "width": 8},
            "batch_size": 16,
            "optimizer": {"name": "sgd", "lr": 0.05},
            "augment": {"hflip": 0.5},
        }
    )
    results = []
    for data in _both(folder):
        wrapped = TrainData.from_arrays(
            data.x_train, data.y_train, data.x_val, data.y_val, data.num_classes, data.mean, data.std
        )
        result = train(config, wrapped, epochs=2, seed=3, threads=1)
        logits = predict_logits(
            result.model,
            data.x_test if isinstance(data.x_test, FileImages) else torch.as_tensor(data.x_test),
            plan=result.plan,
        )
        results.append((result.history, logits))
    (memory, memory_logits), (streamed, streamed_logits) = results
    for a, b in zip(memory, streamed, strict=True):
        assert a.train_loss == pytest.approx(b.train_loss, rel=1e-5) and a.val_accuracy == b.val_accuracy
    assert torch.allclose(memory_logits, streamed_logits, atol=1e-4)


def test_streaming_is_refused_where_it_cannot_work(tmp_path):
    from hpo.errors import StudyErrors
    from hpo.study import load_study

    (tmp_path / "space.yaml").write_text("model: {depth: 2}\n")
    for dataset, says in (
        ("{name: fashion_mnist, stream: true}", "streaming is for image files"),
        ("{name: image_folder, stream: true}", "need dataset.image_size"),
    ):
        (tmp_path / "s.yaml").write_text(
            f"name: s\ndataset: {dataset}\nsearch_space: space.yaml\nbudget: {{trials: 1, max_epochs: 1}}\n"
        )
        with pytest.raises(StudyErrors, match=says):
            load_study(tmp_path / "s.yaml")
