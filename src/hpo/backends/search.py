"""The search backend: Optuna's TPE sampling inside Ray Tune with ASHA stopping, then the re-check of the
top configurations and the final stage (retrain the winner on train+val, test once, register)."""

from __future__ import annotations

import csv
import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table

from hpo.backends.base import BackendSummary, RunContext
from hpo.config.backends import BACKENDS
from hpo.data import ImageData
from hpo.engine.fidelity import epoch_fractions
from hpo.engine.live import short_params
from hpo.engine.pareto import NoTrialWithinLimits, choose_pareto, choose_winner, rule_text
from hpo.engine.records import TrialRecord, best_trial
from hpo.errors import HpoError
from hpo.names import FINISHED_ORDER, Metric, RunKind, RunOutcome, Stage, Tag
from hpo.study import Study, hyperband_brackets
from hpo.tracking import Tracker

if TYPE_CHECKING:  # at run time the final stage (and torch with it) loads when a run reaches it
    from hpo.stages.finalize import FinalResult


class SearchFailed(HpoError):
    """No trial produced a result: nothing to finalize."""


@dataclass(kw_only=True)
class SearchOutcome:
    """What the search found: its trials, the winner, and the winner's final model (if finalized)."""

    run_id: str
    records: list[TrialRecord]
    winner: TrialRecord
    final: FinalResult | None  # None when final.enabled is false
    seconds: float
    search_seconds: float
    metric: str
    mode: str

    def summary(self) -> BackendSummary:
        f = self.final
        return BackendSummary(
            backend=SearchBackend.name,
            run_id=self.run_id,
            test_accuracy=f.test_accuracy if f else None,
            test_loss=f.test_loss if f else None,
            trials=len(self.records),
            trial_epochs=sum(r.epochs for r in self.records),
            best_value=self.winner.best(self.metric, self.mode)[0],
            search_seconds=self.search_seconds,
            wall_seconds=self.seconds,
        )

    def print_summary(self, console: Console, run: RunContext) -> None:
        c = run.study.config
        w = self.winner
        value, epoch = w.best(c.objective.metric, c.objective.direction)
        table = Table(title=f"study {run.study.name}: summary", show_header=False, title_justify="left")
        table.add_column(style="bold")
        table.add_column()
        counts = ", ".join(f"{n} {s}" for s in FINISHED_ORDER if (n := sum(r.status == s for r in self.records)))
        table.add_row("trials", f"{len(self.records)} ({counts})")
        table.add_row("best trial", f"#{w.number}: {c.objective.metric} {value:.4f} at epoch {epoch}")
        if c.objective.multi:  # the winner's other objectives, and the rule that chose it
            last = w.history[-1] if w.history else {}
            costs = ", ".join(f"{o.metric} {last.get(o.metric, math.nan):g}" for o in list(c.objective)[1:])
            table.add_row("chosen by", f"{rule_text(list(c.objective), c.final.choose)} ({costs})")
        table.add_row("best params", "\n".join(f"{k} = {v}" for k, v in w.params.items()))
        f = self.final
        if f is not None:
            table.add_row(
                "test accuracy",
                f"{f.test_accuracy:.4f} (loss {f.test_loss:.4f}), retrained {f.epochs} epochs on {c.final.retrain_on}",
            )
            if f.registered_name:
                table.add_row("model", f"models:/{f.registered_name}/{f.registered_version} ({f.promotion})")
            table.add_row("final run", f.run_id)
        table.add_row("study run", self.run_id)
        table.add_row("tracking", run.tracking_uri)
        table.add_row("wall time", f"{self.seconds / 60:.1f} min")
        console.print(table)


class SearchBackend:
    """hpo's own search: trials sampled by Optuna in Ray Tune, the re-check, the final stage."""

    name = BACKENDS["search"].name
    stages = BACKENDS["search"].stages

    def __init__(self, run: RunContext) -> None:
        self.ctx = run

    def run(self) -> SearchOutcome:
        run = self.ctx
        tracker, run_dir = run.tracker, run.run_dir
        parent = run_dir.state.study_run_id
        if parent is None:
            parent = tracker.start_study(run.study, run.study.resolved())
            tracker.log_split(parent, run.data.split_record())
            run_dir.advance(run_dir.state.stage, study_run_id=parent)
        else:
            tracker.reopen(parent, {Tag.ATTEMPTS: run_dir.state.attempts})
        run.console.print(f"[bold]search[/] study run {parent}")
        with tracker.finishing(parent):
            return _run_stages(run, parent)


