"""`hpo stop`'s logic (hpo.fleet.stop_study) against a real process holding a run's lock, without Ray: the
signal reaches the pid the lock names, the wait ends with the process, and a study nobody runs, or a driver
that ignores the signal, is refused with a message. (tests/integration/test_fleet.py stops a real run.)"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from hpo.engine.run_dir import StudyDir
from hpo.errors import HpoError
from hpo.fleet import NotRunning, stop_study
from hpo.names import Stage
from hpo.study import load_study

# A stand-in driver: opens the study's run (taking its lock, writing its pid), then waits for SIGTERM.
DRIVER = """
import signal, sys, time
from pathlib import Path
from hpo.engine.run_dir import StudyDir

run, _ = StudyDir.open(Path(sys.argv[1]), "tiny", "fp", stages=["search", "recheck", "done"])
if sys.argv[2] == "ignore":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
else:
    def interrupted(signum, frame):
        run.advance("recheck")  # whatever it was doing ends cleanly
        sys.exit(128 + signum)
    signal.signal(signal.SIGTERM, interrupted)
print("ready", flush=True)
time.sleep(60)
"""


@pytest.fixture
def study(tmp_path):
    (tmp_path / "tiny.yaml").write_text(
        textwrap.dedent(f"""\
            name: tiny
            output_dir: {tmp_path / "runs"}
            dataset: {{name: fashion_mnist}}
            search_space: {{model: {{name: cnn, depth: 1, width: 8}}, optimizer: {{name: sgd, lr: 0.1}}}}
            budget: {{trials: 1, max_epochs: 1}}
            """)
    )
    return load_study(tmp_path / "tiny.yaml")


def _driver(tmp_path: Path, mode: str) -> subprocess.Popen:
    process = subprocess.Popen(
        [sys.executable, "-c", DRIVER, str(tmp_path / "runs"), mode], stdout=subprocess.PIPE, text=True
    )
    assert process.stdout is not None and process.stdout.readline() == "ready\n"
    return process


def test_stop_signals_the_driver_and_waits_for_it(study, tmp_path):
    driver = _driver(tmp_path, "handle")
    try:
        signalled = []
        (stopped,) = stop_study(study, timeout=30, on_signal=lambda run, pid: signalled.append(pid))
        assert signalled == [driver.pid] and stopped.pid == driver.pid
        assert driver.wait(timeout=5) == 128 + signal.SIGTERM
        assert stopped.stage == Stage.RECHECK and not stopped.finished  # as the driver left its run
        assert stopped.folder.parent == tmp_path / "runs" / "tiny" and stopped.seconds < 30
        (run,) = StudyDir.all(tmp_path / "runs" / "tiny")
        assert not run.is_locked()
        with pytest.raises(NotRunning, match="study 'tiny' is not running"):
            stop_study(study, timeout=5)
    finally:
        driver.kill()
        driver.wait()


def test_a_driver_that_does_not_end_is_reported_not_waited_for_forever(study, tmp_path):
    driver = _driver(tmp_path, "ignore")
    try:
        start = time.monotonic()
        with pytest.raises(HpoError, match=rf"\(pid {driver.pid}\) is still running 1 s after SIGTERM; `kill -KILL"):
            stop_study(study, timeout=1)
        assert time.monotonic() - start < 10 and driver.poll() is None
    finally:
        driver.kill()
        driver.wait()


def test_nothing_to_stop_before_a_study_ran(study):
    with pytest.raises(NotRunning, match="study 'tiny' is not running"):
        stop_study(study)
