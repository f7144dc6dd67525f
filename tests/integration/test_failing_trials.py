"""A trial that fails is recorded with its error (its run holds the whole traceback); the study goes on and
finishes with the others; the console stays quiet and its lines are in the driver's log."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

STUDY = """\
name: failing
seed: 1
dataset: {{name: fashion_mnist, validation_split: 0.2, subset: {{train: 1000, test: 200}}, data_dir: {data}}}
search_space:
  model: {{name: cnn, depth: 2, width: 8, batchnorm: none, activation: leaky_relu}}
  optimizer: {{name: sgd, momentum: 0.99, lr: {{categorical: [0.05, 10.0]}}}}
  batch_size: 16
  schedule: {{name: constant, warmup_fraction: 0}}
objective: {{metric: val_accuracy}}
budget: {{trials: 4, max_epochs: 1}}
scheduler: {{type: none}}
resources: {{cpus_per_trial: 1, max_concurrent: 1}}
final: {{enabled: false}}
"""


def test_diverging_trials_fail_with_their_error_and_the_study_completes(tmp_path, data_dir):
    import mlflow

    (tmp_path / "study.yaml").write_text(STUDY.format(data=data_dir))
    result = subprocess.run(
        [sys.executable, "-m", "hpo.cli", "run", "study.yaml"],
        cwd=tmp_path,
        env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("failing")
    trials = [r for r in client.search_runs([experiment.experiment_id]) if r.data.tags.get("hpo.kind") == "trial"]
    by_status = {}
    for trial in trials:
        by_status.setdefault(trial.data.tags["hpo.status"], []).append(trial)
    assert len(trials) == 4
    assert by_status.get("failed") and by_status.get("completed"), {k: len(v) for k, v in by_status.items()}
    for trial in by_status["failed"]:
        assert trial.info.status == "FAILED"
        assert trial.data.params["optimizer.lr"] == "10.0"
        assert "FloatingPointError: training loss became" in trial.data.tags["hpo.error"]
        traceback = Path(client.download_artifacts(trial.info.run_id, "traceback.txt", str(tmp_path))).read_text()
        assert 'loop.py", line' in traceback and "FloatingPointError: training loss became" in traceback
    assert "failed" in result.stderr
    assert "Trial task failed" not in result.stderr and "Traceback" not in result.stderr  # Ray's, per failure
    (driver_log,) = (tmp_path / "runs" / "failing").glob("*/driver.log")
    logged = driver_log.read_text()
    shown = ("data ", "tracking ", "search study run")  # the console's own lines (its tables: at another width)
    lines = [line for line in result.stderr.splitlines() if line.startswith(shown)]
    assert len(lines) == 3 and all(line.rstrip() in logged for line in lines)
    assert logged.rstrip().endswith("run ended")
