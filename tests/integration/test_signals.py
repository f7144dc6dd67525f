"""SIGINT and SIGTERM at any point of ``hpo run``: mid-epoch in the search, and in the final retrain. Each
stops the run in <= 10 s with one line and exit 130 or 143, no stack dump, the run resumable, and nothing
of its Ray left. The driver starts as a terminal starts it: SIGINT at its default disposition (a child
inherits an ignored SIGINT, and Python then installs no KeyboardInterrupt handler), in a session of its
own, so that every process it started, Ray's included, is found by its session id. Each test interrupts
one run, then interrupts its resumption with the other signal."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from hpo.testing import hpo_env, wait_ended

pytestmark = pytest.mark.integration

# 24,000 Fashion-MNIST training images, a wide CNN, batch 16: one epoch takes ~2 min on a 2-core Zen 3
# (measured: 8.3 s per 1,600 images, one thread, epochs 2-3 of a run), so the signal lands mid-epoch.
LONG_EPOCH = """\
name: signals_search
seed: 1
dataset: {{name: fashion_mnist, validation_split: 0.2, subset: {{train: 30000, test: 200}}, data_dir: {data}}}
search_space:
  model: {{name: cnn, depth: 4, width: 64}}
  optimizer: {{name: sgd, lr: 0.05}}
  batch_size: 16
objective: {{metric: val_accuracy}}
budget: {{trials: 1, max_epochs: 1}}
resources: {{cpus_per_trial: 1, max_concurrent: 1}}
final: {{recheck: {{top_k: 0}}, export: []}}
"""
# One tiny trial, then a final retrain of 1,000 epochs: the signal lands in it, after its first epoch.
LONG_FINAL = """\
name: signals_final
seed: 1
dataset: {{name: fashion_mnist, validation_split: 0.2, subset: {{train: 600, test: 200}}, data_dir: {data}}}
search_space:
  model: {{name: cnn, depth: 1, width: 8}}
  optimizer: {{name: sgd, lr: 0.05}}
  batch_size: 64
objective: {{metric: val_accuracy}}
budget: {{trials: 1, max_epochs: 1}}
resources: {{cpus_per_trial: 1, max_concurrent: 1}}
final: {{epochs: 1000, recheck: {{top_k: 0}}, export: []}}
"""
STACK_DUMP = ("Traceback", "*** SIGTERM received", "PC: @", "*** SIGINT received")


def _terminal_signals() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _session(sid: int) -> list[psutil.Process]:
    """The processes of session ``sid`` (the driver's: every process it started stays in it)."""
    found = []
    for p in psutil.process_iter():
        try:
            if os.getsid(p.pid) == sid and p.status() != psutil.STATUS_ZOMBIE:
                found.append(p)
        except (OSError, psutil.Error):
            pass
    return found


def _run_dir(work: Path, study: str) -> Path | None:
    found = sorted((work / "runs" / study).glob("*/state.json"))
    return found[-1].parent if found else None


def _state(work: Path, study: str) -> dict:
    run_dir = _run_dir(work, study)
    return json.loads((run_dir / "state.json").read_text()) if run_dir else {}


def _trials(work: Path, study: str) -> list[dict]:
    run_dir = _run_dir(work, study)
    if run_dir is None or not (run_dir / "trials.json").is_file():
        return []
    return json.loads((run_dir / "trials.json").read_text())["trials"]


def _interrupt(work: Path, data_dir: Path, signum: int, ready: Callable[[int, str], bool], stage: str) -> str:
    """Start ``hpo run``, send ``signum`` once ``ready(driver pid, its output so far)`` holds, check how it
    ended; return its output."""
    log = work / f"run-{signum}.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "hpo.cli", "run", "study.yaml"],
            cwd=work,
            env=hpo_env(data_dir),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_terminal_signals,
        )
    try:
        deadline = time.monotonic() + 240
        while not ready(proc.pid, log.read_text()):
            assert proc.poll() is None, f"the run ended (rc {proc.returncode}) before the signal:\n{log.read_text()}"
            assert time.monotonic() < deadline, f"the signal's moment never came:\n{log.read_text()}"
            time.sleep(0.2)
        family = _session(proc.pid)
        assert len(family) > 5, [p.name() for p in family]  # Ray's processes are there to end
        sent = time.monotonic()
        if signum == signal.SIGINT:  # Ctrl-C: a terminal signals the whole foreground process group
            os.killpg(proc.pid, signum)
        else:  # a scheduler's or `hpo stop`'s SIGTERM: the driver alone
            os.kill(proc.pid, signum)
        rc = proc.wait(timeout=60)
        took = time.monotonic() - sent
        output = log.read_text()
        assert rc == 128 + signum, output
        assert took <= 10, f"{took:.1f} s to stop after {signal.Signals(signum).name}:\n{output}"
        assert output.count("interrupted") == 1 and f"interrupted in {stage}: hpo run continues it" in output, output
        assert not [line for line in output.splitlines() if line.startswith(STACK_DUMP)], output
        assert not wait_ended(family, timeout=5), "processes of the run outlived it"
        assert not _session(proc.pid), "processes of the run outlived it"
        return output
    finally:  # a failing test leaves nothing behind
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for p in _session(proc.pid):
            p.kill()


def _training(sid: int, cpu_seconds: float) -> bool:
    """A trial's worker in session ``sid`` has worked ``cpu_seconds`` (imports and set-up take a few)."""
    for p in _session(sid):
        try:
            if p.name().startswith("ray::ImplicitFunc") and sum(p.cpu_times()[:2]) >= cpu_seconds:
                return True
        except psutil.Error:
            pass
    return False


def test_signals_mid_epoch_of_a_trial(tmp_path, data_dir):
    (tmp_path / "study.yaml").write_text(LONG_EPOCH.format(data=data_dir))

    def mid_epoch(sid: int, _output: str) -> bool:
        return _training(sid, 5.0)

    _interrupt(tmp_path, data_dir, signal.SIGINT, mid_epoch, "search")
    (trial,) = _trials(tmp_path, "signals_search")
    assert trial["status"] == "running" and not trial["history"]  # cut off mid-epoch: redone on resuming
    assert _state(tmp_path, "signals_search")["stage"] == "search"

    output = _interrupt(tmp_path, data_dir, signal.SIGTERM, mid_epoch, "search")
    assert "resuming" in output
    state = _state(tmp_path, "signals_search")
    assert state["stage"] == "search" and state["attempts"] == 2
    assert not (_run_dir(tmp_path, "signals_search") / "ray_procs.json").exists()  # no leftovers recorded


def test_signals_in_the_final_retrain(tmp_path, data_dir):
    (tmp_path / "study.yaml").write_text(LONG_FINAL.format(data=data_dir))

    def retraining(_sid: int, output: str) -> bool:  # this attempt's retrain has finished an epoch
        return re.search(r"^finalize: retraining .*, epoch \d+/1000", output, re.MULTILINE) is not None

    _interrupt(tmp_path, data_dir, signal.SIGTERM, retraining, "finalize")
    output = _interrupt(tmp_path, data_dir, signal.SIGINT, retraining, "finalize")
    assert "resuming" in output
    state = _state(tmp_path, "signals_final")
    assert state["stage"] == "finalize" and state["attempts"] == 2 and state["final"] is None
    (trial,) = _trials(tmp_path, "signals_final")
    assert trial["status"] == "completed"  # the search's work is kept
