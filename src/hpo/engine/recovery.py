"""Continue a killed search: make the trial journal, the sampler's storage and MLflow agree again.

Ray's own ``Tuner.restore`` snapshots the experiment at most every ~10 s (trials finished in between
would run again) and has lost OptunaSearch's state before (ray#30861). The sources of truth here are
written on every event instead: ``trials.json`` (the driver's journal) and Optuna's storage. A resumed
search is a new Ray Tune run over the same Optuna study, seeded with what is already known.

In a shared storage the Optuna study holds every run of the study, and another run may be adding to it
right now: recovery reads and changes only the trials marked with this run (``hpo:run``).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from hpo.engine.records import TrialRecord
from hpo.engine.run_dir import BUDGET, DEADLINE, RUN, STOPPED_BY, TERMINAL, StudyDir
from hpo.engine.trial_book import classify, end_run
from hpo.names import RunKind, TrialStatus
from hpo.study import Study
from hpo.tracking import Tracker

CUT_OFF = "hpo:cut_off"  # the system attribute that marks a sampler trial a crash cut off
# Optuna's trial states, by name (``optuna.trial.TrialState``): what the sampler was told of a trial
RUNNING, COMPLETE, PRUNED, FAIL = "RUNNING", "COMPLETE", "PRUNED", "FAIL"


@dataclass
class RecoveredSearch:
    records: list[TrialRecord]  # finished before the crash: kept as they are, not re-run
    restarts: list[TrialRecord]  # cut off: re-run from scratch with the same parameters and numbers
    # (until then, as they were: history and MLflow run)
    time_spent: float  # search seconds already used (counts against budget.time)


@dataclass(frozen=True)
class SampledTrial:
    """What the sampler's storage holds of one trial (from an ``optuna.trial.FrozenTrial``)."""

    number: int
    state: str  # RUNNING | COMPLETE | PRUNED | FAIL | WAITING
    params: dict[str, Any]
    cut_off: bool = False  # marked cut off by an earlier recovery
    stopped_by: str | None = None  # hpo:stopped_by: scheduler | budget | deadline (hpo.engine.searcher)


@dataclass
class Reconciled:
    kept: list[TrialRecord]
    restarts: list[TrialRecord]
    cut_off: list[int] = field(default_factory=list)  # sampler trials to mark failed (and cut off)
    to_enqueue: list[dict[str, Any]] = field(default_factory=list)  # parameters to run again, in order


def journal_records(run_dir: StudyDir, study: Study) -> tuple[list[TrialRecord], float]:
    """The trials in a run's journal, and the search seconds spent so far."""
    raw, time_spent = run_dir.load_trials()
    return [TrialRecord.from_json(d, study.space.resolve(d["params"])) for d in raw], time_spent


