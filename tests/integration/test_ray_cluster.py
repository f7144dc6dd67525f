"""Studies on a pool of workers, as on a GPU cluster: `hpo run --address` on a real 3-node Ray cluster on
loopback, started with `ray start`: a head with no CPUs (the driver's side: nothing trains there) and two
worker nodes of one CPU each. The test ends exactly the processes its `ray start` commands created (each
node's session, by PID).

One run shows both what a pool needs: mid-search, worker node A is killed (its raylet and every process of
it) while a trial trains there, and the trial is retried on node B within `failures.retries`, the study
completes and MLflow keeps one live run per trial; the re-check runs and the final retrain run as Ray tasks
on a worker (the one left), and their runs name it (`hpo.node`), not the head."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from hpo.names import RunKind, Tag
from hpo.testing import hpo_env

pytestmark = pytest.mark.integration

RAY = str(Path(sys.executable).with_name("ray"))


def _sessions_processes(sessions: set[int]) -> list[int]:
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.getsid(int(pid)) in sessions:
                pids.append(int(pid))
        except (ProcessLookupError, PermissionError):
            pass
    return pids


STUDY = """\
name: pool
seed: 0
dataset: {name: fashion_mnist, validation_split: 0.2, subset: {train: 800, test: 200}}
search_space:
  model: {name: cnn, depth: 1, width: 8}
  optimizer: {name: adam, lr: {float: [0.01, 0.03], log: true}}
  batch_size: 32
objective: {metric: val_accuracy, mode: max}
budget: {trials: 3, max_epochs: 4}
scheduler: {type: none}
resources: {cpus_per_trial: 1}
failures: {retries: 1}
final: {retrain_on: train+val, epochs: best, register_as: pool, export: [torchscript], recheck: {top_k: 1, seeds: 2}}
"""
MAX_EPOCHS = 4  # the study's budget.max_epochs
# The GCS declares a node dead after this many missed health checks of this period (default 5 x 3 s).
FAST_NODE_DEATH = {"RAY_health_check_period_ms": "1000", "RAY_health_check_failure_threshold": "5"}


def _raylet_node_id(session: int) -> str | None:
    """The node id a `ray start` session's raylet runs as (its command line names it)."""
    for pid in _sessions_processes({session}):
        with contextlib.suppress(OSError):
            args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            if args and args[0].endswith(b"raylet"):
                for arg in args:
                    if arg.startswith(b"--node_id="):
                        return arg.split(b"=", 1)[1].decode()
    return None


def _kill_sessions(sessions: set[int]) -> None:
    for _ in range(3):  # daemons may still be forking workers: sweep until none is left
        for pid in _sessions_processes(sessions):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.3)


def _status(pid: int) -> str:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/status").read_text()
    return "State:\tZ"  # gone


def _journal(work: Path) -> list[dict]:
    found = sorted(work.glob("runs/pool/*/trials.json"))
    if not found:
        return []
    with contextlib.suppress(ValueError, OSError):  # caught mid-rewrite
        return json.loads(found[-1].read_text())["trials"]
    return []


