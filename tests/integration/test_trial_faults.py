"""Trials that raise, go NaN, run out of memory or lose their process are recorded with the reason; the
retry policy restarts them; the study finishes with the others. Each trial's run holds what the trial
wrote and a failed one its whole traceback; the study run holds the driver's log. A study where no trial
succeeds exits 1 with the reasons."""

from __future__ import annotations

import io
import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest
from rich.console import Console

from hpo.backends.search import SearchOutcome
from hpo.testing import run_hpo

pytestmark = pytest.mark.integration

SPACE = """\
model: {name: cnn, depth: 2, width: {categorical: [8, 256]}, batchnorm: {categorical: [before_activation, none]}}
optimizer: {name: sgd, momentum: 0.99, lr: {categorical: [0.05, 10.0, 0.02, 0.03, 0.04]}}
batch_size: {categorical: [16, 64, 1000]}
schedule: {name: constant, warmup_fraction: 0}
"""
STUDY = """\
name: faults
seed: 1
dataset: {{name: fashion_mnist, validation_split: 0.2, subset: {{train: 1000, test: 200}}, data_dir: {data}}}
search_space: space.yaml
objective: {{metric: val_accuracy}}
budget: {{trials: 6, max_epochs: 3}}
scheduler: {{type: none}}
resources: {{cpus_per_trial: 1, max_concurrent: 1, memory_per_trial: 300MiB}}
failures: {{retries: 1}}
final: {{enabled: false}}
"""


def point(lr: float, width: int = 8, batch: int = 64, batchnorm: str = "before_activation") -> dict:
    return {"model.width": width, "model.batchnorm": batchnorm, "optimizer.lr": lr, "batch_size": batch}


def _kill_trial_process(run_root, lr: float, stop: threading.Event, killed: list) -> None:
    """Kill the process of the trial with learning rate ``lr`` once it has reported an epoch."""
    while not stop.is_set() and not killed:
        for journal in run_root.glob("*/trials.json"):
            try:
                trials = json.loads(journal.read_text())["trials"]
            except (OSError, ValueError):
                continue
            for t in trials:
                if (
                    t["params"]["optimizer.lr"] == lr
                    and t["status"] == "running"
                    and t["attempts"] == 1
                    and t["worker_pid"]
                    and t["history"]
                ):
                    os.kill(t["worker_pid"], signal.SIGKILL)
                    killed.append(t["worker_pid"])
                    return
        time.sleep(0.02)