def reconcile(
    records: list[TrialRecord],
    sampled: Iterable[SampledTrial],
    tracker: Tracker,
    parent_run: str,
    max_epochs: int,
) -> Reconciled:
    """Make the journal's ``records``, the sampler's trials and the tracker's runs agree after a crash:
    which trials are kept, which restart, what the sampler must be told. Ends the tracker runs of
    trials that finished unjournaled and deletes runs no trial owns; the sampler is changed by the caller."""
    by_number = {t.number: t for t in sampled}
    kept, restarts = [], []
    for record in records:
        told = by_number.get(record.optuna_number) if record.optuna_number is not None else None
        if record.status in TERMINAL:
            kept.append(record)
        elif told is not None and told.stopped_by in (BUDGET, DEADLINE) and told.state in (PRUNED, FAIL):
            # The search had ended (time budget or deadline) and told the sampler so; the driver died before
            # journaling it.
            record.status = TrialStatus.STOPPED
            record.ended = time.time()
            end_run(tracker, record, f"stopped at epoch {record.epochs}: the search's {told.stopped_by} ran out")
            kept.append(record)
        elif told is not None and told.state == FAIL and not told.cut_off:
            # Ray told the sampler the trial failed, then the driver died before recording why.
            record.status = TrialStatus.FAILED
            record.error = "failed (the driver stopped before recording the error)"
            record.ended = time.time()
            end_run(tracker, record, record.error)
            kept.append(record)
        elif told is not None and told.state in (COMPLETE, PRUNED) and record.history:
            # The sampler heard the trial end, the journal did not (killed in between): close it here.
            record.status, reason = classify(record, max_epochs)
            record.ended = time.time()
            end_run(tracker, record, reason)
            kept.append(record)
        else:
            restarts.append(record)

    # The sampler: trials it handed out that never finished are marked failed (TPE ignores those) and
    # their parameters enqueued again, so the same configurations run next, before any new suggestion.
    kept_numbers = {r.optuna_number for r in kept}
    running = [t for t in by_number.values() if t.state == RUNNING]
    result = Reconciled(kept, restarts, cut_off=[t.number for t in running])
    result.to_enqueue = [t.params for t in running if t.number not in kept_numbers]
    # A cut-off trial whose sampler record is not RUNNING (rare orderings) is enqueued from the journal.
    running_numbers = {t.number for t in running}
    result.to_enqueue += [r.params for r in restarts if r.optuna_number not in running_numbers]

    # The tracker: runs that no trial in the journal owns (a kill right after creating one) are deleted. A
    # cut-off trial's run stays until the trial restarts (then a new run replaces it) or, if the budget
    # has no room left to restart it, it is closed as stopped with what it had reached.
    own_runs = {r.run_id for r in [*kept, *restarts]}
    for run in tracker.child_runs(parent_run, RunKind.TRIAL):
        if run.info.run_id not in own_runs:
            tracker.delete_run(run.info.run_id)
    return result


def recover_search(run_dir: StudyDir, study: Study, tracker: Tracker, parent_run: str) -> RecoveredSearch:
    import optuna
    from optuna.trial import TrialState

    records, time_spent = journal_records(run_dir, study)
    storage = optuna.storages.RDBStorage(run_dir.optuna_storage)
    try:
        study_id = storage.get_study_id_from_name(run_dir.optuna_study)
    except KeyError:  # killed before the sampler's study existed
        study_id = None
    trials = storage.get_all_trials(study_id, deepcopy=False) if study_id is not None else []
    sampled = [
        SampledTrial(
            t.number, t.state.name, dict(t.params), bool(t.system_attrs.get(CUT_OFF)), t.system_attrs.get(STOPPED_BY)
        )
        for t in trials
        if _own(t.system_attrs.get(RUN), run_dir)
    ]
    done = reconcile(records, sampled, tracker, parent_run, study.config.budget.max_epochs)

    for number in done.cut_off:  # (none without a sampler study)
        # the storage's own id of a trial, by public API (FrozenTrial keeps it in a private attribute)
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id or 0, number)
        storage.set_trial_system_attr(trial_id, CUT_OFF, True)
        storage.set_trial_state_values(trial_id, TrialState.FAIL)
    if done.to_enqueue:
        study_obj = optuna.load_study(study_name=run_dir.optuna_study, storage=storage)
        for params in done.to_enqueue:
            study_obj.enqueue_trial(params, skip_if_exists=False)
    return RecoveredSearch(done.kept, done.restarts, time_spent)


def _own(run: Any, run_dir: StudyDir) -> bool:
    """Whether a sampler trial marked ``run`` (``hpo:run``; None: unmarked) is this run's. An unmarked trial
    is this run's in a storage of its own, or in a study of its own (an older hpo's ``<study>/<folder>``); in
    a shared study it is another's (enqueued and not yet asked for, or a run killed before marking it)."""
    if run is not None:
        return run == run_dir.run_name
    return not run_dir.shared_storage or run_dir.optuna_study == f"{run_dir.state.study}/{run_dir.path.name}"
