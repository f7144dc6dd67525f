"""``hpo run``: load the data once, search, finalize, summarise. Heavy imports happen here, not at CLI
start-up."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from hpo.backends import backend_class
from hpo.backends.base import BackendSummary, RunContext
from hpo.backends.search import STATUSES, SearchFailed, SearchOutcome
from hpo.engine.run_dir import StudyDir, first_stage
from hpo.errors import HpoError, RunRefused
from hpo.study import Study

__all__ = ["SearchFailed", "StudyOutcome", "run_study"]

MIN_DEADLINE_LEAD = 60.0  # seconds: a deadline closer than this leaves no room for a trial and the final stage


@dataclass
class StudyOutcome:
    """What ``hpo run`` produced: each backend's result, by name (``search``, ``autokeras``)."""

    results: dict[str, object]
    seconds: float
    tracking_uri: str

    @property
    def search(self) -> SearchOutcome | None:
        return self.results.get("search")

    # the search's fields, for callers that ran only the search
    @property
    def study_run_id(self) -> str | None:
        return self.search.run_id if self.search else None

    @property
    def records(self):
        return self.search.records if self.search else []

    @property
    def winner(self):
        return self.search.winner if self.search else None

    @property
    def final(self):
        return self.search.final if self.search else None

    @property
    def baseline(self):
        return self.results.get("autokeras")

    def summaries(self) -> list[BackendSummary]:
        return [result.summary() for result in self.results.values()]


def _check_database_drivers(*uris: str | None) -> None:
    """A PostgreSQL URI needs the driver: say how to get it before anything starts."""
    import importlib.util

    if any(u and u.startswith("postgresql") for u in uris) and importlib.util.find_spec("psycopg") is None:
        raise HpoError('a postgresql:// URI needs the PostgreSQL driver: pip install -e ".[postgres]" (psycopg)')


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
    """Run ``study`` through its stages (search -> recheck -> finalize). If an earlier run of the same
    study was killed, continue it (``fresh=True`` starts over instead): see :mod:`hpo.engine.run_dir`.
    ``warm_start`` names a study whose earlier runs' best configurations to evaluate first (overrides
    the study's ``warm_start.from``)."""
    import ray

    from hpo.config.study import parse_deadline
    from hpo.data import load_data
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
    run_dir, resumed = StudyDir.open(Path(c.output_dir), c.name, study.fingerprint(), fresh=fresh)
    if not resumed and run_dir.state.stage != first_stage(c.backends):
        run_dir.advance(first_stage(c.backends))
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
    with ThreadPoolExecutor(1) as pool:
        loading = pool.submit(load_then_track)
        try:
            ray_start = time.time()
            start_ray(address)
            ray_seconds = time.time() - ray_start
            with console.status("loading data"):
                data, data_seconds, tracker = loading.result()
        except BaseException:
            if started_ray:
                ray.shutdown()
            if not resumed:  # nothing happened yet: leave no run behind to "resume"
                run_dir.discard()
            else:
                run_dir.unlock()
            raise
    console.print(f"[bold]data[/] {c.dataset.name}: {data.summary()} (from {data.origin})")

    try:
        console.print(f"[bold]tracking[/] {redact(uri)}  experiment {c.tracking.experiment or c.name}")
        warm_from = warm_start or (c.warm_start.source if c.warm_start else None)
        run = RunContext(
            study,
            data,
            tracker,
            run_dir,
            resumed,
            console,
            live,
            points,
            warm_from,
            deadline,
            start,
            data_seconds,
            ray_seconds,
        )
        results = {}
        for name in c.backends:
            results[name] = backend_class(name)(run).run()
        outcome = StudyOutcome(results, time.time() - start, redact(uri))
    finally:
        if started_ray:
            ray.shutdown()
        run_dir.unlock()
    print_summary(console, study, outcome)
    return outcome


def print_summary(console: Console, study: Study, outcome: StudyOutcome) -> None:
    if outcome.search is not None:
        _print_search(console, study, outcome.search, outcome)
    if outcome.baseline is not None:
        _print_baseline(console, study, outcome.baseline)
    if len(outcome.results) > 1:
        print_comparison(console, study, outcome.summaries())


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


def _print_baseline(console: Console, study: Study, b) -> None:
    table = Table(title=f"study {study.name}: autokeras baseline", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    table.add_row("trials", f"{b.trials} ({b.trial_epochs} epochs)")
    if b.best_val_accuracy is not None:
        table.add_row(f"best {study.config.objective.metric}", f"{b.best_val_accuracy:.4f}")
    table.add_row("test accuracy", f"{b.test_accuracy:.4f} (loss {b.test_loss:.4f}), {b.parameters:,} parameters")
    table.add_row("final run", b.final_run_id)
    table.add_row("baseline run", b.run_id)
    table.add_row("wall time", f"{b.wall_seconds / 60:.1f} min")
    console.print(table)


def _print_search(console: Console, study: Study, search: SearchOutcome, outcome: StudyOutcome) -> None:
    c = study.config
    w = search.winner
    value, epoch = w.best(c.objective.metric, c.objective.direction)
    table = Table(title=f"study {study.name}: summary", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    counts = ", ".join(
        f"{sum(r.status == s for r in search.records)} {s}"
        for s in STATUSES
        if any(r.status == s for r in search.records)
    )
    table.add_row("trials", f"{len(search.records)} ({counts})")
    table.add_row("best trial", f"#{w.number}: {c.objective.metric} {value:.4f} at epoch {epoch}")
    table.add_row("best params", "\n".join(f"{k} = {v}" for k, v in w.params.items()))
    f = search.final
    if f is not None:
        table.add_row(
            "test accuracy",
            f"{f.test_accuracy:.4f} (loss {f.test_loss:.4f}), retrained {f.epochs} epochs on {c.final.retrain_on}",
        )
        if f.registered_name:
            table.add_row("model", f"models:/{f.registered_name}/{f.registered_version} ({f.promotion})")
        table.add_row("final run", f.run_id)
    table.add_row("study run", search.run_id)
    table.add_row("tracking", outcome.tracking_uri)
    table.add_row("wall time", f"{search.seconds / 60:.1f} min")
    console.print(table)
