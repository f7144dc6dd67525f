"""The AutoKeras baseline for real: a worker process running ``autokeras.ImageClassifier`` on a real
Fashion-MNIST subset, beside the search, tracked in the same MLflow experiment."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from hpo.config.backends import BACKENDS
from hpo.names import RunKind, RunStatus, Stage, Tag, TrialStatus
from hpo.testing import REPO_ROOT, run_hpo

pytestmark = pytest.mark.integration

STUDY = """\
name: {name}
seed: 3
dataset:
  name: fashion_mnist
  validation_split: 0.2
  subset: {{train: 800, test: 300}}
search_space: {space}
backends: {backends}
autokeras: {{max_trials: 1, keras_backend: {keras_backend}, batch_size: 64}}
objective: {{metric: val_accuracy}}
budget: {{trials: 1, time: 5m, max_epochs: {epochs}}}
scheduler: {{type: none}}
resources: {{cpus_per_trial: 1, max_concurrent: 1}}
final: {{export: [], register_as: {name}}}
"""


def _write_study(work: Path, name: str, backends: str, keras_backend: str = "torch", epochs: int = 1) -> Path:
    path = work / f"{name}.yaml"
    path.write_text(
        STUDY.format(
            name=name,
            space=REPO_ROOT / "search_spaces" / "smoke.yaml",
            backends=backends,
            keras_backend=keras_backend,
            epochs=epochs,
        )
    )
    return path


def _runs(work: Path, name: str):
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{work / 'mlflow' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(name)
    runs = client.search_runs([experiment.experiment_id])
    return client, runs


def _children(runs, parent, kind):
    return [
        r
        for r in runs
        if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id and r.data.tags.get(Tag.KIND) == kind
    ]


def _keras_accuracy(model_path: str, x_test: np.ndarray, y_test: np.ndarray, keras_backend: str) -> float:
    """Reload the logged model in a fresh process (as a user would) and score it on the test images."""
    code = textwrap.dedent("""
        import sys, numpy as np, keras
        import autokeras  # registers AutoKeras' custom layers with Keras
        x, y = np.load(sys.argv[2]), np.load(sys.argv[3])
        model = keras.models.load_model(sys.argv[1])
        probs = model.predict(x.transpose(0, 2, 3, 1).astype("float32"), verbose=0)
        print(float((probs.argmax(1) == y).mean()))
    """)
    folder = Path(model_path).parent
    np.save(folder / "x.npy", x_test)
    np.save(folder / "y.npy", y_test)
    out = subprocess.run(
        [sys.executable, "-c", code, model_path, str(folder / "x.npy"), str(folder / "y.npy")],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "KERAS_BACKEND": keras_backend},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return float(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def both_backends(tmp_path_factory, data_dir):
    work = tmp_path_factory.mktemp("autokeras")
    study = _write_study(work, "ak-both", "[search, autokeras]")
    result = run_hpo(["run", str(study)], work, data_dir)
    assert result.returncode == 0, result.stdout + result.stderr[-6000:]
    return work, study, result


def test_the_baseline_runs_beside_the_search_and_is_tracked_the_same_way(both_backends, data_dir):
    from hpo.data import load_data
    from hpo.study import load_study

    work, study_file, result = both_backends
    assert "backends side by side" in result.stderr
    client, runs = _runs(work, "ak-both")
    (search,) = [r for r in runs if r.data.tags.get(Tag.KIND) == RunKind.STUDY]
    (baseline,) = [r for r in runs if r.data.tags.get(Tag.KIND) == RunKind.BASELINE]
    assert baseline.data.tags[Tag.BACKEND] == "autokeras" and baseline.info.status == RunStatus.FINISHED
    assert baseline.data.tags[Tag.KERAS_BACKEND] == "torch"
    assert "mlflow.parentRunId" not in baseline.data.tags  # a top-level run beside the search's
    # the run's stages, as the two backends declare them, are in its state file; the baseline's result too
    (state_file,) = (work / "runs" / "ak-both").glob("*/state.json")
    state = json.loads(state_file.read_text())
    assert state["stages"] == [*BACKENDS["search"].stages, *BACKENDS["autokeras"].stages, Stage.DONE]
    assert (
        state["stage"] == Stage.DONE
        and state["stage_state"][Stage.BASELINE]["result"]["run_id"] == baseline.info.run_id
    )

    # one nested run per AutoKeras trial: flattened hyperparameters, per-epoch metrics
    (trial,) = _children(runs, baseline, RunKind.TRIAL)
    assert trial.info.status == RunStatus.FINISHED and trial.data.tags[Tag.STATUS] == TrialStatus.COMPLETED
    assert trial.data.params["autokeras.image_block_1/block_type"] == "vanilla"
    assert "autokeras.learning_rate" in trial.data.params
    for metric in ("train_loss", "val_loss", "val_accuracy"):
        assert [m.step for m in client.get_metric_history(trial.info.run_id, metric)] == [1]

    # the final run: test metrics, confusion matrix, the exported model
    (final,) = _children(runs, baseline, RunKind.FINAL)
    artifacts = {a.path for a in client.list_artifacts(final.info.run_id, "evaluation")}
    assert {
        "evaluation/confusion_matrix.png",
        "evaluation/confusion_matrix.csv",
        "evaluation/per_class_metrics.csv",
    } <= artifacts
    assert int(final.data.params["final.train_images"]) == 800  # retrained on train+val, like the search's final
    test_accuracy = final.data.metrics["test_accuracy"]
    assert baseline.data.metrics["test_accuracy"] == test_accuracy
    assert 0.3 < test_accuracy <= 1.0  # 10 classes: chance is 0.1
    cm = np.loadtxt(client.download_artifacts(final.info.run_id, "evaluation/confusion_matrix.csv"), delimiter=",")
    assert cm.sum() == 300 and np.isclose(np.trace(cm) / cm.sum(), test_accuracy)

    # the same columns as the search's parent, comparable in the MLflow UI
    for metric in (
        "test_accuracy",
        "test_loss",
        "wall_seconds",
        "search_seconds",
        "trial_epochs",
        "best_val_accuracy",
        "trials_completed",
    ):
        assert metric in search.data.metrics and metric in baseline.data.metrics, metric
    assert search.data.params["budget.trials"] == baseline.data.params["budget.trials"]

    # the exact same splits: the search's, the one the worker process read, and one computed here
    config = load_study(study_file).config
    expected = load_data(config.dataset.model_copy(update={"data_dir": str(data_dir)}), config.seed).split_record()
    for run, artifact in ((search, "split.json"), (baseline, "split.json"), (baseline, "split_seen.json")):
        assert json.loads(Path(client.download_artifacts(run.info.run_id, artifact)).read_text()) == expected
    tags = {k: v for k, v in baseline.data.tags.items() if k.startswith("hpo.split.")}
    assert tags and tags == {k: v for k, v in search.data.tags.items() if k.startswith("hpo.split.")}
    assert {
        k.replace("split_seen", "split"): v for k, v in baseline.data.tags.items() if k.startswith("hpo.split_seen.")
    } == tags
    assert expected["train"]["count"] == 640 and expected["val"]["count"] == 160 and expected["test"]["count"] == 300

    # the logged model, reloaded in a fresh process, scores what the final run logged
    model = client.download_artifacts(final.info.run_id, "model/model.keras", str(work))
    data = load_data(config.dataset.model_copy(update={"data_dir": str(data_dir)}), config.seed)
    assert _keras_accuracy(model, data.x_test, data.y_test, "torch") == pytest.approx(test_accuracy, abs=1e-6)


def test_hpo_report_puts_both_side_by_side(both_backends):
    work, study_file, _ = both_backends
    result = run_hpo(["report", str(study_file), "--out", str(work / "report")], work)
    assert result.returncode == 0, result.stderr
    md = (work / "report" / "report.md").read_text()
    table = md.split("## Backends side by side")[1].split("##")[0]
    rows = [line for line in table.splitlines() if line.startswith("| search") or line.startswith("| autokeras")]
    assert len(rows) == 2
    assert (work / "report" / "backends_over_time.png").stat().st_size > 10_000


@pytest.mark.skipif(
    importlib.util.find_spec("tensorflow") is None,
    reason='the tensorflow extra is not installed (pip install -e ".[tensorflow]")',
)
def test_the_baseline_on_the_tensorflow_backend(tmp_path, data_dir):
    study = _write_study(tmp_path, "ak-tf", "[autokeras]", keras_backend="tensorflow")
    result = run_hpo(["run", str(study)], tmp_path, data_dir)
    assert result.returncode == 0, result.stdout + result.stderr[-6000:]
    _, runs = _runs(tmp_path, "ak-tf")
    assert not [r for r in runs if r.data.tags.get(Tag.KIND) == RunKind.STUDY]  # only the baseline ran
    (baseline,) = [r for r in runs if r.data.tags.get(Tag.KIND) == RunKind.BASELINE]
    assert baseline.data.tags[Tag.KERAS_BACKEND] == "tensorflow"
    (final,) = _children(runs, baseline, RunKind.FINAL)
    assert 0.3 < final.data.metrics["test_accuracy"] <= 1.0
    assert len(_children(runs, baseline, RunKind.TRIAL)) == 1


def test_a_killed_baseline_continues_where_it_stopped(tmp_path, data_dir):
    """SIGKILL the driver once AutoKeras has finished its first model: the worker notices and exits, and
    the next `hpo run` keeps that model's trial (same MLflow run, not trained again) and goes on."""
    import signal
    import time

    import psutil

    from hpo.testing import hpo_env, wait_ended

    study = tmp_path / "ak-resume.yaml"
    study.write_text(
        STUDY.format(
            name="ak-resume",
            space=REPO_ROOT / "search_spaces" / "smoke.yaml",
            backends="[autokeras]",
            keras_backend="torch",
            epochs=2,
        )
        .replace("max_trials: 1", "max_trials: 2")
        # AutoKeras' second model would be a ResNet50 at 224 px (minutes for one batch on 2 cores): vanilla
        # CNNs alone, the block type a user sets for a CPU baseline
        .replace("batch_size: 64}", "batch_size: 64, block_type: vanilla}")
        .replace("time: 5m", "time: 45s")
    )
    driver = subprocess.Popen(
        [sys.executable, "-m", "hpo.cli", "run", str(study)],
        cwd=tmp_path,
        env=hpo_env(data_dir),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 240
    events, stopped = None, False
    while time.time() < deadline:
        found = list((tmp_path / "runs" / "ak-resume").glob("*/autokeras/events.jsonl"))
        text = found[0].read_text() if found else ""
        if '"trial_begin"' in text and not stopped:
            # freeze the driver while the worker finishes the model: the model's end is then written to the
            # events file but never reaches MLflow through this driver
            driver.send_signal(signal.SIGSTOP)
            stopped = True
        if '"trial_end"' in text:
            events = found[0]
            break
        assert driver.poll() is None, driver.stderr.read()[-3000:]
        time.sleep(0.2)
    assert events is not None, "AutoKeras never finished its first model"
    workers = [
        p for p in psutil.Process(driver.pid).children(recursive=True) if "_autokeras_worker" in " ".join(p.cmdline())
    ]
    assert len(workers) == 1
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    alive = wait_ended(workers, timeout=60)
    for p in alive:  # leave nothing behind even if the test fails
        p.kill()
    assert not alive, "the worker went on without its driver"
    assert '"orphaned"' in events.read_text()

    _, runs = _runs(tmp_path, "ak-resume")
    # the driver died before logging the first model's end (and maybe its start): the next run reads both
    # from the events file
    before = [r for r in runs if r.data.tags.get(Tag.KIND) == RunKind.TRIAL]
    assert all(r.info.status == RunStatus.RUNNING for r in before)

    result = run_hpo(["run", str(study)], tmp_path, data_dir)
    assert result.returncode == 0, result.stderr[-6000:]
    assert "resuming" in result.stderr
    _, runs = _runs(tmp_path, "ak-resume")
    live = [r for r in runs if r.info.lifecycle_stage == "active"]
    (baseline,) = [r for r in live if r.data.tags.get(Tag.KIND) == RunKind.BASELINE]
    assert baseline.info.status == RunStatus.FINISHED and baseline.data.tags[Tag.ATTEMPTS] == "2"
    trials = sorted(_children(live, baseline, RunKind.TRIAL), key=lambda r: r.data.tags[Tag.TRIAL_ID])
    assert [t.data.tags[Tag.TRIAL_ID] for t in trials] == ["0", "1"]
    if before:
        assert trials[0].info.run_id == before[0].info.run_id  # kept, not redone
    assert trials[0].info.status == RunStatus.FINISHED and trials[0].data.tags[Tag.STATUS] == TrialStatus.COMPLETED
    begun = [json.loads(line) for line in events.read_text().splitlines() if '"trial_begin"' in line]
    assert [b["trial"] for b in begun].count("0") == 1
    for b in begun:  # each model a vanilla CNN, as autokeras.block_type says
        assert any(k.startswith("image_block_1/conv_block_1/") for k in b["params"]), b["params"]
        assert not any(
            k.startswith(("image_block_1/res_net", "image_block_1/xception", "image_block_1/efficient"))
            for k in b["params"]
        ), b["params"]
    (final,) = _children(live, baseline, RunKind.FINAL)
    assert 0.3 < final.data.metrics["test_accuracy"] <= 1.0
