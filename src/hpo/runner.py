"""``hpo run``: load the data once, search, finalize, summarise. Heavy imports happen here, not at CLI
start-up."""

from __future__ import annotations

import csv
import json
import math
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from hpo.backends.live import short_params
from hpo.backends.records import TrialRecord, best_trial
from hpo.config import Study
from hpo.errors import HpoError, RunRefused
from hpo.resume import StudyDir

STATUSES = ("completed", "early_stopped", "pruned", "stopped", "failed", "infeasible")


MIN_DEADLINE_LEAD = 60.0  # seconds: a deadline closer than this leaves no room for a trial and the final stage


class SearchFailed(HpoError):
    """No trial produced a result: nothing to finalize."""


@dataclass
class StudyOutcome:
    study_run_id: str
    records: list[TrialRecord]
    winner: TrialRecord
    final: object | None
    seconds: float
    tracking_uri: str


def _check_database_drivers(*uris: str | None) -> None:
    """A PostgreSQL URI needs the driver: say how to get it before anything starts."""
    import importlib.util

    if any(u and u.startswith("postgresql") for u in uris) and importlib.util.find_spec("psycopg") is None:
        raise HpoError("a postgresql:// URI needs the PostgreSQL driver: pip install -e \".[postgres]\" "
                       "(psycopg)")


@dataclass
class _Run:
    """What the stages of one run share."""

    study: Study
    data: object
    tracker: object
    parent: str
    run_dir: StudyDir
    resumed: bool
    console: Console
    live: bool
    points: list[dict] | None
    warm_from: str | None
    deadline: float | None
    start: float
    data_seconds: float
    ray_seconds: float


def run_study(study: Study, *, address: str | None = None, tracking_uri: str | None = None,
              console: Console | None = None, live: bool = True, points: list[dict] | None = None,
              fresh: bool = False, warm_start: str | None = None) -> StudyOutcome:
    """Run ``study`` through its stages (search -> recheck -> finalize). If an earlier run of the same
    study was killed, continue it (``fresh=True`` starts over instead): see :mod:`hpo.resume`.
    ``warm_start`` names a study whose earlier runs' best configurations to evaluate first (overrides
    the study's ``warm_start.from``)."""
    import ray

    from hpo.backends.ray_tune import start_ray
    from hpo.config.study import parse_deadline
    from hpo.data import load_data
    from hpo.security import redact
    from hpo.tracking import Tracker, default_tracking_uri

    console = console or Console(stderr=True)
    c = study.config
    _check_database_drivers(tracking_uri or c.tracking.uri, c.tracking.optuna_storage)
    start = time.time()
    until = parse_deadline(c.budget.until).timestamp() if c.budget.until else None
    if until is not None and until - start < MIN_DEADLINE_LEAD and (
            fresh or StudyDir.latest_unfinished(Path(c.output_dir) / c.name) is None):
        raise RunRefused(f"budget.until {c.budget.until!r} is {until - start:.0f} s away: too close for even one "
                         "trial and the final stage; move it later")
    run_dir, resumed = StudyDir.open(Path(c.output_dir), c.name, study.fingerprint(), fresh=fresh)
    run_dir.shared_storage = c.tracking.optuna_storage
    deadline = run_dir.state.deadline or until  # fixed when the run began: "06:00" means that night's 06:00
    if deadline is not None and run_dir.state.deadline is None:
        run_dir.advance(run_dir.state.stage, deadline=deadline)
    if resumed:
        console.print(f"[bold]resuming[/] {run_dir.path}: attempt {run_dir.state.attempts}, continuing "
                      f"from the {run_dir.state.stage} stage (`hpo run --fresh` starts over)")
    if deadline is not None:
        console.print(f"[bold]deadline[/] {time.strftime('%a %H:%M', time.localtime(deadline))} "
                      f"(in {(deadline - start) / 60:.1f} min): the search ends in time for the final stage")

    def timed_load():
        begin = time.time()
        return load_data(c.dataset, c.seed), time.time() - begin

    started_ray = not ray.is_initialized()
    with ThreadPoolExecutor(1) as pool:
        loading = pool.submit(timed_load)  # reading the data overlaps Ray's start-up
        try:
            ray_start = time.time()
            start_ray(address)
            ray_seconds = time.time() - ray_start
            with console.status("loading data"):
                data, data_seconds = loading.result()
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
        uri = default_tracking_uri(tracking_uri or c.tracking.uri)
        tracker = Tracker(uri, c.tracking.experiment or c.name)
        parent = run_dir.state.study_run_id
        if parent is None:
            parent = tracker.start_study(study, study.resolved())
            run_dir.advance(run_dir.state.stage, study_run_id=parent)
        else:
            tracker.reopen(parent, {"hpo.attempts": run_dir.state.attempts})
        console.print(f"[bold]tracking[/] {redact(uri)}  study run {parent}")
        warm_from = warm_start or (c.warm_start.source if c.warm_start else None)
        run = _Run(study, data, tracker, parent, run_dir, resumed, console, live, points, warm_from, deadline,
                   start, data_seconds, ray_seconds)
        with tracker.finishing(parent):
            outcome = _run_stages(run)
        outcome.tracking_uri = redact(uri)
    finally:
        if started_ray:
            ray.shutdown()
        run_dir.unlock()
    print_summary(console, study, outcome)
    return outcome


