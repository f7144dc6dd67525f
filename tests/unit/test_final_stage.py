"""The final stage's pure parts: what the final task asks Ray for (a trial's CPUs, a whole GPU when trials
use GPUs), and the splits each run trains on (``TrainData.from_image_data``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pydantic import ByteSize

from hpo.config.study import Resources
from hpo.data import ImageData
from hpo.data.images import FileImages
from hpo.stages.finalize import final_task_options
from hpo.train import TrainData


@pytest.mark.parametrize(("gpus_per_trial", "gpus"), [(0.0, 0), (0.25, 1), (1.0, 1), (2.0, 1)])
def test_the_final_task_asks_for_a_trials_cpus_and_a_whole_gpu_when_trials_use_gpus(gpus_per_trial, gpus):
    options = final_task_options(Resources(cpus_per_trial=3, gpus_per_trial=gpus_per_trial), retries=2)
    assert options["num_cpus"] == 3 and options["num_gpus"] == gpus
    assert options["max_retries"] == 2  # failures.retries: a lost node's final task runs again elsewhere
    assert options["num_returns"] == "streaming"  # epochs reach the driver as they end
    assert "memory" not in options


def test_the_final_task_asks_for_a_trials_memory():
    options = final_task_options(Resources(memory_per_trial=ByteSize(2 * 2**30)), retries=0)
    assert options["memory"] == 2 * 2**30


def _data(x_train, x_val) -> ImageData:
    x_test = np.random.default_rng(0).integers(0, 256, (2, 1, 4, 4), dtype=np.uint8)
    y = np.arange(10) % 3
    index = np.arange(2)
    return ImageData(
        x_train, y[:6], x_val, y[6:8], x_test, y[8:], ["a", "b", "c"], (0.5,), (0.25,), index, index, index
    )


def test_train_data_from_the_splits_as_each_run_uses_them():
    x = np.random.default_rng(1).integers(0, 256, (8, 1, 4, 4), dtype=np.uint8)
    data = _data(x[:6], x[6:])
    trial = TrainData.from_image_data(data)  # trials and re-check runs: validated on val
    assert torch.equal(trial.x_train, torch.as_tensor(data.x_train)) and torch.equal(
        trial.x_val, torch.as_tensor(data.x_val)
    )
    assert trial.num_classes == 3 and trial.mean == (0.5,) and trial.std == (0.25,)
    merged = TrainData.from_image_data(data, val="train")  # the final retrain on train+val
    assert torch.equal(merged.x_train, torch.as_tensor(np.concatenate([data.x_train, data.x_val])))
    assert torch.equal(merged.y_train, torch.as_tensor(np.concatenate([data.y_train, data.y_val])))
    assert merged.x_val is None and merged.y_val is None
    alone = TrainData.from_image_data(data, val="drop")  # the final retrain on the training split
    assert len(alone.y_train) == 6 and alone.x_val is None and alone.y_val is None


def test_streamed_splits_stay_files():
    files = FileImages(("v1.png", "v2.png"), 4, 1)
    data = _data(FileImages(tuple(f"t{i}.png" for i in range(6)), 4, 1), files)
    assert TrainData.from_image_data(data).x_val is files
    merged = TrainData.from_image_data(data, val="train").x_train
    assert isinstance(merged, FileImages) and merged.paths[-2:] == files.paths and len(merged.paths) == 8
