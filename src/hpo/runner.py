"""``hpo run``: load the data once, run each backend the study names, let each summarise what it found,
then compare them. Heavy imports happen here, not at CLI start-up. Nothing here knows a backend by name:
their declarations (:mod:`hpo.config.backends`) give the run's stages, their results print themselves."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TypeVar

from rich.console import Console
from rich.table import Table

from hpo.backends import backend_class
from hpo.backends.base import BackendResult, BackendSummary, RunContext
from hpo.config.backends import stage_sequence
from hpo.engine.driver_log import DriverLog
from hpo.engine.run_dir import StudyDir
from hpo.errors import HpoError, Interrupted, RunRefused
from hpo.study import Study

__all__ = ["StudyOutcome", "run_study"]

MIN_DEADLINE_LEAD = 60.0  # seconds: a deadline closer than this leaves no room for a trial and the final stage
R = TypeVar("R")


@dataclass(kw_only=True)
class StudyOutcome:
    """What ``hpo run`` produced: each backend's result, by the name the study gives the backend."""

    results: dict[str, BackendResult]
    seconds: float
    tracking_uri: str

    def result(self, kind: type[R]) -> R:
        """The result of type ``kind``: a backend's own result class, with its own fields."""
        for result in self.results.values():
            if isinstance(result, kind):
                return result
        raise LookupError(f"no {kind.__name__} among this run's results ({', '.join(self.results)})")

    def summaries(self) -> list[BackendSummary]:
        return [result.summary() for result in self.results.values()]


def _check_database_drivers(*uris: str | None) -> None:
    """A PostgreSQL URI needs the driver: say how to get it before anything starts."""
    import importlib.util

    if any(u and u.startswith("postgresql") for u in uris) and importlib.util.find_spec("psycopg") is None:
        raise HpoError('a postgresql:// URI needs the PostgreSQL driver: pip install -e ".[postgres]" (psycopg)')


class _Stop:
    """SIGINT and SIGTERM alike stop the run the way Ctrl-C always did: a KeyboardInterrupt in the main thread,
    which every stage answers (trials ended, the journal kept, Ray shut down), turned into
    :class:`hpo.errors.Interrupted` once that is done. A second signal ends the process at once (what Ray
    leaves, its watchdog ends: :mod:`hpo.engine.ray_procs`)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, first_stage: str) -> None:
        self.signum: int | None = None
        self.run_dir: StudyDir | None = None  # once open, its stage is where the run was interrupted
        self._first_stage = first_stage
        self._previous: dict[int, object] = {}

    def __enter__(self) -> _Stop:
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.getsignal(s) for s in self.SIGNALS}
            self.install()
        return self

    def install(self) -> None:
        """(Again, after ``ray.init``: it sets a SIGTERM handler of its own, which exits mid-cleanup.)"""
        if self._previous:
            for s in self.SIGNALS:
                signal.signal(s, self._handle)

    def __exit__(self, *_exc: object) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)  # type: ignore[arg-type]  # what getsignal returned

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        if self.signum is not None:
            os.write(2, f"{signal.Signals(signum).name} again: stopping at once\n".encode())
            os._exit(128 + signum)
        self.signum = signum
        raise KeyboardInterrupt

    def interrupted(self) -> Interrupted:
        stage = self.run_dir.state.stage if self.run_dir is not None else self._first_stage
        return Interrupted(stage, self.signum or signal.SIGINT)


def _in_background(work: Callable[[], R]) -> Future[R]:
    """``work()`` in a daemon thread. Not a pool's: the interpreter joins those at exit, so a signal during
    Ray's start would wait for the data to load before the process could end."""
    future: Future[R] = Future()

    def run() -> None:
        try:
            future.set_result(work())
        except BaseException as exc:  # handed to whoever waits for the result
            future.set_exception(exc)

    threading.Thread(target=run, name="load-data", daemon=True).start()
    return future


def run_study(
    study: Study,
    *,
    address: str | None = None,
    tracking_uri: str | None = None,
    console: Console | None = None,
    live: bool = True,
    points: list[dict] | None = None,
    fresh: bool = False,
    warm_start: str | None = None,
) -> StudyOutcome:
    """Run ``study``: each backend it names, in turn, through the stages the backend declares
    (:mod:`hpo.config.backends`). If an earlier run of the same study was killed, continue it
    (``fresh=True`` starts over instead): see :mod:`hpo.engine.run_dir`.
    ``warm_start`` names a study whose earlier runs' best configurations to evaluate first (overrides
    the study's ``warm_start.from``).

    SIGINT or SIGTERM at any point ends the run resumable and raises :class:`hpo.errors.Interrupted`."""
    with _Stop(stage_sequence(study.config.backends)[0]) as stop:
        try:
            return _run_study(
                study,
                stop,
                address=address,
                tracking_uri=tracking_uri,
                console=console,
                live=live,
                points=points,
                fresh=fresh,
                warm_start=warm_start,
            )
        except KeyboardInterrupt:  # where no stage turned it into Interrupted (the run's start, its summary)
            raise stop.interrupted() from None


