"""`hpo run --address` on a real 3-node Ray cluster on loopback: a head (no CPUs for trials) and two
workers with different resources, started with `ray start`. Trials run on more than one node and land
in MLflow; the test ends exactly the processes its `ray start` commands created (by session id)."""

from __future__ import annotations

import contextlib
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

from hpo.testing import REPO_ROOT, run_hpo

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


@pytest.fixture
def cluster():
    """(address, env for clients). Each `ray start` gets its own session (setsid): every process it
    spawns, daemons included, keeps that session id, which is how teardown finds exactly them."""
    temp = Path(tempfile.mkdtemp(prefix="hpo-ray-"))  # short: Ray's socket paths are length-limited
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {
        **os.environ,
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": secrets.token_hex(16),
    }
    sessions: set[int] = set()

    def ray_start(*args: str) -> None:
        proc = subprocess.Popen(
            [RAY, "start", "--node-ip-address=127.0.0.1", "--disable-usage-stats", *args],
            env=env,
            start_new_session=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        sessions.add(proc.pid)  # a new session's id is its leader's pid
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0, out

    try:
        ray_start("--head", f"--port={port}", "--num-cpus=0", f"--temp-dir={temp}", "--include-dashboard=false")
        address = f"127.0.0.1:{port}"
        ray_start(f"--address={address}", "--num-cpus=1", '--resources={"small_node": 1}')
        ray_start(f"--address={address}", "--num-cpus=1", "--memory=2000000000", '--resources={"big_node": 1}')
        yield address, env
    finally:
        for _ in range(3):  # daemons may still be forking workers: sweep until none is left
            for pid in _sessions_processes(sessions):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.5)
        assert not [
            p for p in _sessions_processes(sessions) if Path(f"/proc/{p}/status").read_text().find("State:\tZ") < 0
        ], "Ray processes survived teardown"


def test_the_smoke_study_runs_across_a_three_node_cluster(tmp_path, data_dir, cluster):
    import mlflow

    address, env = cluster
    smoke = (REPO_ROOT / "studies" / "smoke.yaml").read_text()
    smoke = smoke.replace("max_concurrent: 1", "max_concurrent: 2")  # two trials at once: one per worker
    (tmp_path / "studies").mkdir()
    (tmp_path / "search_spaces").mkdir()
    (tmp_path / "studies" / "smoke.yaml").write_text(smoke)
    (tmp_path / "search_spaces" / "smoke.yaml").write_text((REPO_ROOT / "search_spaces" / "smoke.yaml").read_text())

    result = run_hpo(
        ["run", "studies/smoke.yaml", "--address", address],
        tmp_path,
        data_dir,
        env={k: env[k] for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN")},
    )
    assert result.returncode == 0, result.stderr

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("smoke").experiment_id])
    trials = [r for r in runs if r.data.tags.get("hpo.kind") == "trial"]
    assert len(trials) == 4 and all(r.data.metrics.get("val_accuracy") for r in trials)
    nodes = {r.data.tags["hpo.node"] for r in trials}
    assert len(nodes) == 2, nodes  # both workers ran trials; the CPU-less head ran none
    final = [r for r in runs if r.data.tags.get("hpo.kind") == "final"]
    assert len(final) == 1 and final[0].data.metrics["test_accuracy"] > 0.5