def test_each_fault_is_recorded_and_the_study_goes_on(tmp_path, data_dir, monkeypatch):
    import ray

    import mlflow
    from hpo.engine.driver_log import LOG_WIDTH
    from hpo.names import Artifact
    from hpo.runner import run_study
    from hpo.study import load_study
    from hpo.testing.faults import FAULTS_ENV, MESSAGE_END

    monkeypatch.chdir(tmp_path)
    (tmp_path / "space.yaml").write_text(SPACE)
    (tmp_path / "study.yaml").write_text(STUDY.format(data=data_dir))
    study = load_study(tmp_path / "study.yaml")
    faults = {"0.02": f"once:{tmp_path / 'raised-once'}", "0.03": "always"}
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        logging_level="ERROR",
        runtime_env={
            "worker_process_setup_hook": "hpo.testing.faults.install",
            "env_vars": {FAULTS_ENV: json.dumps(faults)},
        },
    )
    stop, killed = threading.Event(), []
    killer = threading.Thread(target=_kill_trial_process, args=(tmp_path / "runs" / "faults", 0.04, stop, killed))
    killer.start()
    screen = io.StringIO()
    try:
        outcome = run_study(
            study,
            console=Console(file=screen, width=LOG_WIDTH, soft_wrap=True),  # as the CLI's, at the log's width
            live=False,
            points=[
                point(0.05),
                point(10.0, batch=16, batchnorm="none"),
                point(0.05, width=256, batch=1000),
                point(0.02),
                point(0.03),
                point(0.04),
            ],
        )
    finally:
        stop.set()
        killer.join()
        ray.shutdown()

    by_lr = {(r.params["optimizer.lr"], r.params["batch_size"]): r for r in outcome.result(SearchOutcome).records}
    assert len(outcome.result(SearchOutcome).records) == 6
    ok, nan, oom = by_lr[(0.05, 64)], by_lr[(10.0, 16)], by_lr[(0.05, 1000)]
    once, always, dead = by_lr[(0.02, 64)], by_lr[(0.03, 64)], by_lr[(0.04, 64)]
    assert ok.status == "completed" and ok.attempts == 1
    assert nan.status == "failed" and nan.error.startswith("FloatingPointError: training loss became")
    assert oom.status == "infeasible" and "out of memory with batch size 1000 on cpu, capped at 300.0 MiB" in oom.error
    assert oom.attempts == 1 and not oom.retry_errors  # deterministic: not retried, though retries is 1
    assert once.status == "completed" and once.attempts == 2 and "InjectedFault" in once.retry_errors[0]
    assert always.status == "failed" and always.attempts == 2 and "InjectedFault" in always.error
    assert killed, "the killer never found the trial's process"
    assert dead.status == "completed" and dead.attempts == 2, (dead.status, dead.retry_errors)
    assert dead.retry_errors[0].startswith("TrialProcessDied: the trial's process died"), dead.retry_errors

    client = mlflow.MlflowClient(tracking_uri=outcome.tracking_uri)
    runs = {
        r.info.run_id: r
        for r in client.search_runs(
            [client.get_experiment_by_name("faults").experiment_id], "tags.`hpo.kind` = 'trial'"
        )
    }
    assert len(runs) == 6  # retried attempts replaced their run: one live run per trial
    for record in outcome.result(SearchOutcome).records:
        run = runs[record.run_id]
        assert run.data.tags["hpo.status"] == record.status
        assert run.info.status == ("FINISHED" if record.status == "completed" else "FAILED")
        if record.error:
            assert run.data.tags["hpo.error"] == record.error
        if record.attempts > 1:
            assert run.data.tags["hpo.attempt"] == "2" and run.data.tags["hpo.retry_errors"]

    # Logs: what each trial wrote, and a failed trial's whole traceback, on its run (from the worker's process)
    def artifact(run_id: str, path: str) -> str:
        return Path(client.download_artifacts(run_id, path, str(tmp_path / "artifacts" / run_id))).read_text()

    traceback = artifact(always.run_id, Artifact.TRACEBACK)
    frames = [line.strip() for line in traceback.splitlines() if line.strip().startswith('File "')]
    assert any("ray_tune.py" in frame and "in run_trial" in frame for frame in frames)  # from the outermost...
    assert "faults.py" in frames[-1] and frames[-1].endswith("in _fail")  # ...to the innermost frame
    message = traceback[traceback.index("InjectedFault: injected fault for lr=0.03") :]
    assert MESSAGE_END in message and message.index(MESSAGE_END) > 500  # the whole message, past the tag's 500
    assert len(runs[always.run_id].data.tags["hpo.error"]) <= 500  # (the tag keeps its first line only)
    log = artifact(always.run_id, Artifact.TRIAL_LOG)
    assert "fault injection on stdout: lr=0.03, rule always" in log  # print
    assert "fault injection on stderr: lr=0.03" in log  # a write to descriptor 2, below Python
    assert "first attempt" in artifact(once.run_id, f"attempt-1/{Artifact.TRACEBACK}")  # the retried attempt's
    assert "fault injection on stdout: lr=0.02" in artifact(once.run_id, f"attempt-1/{Artifact.TRIAL_LOG}")
    for record in (ok, once, dead):  # successful trials: their output too (sent with their epochs' reports)
        assert f"fault injection on stdout: lr={record.params['optimizer.lr']}" in artifact(
            record.run_id, Artifact.TRIAL_LOG
        )
    assert "out of memory" in artifact(oom.run_id, Artifact.TRACEBACK)

    # The driver's log: the console's lines, plain, in the run folder and on the study run
    driver_log = artifact(outcome.result(SearchOutcome).run_id, Artifact.DRIVER_LOG)
    (in_folder,) = (tmp_path / "runs" / "faults").glob(f"*/{Artifact.DRIVER_LOG}")
    assert driver_log == in_folder.read_text()
    logged = {line[20:].rstrip() for line in driver_log.splitlines()}  # after the time stamp
    printed = [line.rstrip() for line in screen.getvalue().splitlines() if line.strip()]
    assert len(printed) > 5 and [line for line in printed if line not in logged] == []
    assert "\x1b" not in driver_log and driver_log.rstrip().endswith("run ended")


FAILING = """\
name: all-fail
dataset: {{name: fashion_mnist, validation_split: 0.2, subset: {{train: 500, test: 100}}, data_dir: {data}}}
search_space:
  model: {{name: cnn, depth: 2, width: 64}}
  optimizer: {{name: sgd, lr: {{float: [0.01, 0.1]}}}}
  batch_size: 400
budget: {{trials: 2, max_epochs: 1}}
scheduler: {{type: none}}
resources: {{max_concurrent: 1, memory_per_trial: 20MiB}}  # too little for a batch of 400 at width 64
"""


def test_a_study_where_no_trial_succeeds_exits_1_with_the_reasons(tmp_path, data_dir):
    (tmp_path / "study.yaml").write_text(FAILING.format(data=data_dir))
    result = run_hpo(["run", "study.yaml"], tmp_path)
    assert result.returncode == 1, result.stderr
    assert "no trial produced a result" in result.stderr
    assert result.stderr.count("TrialOutOfMemory: out of memory with batch size 400") >= 2  # each trial's reason
    status = run_hpo(["status", "study.yaml"], tmp_path)
    assert "failed: no trial produced a result" in status.stdout
