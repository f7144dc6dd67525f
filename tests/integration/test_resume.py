"""Kill the driver with SIGKILL mid-search, between search and finalize, and mid-finalize; each rerun
continues the study. Finished trials are not re-run, MLflow holds one live run per trial, the sampler's
history survives, and the final stage's result is there once. Nothing of a killed driver's Ray outlives it
by 30 s; killed with its watchdog, what it leaves is ended by the next ``hpo status``."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from hpo.testing import run_hpo, wait_ended

pytestmark = pytest.mark.integration

STUDY = """\
name: resumable
seed: 3
dataset: {{name: fashion_mnist, validation_split: 0.2, subset: {{train: 2000, test: 300}}, data_dir: {data}}}
search_space:
  model: {{name: cnn, depth: 2, width: {{categorical: [8, 16]}}, batchnorm: before_activation}}
  optimizer: {{name: sgd, lr: {{float: [0.003, 0.3], log: true}}}}
  batch_size: 64
objective: {{metric: val_accuracy}}
budget: {{trials: 6, max_epochs: 2}}
scheduler: {{type: asha, grace_period: 1, reduction_factor: 2}}
resources: {{cpus_per_trial: 1, max_concurrent: 1}}
final: {{retrain_on: train+val, epochs: best, register_as: resumable, recheck: {{top_k: 1, seeds: 2}}}}
"""
TERMINAL = {"completed", "early_stopped", "pruned", "stopped", "failed", "infeasible"}


def _start(work: Path) -> subprocess.Popen:
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.Popen(
        [sys.executable, "-m", "hpo.cli", "run", "study.yaml"],
        cwd=work,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _kill_driver_when(proc: subprocess.Popen, ready, timeout: float = 240, *, watchdog_in: Path | None = None) -> None:
    """SIGKILL the driver once ``ready()`` holds; nothing of its Ray outlives it by 30 s. With
    ``watchdog_in`` (the run's working directory), the driver's watchdog (hpo.engine.ray_procs) is SIGKILLed
    first: then ``hpo status`` ends exactly what the run folder recorded, and says so. Whatever fails, the
    Ray processes the driver started (only those) are ended before returning."""
    deadline = time.time() + timeout
    while not ready():
        if proc.poll() is not None:
            pytest.fail(f"the run ended (rc {proc.returncode}) before the kill point:\n{proc.stdout.read()}")
        assert time.time() < deadline, "the kill point was never reached"
        time.sleep(0.1)
    family = psutil.Process(proc.pid).children(recursive=True)
    try:
        if watchdog_in is not None:
            record = json.loads((_run_dir(watchdog_in) / "ray_procs.json").read_text())
            watchdog = psutil.Process(record["watchdog"][0])
            assert watchdog in family
            watchdog.kill()
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        if watchdog_in is None:
            left = wait_ended(family, timeout=30)
            assert not left, f"outlived the driver by 30 s: {[(p.pid, p.name()) for p in left]}"
            return
        status = run_hpo(["status", "study.yaml"], watchdog_in)
        assert status.returncode == 0, status.stdout + status.stderr
        line = next((x for x in status.stderr.splitlines() if "leftover Ray process" in x), None)
        assert line is not None, status.stderr
        named = {int(pid) for pid in re.findall(r"(\d+) ray::", line)}
        assert named and named <= {p.pid for p in family}, line  # exactly those the run had started
        left = wait_ended(family, timeout=5)
        assert not left, f"{line}; still running: {[(p.pid, p.name()) for p in left]}"
    finally:
        for child in family:
            with contextlib.suppress(psutil.NoSuchProcess):
                child.kill()
        wait_ended(family, timeout=30)


def _run_dir(work: Path) -> Path | None:
    found = sorted((work / "runs" / "resumable").glob("*/state.json"))
    return found[-1].parent if found else None


def _state(work: Path) -> dict:
    run_dir = _run_dir(work)
    return json.loads((run_dir / "state.json").read_text()) if run_dir else {}


def _journal(work: Path) -> list[dict]:
    run_dir = _run_dir(work)
    if run_dir is None or not (run_dir / "trials.json").is_file():
        return []
    return json.loads((run_dir / "trials.json").read_text())["trials"]


def _live_final_run(work: Path) -> bool:
    db = work / "mlflow" / "mlflow.db"
    if not db.is_file():
        return False
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1) as conn:
            return bool(
                conn.execute(
                    "select count(*) from runs r join tags t on r.run_uuid = t.run_uuid where t.key = 'hpo.kind' "
                    "and t.value = 'final' and r.status = 'RUNNING' and r.lifecycle_stage = 'active'"
                ).fetchone()[0]
            )
    except sqlite3.OperationalError:  # locked or tables not there yet
        return False


def test_a_killed_study_continues_where_it_stopped(tmp_path, data_dir):
    import optuna
    from mlflow.entities import ViewType

    import mlflow

    (tmp_path / "study.yaml").write_text(STUDY.format(data=data_dir))

    # 1. Mid-search: two trials finished, the third running.
    def mid_search():
        trials = _journal(tmp_path)
        return len(trials) >= 3 and trials[-1]["status"] == "running" and trials[-2]["status"] in TERMINAL

    _kill_driver_when(_start(tmp_path), mid_search, watchdog_in=tmp_path)
    before = _journal(tmp_path)
    finished_before = {t["number"]: t for t in before if t["status"] in TERMINAL}
    cut_off = [t for t in before if t["status"] not in TERMINAL]
    assert len(finished_before) >= 2 and cut_off
    status = run_hpo(["status", "study.yaml"], tmp_path)
    assert status.returncode == 0 and "interrupted in search" in status.stdout, status.stdout

    # 2. Between search and finalize (the winner's re-check).
    _kill_driver_when(_start(tmp_path), lambda: _state(tmp_path).get("stage") == "recheck")
    # 3. Mid-finalize: the final run exists and is retraining.
    _kill_driver_when(
        _start(tmp_path), lambda: _state(tmp_path).get("stage") == "finalize" and _live_final_run(tmp_path)
    )

    last = _start(tmp_path)
    output, _ = last.communicate(timeout=600)
    assert last.returncode == 0, output
    assert "resuming" in output

    state = _state(tmp_path)
    assert state["stage"] == "done" and state["outcome"] == "completed" and state["attempts"] == 4
    trials = _journal(tmp_path)
    assert sorted(t["number"] for t in trials) == list(range(1, 7))
    assert all(t["status"] in TERMINAL for t in trials)
    by_number = {t["number"]: t for t in trials}
    for number, old in finished_before.items():  # kept as they were: same Ray trial, same run, same curve
        new = by_number[number]
        assert (new["trial_id"], new["run_id"], new["history"]) == (old["trial_id"], old["run_id"], old["history"])
    for old in cut_off:  # restarted with the same parameters, under the same number, in a new run
        new = by_number[old["number"]]
        assert new["params"] == old["params"] and new["run_id"] != old["run_id"]

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("resumable")
    live: dict[str, list] = {}
    for run in client.search_runs([experiment.experiment_id]):
        live.setdefault(run.data.tags.get("hpo.kind"), []).append(run)
    study_run = live["study"][0]
    assert len(live["study"]) == 1 and study_run.info.status == "FINISHED"
    assert study_run.data.metrics["test_accuracy"] > 0.5
    assert sorted(r.info.run_name for r in live["trial"]) == [f"trial-{n:03d}" for n in range(1, 7)]
    assert {r.info.run_id for r in live["trial"]} == {t["run_id"] for t in trials}
    assert len(live["recheck"]) == 2
    assert len(live["final"]) == 1 and live["final"][0].info.status == "FINISHED"
    deleted = client.search_runs([experiment.experiment_id], run_view_type=ViewType.DELETED_ONLY)
    assert {r.data.tags["hpo.kind"] for r in deleted} >= {"trial", "final"}  # the cut-off attempts
    versions = client.search_model_versions("name = 'resumable'")
    assert len(versions) == 1 and versions[0].run_id == live["final"][0].info.run_id

    run_dir = _run_dir(tmp_path)
    sampler = optuna.load_study(study_name="resumable", storage=f"sqlite:///{run_dir / 'optuna.db'}")
    done = [t for t in sampler.trials if t.state.is_finished() and not t.system_attrs.get("hpo:cut_off")]
    assert len(done) == 6  # one told result per trial, before and after the crash
    assert [t for t in sampler.trials if t.system_attrs.get("hpo:cut_off")]
    told = [t.params for t in done]
    for old in finished_before.values():
        assert old["params"] in told
    numbers = {t.number: t for t in sampler.trials}
    for trial in trials:  # each trial's fate as the sampler heard it (hpo.engine.searcher), crashes or not
        heard = numbers[trial["optuna_number"]]
        expected = {"completed": "COMPLETE", "pruned": "PRUNED"}.get(trial["status"])
        assert expected is None or heard.state.name == expected, (trial["number"], trial["status"], heard.state)
        assert heard.system_attrs["hpo:run"] == run_dir.name
