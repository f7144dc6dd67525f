"""The final stage's parts that need no Ray: what the final task asks Ray for (a trial's CPUs, a whole GPU
when trials use GPUs), the splits each run trains on (``TrainData.from_image_data``), and the task's own
work run in this process (its device and node answered as Ray would): the epochs it streams and all it
sends back to the driver."""

from __future__ import annotations

import io
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from pydantic import ByteSize

from hpo.config.study import Resources
from hpo.data import ImageData
from hpo.data.images import FileImages
from hpo.names import Tag
from hpo.stages.finalize import (
    FinalJob,
    Retrained,
    _final_task,
    _final_task_at_once,
    final_task_options,
    raised_in_task,
)
from hpo.train import TrainData


@pytest.mark.parametrize(("gpus_per_trial", "gpus"), [(0.0, 0), (0.25, 1), (1.0, 1), (2.0, 1)])
def test_the_final_task_asks_for_a_trials_cpus_and_a_whole_gpu_when_trials_use_gpus(gpus_per_trial, gpus):
    options = final_task_options(Resources(cpus_per_trial=3, gpus_per_trial=gpus_per_trial), retries=2)
    assert options["num_cpus"] == 3 and options["num_gpus"] == gpus
    assert options["max_retries"] == 2  # failures.retries: a lost node's final task runs again elsewhere
    assert options["num_returns"] == "streaming"  # epochs reach the driver as they end
    assert "memory" not in options


def test_on_one_machine_the_final_task_takes_all_its_cpus_and_on_a_pool_a_trials():
    resources = Resources(cpus_per_trial=1)
    assert final_task_options(resources, retries=0, machine_cpus=16.0)["num_cpus"] == 16.0  # alone, as in the driver
    assert final_task_options(resources, retries=0, machine_cpus=None)["num_cpus"] == 1  # a pool: a trial's share


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


def test_without_streaming_the_final_task_asks_for_one_result():
    options = final_task_options(Resources(), retries=0, streaming=False)  # Ray Client runs no generators
    assert "num_returns" not in options and options["num_cpus"] == 1


def _job(**overrides) -> FinalJob:
    config = {"model": {"name": "cnn", "depth": 1, "width": 8}, "optimizer": {"name": "adam", "lr": 0.01}}
    return FinalJob(
        **{
            "config": {**config, "batch_size": 16},
            "epochs": 2,
            "seed": 0,
            "retrain_on": "train+val",
            "resources": Resources(),
            "threads": 1,
            "exports": ("torchscript",),
            **overrides,
        }
    )


@pytest.fixture
def in_a_task(monkeypatch):
    """What the final task asks Ray (its device, its node), answered as a CPU task on node "node-7"."""
    import ray

    import hpo.engine.devices as devices

    monkeypatch.setattr(devices, "assigned_device", lambda gpus, who: devices.cpu_device())
    monkeypatch.setattr(ray, "get_runtime_context", lambda: SimpleNamespace(get_node_id=lambda: "node-7"))
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)  # the task sets its own: the tests after these keep theirs


def test_the_final_task_streams_its_epochs_then_sends_back_all_the_driver_logs(in_a_task):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (72, 1, 8, 8), dtype=np.uint8)
    y = np.arange(72) % 3
    index = np.arange(8)
    splits = (x[:48], y[:48], x[48:64], y[48:64], x[64:], y[64:])
    data = ImageData(*splits, ["a", "b", "c"], (0.5,), (0.25,), index, index, index)

    items = list(_final_task(_job(), data))
    *epochs, retrained = items
    assert [row["epoch"] for row in epochs] == [1, 2] and isinstance(retrained, Retrained)
    assert retrained.history == epochs and "val_accuracy" not in epochs[0]  # train+val: nothing held out
    assert retrained.logits.shape == (8, 3) and retrained.logits.dtype == np.float32
    assert 0.0 <= retrained.test_accuracy <= 1.0 and retrained.test_loss > 0
    assert retrained.tags[Tag.NODE] == "node-7" and retrained.tags[Tag.DEVICE] == "cpu"
    assert retrained.tags[Tag.PLAN_DEVICE] == "cpu"
    model = retrained.model  # on the CPU, in eval mode: the driver logs it as it is
    assert not model.training and all(p.device.type == "cpu" for p in model.parameters())
    with torch.no_grad():
        expected = model(torch.as_tensor(data.x_test[:4], dtype=torch.float32) / 255.0)
    traced = torch.jit.load(io.BytesIO(retrained.exports["model.torchscript.pt"]))  # the file's bytes
    assert torch.allclose(traced(torch.as_tensor(data.x_test[:4], dtype=torch.float32) / 255.0), expected)

    whole = _final_task_at_once(_job(exports=()), data)  # under Ray Client: the epochs come with the result
    assert [row["epoch"] for row in whole.history] == [1, 2] and whole.exports == {}


def test_a_final_task_that_fails_raises_its_error(in_a_task):
    x = np.random.default_rng(1).integers(0, 256, (8, 1, 4, 4), dtype=np.uint8)
    data = _data(x[:6], x[6:])
    with pytest.raises(ValueError):
        list(_final_task(_job(config={"model": {"name": "cnn", "depth": 1, "width": 8}, "batch_size": 0}), data))


def test_what_the_final_task_raised_reaches_the_console_without_rays_wrapper():
    from ray.exceptions import RayTaskError

    from hpo.engine.limits import TrialOutOfMemory

    oom = TrialOutOfMemory("out of memory with batch size 512 on cuda")
    wrapped = RayTaskError("_final_task", "Traceback (most recent call last):\n  ...\nTrialOutOfMemory: ...", oom)
    assert raised_in_task(wrapped.as_instanceof_cause()) is oom
    plain = RuntimeError("not from a task")
    assert raised_in_task(plain) is plain
