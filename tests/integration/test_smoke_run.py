"""`hpo run studies/smoke.yaml` for real: Ray (local), Optuna storage, MLflow on SQLite, real data."""

from __future__ import annotations

import csv
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.integration

EVALUATION = {
    "confusion_matrix.png",
    "confusion_matrix_normalized.png",
    "confusion_matrix.csv",
    "per_class_metrics.csv",
    "roc_curves.png",
    "reliability.png",
    "confident_errors.png",
    "learning_curves.png",
    "optuna_plots.html",
    "families.csv",
}


def test_finishes_within_three_minutes_and_prints_a_summary(smoke_run):
    assert smoke_run.seconds < 180
    assert "test accuracy" in smoke_run.stderr and "models:/smoke/" in smoke_run.stderr


def test_a_log_shows_every_epoch_of_the_search_and_the_final_stage(smoke_run):
    # no terminal here: one line per event, so that long trials and a long retrain are never silent
    assert re.search(r"trial \d+ epoch 1/2: val_accuracy 0\.\d{4}, \d+ s", smoke_run.stderr)
    assert re.search(
        r"finalize: retraining trial #\d+ on train\+val, epoch 1/\d: train_accuracy 0\.\d{4}", smoke_run.stderr
    )
    # from the first epoch measured on, each line carries the search's ETA (hpo.engine.eta) beside the time
    events = [line for line in smoke_run.stderr.splitlines() if re.match(r"\[\s*\d+\.\d min.*\] \d/4 done \| ", line)]
    first = next(i for i, line in enumerate(events) if re.search(r"trial \d+ epoch 1/2", line))
    etas = [
        re.match(r"\[\s*\d+\.\d min, ETA ~(\d+(?:\.\d)?) (s|min|h)(?: \(time budget\))?\]", e) for e in events[first:]
    ]
    assert all(etas), events
    assert all(float(m[1]) * {"s": 1, "min": 60, "h": 3600}[m[2]] <= 5 * 60 for m in etas)  # budget.time: 5m


def test_the_console_carries_no_library_warnings(smoke_run):
    """A normal run prints its own lines only: no Python warnings (FutureWarning, UserWarning, ...) and no
    warnings logged by Ray, MLflow or torch, on either stream."""
    console = smoke_run.stdout + smoke_run.stderr
    assert "Warning" not in console and "WARNING" not in console, console
    assert re.search(r"plan for cnn \(trial \d+\): (fp32|bf16) on cpu", smoke_run.stderr)  # shown once per family


def test_one_study_run_with_its_resolved_config(smoke_runs):
    client, by_kind = smoke_runs
    (study,) = by_kind["study"]
    assert study.info.status == "FINISHED"
    artifacts = {a.path for a in client.list_artifacts(study.info.run_id)}
    assert {"study.resolved.yaml", "environment.json", "leaderboard.csv", "recheck.csv"} <= artifacts
    assert study.data.metrics["trials_pruned"] >= 1


def test_one_nested_run_per_trial_with_epoch_curves(smoke_runs):
    client, by_kind = smoke_runs
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


def test_trials_and_the_final_run_carry_their_execution_plan(smoke_runs):
    """How each trained (hpo.train.plan), beside its images/s: bf16 only where this CPU has it natively;
    and on what (hpo.engine.devices)."""
    import torch

    from hpo.train import describe_machine

    _, by_kind = smoke_runs
    (final,) = by_kind["final"]
    precisions = {"fp32", "bf16"} if describe_machine().bf16_native else {"fp32"}
    for run in [*by_kind["trial"], final]:
        tags = run.data.tags
        assert tags["hpo.plan.precision"] in precisions, tags
        assert tags["hpo.plan.layout"] in ("channels_last", "contiguous")
        assert tags["hpo.plan.device"] == "cpu" and tags["hpo.plan.compile"] == "false"
        assert tags["hpo.plan.source"] in ("measured", "cache", "default")  # default: too short to measure
        assert "AVX2" in tags["hpo.plan.device_name"] or "no AVX2" in tags["hpo.plan.device_name"]
        assert run.data.metrics["images_per_second"] > 0
    for run in [*by_kind["trial"], *by_kind["recheck"], final]:  # the device, as assigned: no GPU asked for
        tags = run.data.tags
        assert tags["hpo.device"] == "cpu" and tags["hpo.gpu_share"] == "0", tags
        assert tags["hpo.device_capability"] == torch.backends.cpu.get_cpu_capability()
        assert tags["hpo.device_name"] == describe_machine().cpu_model
    assert {t.data.tags["hpo.plan.threads"] for t in by_kind["trial"]} == {"1"}  # cpus_per_trial: 1
    assert final.data.tags["hpo.plan.threads"] in ("1", str(os.cpu_count()))


def test_recheck_reruns_the_top_k_with_fresh_seeds(smoke_runs):
    client, by_kind = smoke_runs
    rechecks = by_kind["recheck"]
    assert len(rechecks) == 2 * 2  # top_k 2, seeds 2
    assert len({r.data.params["seed"] for r in rechecks}) == 2
    (study,) = by_kind["study"]
    path = client.download_artifacts(study.info.run_id, "recheck.csv")
    rows = list(csv.DictReader(Path(path).read_text().splitlines()))
    assert len(rows) == 2 and sum(r["chosen"] == "True" for r in rows) == 1
    # the spread reported is that of the chosen trial's best val_accuracy over its re-check seeds
    chosen = next(r for r in rows if r["chosen"] == "True")
    runs = [r for r in rechecks if r.info.run_name.startswith(f"recheck-trial-{int(chosen['trial']):03d}-")]
    bests = [max(m.value for m in client.get_metric_history(r.info.run_id, "val_accuracy")) for r in runs]
    assert len(bests) == 2
    assert study.data.metrics["recheck_std_val_accuracy"] == pytest.approx(np.std(bests), abs=1e-6)
    assert float(chosen["std"]) == pytest.approx(np.std(bests), abs=1e-4)


