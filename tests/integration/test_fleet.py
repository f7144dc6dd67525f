"""`hpo stop STUDY` from another shell: the study's driver gets SIGTERM, ends within seconds, and the run
stays resumable. (`hpo list` and `hpo compare` are tested on the stores test_champion.py's runs leave.)"""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hpo.engine.run_dir import StudyDir, describe
from hpo.names import Stage, TrialStatus
from hpo.testing import hpo_env, run_hpo, wait_ended

pytestmark = pytest.mark.integration

# One trial whose first epoch is long (all of Fashion-MNIST's 48,000 training images through a 64-wide CNN
# on one thread: minutes on a CPU): the stop always lands mid-epoch.
STUDY = """\
name: long
seed: 0
dataset: {name: fashion_mnist, validation_split: 0.2}
search_space:
  model: {name: cnn, depth: 2, width: 64}
  optimizer: {name: sgd, lr: 0.05}
  batch_size: 64
budget: {trials: 1, max_epochs: 2}
scheduler: {type: none}
resources: {cpus_per_trial: 1, max_concurrent: 1}
final: {enabled: false}
"""


def _running_trial(root: Path) -> bool:
    for journal in root.glob("*/trials.json"):
        with contextlib.suppress(ValueError, OSError):  # being rewritten: look again
            if any(t["status"] == TrialStatus.RUNNING for t in json.loads(journal.read_text())["trials"]):
                return True
    return False


def test_hpo_stop_ends_a_running_study_and_leaves_it_resumable(tmp_path, data_dir):
    import psutil

    (tmp_path / "long.yaml").write_text(STUDY)
    log = (tmp_path / "run.log").open("w")
    driver = subprocess.Popen(
        [sys.executable, "-m", "hpo.cli", "run", "long.yaml"],
        cwd=tmp_path,
        env=hpo_env(data_dir),
        stdout=log,
        stderr=log,
    )
    started: list[psutil.Process] = []
    try:
        deadline = time.monotonic() + 180
        while not _running_trial(tmp_path / "runs" / "long"):
            assert driver.poll() is None, (tmp_path / "run.log").read_text()
            assert time.monotonic() < deadline, "the trial never started: " + (tmp_path / "run.log").read_text()
            time.sleep(0.5)
        started = psutil.Process(driver.pid).children(recursive=True)  # Ray's, to end if the test fails

        result = run_hpo(["stop", "long.yaml"], tmp_path, data_dir, timeout=120)
        assert result.returncode == 0, result.stdout + result.stderr
        found = re.search(r"stopped study long \(pid (\d+)\) in stage search after ([\d.]+) s; ", result.stdout)
        assert found, result.stdout + result.stderr
        assert int(found[1]) == driver.pid
        assert "`hpo run long.yaml` continues it" in result.stdout
        assert float(found[2]) <= 10.0, result.stdout  # from the signal to the driver's end
        assert driver.poll() is not None  # `hpo stop` returned once the driver had ended
        output = (tmp_path / "run.log").read_text()
        assert driver.returncode == 143, output  # 128 + SIGTERM, as a shell reports it
        assert "interrupted in search: hpo run continues it" in output
        assert not wait_ended(started, 30), "the stopped run's Ray outlived it"

        (run,) = StudyDir.all(tmp_path / "runs" / "long")
        assert run.state.stage == Stage.SEARCH and not run.is_locked()
        assert describe(run)["state"].startswith("interrupted in search"), describe(run)
    finally:
        log.close()
        for process in [psutil.Process(driver.pid), *started] if driver.poll() is None else started:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()
        driver.wait(timeout=30)
