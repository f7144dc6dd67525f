"""Continue a killed search: make the trial journal, the sampler's storage and MLflow agree again.

Ray's own ``Tuner.restore`` snapshots the experiment at most every ~10 s (trials finished in between
would run again) and has lost OptunaSearch's state before (ray#30861). The sources of truth here are
written on every event instead: ``trials.json`` (the driver's journal) and Optuna's SQLite storage. A
resumed search is a new Ray Tune run over the same Optuna study, seeded with what is already known.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from hpo.backends.ray_tune import RUN_STATUS, classify
from hpo.backends.records import TrialRecord
from hpo.config import Study
from hpo.resume import TERMINAL, StudyDir
from hpo.tracking import Tracker


@dataclass
class RecoveredSearch:
    records: list[TrialRecord]   # finished before the crash: kept as they are, not re-run
    restarts: list[TrialRecord]  # cut off: re-run from scratch with the same parameters and numbers
    time_spent: float            # search seconds already used (counts against budget.time)


def recover_search(run_dir: StudyDir, study: Study, tracker: Tracker, parent_run: str) -> RecoveredSearch:
    import optuna
    from optuna.trial import TrialState

    c = study.config
    raw, time_spent = run_dir.load_trials()
    records = [TrialRecord.from_json(d, study.space.resolve(d["params"])) for d in raw]
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
        elif told is not None and told.state.is_finished() and record.history:
            # The sampler heard the trial end, the journal did not (killed in between): close it here.
            record.status, reason = classify(record, c.budget.max_epochs)
            record.ended = time.time()
            tracker.set_tags(record.run_id, {"hpo.status": record.status, "hpo.reason": reason,
                                             "hpo.epochs": record.epochs})
            tracker.end_run(record.run_id, RUN_STATUS[record.status])
            kept.append(record)
        else:
            restarts.append(record)

    # The sampler: trials it handed out that never finished are marked failed (TPE ignores those) and
    # their parameters enqueued again, so the same configurations run next, before any new suggestion.
    kept_numbers = {r.optuna_number for r in kept}
    study_obj = None
    for trial in sampled.values():
        if trial.state != TrialState.RUNNING:
            continue
        storage.set_trial_system_attr(trial._trial_id, "hpo:cut_off", True)
        storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
        if trial.number not in kept_numbers:
            study_obj = study_obj or optuna.load_study(study_name=run_dir.optuna_study, storage=storage)
            study_obj.enqueue_trial(trial.params, skip_if_exists=False)

    # MLflow: one live run per finished trial; partial runs of cut-off trials are deleted (a restart
    # starts a new run under the same trial number).
    keep_runs = {r.run_id for r in kept}
    for run in tracker.child_runs(parent_run, "trial"):
        if run.info.run_id not in keep_runs:
            tracker.delete_run(run.info.run_id)
    for record in restarts:
        record.history.clear()
        record.status, record.run_id = "running", None
    run_dir.save_trials(kept, time_spent)
    return RecoveredSearch(kept, restarts, time_spent)
