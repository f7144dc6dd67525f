"""What stops a run and what outlives it, without Ray: the watchdog ends the processes it watched when its
driver is SIGKILLed, a dead run's record ends exactly the processes it names (pid and start time), and a
second signal ends the driver at once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from hpo.engine.ray_procs import RECORD, Proc, end_leftovers, proc, this_machine
from hpo.engine.run_dir import StudyDir

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads Linux's /proc")


def _sleeper() -> subprocess.Popen:
    return subprocess.Popen(["sleep", "300"])


def _wait_dead(p: Proc, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while p.alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    return not p.alive()


def _record(folder: Path, driver: Proc, procs: list[Proc], machine: str | None = None) -> None:
    data = {
        "machine": machine or this_machine(),
        "driver": [driver.pid, driver.start, ""],
        "watchdog": None,
        "processes": [[p.pid, p.start, p.name] for p in procs],
    }
    (folder / RECORD).write_text(json.dumps(data))


def test_a_dead_runs_record_ends_exactly_the_processes_it_names(tmp_path):
    recorded, other, reused = _sleeper(), _sleeper(), _sleeper()
    try:
        gone = subprocess.Popen(["true"])
        gone.wait()
        dead_driver = Proc(gone.pid, 1)  # a driver that is no more
        target, bystander, same_pid = proc(recorded.pid), proc(other.pid), proc(reused.pid)
        assert target and bystander and same_pid
        # `reused` stands for a pid the kernel gave to another process since: its start time differs
        _record(tmp_path, dead_driver, [target, Proc(same_pid.pid, same_pid.start - 1, "ray::IDLE")])
        ended = end_leftovers(tmp_path)
        assert ended == [target]
        assert _wait_dead(target)
        assert bystander.alive() and same_pid.alive()
        assert not (tmp_path / RECORD).exists()
        assert end_leftovers(tmp_path) == []  # said once
    finally:
        for p in (recorded, other, reused):
            p.kill()
            p.wait()


def test_another_machines_record_is_left_alone(tmp_path):
    """A run folder on a shared volume: the pids a driver elsewhere recorded are not this machine's."""
    ray_process = _sleeper()
    try:
        target = proc(ray_process.pid)
        assert target
        _record(tmp_path, Proc(999_999_999, 0), [target], machine="elsewhere/boot/1")
        assert end_leftovers(tmp_path) == [] and target.alive()
    finally:
        ray_process.kill()
        ray_process.wait()


def test_a_live_drivers_record_is_left_alone(tmp_path):
    ray_process = _sleeper()
    try:
        me, target = proc(os.getpid()), proc(ray_process.pid)
        assert me and target
        _record(tmp_path, me, [target])
        assert end_leftovers(tmp_path) == [] and target.alive() and (tmp_path / RECORD).exists()
    finally:
        ray_process.kill()
        ray_process.wait()


def test_status_of_a_locked_run_ends_nothing(tmp_path):
    run, _ = StudyDir.open(tmp_path, "s", "fp", stages=["search", "done"])
    ray_process = _sleeper()
    try:
        target = proc(ray_process.pid)
        assert target
        _record(run.path, Proc(999_999_999, 0), [target])  # the record's driver looks dead, but the run is locked
        assert run.end_leftovers() is None and target.alive()
        run.unlock()
        line = run.end_leftovers()
        assert line is not None and f"{target.pid} sleep" in line and "1 leftover Ray process " in line
        assert _wait_dead(target)
    finally:
        ray_process.kill()
        ray_process.wait()


DRIVER = """
import subprocess, sys, time
from pathlib import Path
from hpo.engine.ray_procs import child_pids, watch_ray
before = child_pids()
root = subprocess.Popen(["sh", "-c", "sleep 300 & sleep 300; wait"])  # a Ray service with a child of its own
time.sleep(0.3)
watch = watch_ray(Path(sys.argv[1]), child_pids() - before)
print(root.pid, flush=True)
time.sleep(300)
"""


def test_the_watchdog_ends_what_it_watched_when_the_driver_is_killed(tmp_path):
    driver = subprocess.Popen([sys.executable, "-c", textwrap.dedent(DRIVER), str(tmp_path)], stdout=subprocess.PIPE)
    try:
        root = int(driver.stdout.readline())
        deadline = time.monotonic() + 20
        while not (tmp_path / RECORD).exists():  # the watchdog's first look
            assert time.monotonic() < deadline, "the watchdog wrote no record"
            time.sleep(0.05)
        data = json.loads((tmp_path / RECORD).read_text())
        watched = [Proc(*p) for p in data["processes"]]
        assert root in {p.pid for p in watched} and len(watched) >= 3  # the shell and both sleeps
        assert data["driver"][0] == driver.pid
        driver.kill()
        driver.wait()
        for p in watched:
            assert _wait_dead(p), f"{p} outlived its driver"
        assert _wait_dead(Proc(*data["watchdog"]))
        assert not (tmp_path / RECORD).exists()
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()


SECOND_SIGNAL = """
import os, signal, time
from hpo.runner import _Stop
with _Stop("search") as stop:
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(30)
    except KeyboardInterrupt:
        print("first:", stop.interrupted(), stop.interrupted().exit_code, flush=True)
        os.kill(os.getpid(), signal.SIGINT)  # while cleaning up: at once
        time.sleep(30)
        print("not reached")
"""


def test_a_second_signal_ends_the_driver_at_once():
    result = subprocess.run(
        [sys.executable, "-c", SECOND_SIGNAL], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.stdout == "first: interrupted in search: hpo run continues it 143\n", result.stdout + result.stderr
    assert result.returncode == 130 and result.stderr.strip() == "SIGINT again: stopping at once"
