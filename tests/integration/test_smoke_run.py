"""`hpo run studies/smoke.yaml` for real: Ray (local), Optuna storage, MLflow on SQLite, real data."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np
import pytest

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory, repo_root_module, data_dir):
    work = tmp_path_factory.mktemp("smoke")
    env = {**os.environ, "HPO_DATA_DIR": str(data_dir), "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("MLFLOW_TRACKING_URI", None)
    start = time.time()
    result = subprocess.run([sys.executable, "-m", "hpo.cli", "run", str(repo_root_module / "studies" / "smoke.yaml")],
                            cwd=work, env=env, capture_output=True, text=True, timeout=600)
    seconds = time.time() - start
    assert result.returncode == 0, result.stdout + result.stderr
    return work, result, seconds


@pytest.fixture(scope="module")
def repo_root_module():
    from hpo.testing import REPO_ROOT
    return REPO_ROOT


@pytest.fixture(scope="module")
def runs(smoke_run):
    import mlflow

    work, _, _ = smoke_run
    uri = f"sqlite:///{work / 'mlflow' / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("smoke")
    assert experiment is not None
    found = client.search_runs([experiment.experiment_id])
    by_kind: dict[str, list] = {}
    for run in found:
        by_kind.setdefault(run.data.tags.get("hpo.kind"), []).append(run)
    return uri, client, by_kind


def test_finishes_within_three_minutes_and_prints_a_summary(smoke_run):
    _, result, seconds = smoke_run
    assert seconds < 180
    assert "test accuracy" in result.stderr and "models:/smoke/" in result.stderr


def test_one_study_run_with_its_resolved_config(runs):
    _, client, by_kind = runs
    (study,) = by_kind["study"]
    assert study.info.status == "FINISHED"
    artifacts = {a.path for a in client.list_artifacts(study.info.run_id)}
    assert {"study.resolved.yaml", "environment.json", "leaderboard.csv"} <= artifacts
    assert study.data.metrics["trials_pruned"] >= 1


def test_one_nested_run_per_trial_with_epoch_curves(runs):
    _, client, by_kind = runs
    (study,) = by_kind["study"]
    trials = by_kind["trial"]
    assert len(trials) == 4
    for trial in trials:
        assert trial.data.tags["mlflow.parentRunId"] == study.info.run_id
        assert "model.depth" in trial.data.params and "optimizer.lr" in trial.data.params
        history = client.get_metric_history(trial.info.run_id, "val_accuracy")
        assert [m.step for m in sorted(history, key=lambda m: m.step)] == list(range(1, len(history) + 1))
        assert trial.data.tags["hpo.status"] in ("completed", "pruned")
    pruned = [t for t in trials if t.data.tags["hpo.status"] == "pruned"]
    assert pruned, "ASHA stopped no trial"
    for trial in pruned:
        assert trial.info.status == "KILLED"
        assert int(trial.data.tags["hpo.pruned_at_epoch"]) == 1
        assert len(client.get_metric_history(trial.info.run_id, "val_accuracy")) == 1


def test_final_run_has_test_metrics_plots_and_a_registered_model(runs, data_dir):
    import mlflow
    import torch
    from PIL import Image

    uri, client, by_kind = runs
    (final,) = by_kind["final"]
    assert final.info.status == "FINISHED"
    test_accuracy = final.data.metrics["test_accuracy"]
    assert 0.5 < test_accuracy <= 1.0
    local = client.download_artifacts(final.info.run_id, "evaluation")
    for name in ("confusion_matrix.png", "learning_curves.png"):
        with Image.open(os.path.join(local, name)) as image:
            assert image.size[0] > 300 and image.size[1] > 300

    (version,) = client.search_model_versions("name='smoke'")
    assert version.run_id == final.info.run_id
    mlflow.set_tracking_uri(uri)
    model = mlflow.pytorch.load_model(f"models:/smoke/{version.version}")

    from hpo.config import load_study
    from hpo.data import load_data
    from hpo.testing import REPO_ROOT

    study = load_study(REPO_ROOT / "studies" / "smoke.yaml")
    data = load_data(study.config.dataset.model_copy(update={"data_dir": str(data_dir)}), study.config.seed)
    with torch.no_grad():
        logits = model(torch.as_tensor(data.x_test, dtype=torch.float32) / 255.0)
    accuracy = float((logits.argmax(1).numpy() == data.y_test).mean())
    assert logits.shape == (len(data.y_test), 10)
    # the logged model runs in fp32; the final evaluation used bf16 autocast
    assert abs(accuracy - test_accuracy) < 0.02
    assert np.isfinite(logits.numpy()).all()
