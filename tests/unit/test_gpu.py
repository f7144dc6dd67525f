"""The GPU path: bf16 autocast, channels_last, data and augmentation on the device, fractional GPUs.
Runs wherever CUDA is present; skipped elsewhere."""

import pytest
import torch

from hpo.config.trial import TrialConfig
from hpo.train import TrainData, evaluate, train

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")]


def test_trainer_runs_on_cuda_with_its_measured_plan(fashion_subset):
    d = fashion_subset
    data = TrainData.from_arrays(d.x_train, d.y_train, d.x_val, d.y_val, d.num_classes, d.mean, d.std)
    config = TrialConfig.model_validate(
        {
            "model": {"depth": 3, "width": 32},
            "batch_size": 256,
            "augment": {"hflip": 0.5, "translate": 0.5, "rotate": 0.3},
        }
    )
    seen = []
    result = train(
        config, data, epochs=3, seed=0, device="cuda", report=lambda e, m: seen.append(next(m.parameters()).device.type)
    )
    assert seen == ["cuda"] * 3
    conv = next(m for m in result.model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=result.plan.memory_format)
    capability = torch.cuda.get_device_capability()
    assert result.plan.precision in (("fp32", "bf16") if capability >= (8, 0) else ("fp32", "fp16"))
    assert result.history[-1].val_accuracy > 0.7
    _, acc = evaluate(result.model, torch.as_tensor(d.x_test), torch.as_tensor(d.y_test), plan=result.plan)
    assert acc > 0.7


@pytest.mark.parametrize("channels", [1, 3])
def test_every_augmentation_runs_on_the_device(channels):
    from hpo.config.trial import AugmentConfig
    from hpo.data.augment import BatchAugment

    torch.manual_seed(0)  # kornia's erasing draws from the global generator
    x = 0.05 + 0.9 * torch.rand(64, channels, 28, 28, device="cuda")
    targets = torch.nn.functional.one_hot(torch.arange(64, device="cuda") % 10, 10).float()
    g = torch.Generator(device="cuda").manual_seed(0)
    config = AugmentConfig(**dict.fromkeys(AugmentConfig.probabilities(), 1.0))
    out, mixed = BatchAugment(config, g, channels)(x, targets)
    assert out.device.type == "cuda" and mixed.device.type == "cuda"
    assert out.shape == x.shape and (out != x).flatten(1).any(1).all()


def test_fractional_gpus_share_one_card(tmp_path, data_dir):
    """Four trials at 0.25 GPU each run side by side on one card."""
    from hpo.testing import REPO_ROOT, run_hpo

    study = (
        (REPO_ROOT / "studies" / "smoke.yaml")
        .read_text()
        .replace(
            "resources: {cpus_per_trial: 1, max_concurrent: 1}", "resources: {cpus_per_trial: 1, gpus_per_trial: 0.25}"
        )
    )
    study = study.replace("../search_spaces/smoke.yaml", str(REPO_ROOT / "search_spaces" / "smoke.yaml"))
    (tmp_path / "gpu.yaml").write_text(study)
    result = run_hpo(["run", "gpu.yaml"], tmp_path, data_dir)
    assert result.returncode == 0, result.stderr
    import json

    stats = json.loads(next(tmp_path.glob("runs/smoke/*/search_stats.json")).read_text())
    assert stats["slots"] >= 2
    spans = [(t["worker_started"], t["worker_last"]) for t in stats["trials"] if t["worker_started"]]
    overlapping = max(sum(s <= start < e for s, e in spans) for start, _ in spans)
    assert overlapping >= 2, "fractional GPUs should let trials run side by side"