def _run_stages(run: RunContext, parent: str) -> SearchOutcome:
    from hpo.engine.recovery import journal_records
    from hpo.stages.finalize import ChampionGuard, FinalResult, finalize
    from hpo.stages.nightly import nightly_summary
    from hpo.stages.recheck import recheck

    study, tracker, run_dir, console = run.study, run.tracker, run.run_dir, run.console
    c = study.config
    metric = c.objective.metric
    state = run_dir.state
    notes: list[str] = []
    finished_before = state.stage not in SearchBackend.stages  # resumed in a later backend's stage
    if state.stage == Stage.SEARCH:
        records = _search(run, parent, notes)
    else:
        records, _ = journal_records(run_dir, study)
    winner = choose_winner(records, c.objective, c.final.choose)  # several objectives: by the stated rule
    if winner is None:  # _search raised already; a journal without a result cannot reach a later stage
        raise SearchFailed("no trial produced a result")

    if state.stage == Stage.RECHECK:
        for old in tracker.child_runs(parent, RunKind.RECHECK) if run.resumed else []:
            tracker.delete_run(old.info.run_id)  # a re-check cut off by a crash is redone whole
        verdict = None
        if c.final.recheck.top_k:
            k, n = c.final.recheck.top_k, c.final.recheck.seeds
            with console.status(f"re-checking the top {k} configurations with {n} seeds each"):
                rechecked = recheck(study, run.data, records, tracker, parent)
            if rechecked is not None and rechecked.note:  # runs that failed; all of them: the search's winner
                console.print(f"[bold]recheck[/] {rechecked.note}", highlight=False)
            if rechecked is not None and not rechecked.fell_back:  # None: nothing to re-check
                console.print(
                    f"[bold]recheck[/] trial #{rechecked.winner.number} wins: mean {metric} "
                    f"{rechecked.mean:.4f} ± {rechecked.std:.4f} over {n} seeds"
                )
                verdict = {
                    "winner": rechecked.winner.number,
                    "best_epoch": rechecked.best_epoch,
                    "mean": rechecked.mean,
                    "std": rechecked.std,
                }
        run_dir.advance(Stage.FINALIZE, recheck=verdict)

    final = None
    best_epoch = None
    if state.recheck:
        winner = next(r for r in records if r.number == state.recheck["winner"])
        best_epoch = state.recheck["best_epoch"]
    if state.final is not None:  # registered before a crash: not redone
        final = FinalResult(**state.final)
    elif state.stage == Stage.FINALIZE:
        champion = ChampionGuard(tracker, c.registered_model_name)
        if run.resumed:
            for old in tracker.child_runs(parent, RunKind.FINAL):
                tracker.delete_run(old.info.run_id)  # with the model version it may have registered
            champion.restore(state.champion_before)
        else:
            run_dir.advance(Stage.FINALIZE, champion_before=champion.current() or "")
        tracker.set_tags(parent, {Tag.WINNER_TRIAL: winner.trial_id, Tag.WINNER_RUN: winner.run_id})
        doing = f"finalize: retraining trial #{winner.number} on {c.final.retrain_on}"
        with console.status(doing) as status:

            def progress(text: str) -> None:  # the spinner on a terminal, a line per epoch in a log
                if console.is_terminal:
                    status.update(f"{doing}, {text}")
                else:
                    console.print(f"{doing}, {text}", highlight=False, soft_wrap=True)

            final = finalize(
                study,
                run.data,
                winner,
                records,
                tracker,
                parent,
                optuna_storage=run_dir.optuna_storage,
                optuna_study=run_dir.optuna_study,
                best_epoch=best_epoch,
                progress=progress,
            )
        run_dir.advance(Stage.FINALIZE, final=asdict(final))
    if finished_before:  # nothing ran now: what was recorded then stands
        seconds = tracker.get_run(parent).data.metrics.get("wall_seconds", 0.0)
        return _outcome(run, parent, records, winner, final, seconds)
    if final is not None:
        tracker.log_metrics(parent, {"test_accuracy": final.test_accuracy, "test_loss": final.test_loss})
    seconds = time.time() - run.start
    tracker.log_metrics(parent, {"wall_seconds": seconds})
    if run.deadline is not None:
        slack = run.deadline - time.time()
        at = time.strftime("%H:%M", time.localtime(run.deadline))
        said = (
            f"finished {slack / 60:.1f} min before the deadline ({at})"
            if slack >= 0
            else f"missed the deadline ({at}) by {-slack / 60:.1f} min"
        )
        tracker.log_metrics(parent, {"deadline_slack_seconds": slack})
        notes.append(said)
        console.print(f"[bold]deadline[/] {said}")
    if state.stage == Stage.FINALIZE and final is not None:
        nightly_summary(tracker, study.name, parent, final.promotion if final.registered_name else None, notes)
        run_dir.advance_past(SearchBackend.stages)
    return _outcome(run, parent, records, winner, final, seconds)