def _run_stages(run: _Run) -> StudyOutcome:
    from hpo.backends.recovery import journal_records
    from hpo.finalize import ChampionGuard, FinalResult, finalize
    from hpo.recheck import recheck
    from hpo.report.nightly import nightly_summary

    study, tracker, parent, run_dir, console = run.study, run.tracker, run.parent, run.run_dir, run.console
    c = study.config
    metric, mode = c.objective.metric, c.objective.direction
    state = run_dir.state
    notes: list[str] = []
    if state.stage == "search":
        records = _search(run, notes)
    else:
        records, _ = journal_records(run_dir, study)
    winner = best_trial(records, metric, mode)

    if state.stage == "recheck":
        for old in tracker.child_runs(parent, "recheck") if run.resumed else []:
            tracker.delete_run(old.info.run_id)  # a re-check cut off by a crash is redone whole
        verdict = None
        if c.final.recheck.top_k:
            k, n = c.final.recheck.top_k, c.final.recheck.seeds
            with console.status(f"re-checking the top {k} configurations with {n} seeds each"):
                rechecked = recheck(study, run.data, records, tracker, parent)
            console.print(f"[bold]recheck[/] trial #{rechecked.winner.number} wins: mean {metric} "
                          f"{rechecked.mean:.4f} ± {rechecked.std:.4f} over {n} seeds")
            verdict = {"winner": rechecked.winner.number, "best_epoch": rechecked.best_epoch,
                       "mean": rechecked.mean, "std": rechecked.std}
        run_dir.advance("finalize", recheck=verdict)

    final = None
    best_epoch = None
    if state.recheck:
        winner = next(r for r in records if r.number == state.recheck["winner"])
        best_epoch = state.recheck["best_epoch"]
    if state.stage == "finalize" and state.final is not None:  # registered before a crash: not redone
        final = FinalResult(**state.final)
    elif state.stage == "finalize":
        champion = ChampionGuard(tracker, c.registered_model_name)
        if run.resumed:
            for old in tracker.child_runs(parent, "final"):
                tracker.delete_run(old.info.run_id)  # with the model version it may have registered
            champion.restore(state.champion_before)
        else:
            run_dir.advance("finalize", champion_before=champion.current() or "")
        tracker.set_tags(parent, {"hpo.winner_trial": winner.trial_id, "hpo.winner_run": winner.run_id})
        with console.status(f"finalize: retraining trial #{winner.number} on {c.final.retrain_on}"):
            final = finalize(study, run.data, winner, records, tracker, parent, optuna_storage=run_dir.optuna_storage,
                             optuna_study=run_dir.optuna_study, best_epoch=best_epoch)
        run_dir.advance("finalize", final=asdict(final))
    if final is not None:
        tracker.log_metrics(parent, {"test_accuracy": final.test_accuracy, "test_loss": final.test_loss})
    seconds = time.time() - run.start
    tracker.log_metrics(parent, {"wall_seconds": seconds})
    if run.deadline is not None:
        slack = run.deadline - time.time()
        at = time.strftime("%H:%M", time.localtime(run.deadline))
        said = (f"finished {slack / 60:.1f} min before the deadline ({at})" if slack >= 0 else
                f"missed the deadline ({at}) by {-slack / 60:.1f} min")
        tracker.log_metrics(parent, {"deadline_slack_seconds": slack})
        notes.append(said)
        console.print(f"[bold]deadline[/] {said}")
    if state.stage == "finalize" and final is not None:
        nightly_summary(tracker, study.name, parent, final.promotion if final.registered_name else None, notes)
        run_dir.advance("done", outcome="completed")
    return StudyOutcome(parent, records, winner, final, seconds, tracker.uri)


