"""The reference studies, end to end (search -> finalize), each on small data in its real on-disk format:
the study file as shipped, with its budget cut to one short trial per model family of its search space.
Fashion-MNIST runs on a real subset; CIFAR-10, Tiny ImageNet and the apparel CSV on files written here."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from rich.console import Console

from hpo.backends.search import SearchOutcome
from hpo.names import TrialStatus
from hpo.testing import REPO_ROOT
from hpo.testing.datasets import write_apparel_csv, write_cifar, write_tiny_imagenet

# the four studies share one Ray (each in-process study keeps a Ray it did not start)
pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("local_ray")]


def _shrunk(study: str, work: Path, data_dir: Path, **dataset) -> Path:
    """The shipped study with a test-sized budget: one epoch, a trial per family, no exports."""
    doc = yaml.safe_load((REPO_ROOT / "studies" / f"{study}.yaml").read_text())
    doc["search_space"] = str((REPO_ROOT / "studies" / doc["search_space"]).resolve())
    doc["dataset"].update({"data_dir": str(data_dir), "download": False, **dataset})
    doc["budget"] = {"trials": 1, "max_epochs": 1}  # trials: set from the points below
    doc["scheduler"] = {"type": "none"}
    doc["resources"] = {"cpus_per_trial": 1, "max_concurrent": 2}
    doc["final"] = {**doc.get("final", {}), "export": [], "register_as": f"test-{study}"}
    doc["tracking"] = {"uri": f"sqlite:///{work / 'mlflow.db'}"}
    doc["output_dir"] = str(work / "runs")
    path = work / f"{study}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def _one_point_per_family(space) -> list[dict]:
    """For each model family of the space, its parameters at their first corner (lowest value, first
    choice), with a batch size that small data can fill."""
    selector = next(p for p in space.params if p.name == "model.name")
    points = []
    for family in selector.param.choices:
        flat: dict = {}

        def suggest(name, p, family=family, flat=flat):
            value = family if name == "model.name" else p.corners()[0]
            flat[name] = value
            return value

        space.sample(suggest)
        points.append(flat)
    return points


def _run(path: Path, work: Path, monkeypatch):
    from hpo.runner import run_study
    from hpo.study import load_study

    monkeypatch.chdir(work)
    study = load_study(path)
    points = _one_point_per_family(study.space)
    study.config.budget.trials = len(points)
    outcome = run_study(study, console=Console(file=io.StringIO()), live=False, points=points)
    search = outcome.result(SearchOutcome)
    families = {r.config.model.name for r in search.records}
    assert families == {p["model.name"] for p in points}
    assert all(r.status == TrialStatus.COMPLETED for r in search.records), [(r.number, r.error) for r in search.records]
    assert search.final is not None and 0.0 <= search.final.test_accuracy <= 1.0
    return outcome


def _final_run(outcome):
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=outcome.tracking_uri)
    return client, client.get_run(outcome.result(SearchOutcome).final.run_id)


def test_fashion_mnist_with_its_resnet_branch(tmp_path, data_dir, monkeypatch):
    path = _shrunk("fashion_mnist", tmp_path, data_dir, subset={"train": 600, "test": 200})
    outcome = _run(path, tmp_path, monkeypatch)
    assert {r.config.model.name for r in outcome.result(SearchOutcome).records} == {"cnn", "resnet"}


def test_cifar10_cnn_and_mobilenet(tmp_path, monkeypatch):
    write_cifar(tmp_path / "data", fine=False, train_per_class=12, test_per_class=3, classes=10)
    outcome = _run(_shrunk("cifar10", tmp_path, tmp_path / "data"), tmp_path, monkeypatch)
    assert {r.config.model.name for r in outcome.result(SearchOutcome).records} == {"cnn", "mobilenet"}
    mobilenet = next(r for r in outcome.result(SearchOutcome).records if r.config.model.name == "mobilenet")
    assert mobilenet.config.augment.cutmix == 0.0 and "augment.cutmix" in mobilenet.params  # searched


def test_tiny_imagenet_at_32_px(tmp_path, monkeypatch):
    import hpo.data.images as images

    monkeypatch.setattr(images, "CACHE_DIR", tmp_path / "cache")
    write_tiny_imagenet(tmp_path / "data", classes=6, train_per_class=10, val_per_class=3)
    outcome = _run(_shrunk("tiny_imagenet", tmp_path, tmp_path / "data"), tmp_path, monkeypatch)
    assert {r.config.model.name for r in outcome.result(SearchOutcome).records} == {"cnn", "alexnet", "densenet"}
    _client, final = _final_run(outcome)
    assert int(final.data.params["final.train_images"]) == 60  # train+val, 6 classes x 10
    assert (tmp_path / "cache" / "decoded").is_dir()  # decoded at 32 px once


def test_apparel_multilabel_logs_per_label_metrics(tmp_path, monkeypatch):
    import hpo.data.images as images

    monkeypatch.setattr(images, "CACHE_DIR", tmp_path / "cache")
    write_apparel_csv(tmp_path / "data", per_combination=12, size=32)
    outcome = _run(_shrunk("apparel_multilabel", tmp_path, tmp_path / "data", image_size=32), tmp_path, monkeypatch)
    client, final = _final_run(outcome)
    labels = ["category=dress", "category=shirt", "category=shoe", "colour=blue", "colour=red"]
    metrics = final.data.metrics
    # per label: accuracy and ROC-AUC as recomputed from the registered model's scores on the test split
    # (the final evaluation may have run in bf16: a few ranks may differ)
    from sklearn.metrics import roc_auc_score

    import mlflow
    from hpo.data import load_data
    from hpo.study import load_study

    config = load_study(tmp_path / "apparel_multilabel.yaml").config
    data = load_data(config.dataset, config.seed)
    assert data.classes == labels
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(outcome.tracking_uri)
    try:
        model = mlflow.pytorch.load_model("models:/test-apparel_multilabel@champion")
    finally:
        mlflow.set_tracking_uri(previous)
    with torch.no_grad():
        scores = torch.sigmoid(model(torch.as_tensor(data.x_test, dtype=torch.float32) / 255.0)).numpy()
    for j, label in enumerate(labels):
        name = label.replace("=", "_")
        truth = data.y_test[:, j] == 1
        pairs = truth.sum() * (~truth).sum()  # tolerance: one image, or one pair of images, ranked otherwise
        accuracy = ((scores[:, j] >= 0.5) == truth).mean()
        assert metrics[f"test_accuracy.{name}"] == pytest.approx(accuracy, abs=1.01 / len(truth))
        assert metrics[f"test_roc_auc.{name}"] == pytest.approx(roc_auc_score(truth, scores[:, j]), abs=1.01 / pairs)
    assert 0.0 <= metrics["test_subset_accuracy"] <= metrics["test_accuracy"] <= 1.0
    assert metrics["test_hamming_loss"] == pytest.approx(1 - metrics["test_accuracy"], abs=1e-6)
    rows = np.genfromtxt(
        client.download_artifacts(final.info.run_id, "evaluation/per_label_metrics.csv"),
        delimiter=",",
        dtype=str,
        skip_header=1,
    )
    assert [r[0] for r in rows] == labels
    artifacts = {a.path for a in client.list_artifacts(final.info.run_id, "evaluation")}
    assert {"evaluation/roc_curves.png", "evaluation/per_label.png"} <= artifacts
