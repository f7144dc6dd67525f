"""Verbs over studies rather than over one run: ``hpo stop`` (end a running study gracefully from another
shell) and ``hpo list`` (the studies an MLflow store holds). ``hpo compare`` lives in
:mod:`hpo.report.compare`. The CLI only parses and prints what these return."""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from hpo.engine.run_dir import StudyDir
from hpo.errors import HpoError
from hpo.names import Role, RunKind, Stage, Tag
from hpo.report.compare import latest_final_run
from hpo.security import redact
from hpo.study import Study

__all__ = ["NotRunning", "Stopped", "StudyListing", "list_studies", "open_store", "stop_study"]


class NotRunning(HpoError):
    """``hpo stop``: no process is running the study now."""


@dataclass(frozen=True)
class Stopped:
    """A run ``hpo stop`` ended: its driver, its folder and the stage it was in."""

    study: str
    pid: int
    folder: Path
    stage: str  # the stage the run had reached when it ended (hpo.names.Stage)
    seconds: float  # from the signal to the driver's end

    @property
    def finished(self) -> bool:
        """It had finished on its own before the signal took effect."""
        return self.stage == Stage.DONE


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs: a zombie (ended, not yet reaped by its parent) does not."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it exists
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    except OSError:  # no /proc (macOS): kill's answer stands
        return True
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def _driver_pid(run: StudyDir) -> int:
    text = (run.path / "lock").read_text().strip()
    try:
        return int(text)
    except ValueError:
        raise HpoError(f"{run.path / 'lock'} is held but names no process ({text!r}); nothing was stopped") from None


def stop_study(
    study: Study, *, timeout: float = 60.0, on_signal: Callable[[StudyDir, int], None] | None = None
) -> list[Stopped]:
    """End each running run of ``study`` as Ctrl-C would: SIGTERM to its driver (the process holding the
    run's lock, whose pid the lock file names), then wait up to ``timeout`` seconds for the driver to end.
    The run stays resumable: ``hpo run`` continues it. ``on_signal(run, pid)`` is called once the signal
    is sent. Raises :class:`NotRunning` when no process runs the study, :class:`HpoError` when a driver is
    still running after ``timeout``."""
    c = study.config
    root = Path(c.output_dir) / c.name
    running = [r for r in StudyDir.all(root) if r.is_locked()]
    if not running:
        raise NotRunning(f"study '{c.name}' is not running (no run under {root} is held by a process)")
    targets = []
    for run in running:
        pid = _driver_pid(run)
        if pid == os.getpid() or not _alive(pid):
            raise NotRunning(
                f"study '{c.name}' is not running: {run.path / 'lock'} is held, but not by pid {pid} it names "
                "(that process is gone); nothing was stopped"
            )
        targets.append((run, pid))
    stopped = []
    for run, pid in targets:
        sent = time.monotonic()
        os.kill(pid, signal.SIGTERM)
        if on_signal is not None:
            on_signal(run, pid)
        while _alive(pid) or run.is_locked():
            if time.monotonic() - sent > timeout:
                raise HpoError(
                    f"study '{c.name}' (pid {pid}) is still running {timeout:.0f} s after SIGTERM; `kill -KILL "
                    f"{pid}` ends it at once (the run stays resumable: `hpo run` continues it)"
                )
            time.sleep(0.1)
        stage = StudyDir.load(run.path).state.stage
        stopped.append(Stopped(c.name, pid, run.path, stage, time.monotonic() - sent))
    return stopped


# ---------------------------------------------------------------------------------------------- hpo list
@dataclass(frozen=True, kw_only=True)
class StudyListing:
    """One study in a store, as its latest run (search or baseline) left it."""

    study: str
    experiment: str
    runs: int  # its runs (search and baseline parent runs) in the store
    last_run: str  # the latest one's MLflow run id
    backend: str
    started: float  # epoch seconds
    status: str  # MLflow's status of that run (RUNNING, FINISHED, FAILED, KILLED)
    objective: str | None  # the metric it optimised (val_accuracy)
    best: float | None  # the best value of it any trial reached
    final_run: str | None
    test_accuracy: float | None  # of its final run, if it has one
    model: str | None  # the registered model the final run went to
    version: str | None  # the version it registered
    champion: str | None  # the model's champion version now (maybe another run's, or another study's)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def open_store(uri: str):
    """An ``MlflowClient`` on an existing store; a SQLite path that is not there is an error (MLflow would
    create an empty store)."""
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        raise HpoError(f"no MLflow store at {redact(uri)}: has a study run here? (--tracking-uri names another)")
    from mlflow.tracking import MlflowClient

    logging.getLogger("mlflow").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    return MlflowClient(tracking_uri=uri)


def list_studies(uri: str) -> list[StudyListing]:
    """Every study whose runs ``uri``'s store holds, by name, with its latest run."""
    from mlflow.exceptions import MlflowException

    client = open_store(uri)
    experiments = {e.experiment_id: e.name for e in client.search_experiments()}
    if not experiments:
        return []
    parents = [
        run
        for kind in (RunKind.STUDY, RunKind.BASELINE)
        for run in client.search_runs(
            list(experiments),
            f"tags.`{Tag.KIND}` = '{kind}'",
            order_by=["attributes.start_time DESC"],
            max_results=5000,
        )
    ]
    by_study: dict[str, list] = {}
    for run in sorted(parents, key=lambda r: -r.info.start_time):
        by_study.setdefault(run.data.tags.get(Tag.STUDY) or experiments[run.info.experiment_id], []).append(run)
    listings = []
    for name, runs in sorted(by_study.items()):
        last = runs[0]
        objective = last.data.params.get("objective.metric")
        final = latest_final_run(client, last)
        model = version = champion = None
        if final is not None:
            versions = client.search_model_versions(f"run_id = '{final.info.run_id}'")
            if versions:
                model, version = versions[0].name, str(versions[0].version)
                try:
                    champion = str(client.get_model_version_by_alias(model, Role.CHAMPION).version)
                except MlflowException:  # no version holds the alias
                    champion = None
        listings.append(
            StudyListing(
                study=name,
                experiment=experiments[last.info.experiment_id],
                runs=len(runs),
                last_run=last.info.run_id,
                backend=last.data.tags.get(Tag.BACKEND, "search"),
                started=last.info.start_time / 1000,
                status=last.info.status,
                objective=objective,
                best=last.data.metrics.get(f"best_{objective}") if objective else None,
                final_run=final.info.run_id if final else None,
                test_accuracy=(final or last).data.metrics.get("test_accuracy"),  # a baseline logs it on its run
                model=model,
                version=version,
                champion=champion,
            )
        )
    return listings
