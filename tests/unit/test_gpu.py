"""The GPU path, asserted where CUDA is present (skipped elsewhere; benchmarks/gpu_check.sh runs these and
measures the rest): the precision the plan picks for the card's compute capability, a training step that
never makes the host wait, the GPU path learning what the CPU path learns, the device a trial is assigned
(none for a CPU trial, the card for a GPU share) and its tags, and four 0.25-GPU trials packed on one card,
checked by the GPU ids Ray gave each."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace

import pytest
import torch

from hpo.config.trial import AugmentConfig, TrialConfig
from hpo.train import TrainData, train
from hpo.train.plan import Preferences, default_plan, describe_machine, plan_training

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")]

CUDA0 = torch.device("cuda", 0)
# search_spaces/fashion_mnist_cnn.yaml, its augmentations at their largest
FASHION_CNN = {
    "model": {"depth": 4, "width": 32, "batchnorm": "before_activation", "head_width": 128},
    "optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 1e-4},
    "schedule": {"name": "onecycle", "warmup_fraction": 0.2},
    "batch_size": 256,
    "label_smoothing": 0.1,
    "augment": {"hflip": 0.5, "translate": 0.8, "translate_px": 2},
}


def _capability() -> tuple[int, int]:
    return torch.cuda.get_device_capability(0)


def _data(d) -> TrainData:
    return TrainData.from_arrays(d.x_train, d.y_train, d.x_val, d.y_val, d.num_classes, d.mean, d.std)


def test_the_plan_takes_the_cards_fast_precision(fashion_subset):
    """bf16 where the card has it natively (sm80 and later), fp16 with a loss scaler below; measuring may
    keep fp32 instead, never the other reduced precision."""
    native_bf16 = _capability() >= (8, 0)
    fast = "bf16" if native_bf16 else "fp16"
    start = default_plan(describe_machine(), CUDA0, Preferences(), threads=1)
    assert start.precision == fast and start.tf32 is False
    assert (start.grad_scaler() is not None) == (fast == "fp16")
    measured = plan_training(
        TrialConfig.model_validate(FASHION_CNN), _data(fashion_subset), device="cuda", prefs=Preferences(), epochs=50
    )
    assert measured.device.startswith("cuda") and measured.precision in ("fp32", fast)
    assert measured.tf32 == (measured.precision == "fp32" and native_bf16)
    assert (measured.grad_scaler() is not None) == (measured.precision == "fp16")


def _step(config: TrialConfig, plan):
    from hpo.models import create_model
    from hpo.train.loop import TrainStep
    from hpo.train.ops import to_device

    g = torch.Generator(device=CUDA0).manual_seed(0)
    model = to_device(create_model(config.model, 1, 10, (0.3,), (0.3,)), CUDA0, plan.memory_format)
    step = TrainStep(
        config, model, plan, channels=1, num_classes=10, multilabel=False, epochs=1, steps_per_epoch=100, generator=g
    )
    x = torch.randint(0, 256, (config.batch_size, 1, 28, 28), dtype=torch.uint8, device=CUDA0, generator=g)
    y = torch.randint(0, 10, (config.batch_size,), device=CUDA0, generator=g)
    return step, x, y


@pytest.mark.parametrize("augment", ["study", "every"])
@pytest.mark.parametrize("precision", ["plan", "fp32"])
def test_a_training_step_makes_no_host_sync(augment, precision):
    """torch raises on any operation that makes the host wait for the GPU (set_sync_debug_mode "error"):
    augmentation, forward, loss, backward, the optimizer (fused, on the device), the loss scaler, the
    running loss and hits."""
    config = TrialConfig.model_validate(
        {**FASHION_CNN, "augment": dict.fromkeys(AugmentConfig.probabilities(), 0.5)}
        if augment == "every"
        else FASHION_CNN
    )
    plan = default_plan(describe_machine(), CUDA0, Preferences(), threads=1)
    if precision == "fp32":
        plan = replace(plan, precision="fp32", channels_last=False)
    step, x, y = _step(config, plan)
    for _ in range(3):  # set-up: the optimizer's state, cuDNN's algorithms, the first allocations
        step(x, y)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(5):
            step(x, y)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    loss, hits = step.epoch_totals()
    assert loss > 0 and 0 <= hits <= 8 * config.batch_size


def test_the_gpu_learns_what_the_cpu_learns(fashion_subset):
    """Two epochs of the same configuration, fp32 on the CPU and the card's plan (bf16 or fp16 + scaler,
    channels_last) on the GPU, reach about the same validation accuracy: reduced precision and the device's
    augmentation learn what the reference does (each device draws its own random numbers, so not exactly)."""
    config = TrialConfig.model_validate({**FASHION_CNN, "batch_size": 128})
    data = _data(fashion_subset)
    cpu = replace(
        default_plan(describe_machine(), torch.device("cpu"), Preferences(), threads=2),
        precision="fp32",
        channels_last=False,
    )
    gpu = default_plan(describe_machine(), CUDA0, Preferences(), threads=1)
    accuracy = {}
    for plan in (cpu, gpu):
        result = train(config, data, epochs=2, seed=0, plan=plan)
        assert next(result.model.parameters()).device.type == plan.torch_device.type
        accuracy[plan.describe()] = result.history[-1].val_accuracy
    (cpu_acc, gpu_acc) = accuracy.values()
    assert cpu_acc > 0.6 and abs(gpu_acc - cpu_acc) < 0.05, accuracy


@pytest.mark.parametrize("channels", [1, 3])
def test_every_augmentation_runs_on_the_device(channels):
    from hpo.data.augment import BatchAugment

    x = 0.05 + 0.9 * torch.rand(64, channels, 28, 28, device="cuda")
    targets = torch.nn.functional.one_hot(torch.arange(64, device="cuda") % 10, 10).float()
    g = torch.Generator(device="cuda").manual_seed(0)
    config = AugmentConfig(**dict.fromkeys(AugmentConfig.probabilities(), 1.0))
    out, mixed = BatchAugment(config, g, channels)(x, targets)
    assert out.device.type == "cuda" and mixed.device.type == "cuda"
    assert out.shape == x.shape and (out != x).flatten(1).any(1).all()


def test_a_gpu_share_gets_the_card_and_its_tags():
    from hpo.engine.devices import assigned_device
    from hpo.names import Tag

    device = assigned_device(0.25, gpu_ids=["0"])
    major, minor = _capability()
    assert device.tags() == {
        Tag.DEVICE.value: "cuda",
        Tag.DEVICE_NAME.value: torch.cuda.get_device_name(0),
        Tag.DEVICE_CAPABILITY.value: f"{major}.{minor}",
        Tag.GPU_SHARE.value: "0.25",
        Tag.GPU_IDS.value: "0",
    }


def test_a_cpu_trial_on_a_gpu_machine_sees_no_gpu():
    """A fresh process, as a Ray worker is: assigned no GPU, torch then finds none."""
    code = (
        "from hpo.engine.devices import assigned_device; import torch, json; d = assigned_device(0.0, gpu_ids=[]); "
        "print(json.dumps([d.device, torch.cuda.is_available(), torch.cuda.device_count()]))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert json.loads(out.stdout.splitlines()[-1]) == ["cpu", False, 0]


def test_four_quarter_gpu_trials_run_at_once_on_one_card(tmp_path, data_dir):
    import mlflow
    from hpo.names import RunKind, Tag
    from hpo.testing import REPO_ROOT, run_hpo

    study = (REPO_ROOT / "studies" / "smoke.yaml").read_text()
    study = study.replace(
        "resources: {cpus_per_trial: 1, max_concurrent: 1}", "resources: {cpus_per_trial: 1, gpus_per_trial: 0.25}"
    ).replace("max_epochs: 2", "max_epochs: 4")
    # no ASHA: every trial runs its 4 epochs, so all four are still running when the last one starts
    study = study.replace("scheduler: {type: asha, grace_period: 1, reduction_factor: 2}", "scheduler: {type: none}")
    study = study.replace("../search_spaces/smoke.yaml", str(REPO_ROOT / "search_spaces" / "smoke.yaml"))
    (tmp_path / "gpu.yaml").write_text(study)
    result = run_hpo(["run", "gpu.yaml"], tmp_path, data_dir, env={"CUDA_VISIBLE_DEVICES": "0"})
    assert result.returncode == 0, result.stderr

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("smoke").experiment_id])
    trials = [r.data.tags for r in runs if r.data.tags.get(Tag.KIND) == RunKind.TRIAL]
    assert len(trials) == 4
    # Ray gave every trial the same card, a quarter of it each, and each trained on it.
    assert {(t[Tag.GPU_IDS], t[Tag.GPU_SHARE], t[Tag.DEVICE]) for t in trials} == {("0", "0.25", "cuda")}
    final = [r.data.tags for r in runs if r.data.tags.get(Tag.KIND) == RunKind.FINAL]
    assert len(final) == 1 and final[0][Tag.DEVICE] == "cuda"
    stats = json.loads(next(tmp_path.glob("runs/smoke/*/search_stats.json")).read_text())
    assert stats["slots"] == 4  # one card / 0.25
    spans = [(t["worker_started"], t["worker_last"]) for t in stats["trials"]]
    assert max(sum(s <= start < e for s, e in spans) for start, _ in spans) == 4, spans
