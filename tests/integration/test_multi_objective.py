"""Two objectives end to end (`hpo run`, then `hpo report`): validation accuracy and the network's size
with a limit that rules out the largest CNN of the space. Real Ray, Optuna storage, MLflow on SQLite and
Fashion-MNIST images: the Optuna study has two directions and its finished trials two values, every trial
reports its costs, the final run logs the Pareto front (table and plot), the report shows it, and the
chosen model is the most accurate trial within the limit."""

from __future__ import annotations

import csv
import json

import pytest
from typer.testing import CliRunner

from hpo.cli import app
from hpo.testing import run_hpo

pytestmark = pytest.mark.integration

LIMIT = 10_000  # parameters: depth 3 x width 32 (94,186) is over it; the three others (178 to 6,274) within
SMALL = {"model.name": "cnn", "model.cnn.depth": 1, "model.cnn.width": 8}
LARGE = {"model.name": "cnn", "model.cnn.depth": 3, "model.cnn.width": 32}
STUDY = f"""\
name: pareto-test
seed: 0
dataset: {{name: fashion_mnist, validation_split: 0.25, subset: {{train: 400, test: 100}}}}
search_space:
  model: {{one_of: {{cnn: {{depth: {{categorical: [1, 3]}}, width: {{categorical: [8, 32]}}}}}}}}
  optimizer: {{name: sgd, lr: 0.05}}
  batch_size: 64
objective:
  - {{metric: val_accuracy}}
  - {{metric: params, limit: {LIMIT}}}
budget: {{trials: 3, max_epochs: 2}}
scheduler: {{type: none}}
resources: {{cpus_per_trial: 1, max_concurrent: 2}}
start_with:
  - {json.dumps(SMALL)}
  - {json.dumps(LARGE)}
final: {{register_as: pareto-test-model, export: [], promote: always}}
"""


def test_accuracy_and_size_end_to_end(tmp_path, data_dir):
    import optuna

    import mlflow

    (tmp_path / "study.yaml").write_text(STUDY)
    result = run_hpo(["run", "study.yaml"], tmp_path, data_dir, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "chosen by" in result.stdout + result.stderr

    # the sampler's study: two directions, and each finished trial told both values
    (db,) = (tmp_path / "runs" / "pareto-test").glob("*/optuna.db")
    storage = f"sqlite:///{db}"
    (summary,) = optuna.get_all_study_summaries(storage)
    study = optuna.load_study(study_name=summary.study_name, storage=storage)
    assert study.directions == [optuna.study.StudyDirection.MAXIMIZE, optuna.study.StudyDirection.MINIMIZE]
    complete = study.get_trials(states=[optuna.trial.TrialState.COMPLETE])
    assert len(complete) == 3 and all(len(t.values) == 2 for t in complete)
    assert {t.values[1] for t in complete} >= {178.0, 94186.0}  # the two start_with networks' sizes

    uri = f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("pareto-test")
    runs = client.search_runs([experiment.experiment_id])
    by_kind: dict[str, list] = {}
    for run in runs:
        by_kind.setdefault(run.data.tags.get("hpo.kind"), []).append(run)
    (study_run,) = by_kind["study"]
    (final,) = by_kind["final"]
    trials = {t.info.run_id: t for t in by_kind["trial"]}
    # every trial measured its network's size and latency once and reported them with each epoch
    for t in trials.values():
        assert t.data.metrics["params"] > 0 and t.data.metrics["latency_ms"] > 0
        assert len(client.get_metric_history(t.info.run_id, "params")) == 2

    # the front on the final run: a table of every trial and its plot
    artifacts = {a.path for a in client.list_artifacts(final.info.run_id, "evaluation")}
    assert {"evaluation/pareto.csv", "evaluation/pareto.png"} <= artifacts
    local = client.download_artifacts(final.info.run_id, "evaluation/pareto.csv", str(tmp_path))
    with open(local, newline="") as fh:
        table = list(csv.DictReader(fh))
    assert len(table) == 3 and any(row["on_front"] == "true" for row in table)
    assert {row["within_limits"] for row in table} == {"true", "false"}  # the limit ruled a trial out
    (chosen,) = [row for row in table if row["chosen"] == "true"]
    within = [row for row in table if row["within_limits"] == "true"]
    assert float(chosen["val_accuracy"]) == max(float(row["val_accuracy"]) for row in within)

    # the study run names the rule and the chosen trial; the chosen model is within the limit
    assert study_run.data.tags["hpo.winner_rule"] == f"best val_accuracy with params <= {LIMIT}"
    winner = trials[final.data.tags["hpo.winner_run"]]
    assert winner.data.metrics["params"] <= LIMIT
    assert float(chosen["params"]) == winner.data.metrics["params"]
    assert study_run.data.tags["hpo.winner_run"] == winner.info.run_id

    # `hpo report` in this process (the run above covers the CLI's subprocess; a second one imports
    # everything again)
    report = CliRunner().invoke(
        app, ["report", str(tmp_path / "study.yaml"), "--out", str(tmp_path / "report"), "--tracking-uri", uri]
    )
    assert report.exit_code == 0, report.output
    markdown = (tmp_path / "report" / "report.md").read_text()
    assert "## Pareto front" in markdown and f"best val_accuracy with params <= {LIMIT}" in markdown
    assert "| trial | val_accuracy | params | on_front | within_limits | chosen |" in markdown
    assert (tmp_path / "report" / "pareto.png").exists()
    assert "<h2>Pareto front</h2>" in (tmp_path / "report" / "report.html").read_text()
