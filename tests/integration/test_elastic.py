"""Concurrency follows the cluster (hpo.engine.concurrency): `hpo run --address` starts on a loopback Ray
cluster whose only node (the head) has one CPU, a worker node with two CPUs joins once the search has
started, and trials then run side by side. With the limit fixed at the start (the cluster as it was then),
every trial ran alone. Trials last ~10 s, longer than a new node's first trial process takes to start (else
the head's idle process, which Tune reuses, takes every next trial before the new node's is ready). The test
ends exactly the processes its `ray start` commands created."""

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
from test_ray_cluster import RAY, _sessions_processes

from hpo.testing import REPO_ROOT, hpo_env

pytestmark = pytest.mark.integration

STUDY = """\
name: elastic
seed: 0
dataset: {name: fashion_mnist, validation_split: 0.2, subset: {train: 1500, test: 300}}
search_space: ../search_spaces/smoke.yaml
objective: {metric: val_accuracy, mode: max}
budget: {trials: 3, max_epochs: 8}
scheduler: {type: none}
resources: {cpus_per_trial: 1}
final: {enabled: false}
"""


def _most_at_once(spans: list[tuple[float, float]]) -> int:
    """The most intervals open at one instant."""
    return max(sum(s <= start < e for s, e in spans) for start, _ in spans)


def test_a_node_that_joins_during_the_search_raises_concurrency(tmp_path, data_dir):
    temp = Path(tempfile.mkdtemp(prefix="hpo-ray-"))  # short: Ray's socket paths are length-limited
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    address = f"127.0.0.1:{port}"
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16)}
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", **auth}
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
        sessions.add(proc.pid)  # a new session's id is its leader's pid: teardown finds its daemons by it
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0, out

    (tmp_path / "studies").mkdir()
    (tmp_path / "search_spaces").mkdir()
    (tmp_path / "studies" / "elastic.yaml").write_text(STUDY)
    (tmp_path / "search_spaces" / "smoke.yaml").write_text((REPO_ROOT / "search_spaces" / "smoke.yaml").read_text())
    driver = None
    try:
        ray_start("--head", f"--port={port}", "--num-cpus=1", f"--temp-dir={temp}", "--include-dashboard=false")
        driver = subprocess.Popen(
            [sys.executable, "-m", "hpo.cli", "run", "studies/elastic.yaml", "--address", address],
            cwd=tmp_path,
            env=hpo_env(data_dir, auth),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        give_up = time.monotonic() + 90
        while not any(tmp_path.glob("runs/elastic/*/ray/search-*")):  # Tune's folder: the search has started
            assert driver.poll() is None, driver.communicate()[0]
            assert time.monotonic() < give_up, "the search did not start within 90 s"
            time.sleep(0.2)
        joined = time.time()
        ray_start(f"--address={address}", "--num-cpus=2")
        out, _ = driver.communicate(timeout=180)
        assert driver.returncode == 0, out
    finally:
        if driver is not None and driver.poll() is None:
            driver.kill()
        for _ in range(3):  # daemons may still be forking workers: sweep until none is left
            for pid in _sessions_processes(sessions):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.5)

    run = next(tmp_path.glob("runs/elastic/*"))
    trials = json.loads((run / "trials.json").read_text())["trials"]
    stats = json.loads((run / "search_stats.json").read_text())
    assert len(trials) == 3 and all(t["status"] == "completed" for t in trials), [t["status"] for t in trials]
    # One slot at the start (the head's CPU), three once the worker's two CPUs joined.
    assert stats["slots_history"][0][1] == 1, stats["slots_history"]
    assert stats["slots"] == 3 and stats["slots_history"][-1][0] >= joined, stats["slots_history"]
    spans = [(t["started"], t["ended"]) for t in trials]
    rose = stats["slots_history"][1][0]
    before = [s for s in spans if s[0] < rose]
    assert not before or _most_at_once(before) == 1  # trials started before the recount ran one at a time
    assert _most_at_once(spans) >= 2, spans  # after it: side by side
    assert len({t["node"] for t in trials}) == 2  # and on both nodes