def _search(run: _Run, notes: list[str]) -> list[TrialRecord]:
    """The search stage: a fresh search, or the continuation of a killed one."""
    from hpo.backends.live import LiveView
    from hpo.backends.ray_tune import run_search
    from hpo.backends.recovery import recover_search
    from hpo.warm_start import warm_start_points

    study, tracker, parent, run_dir, console = run.study, run.tracker, run.parent, run.run_dir, run.console
    c = study.config
    metric, mode = c.objective.metric, c.objective.direction
    restarts, time_spent, points = [], 0.0, None
    records: list[TrialRecord] = []
    if run.resumed:  # the sampler already holds any enqueued points
        recovered = recover_search(run_dir, study, tracker, parent)
        records, restarts, time_spent = recovered.records, recovered.restarts, recovered.time_spent
        console.print(f"[bold]search[/] {len(records)} trials kept from before, {len(restarts)} restarted")
    else:
        points = list(run.points or [])
        if run.warm_from:
            top_k = c.warm_start.top_k if c.warm_start else 5
            warm = warm_start_points(study, run_dir, run.warm_from, top_k)
            points += warm.points
            notes.append(warm.describe(run.warm_from))
            console.print(f"[bold]{notes[-1]}[/]" if warm.points else notes[-1], highlight=False)
            tracker.set_tags(parent, {"hpo.warm_start": run.warm_from})
            tracker.log_metrics(parent, {"warm_start_points": len(warm.points)})
    view = LiveView(records, trials=c.budget.trials, time_budget=c.budget.time, max_epochs=c.budget.max_epochs,
                    metric=metric, mode=mode, console=console) if run.live else None
    search_start = time.time()
    run_search(study, run.data, tracker, parent, run_dir, records, view, points=points or None, restarts=restarts,
               time_spent=time_spent, deadline=run.deadline,
               after_search=lambda recs: after_search_seconds(study, run.data, recs))
    _log_stats(tracker, parent, run_dir.path / "search_stats.json", run_start=run.start,
               data_seconds=run.data_seconds, ray_seconds=run.ray_seconds)
    _log_search_summary(tracker, parent, records, run_dir.path, metric, mode, time.time() - search_start)
    if best_trial(records, metric, mode) is None:
        run_dir.advance("done", outcome="failed")
        _print_trials(console, study, records)
        reasons = "; ".join(f"trial {r.number}: {r.error}" for r in records if r.error) or "no trial reported"
        raise SearchFailed(f"no trial produced a result ({reasons})")
    if c.final.enabled:
        run_dir.advance("recheck")
    else:
        run_dir.advance("done", outcome="completed")
    return records


def cluster_cpus() -> float:
    """CPUs of the Ray cluster the re-check's tasks run on (this machine's count outside Ray)."""
    import ray

    return ray.cluster_resources().get("CPU", 1.0) if ray.is_initialized() else float(os.cpu_count() or 1)


FINAL_OVERHEAD = 30.0  # seconds: evaluation, plots, model logging, exports, registration (measured ~10 s on 2 CPUs)


