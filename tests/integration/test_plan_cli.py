"""``hpo plan``: every shipped study sized and timed per model family before it runs, and what cannot
work refused with its place. Fashion-MNIST studies plan on the real data; CIFAR-10, Tiny ImageNet and the
apparel CSV on small files written here in their real formats (the plan needs the data's shape)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from hpo.testing import REPO_ROOT, run_hpo
from hpo.testing.datasets import write_apparel_csv, write_cifar, write_tiny_imagenet

pytestmark = pytest.mark.integration
SHIPPED = sorted(p.stem for p in (REPO_ROOT / "studies").glob("*.yaml"))
ROW = re.compile(
    r"│ (\w+)\s*│\s*([\d.]+(?:-[\d.]+)?) │\s*([\d,]+(?:-[\d,]+)?) │\s*([\d.]+(?:-[\d.]+)? [KMG]iB) │"
    r" (fp32|bf16|fp16) (NCHW|NHWC)\s*│\s*([\d,]+)\*? │\s*([\d,]+) │"
)


def families(study: str) -> set[str]:
    from hpo.study import load_study

    return set(load_study(REPO_ROOT / "studies" / f"{study}.yaml").space.representatives())


@pytest.mark.parametrize("study", SHIPPED)
def test_plan_sizes_and_times_every_family_of_each_shipped_study(study, tmp_path, data_dir):
    if study in ("fashion_mnist", "fashion_mnist_pareto", "smoke"):
        where = data_dir
    else:
        where = tmp_path / "data"
        if study == "cifar10":
            write_cifar(where, fine=False, train_per_class=12, test_per_class=3, classes=10)
        elif study == "tiny_imagenet":
            write_tiny_imagenet(where, classes=6, train_per_class=10, val_per_class=3)
        elif study == "apparel_multilabel":
            write_apparel_csv(where, per_combination=12, size=32)
        else:
            pytest.fail(f"a shipped study this test does not know how to give data: {study}")
    work = tmp_path / "work"
    work.mkdir()
    result = run_hpo(
        ["plan", str(REPO_ROOT / "studies" / f"{study}.yaml")],
        work,
        data_dir=where,
        timeout=300,
        env={"COLUMNS": "140", "HPO_PLAN_CACHE": str(tmp_path / "plans.json")},
    )
    assert result.returncode == 0, result.stderr
    rows = {m.group(1): m.groups() for m in ROW.finditer(result.stdout)}
    assert set(rows) == families(study), result.stdout
    for _family, (_, params, flops, _memory, _, _, rate, _seconds) in rows.items():
        assert float(params.split("-")[-1]) > 0 and int(flops.split("-")[-1].replace(",", "")) > 0
        assert int(rate.replace(",", "")) > 0
    assert "a full" in result.stdout and "final retrain" in result.stdout  # the budget is weighed
    assert list(work.iterdir()) == []  # a plan runs nothing and writes nothing where it is run


def _study(tmp_path: Path, space: dict, **extra) -> Path:
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(space, sort_keys=False))
    study = {
        "name": "plan-check",
        "dataset": {"name": "fashion_mnist", "subset": {"train": 600, "test": 100}},
        "search_space": "space.yaml",
        "budget": {"trials": 2, "max_epochs": 2},
        **extra,
    }
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    return path


def test_plan_refuses_a_cnn_too_big_for_the_memory_cap(tmp_path, data_dir):
    space = {
        "model": {"name": "cnn", "depth": {"int": [2, 12]}, "width": {"categorical": [16, 512]}, "kernel_size": 7},
        "optimizer": {"name": "sgd", "lr": 0.1},
        "batch_size": {"categorical": [64, 8192]},
    }
    path = _study(tmp_path, space, resources={"memory_per_trial": "1GiB"})
    result = run_hpo(["plan", str(path), "--no-measure"], tmp_path, data_dir=data_dir, timeout=120)
    assert result.returncode == 2, result.stdout + result.stderr
    flat = " ".join(result.stderr.split())
    # the batch of 8192 alone (depth 2, width 16) breaks the cap: located at batch_size
    assert re.search(
        r"space\.yaml:\d+: batch_size: a cnn here needs ~1\.\d GiB to train at batch 8192 .* "
        r"over resources\.memory_per_trial \(1\.0 GiB\)",
        flat,
    ), flat
    # depth 12, width 512, kernel 7 at batch 8192: the space's largest corner, located at the model
    assert re.search(
        r"space\.yaml:\d+: model\.name: a cnn here needs ~2\d\d\.\d GiB to train at batch 8192 "
        r"\(9\d\d\.\d M parameters",
        flat,
    ), flat
    assert "nothing was run" in flat


def test_plan_refuses_a_network_the_input_is_too_small_for(tmp_path, data_dir):
    space = {
        "model": {"one_of": {"cnn": {"depth": 2, "width": 16}, "vgg": {"variant": "vgg11_bn", "stem": "imagenet"}}},
        "optimizer": {"name": "sgd", "lr": 0.1},
        "batch_size": 32,
    }
    result = run_hpo(["plan", str(_study(tmp_path, space)), "--no-measure"], tmp_path, data_dir=data_dir, timeout=120)
    assert result.returncode == 2, result.stdout + result.stderr
    flat = " ".join(result.stderr.split())
    assert re.search(
        r"space\.yaml:2: model\.one_of: the 1x28x28 input is too small for this vgg network "
        r"\(.*Output size is too small\)",
        flat,
    ), flat