def _outcome(
    run: RunContext,
    parent: str,
    records: list[TrialRecord],
    winner: TrialRecord,
    final: FinalResult | None,
    seconds: float,
) -> SearchOutcome:
    c = run.study.config
    return SearchOutcome(
        run_id=parent,
        records=records,
        winner=winner,
        final=final,
        seconds=seconds,
        search_seconds=run.run_dir.load_trials()[1],
        metric=c.objective.metric,
        mode=c.objective.direction,
    )


def _search(run: RunContext, parent: str, notes: list[str]) -> list[TrialRecord]:
    """The search stage: a fresh search, or the continuation of a killed one."""
    from hpo.engine.live import LiveView
    from hpo.engine.ray_tune import run_search
    from hpo.engine.recovery import recover_search
    from hpo.stages.warm_start import warm_start_points

    study, tracker, run_dir, console = run.study, run.tracker, run.run_dir, run.console
    c = study.config
    metric, mode = c.objective.metric, c.objective.direction
    restarts, time_spent, points = [], 0.0, None
    records: list[TrialRecord] = []
    if run.resumed:  # the sampler already holds any enqueued points
        recovered = recover_search(run_dir, study, tracker, parent)
        records, restarts, time_spent = recovered.records, recovered.restarts, recovered.time_spent
        console.print(f"[bold]search[/] {len(records)} trials kept from before, {len(restarts)} restarted")
    else:
        points = [*(run.points or []), *c.start_with]
        if c.start_with:
            n = len(c.start_with)
            notes.append(f"start_with: {n} configuration{'s' * (n != 1)} evaluated first")
            console.print(notes[-1], highlight=False)
        if run.warm_from:
            top_k = c.warm_start.top_k if c.warm_start else 5
            warm = warm_start_points(study, run_dir, run.warm_from, top_k)
            points += warm.points
            notes.append(warm.describe(run.warm_from))
            console.print(f"[bold]{notes[-1]}[/]" if warm.points else notes[-1], highlight=False)
            tracker.set_tags(parent, {Tag.WARM_START: run.warm_from})
            tracker.log_metrics(parent, {"warm_start_points": len(warm.points)})
    view = (
        LiveView(
            records,
            trials=c.budget.trials,
            time_budget=c.budget.time,
            max_epochs=c.budget.max_epochs,
            metric=metric,
            mode=mode,
            console=console,
            time_spent=time_spent,
            deadline=run.deadline,
            # the rungs of asha and hyperband (the median rule has none to foresee)
            asha=(c.scheduler.grace_period, c.scheduler.reduction_factor)
            if c.scheduler.type in ("asha", "hyperband")
            else None,
            brackets=hyperband_brackets(c) if c.scheduler.type == "hyperband" else 1,
            fractions=tuple(epoch_fractions(c.scheduler, c.budget.max_epochs)),
        )
        if run.live
        else None
    )
    search_start = time.time()
    run_search(
        study,
        run.data,
        tracker,
        parent,
        run_dir,
        records,
        view,
        points=points or None,
        restarts=restarts,
        time_spent=time_spent,
        deadline=run.deadline,
        after_search=lambda recs: after_search_seconds(study, run.data, recs),
    )
    _log_stats(
        tracker,
        parent,
        run_dir.path / "search_stats.json",
        run_start=run.start,
        data_seconds=run.data_seconds,
        ray_seconds=run.ray_seconds,
    )
    _log_search_summary(tracker, parent, records, run_dir.path, metric, mode, time.time() - search_start)
    if best_trial(records, metric, mode) is None:
        run_dir.advance(Stage.DONE, outcome=RunOutcome.FAILED)  # the other backends do not run either: the study failed
        _print_trials(console, study, records)
        reasons = "; ".join(f"trial {r.number}: {r.error}" for r in records if r.error) or "no trial reported"
        raise SearchFailed(f"no trial produced a result ({reasons})")
    if c.objective.multi:
        try:
            _record_choice(tracker, parent, records, study, run_dir.path)
        except NoTrialWithinLimits as exc:  # nothing the study allows to finalise
            run_dir.advance(Stage.DONE, outcome=RunOutcome.FAILED)
            _print_trials(console, study, records)
            raise SearchFailed(str(exc)) from None
    if c.final.enabled:
        run_dir.advance(Stage.RECHECK)
    else:
        run_dir.advance_past(SearchBackend.stages)
    return records