def after_search_seconds(study: Study, data, records: list[TrialRecord]) -> float | None:
    """A cautious estimate of what the re-check and the final stage take, from the slowest epoch seen
    so far (None before any epoch): the deadline stopper ends the search when this no longer fits."""
    seconds = [row["seconds"] for r in records for row in r.history if row.get("seconds")]
    if not seconds:
        return None
    c = study.config
    epoch = max(seconds)
    need = 0.0
    if c.final.enabled:
        epochs = c.budget.max_epochs if c.final.epochs == "best" else c.final.epochs
        scale = (len(data.y_train) + len(data.y_val)) / len(data.y_train) if c.final.retrain_on == "train+val" else 1
        need += epochs * epoch * scale + FINAL_OVERHEAD
        runs = c.final.recheck.top_k * c.final.recheck.seeds
        if runs:
            slots = c.resources.max_concurrent or max(1, int(cluster_cpus() / c.resources.cpus_per_trial))
            need += math.ceil(runs / slots) * c.budget.max_epochs * epoch
    return 1.2 * need


def _log_search_summary(tracker, parent: str, records: list[TrialRecord], workdir: Path, metric: str, mode: str,
                        seconds: float) -> None:
    counts = {s: sum(r.status == s for r in records) for s in STATUSES}
    best = best_trial(records, metric, mode)
    metrics = {f"trials_{k}": v for k, v in counts.items()}
    metrics["search_seconds"] = seconds
    metrics["trial_epochs"] = sum(r.epochs for r in records)
    if best is not None:
        metrics[f"best_{metric}"] = best.best(metric, mode)[0]
    tracker.log_metrics(parent, metrics)
    board = workdir / "leaderboard.csv"
    pick = (lambda r: -(r.best(metric, mode)[0] or 0)) if mode == "max" else (lambda r: r.best(metric, mode)[0] or 1e9)
    with board.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["trial", "status", "epochs", f"best_{metric}", "best_epoch", "run_id", "params"])
        for r in sorted(records, key=pick):
            value, epoch = r.best(metric, mode)
            writer.writerow([r.number, r.status, r.epochs, value, epoch, r.run_id, short_params(r.params)])
    tracker.log_artifact(parent, board)


def _log_stats(tracker, parent: str, path: Path, **extra: float) -> None:
    """Complete the backend's timing record with what happened before the search, and log it."""
    stats = {**json.loads(path.read_text()), **extra}
    path.write_text(json.dumps(stats, indent=1))
    tracker.log_artifact(parent, path)


def _print_trials(console: Console, study: Study, records: list[TrialRecord]) -> None:
    table = Table(title=f"study {study.name}: trials", title_justify="left")
    for col in ("trial", "status", "attempts", "epochs", "reason"):
        table.add_column(col)
    for r in records:
        table.add_row(str(r.number), r.status, str(r.attempts), str(r.epochs), r.error or "")
    console.print(table)


def print_summary(console: Console, study: Study, outcome: StudyOutcome) -> None:
    c = study.config
    w = outcome.winner
    value, epoch = w.best(c.objective.metric, c.objective.direction)
    table = Table(title=f"study {study.name}: summary", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    counts = ", ".join(f"{sum(r.status == s for r in outcome.records)} {s}"
                       for s in STATUSES if any(r.status == s for r in outcome.records))
    table.add_row("trials", f"{len(outcome.records)} ({counts})")
    table.add_row("best trial", f"#{w.number}: {c.objective.metric} {value:.4f} at epoch {epoch}")
    table.add_row("best params", "\n".join(f"{k} = {v}" for k, v in w.params.items()))
    f = outcome.final
    if f is not None:
        table.add_row("test accuracy", f"{f.test_accuracy:.4f} (loss {f.test_loss:.4f}), retrained "
                                       f"{f.epochs} epochs on {c.final.retrain_on}")
        if f.registered_name:
            table.add_row("model", f"models:/{f.registered_name}/{f.registered_version} ({f.promotion})")
        table.add_row("final run", f.run_id)
    table.add_row("study run", outcome.study_run_id)
    table.add_row("tracking", outcome.tracking_uri)
    table.add_row("wall time", f"{outcome.seconds / 60:.1f} min")
    console.print(table)