def _run_study(
    study: Study,
    stop: _Stop,
    *,
    address: str | None,
    tracking_uri: str | None,
    console: Console | None,
    live: bool,
    points: list[dict] | None,
    fresh: bool,
    warm_start: str | None,
) -> StudyOutcome:
    import ray

    from hpo.config.study import parse_deadline
    from hpo.data import load_data
    from hpo.engine.ray_procs import child_pids, watch_ray
    from hpo.engine.ray_tune import start_ray
    from hpo.security import redact
    from hpo.tracking import MlflowTracker, default_tracking_uri

    console = console or Console(stderr=True)
    c = study.config
    _check_database_drivers(tracking_uri or c.tracking.uri, c.tracking.optuna_storage)
    start = time.time()
    until = parse_deadline(c.budget.until).timestamp() if c.budget.until else None
    if (
        until is not None
        and until - start < MIN_DEADLINE_LEAD
        and (fresh or StudyDir.latest_unfinished(Path(c.output_dir) / c.name) is None)
    ):
        raise RunRefused(
            f"budget.until {c.budget.until!r} is {until - start:.0f} s away: too close for even one "
            "trial and the final stage; move it later"
        )
    for earlier in StudyDir.all(Path(c.output_dir) / c.name):  # what a killed driver's Ray left running
        if ended := earlier.end_leftovers():
            console.print(f"[yellow]{ended}[/]", highlight=False)
    # the run's stages, from the declarations of the backends it names, go into its state file
    stages = stage_sequence(c.backends)
    run_dir, resumed = StudyDir.open(Path(c.output_dir), c.name, study.fingerprint(), stages=stages, fresh=fresh)
    stop.run_dir = run_dir
    driver_log = DriverLog.start(console, run_dir.path)  # the console, also in the run folder's driver.log
    run_dir.shared_storage = c.tracking.optuna_storage
    deadline = run_dir.state.deadline or until  # fixed when the run began: "06:00" means that night's 06:00
    if deadline is not None and run_dir.state.deadline is None:
        run_dir.advance(run_dir.state.stage, deadline=deadline)
    if resumed:
        console.print(
            f"[bold]resuming[/] {run_dir.path}: attempt {run_dir.state.attempts}, continuing "
            f"from the {run_dir.state.stage} stage (`hpo run --fresh` starts over)"
        )
    if deadline is not None:
        console.print(
            f"[bold]deadline[/] {time.strftime('%a %H:%M', time.localtime(deadline))} "
            f"(in {(deadline - start) / 60:.1f} min): the search ends in time for the final stage"
        )

    uri = default_tracking_uri(tracking_uri or c.tracking.uri)

    def load_then_track():
        # Both overlap Ray's start-up (seconds each on 2 cores). The tracker (MLflow's store: created or
        # migrated on first use) only once the data loaded: a study whose data cannot be read tracks nothing.
        begin = time.time()
        data = load_data(c.dataset, c.seed)
        seconds = time.time() - begin
        return data, seconds, MlflowTracker(uri, c.tracking.experiment or c.name)

    started_ray = not ray.is_initialized()
    watch = None
    loading = _in_background(load_then_track)  # a daemon thread: an interrupted start does not wait for it
    try:
        ray_start = time.time()
        before = child_pids()
        start_ray(address)
        stop.install()
        if started_ray:  # the processes Ray added below this one: none outlives this process for long
            watch = watch_ray(run_dir.path, child_pids() - before)
        ray_seconds = time.time() - ray_start
        with console.status("loading data"):
            data, data_seconds, tracker = loading.result()
    except BaseException as exc:
        driver_log.finish(error=exc)
        if started_ray:
            ray.shutdown()
        if watch is not None:
            watch.close()
        if not resumed:  # nothing happened yet: leave no run behind to "resume"
            run_dir.discard()
        else:
            run_dir.unlock()
        if isinstance(exc, SystemExit) and exc.code == signal.SIGTERM:  # Ray's handler, within ray.init
            stop.signum = stop.signum or signal.SIGTERM
        elif not isinstance(exc, KeyboardInterrupt):
            raise
        raise stop.interrupted() from None
    console.print(f"[bold]data[/] {c.dataset.name}: {data.summary()} (from {data.origin})")

    try:
        console.print(f"[bold]tracking[/] {redact(uri)}  experiment {c.tracking.experiment or c.name}")
        warm_from = warm_start or (c.warm_start.source if c.warm_start else None)
        run = RunContext(
            study=study,
            data=data,
            tracker=tracker,
            run_dir=run_dir,
            resumed=resumed,
            console=console,
            tracking_uri=redact(uri),
            live=live,
            points=points,
            warm_from=warm_from,
            deadline=deadline,
            start=start,
            data_seconds=data_seconds,
            ray_seconds=ray_seconds,
        )
        results = {name: backend_class(name)(run).run() for name in c.backends}
        outcome = StudyOutcome(results=results, seconds=time.time() - start, tracking_uri=redact(uri))
    except KeyboardInterrupt:  # SIGINT or SIGTERM: the stages have ended their work; Ray ends below
        raise stop.interrupted() from None
    finally:
        if (error := sys.exc_info()[1]) is not None:  # failed or interrupted: the log so far, on the study run
            driver_log.finish(tracker, error)
        if started_ray:
            ray.shutdown()
        if watch is not None:
            watch.close()
        run_dir.unlock()
    for result in outcome.results.values():  # each backend says what it found
        result.print_summary(console, run)
    if len(outcome.results) > 1:
        print_comparison(console, study, outcome.summaries())
    driver_log.finish(tracker)
    return outcome


def print_comparison(console: Console, study: Study, rows: list[BackendSummary]) -> None:
    metric = study.config.objective.metric
    table = Table(title=f"study {study.name}: backends side by side", title_justify="left")
    for col in ("backend", "test accuracy", f"best {metric}", "trials", "epochs", "search", "wall time"):
        table.add_column(col, justify="left" if col == "backend" else "right")
    for r in rows:
        table.add_row(
            r.backend,
            "-" if r.test_accuracy is None else f"{r.test_accuracy:.4f}",
            "-" if r.best_value is None else f"{r.best_value:.4f}",
            str(r.trials),
            str(r.trial_epochs),
            f"{r.search_seconds / 60:.1f} min",
            f"{r.wall_seconds / 60:.1f} min",
        )
    console.print(table)