def test_a_lost_worker_node_costs_one_retry_and_the_later_stages_run_on_workers(tmp_path, data_dir):
    import mlflow

    temp = Path(tempfile.mkdtemp(prefix="hpo-ray-"))  # short: Ray's socket paths are length-limited
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    address = f"127.0.0.1:{port}"
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16)}
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", **auth, **FAST_NODE_DEATH}
    sessions: dict[str, int] = {}  # node name -> the session of its `ray start` (the leader's pid)

    def ray_start(name: str, ip: str, *args: str) -> subprocess.Popen:
        proc = subprocess.Popen(
            [RAY, "start", f"--node-ip-address={ip}", "--disable-usage-stats", *args],
            env=env,
            start_new_session=True,  # every process of the node keeps this session id: how it is found
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        sessions[name] = proc.pid
        return proc

    def started(*procs: subprocess.Popen) -> None:
        for proc in procs:
            out, _ = proc.communicate(timeout=120)
            assert proc.returncode == 0, out

    (tmp_path / "study.yaml").write_text(STUDY)
    driver = None
    killed: dict = {}
    try:
        head = ("--head", f"--port={port}", "--num-cpus=0", f"--temp-dir={temp}", "--include-dashboard=false")
        started(ray_start("head", "127.0.0.1", *head))
        driver = subprocess.Popen(  # starts up while the workers join (trials wait for room on a worker)
            [sys.executable, "-m", "hpo.cli", "run", "study.yaml", "--address", address],
            cwd=tmp_path,
            env=hpo_env(data_dir, auth),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        # Each worker on its own loopback address: the driver, on 127.0.0.1, attaches to the head's raylet
        # (and two raylets starting at once on one address can take each other's node record).
        worker = (f"--address={address}", "--num-cpus=1")
        for name, ip in (("a", "127.0.0.2"), ("b", "127.0.0.3")):
            started(ray_start(name, ip, *worker))
        # Node A goes down once a trial has reported an epoch from it, with at least two epochs still to go.
        give_up = time.monotonic() + 120
        while not killed:
            assert driver.poll() is None, driver.communicate()[0]
            assert time.monotonic() < give_up, "no trial trained on worker node A within 120 s"
            for trial in _journal(tmp_path):
                pid = trial.get("worker_pid")
                with contextlib.suppress(ProcessLookupError):
                    running = trial["status"] == "running" and len(trial["history"]) <= MAX_EPOCHS - 2
                    if running and pid and os.getsid(pid) == sessions["a"]:
                        killed = {"number": trial["number"], "node": trial["node"], "epochs": len(trial["history"])}
                        _kill_sessions({sessions["a"]})
                        break
            time.sleep(0.1)
        out, _ = driver.communicate(timeout=150)
        assert driver.returncode == 0, out
        node_ids = {name: _raylet_node_id(session) for name, session in sessions.items() if name != "a"}
    finally:
        if driver is not None and driver.poll() is None:
            driver.kill()
        _kill_sessions(set(sessions.values()))
    alive = [p for p in _sessions_processes(set(sessions.values())) if "State:\tZ" not in _status(p)]
    assert not alive, "Ray processes survived teardown"

    a, b, head = killed["node"], node_ids["b"], node_ids["head"]
    assert a and b and head and len({a, b, head}) == 3, (a, b, head)
    assert 1 <= killed["epochs"] <= MAX_EPOCHS - 2  # killed mid-trial

    trials = {t["number"]: t for t in _journal(tmp_path)}
    assert sorted(trials) == [1, 2, 3] and all(t["status"] == "completed" for t in trials.values()), trials
    retried = trials[killed["number"]]
    assert retried["attempts"] == 2 and retried["node"] == b, retried  # ran again, on the node left
    assert len(retried["history"]) == MAX_EPOCHS  # from scratch, to the end

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("pool").experiment_id])  # live runs only
    by_kind: dict[str, list] = {}
    for run in runs:
        by_kind.setdefault(run.data.tags.get(Tag.KIND), []).append(run)
    trial_runs = sorted(r.info.run_name for r in by_kind[RunKind.TRIAL])
    assert trial_runs == ["trial-001", "trial-002", "trial-003"], trial_runs  # one per trial: no duplicate
    (rerun,) = [r for r in by_kind[RunKind.TRIAL] if r.info.run_name == f"trial-{killed['number']:03d}"]
    assert rerun.data.tags[Tag.NODE] == b and rerun.data.tags[Tag.ATTEMPT] == "2"
    # why the first attempt ended, in words: its node (or the connection to it) lost, or its process gone
    assert rerun.data.tags[Tag.RETRY_ERRORS].startswith(("TrialNodeLost: ", "TrialProcessDied: ")), rerun.data.tags

    rechecks = by_kind[RunKind.RECHECK]
    assert len(rechecks) == 2 and {r.data.tags[Tag.NODE] for r in rechecks} == {b}
    (final,) = by_kind[RunKind.FINAL]
    assert final.info.status == "FINISHED" and final.data.tags[Tag.NODE] == b  # a worker, not the head
    assert final.data.metrics["test_accuracy"] > 0.15  # trained (chance: 0.1)
    exports = {f.path for f in client.list_artifacts(final.info.run_id, "exports")}
    assert "exports/model.torchscript.pt" in exports  # made on the worker, sent back in the task's result
