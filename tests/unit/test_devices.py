"""The device is the one Ray assigned: on a Ray node with a (fake) GPU whose CUDA is visible to every
process, a task holding no GPU sees none and trains on the CPU; a task holding a GPU share that torch
cannot use (this CPU build) fails with an error naming the assignment instead of training on the CPU.
Real Ray, started once for the module with ``num_gpus=1``."""

from __future__ import annotations

import os
import sys

import pytest
import torch

from hpo.engine.devices import DeviceUnusable, assigned_device, has_kernels
from hpo.names import Tag
from hpo.train.ops import pick_device


@pytest.fixture(scope="module")
def ray_with_a_gpu():
    import ray

    if ray.is_initialized():
        pytest.skip("Ray is already running in this process")
    before = os.environ.get("CUDA_VISIBLE_DEVICES")
    os.environ["CUDA_VISIBLE_DEVICES"] = "0"  # a GPU machine: CUDA visible to every process Ray starts
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import this test module
    try:
        ray.init(
            address="local", num_cpus=2, num_gpus=1, include_dashboard=False, log_to_driver=False, logging_level="ERROR"
        )
        yield ray
    finally:
        ray.shutdown()
        if before is None:
            os.environ.pop("CUDA_VISIBLE_DEVICES", None)
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = before


def _what_the_task_sees(gpus: float) -> dict:
    import ray

    seen = os.environ.get("CUDA_VISIBLE_DEVICES")
    device = assigned_device(gpus)
    return {
        "ray_left": seen,
        "visible": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "device": device.device,
        "train_on": str(pick_device("auto")),
        "gpu_ids": ray.get_gpu_ids(),
        "tags": device.tags(),
    }


@pytest.mark.integration
def test_a_task_holding_no_gpu_sees_none_and_trains_on_the_cpu(ray_with_a_gpu):
    ray = ray_with_a_gpu
    seen = ray.get(ray.remote(num_cpus=1, num_gpus=0)(_what_the_task_sees).remote(0.0))
    assert seen["ray_left"] == "0"  # Ray leaves the node's CUDA_VISIBLE_DEVICES to a task without GPUs
    assert seen["visible"] == "" and seen["gpu_ids"] == []
    assert seen["device"] == "cpu" and seen["train_on"] == "cpu"
    assert seen["tags"][Tag.DEVICE] == "cpu" and seen["tags"][Tag.GPU_SHARE] == "0"
    assert seen["tags"][Tag.DEVICE_CAPABILITY] == torch.backends.cpu.get_cpu_capability()

    # a trial is an actor (Ray Tune's function trainable): the same holds there
    @ray.remote(num_cpus=1, num_gpus=0)
    class Trial:
        def run(self) -> dict:
            return _what_the_task_sees(0.0)

    assert ray.get(Trial.remote().run.remote())["visible"] == ""


@pytest.mark.integration
def test_a_task_holding_a_gpu_share_torch_cannot_use_fails_with_the_device_error(ray_with_a_gpu):
    ray = ray_with_a_gpu
    with pytest.raises(ray.exceptions.RayTaskError) as raised:
        ray.get(ray.remote(num_cpus=1, num_gpus=0.25)(_what_the_task_sees).remote(0.25))
    cause = raised.value.cause
    assert isinstance(cause, DeviceUnusable), cause
    assert str(cause).startswith("this trial holds GPU 0 (0.25 of it) but torch cannot use CUDA: "), cause
    assert "build without CUDA" in str(cause)  # why: this machine's torch is the CPU build


def test_a_named_cuda_device_torch_cannot_use_fails_at_once():
    with pytest.raises(RuntimeError, match="cannot use CUDA here"):
        pick_device("cuda")
    assert pick_device("cpu") == torch.device("cpu")


CUDA_12 = ["sm_50", "sm_60", "sm_70", "sm_75", "sm_80", "sm_86", "sm_90"]
CUDA_13 = ["sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120", "compute_120"]


@pytest.mark.parametrize(
    ("capability", "archs", "runs"),
    [
        ((7, 0), CUDA_12, True),  # V100 under a CUDA 12 build
        ((7, 0), CUDA_13, False),  # ... and under CUDA 13, which dropped sm_70: "no kernel image"
        ((8, 9), CUDA_12, True),  # L4 (sm_89) runs sm_86 cubins
        ((9, 0), ["sm_90a"], True),  # architecture-specific code runs only on its own
        ((10, 0), ["sm_90a"], False),
        ((12, 1), ["sm_80", "compute_90"], True),  # PTX compiles for any newer card
        ((7, 5), ["sm_80", "compute_90"], False),
    ],
)
def test_a_build_runs_on_a_card_its_kernels_cover(capability, archs, runs):
    assert has_kernels(capability, archs) is runs


def test_an_unusable_share_names_the_gpus_held():
    with pytest.raises(DeviceUnusable, match=r"^this re-check run holds GPUs 0,1 but torch cannot use CUDA"):
        assigned_device(2.0, gpu_ids=["0", "1"], who="re-check run")