def test_final_run_holds_every_evaluation_artifact(smoke_runs, smoke_data, smoke_model):
    from PIL import Image

    client, by_kind = smoke_runs
    (final,) = by_kind["final"]
    assert final.info.status == "FINISHED"
    local = client.download_artifacts(final.info.run_id, "evaluation")
    assert set(os.listdir(local)) >= EVALUATION
    for name in EVALUATION:
        if name.endswith(".png"):
            with Image.open(os.path.join(local, name)) as image:
                image.load()
                assert image.size[0] > 300 and image.size[1] > 300
    per_class = list(csv.DictReader(Path(local, "per_class_metrics.csv").read_text().splitlines()))
    assert [r["class"] for r in per_class] == smoke_data.classes
    # each class's one-vs-rest ROC-AUC as sklearn computes it from the registered model's scores (the
    # final evaluation may have run in bf16: a few ranks may differ), and well above chance
    from sklearn.metrics import roc_auc_score

    with torch.no_grad():
        probs = torch.softmax(smoke_model(torch.as_tensor(smoke_data.x_test, dtype=torch.float32) / 255.0), 1)
    for k, row in enumerate(per_class):
        expected = roc_auc_score(smoke_data.y_test == k, probs[:, k].numpy())
        assert float(row["roc_auc"]) == pytest.approx(expected, abs=0.01) and expected > 0.7, row
    macro = np.mean([float(r["roc_auc"]) for r in per_class])
    assert final.data.metrics["test_macro_roc_auc"] == pytest.approx(macro, abs=1e-3)
    assert sum(int(r["support"]) for r in per_class) == len(smoke_data.y_test)
    cm = np.loadtxt(os.path.join(local, "confusion_matrix.csv"), delimiter=",", dtype=int)
    assert cm.shape == (10, 10) and cm.sum() == len(smoke_data.y_test)
    assert np.trace(cm) / cm.sum() == pytest.approx(final.data.metrics["test_accuracy"])
    html = Path(local, "optuna_plots.html").read_text()
    assert "Optimisation history" in html and "plotly" in html.lower()
    families = list(csv.DictReader(Path(local, "families.csv").read_text().splitlines()))
    assert [f["family"] for f in families] == ["cnn"]
    for metric in ("test_accuracy", "test_loss", "test_macro_f1", "test_macro_roc_auc", "test_ece"):
        assert metric in final.data.metrics
    exports = {a.path for a in client.list_artifacts(final.info.run_id, "exports")}
    assert {"exports/model.onnx", "exports/model.torchscript.pt", "exports/model_metadata.json"} <= exports


def test_registered_model_loads_back_and_predicts(smoke_runs, smoke_run, smoke_model, smoke_data):
    client, by_kind = smoke_runs
    (final,) = by_kind["final"]
    (version,) = client.search_model_versions("name='smoke'")
    assert version.run_id == final.info.run_id
    assert client.get_model_version_by_alias("smoke", "champion").version == version.version
    assert float(version.tags["test_accuracy"]) == pytest.approx(final.data.metrics["test_accuracy"], abs=1e-5)
    assert "name: smoke" in version.description  # the study config travels with the version
    with torch.no_grad():
        logits = smoke_model(torch.as_tensor(smoke_data.x_test, dtype=torch.float32) / 255.0)
    accuracy = float((logits.argmax(1).numpy() == smoke_data.y_test).mean())
    assert logits.shape == (len(smoke_data.y_test), 10)
    # the logged model runs in fp32; the final evaluation ran as the plan said (bf16 where native)
    assert abs(accuracy - final.data.metrics["test_accuracy"]) < 0.02


def test_the_sampler_heard_each_trials_fate(smoke_run):
    """hpo's searcher (hpo.engine.searcher) in a real run: each epoch reached Optuna as an intermediate value;
    a trial ASHA stopped is PRUNED, not COMPLETE with its last value; a full trial is COMPLETE with its best."""
    import json

    import optuna

    (db,) = (smoke_run.work / "runs" / "smoke").glob("*/optuna.db")
    sampler = optuna.load_study(study_name="smoke", storage=f"sqlite:///{db}")
    heard = {t.number: t for t in sampler.get_trials(deepcopy=False)}
    journal = json.loads((db.parent / "trials.json").read_text())["trials"]
    assert len(journal) == 4 and any(t["status"] == "pruned" for t in journal)
    for trial in journal:
        told = heard[trial["optuna_number"]]
        curve = {row["epoch"]: row["val_accuracy"] for row in trial["history"]}
        assert told.intermediate_values == pytest.approx(curve)
        if trial["status"] == "pruned":
            assert told.state == optuna.trial.TrialState.PRUNED and told.system_attrs["hpo:stopped_by"] == "scheduler"
        else:
            assert trial["status"] == "completed" and len(curve) == 2
            assert told.state == optuna.trial.TrialState.COMPLETE and told.value == pytest.approx(max(curve.values()))