def cluster_cpus() -> float:
    """CPUs of the Ray cluster the re-check's tasks run on (this machine's count outside Ray)."""
    import ray

    return ray.cluster_resources().get("CPU", 1.0) if ray.is_initialized() else float(os.cpu_count() or 1)


FINAL_OVERHEAD = 30.0  # seconds: evaluation, plots, model logging, exports, registration (measured ~10 s on 2 CPUs)


def after_search_seconds(study: Study, data: ImageData, records: list[TrialRecord]) -> float | None:
    """A cautious estimate of what the re-check and the final stage would take if the search stopped now
    (None before any epoch): the deadline stopper ends the search when this no longer fits.

    With ``final.epochs: best`` and no re-check, the final stage retrains the winner so far for its best
    epoch count, at the pace of its own slowest epoch (on a trial's share of the CPUs; the final stage has
    them all): the stopper asks again after every result, so a winner that trains on, or a slower one that
    takes the lead, raises the estimate as it happens. Otherwise (a fixed epoch count, or no winner yet),
    the epochs the final stage will train at the slowest epoch any trial ran."""
    seconds = [_full_epoch(row) for r in records for row in r.history if row.get("seconds")]
    if not seconds:
        return None
    c = study.config
    slowest = max(seconds)
    need = 0.0
    if c.final.enabled:
        epochs, epoch = (c.budget.max_epochs if c.final.epochs == "best" else c.final.epochs), slowest
        runs = c.final.recheck.top_k * c.final.recheck.seeds
        if c.final.epochs == "best" and not runs:
            try:
                winner = choose_winner(records, c.objective, c.final.choose)
            except NoTrialWithinLimits:
                winner = None
            best_epoch = winner.best(c.objective.metric, c.objective.direction)[1] if winner else None
            own = [_full_epoch(row) for row in winner.history if row.get("seconds")] if winner else []
            if best_epoch is not None and own:
                epochs, epoch = best_epoch, max(own)
        scale = (len(data.y_train) + len(data.y_val)) / len(data.y_train) if c.final.retrain_on == "train+val" else 1
        need += epochs * epoch * scale + FINAL_OVERHEAD
        if runs:
            slots = c.resources.max_concurrent or max(1, int(cluster_cpus() / c.resources.cpus_per_trial))
            need += math.ceil(runs / slots) * c.budget.max_epochs * slowest
    return 1.2 * need


def _full_epoch(row: dict) -> float:
    """Seconds of an epoch on all the training images, from a history row (data fidelity: a fraction)."""
    return float(row["seconds"]) / float(row.get(Metric.DATA_FRACTION) or 1.0)


def _log_search_summary(
    tracker: Tracker, parent: str, records: list[TrialRecord], workdir: Path, metric: str, mode: str, seconds: float
) -> None:
    counts = {s: sum(r.status == s for r in records) for s in FINISHED_ORDER}
    best = best_trial(records, metric, mode)
    metrics: dict[str, float | None] = {f"trials_{k}": v for k, v in counts.items()}
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


def _record_choice(tracker: Tracker, parent: str, records: list[TrialRecord], study: Study, workdir: Path) -> None:
    """A study with several objectives: its rule and the trial it chooses as tags of the study run, and
    the Pareto front (table and plot) beside its leaderboard. ``NoTrialWithinLimits`` when none qualifies."""
    from hpo.report.pareto import PARETO_CSV, PARETO_PNG, write_pareto

    c = study.config
    choice = choose_pareto(records, list(c.objective), c.final.choose)
    write_pareto(choice, workdir, f"{study.name}: Pareto front of {len(choice.points)} trials")
    for name in (PARETO_CSV, PARETO_PNG):
        tracker.log_artifact(parent, workdir / name)
    tags: dict[str, str] = {Tag.WINNER_RULE: choice.describe()}
    if choice.chosen is not None:
        tags.update({Tag.WINNER_TRIAL: choice.chosen.trial_id, Tag.WINNER_RUN: choice.chosen.run_id or ""})
    tracker.set_tags(parent, tags)
    choose_winner(records, c.objective, c.final.choose)  # raises when no trial is within the limits


def _log_stats(tracker: Tracker, parent: str, path: Path, **extra: float) -> None:
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
