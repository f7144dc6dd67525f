"""Continue a killed search: make the trial journal, the sampler's storage and MLflow agree again.

Ray's own ``Tuner.restore`` snapshots the experiment at most every ~10 s (trials finished in between
would run again) and has lost OptunaSearch's state before (ray#30861). The sources of truth here are
written on every event instead: ``trials.json`` (the driver's journal) and Optuna's SQLite storage. A
resumed search is a new Ray Tune run over the same Optuna study, seeded with what is already known.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from hpo.engine.ray_tune import RUN_STATUS, classify
from hpo.engine.records import TrialRecord
from hpo.engine.run_dir import TERMINAL, StudyDir
from hpo.study import Study
from hpo.tracking import Tracker


@dataclass
class RecoveredSearch:
    records: list[TrialRecord]  # finished before the crash: kept as they are, not re-run
    restarts: list[TrialRecord]  # cut off: re-run from scratch with the same parameters and numbers
    # (until then, as they were: history and MLflow run)
    time_spent: float  # search seconds already used (counts against budget.time)


def journal_records(run_dir: StudyDir, study: Study) -> tuple[list[TrialRecord], float]:
    """The trials in a run's journal, and the search seconds spent so far."""
    raw, time_spent = run_dir.load_trials()
    return [TrialRecord.from_json(d, study.space.resolve(d["params"])) for d in raw], time_spent


def recover_search(run_dir: StudyDir, study: Study, tracker: Tracker, parent_run: str) -> RecoveredSearch:
    import optuna
    from optuna.trial import TrialState

    c = study.config
    records, time_spent = journal_records(run_dir, study)
    storage = optuna.storages.RDBStorage(run_dir.optuna_storage)
    try:
        sampled = {t.number: t for t in optuna.load_study(study_name=run_dir.optuna_study, storage=storage).trials}
    except KeyError:  # killed before the sampler's study existed
        sampled = {}

    kept, restarts = [], []
    for record in records:
        told = sampled.get(record.optuna_number)
        if record.status in TERMINAL:
            kept.append(record)
        elif told is not None and told.state == TrialState.FAIL and not told.system_attrs.get("hpo:cut_off"):
            # Ray told the sampler the trial failed, then the driver died before recording why.
            record.status, record.error = "failed", "failed (the driver stopped before recording the error)"
            reason = record.error
            record.ended = time.time()
            tracker.set_tags(
                record.run_id,
                {
                    "hpo.status": record.status,
                    "hpo.reason": reason,
                    "hpo.error": record.error,
                    "hpo.epochs": record.epochs,
                },
            )
            tracker.end_run(record.run_id, RUN_STATUS[record.status])
            kept.append(record)
        elif told is not None and told.state in (TrialState.COMPLETE, TrialState.PRUNED) and record.history:
            # The sampler heard the trial end, the journal did not (killed in between): close it here.
            record.status, reason = classify(record, c.budget.max_epochs)
            record.ended = time.time()
            tracker.set_tags(
                record.run_id, {"hpo.status": record.status, "hpo.reason": reason, "hpo.epochs": record.epochs}
            )
            tracker.end_run(record.run_id, RUN_STATUS[record.status])
            kept.append(record)
        else:
            restarts.append(record)

    # The sampler: trials it handed out that never finished are marked failed (TPE ignores those) and
    # their parameters enqueued again, so the same configurations run next, before any new suggestion.
    kept_numbers = {r.optuna_number for r in kept}
    to_enqueue = []
    for trial in sampled.values():
        if trial.state != TrialState.RUNNING:
            continue
        storage.set_trial_system_attr(trial._trial_id, "hpo:cut_off", True)
        storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
        if trial.number not in kept_numbers:
            to_enqueue.append(trial.params)
    # A cut-off trial whose sampler record is not RUNNING (rare orderings) is enqueued from the journal.
    running = {t.number for t in sampled.values() if t.state == TrialState.RUNNING}
    to_enqueue += [r.params for r in restarts if r.optuna_number not in running]
    if to_enqueue:
        study_obj = optuna.load_study(study_name=run_dir.optuna_study, storage=storage)
        for params in to_enqueue:
            study_obj.enqueue_trial(params, skip_if_exists=False)

    # MLflow: runs that no trial in the journal owns (a kill right after creating one) are deleted. A
    # cut-off trial's run stays until the trial restarts (then a new run replaces it) or, if the budget
    # has no room left to restart it, it is closed as stopped with what it had reached.
    own_runs = {r.run_id for r in [*kept, *restarts]}
    for run in tracker.child_runs(parent_run, "trial"):
        if run.info.run_id not in own_runs:
            tracker.delete_run(run.info.run_id)
    return RecoveredSearch(kept, restarts, time_spent)
