"""Continuing a killed search: the journal, the sampler's trials and the tracker's runs reconciled (no
Optuna storage, no MLflow: ``reconcile`` takes the sampler's trials as plain records)."""

from __future__ import annotations

from pathlib import Path

import pytest

from hpo.config.yaml_loader import parse_yaml
from hpo.engine.records import TrialRecord
from hpo.engine.recovery import COMPLETE, FAIL, PRUNED, RUNNING, SampledTrial, reconcile
from hpo.names import RunKind, RunStatus, Tag, TrialStatus
from hpo.space import parse_space
from hpo.tracking import InMemoryTracker

SPACE = "batch_size: {categorical: [16, 32, 64, 128, 256, 512]}\nmodel: {one_of: {cnn: {depth: 2}}}\n"


@pytest.fixture(scope="module")
def space():
    return parse_space(parse_yaml(SPACE, Path("s.yaml")))


def test_reconcile(space):
    tracker = InMemoryTracker()
    parent = tracker.start_run("study", tags={Tag.KIND: RunKind.STUDY})

    def record(number: int, status: str = TrialStatus.RUNNING, epochs: int = 1) -> TrialRecord:
        params = {"batch_size": 16 * 2 ** (number - 1), "model.name": "cnn"}
        run = tracker.start_run(f"trial-{number:03d}", parent=parent, tags={Tag.KIND: RunKind.TRIAL})
        history = [{"epoch": e + 1, "val_accuracy": 0.5, "early_stop": False} for e in range(epochs)]
        return TrialRecord(f"t{number}", number, params, space.resolve(params), run_id=run, status=status,
                           history=history, optuna_number=number - 1)  # fmt: skip

    done = record(1, TrialStatus.COMPLETED, epochs=3)  # journaled as finished: kept as it is
    failed = record(2)  # the sampler heard it fail, the journal did not
    ended = record(3, epochs=1)  # the sampler heard it end (pruned at epoch 1 of 3), the journal did not
    cut = record(4)  # running in both: restarted
    cut_unknown = record(5)  # the sampler never heard of it: restarted, enqueued from the journal
    orphan = tracker.start_run("trial-006", parent=parent, tags={Tag.KIND: RunKind.TRIAL})  # no journal entry
    sampled = [
        SampledTrial(0, COMPLETE, done.params),
        SampledTrial(1, FAIL, failed.params),
        SampledTrial(2, PRUNED, ended.params),
        SampledTrial(3, RUNNING, cut.params),
        SampledTrial(5, RUNNING, {"batch_size": 512, "model.name": "cnn"}),  # handed out, never journaled
        SampledTrial(6, FAIL, {"batch_size": 16}, cut_off=True),  # cut off by an earlier recovery
    ]
    out = reconcile([done, failed, ended, cut, cut_unknown], sampled, tracker, parent, max_epochs=3)

    assert out.kept == [done, failed, ended] and out.restarts == [cut, cut_unknown]
    assert failed.status == TrialStatus.FAILED and "driver stopped" in (failed.error or "")
    assert tracker.runs[failed.run_id].status == RunStatus.FAILED
    assert tracker.runs[failed.run_id].tags[Tag.ERROR] == failed.error
    assert ended.status == TrialStatus.PRUNED and tracker.runs[ended.run_id].status == RunStatus.KILLED
    assert tracker.runs[ended.run_id].tags[Tag.REASON] == "pruned by ASHA at epoch 1"
    assert tracker.runs[done.run_id].status == RunStatus.RUNNING  # untouched (already ended before, in life)
    assert out.cut_off == [3, 5]  # the sampler's running trials: marked failed
    assert out.to_enqueue == [cut.params, {"batch_size": 512, "model.name": "cnn"}, cut_unknown.params]
    assert tracker.runs[orphan].deleted  # a run no journaled trial owns
    assert not any(tracker.runs[r.run_id].deleted for r in [done, failed, ended, cut, cut_unknown])


def test_a_trial_the_sampler_failed_after_a_recovery_cut_it_off_restarts(space):
    tracker = InMemoryTracker()
    parent = tracker.start_run("study")
    params = {"batch_size": 16, "model.name": "cnn"}
    run = tracker.start_run("trial-001", parent=parent, tags={Tag.KIND: RunKind.TRIAL})
    cut = TrialRecord("t", 1, params, space.resolve(params), run_id=run, optuna_number=0)
    out = reconcile([cut], [SampledTrial(0, FAIL, params, cut_off=True)], tracker, parent, max_epochs=3)
    assert out.restarts == [cut] and out.to_enqueue == [params] and out.cut_off == []


def test_a_sampler_trial_that_completed_without_a_journaled_epoch_restarts(space):
    tracker = InMemoryTracker()
    parent = tracker.start_run("study")
    params = {"batch_size": 16, "model.name": "cnn"}
    run = tracker.start_run("trial-001", parent=parent, tags={Tag.KIND: RunKind.TRIAL})
    cut = TrialRecord("t", 1, params, space.resolve(params), run_id=run, optuna_number=0)
    out = reconcile([cut], [SampledTrial(0, COMPLETE, params)], tracker, parent, max_epochs=3)
    assert out.restarts == [cut] and out.to_enqueue == [params]


def test_a_trial_the_sampler_heard_the_budget_stop_is_stopped_not_pruned(space):
    """Killed after the searcher told Optuna the time budget ended a trial, before the journal said so."""
    tracker = InMemoryTracker()
    parent = tracker.start_run("study")
    params = {"batch_size": 16, "model.name": "cnn"}
    run = tracker.start_run("trial-001", parent=parent, tags={Tag.KIND: RunKind.TRIAL})
    history = [{"epoch": 1, "val_accuracy": 0.5, "early_stop": False}]
    record = TrialRecord("t", 1, params, space.resolve(params), run_id=run, optuna_number=0, history=history)
    out = reconcile([record], [SampledTrial(0, PRUNED, params, stopped_by="budget")], tracker, parent, max_epochs=3)
    assert out.kept == [record] and record.status == TrialStatus.STOPPED and out.to_enqueue == []
    assert tracker.runs[run].tags[Tag.REASON] == "stopped at epoch 1: the search's budget ran out"


def test_recovery_touches_only_its_own_runs_trials_in_a_shared_study(space, tmp_path):
    """Two runs share one Optuna study: the killed run's recovery marks its own running trial cut off and
    enqueues it again; the other run's running trial is left alone."""
    import optuna

    from hpo.engine.recovery import CUT_OFF, recover_search
    from hpo.engine.run_dir import RUN, RunState, StudyDir
    from hpo.study import load_study

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study_file = tmp_path / "s.yaml"
    study_file.write_text(
        "name: s\nbudget: {trials: 2, max_epochs: 1}\ndataset: {name: fashion_mnist}\n"
        "search_space: {batch_size: {categorical: [16, 32]}, model: {one_of: {cnn: {depth: 2}}}}\n"
    )
    study = load_study(study_file)
    storage = f"sqlite:///{tmp_path / 'shared.db'}"
    run_dir = StudyDir(
        tmp_path / "20260101-010101", RunState(study="s", fingerprint="f", stage="search", optuna_study="s")
    )
    run_dir.path.mkdir()
    run_dir.shared_storage = storage
    shared = optuna.create_study(storage=storage, study_name="s", direction="maximize")
    raw = optuna.storages.get_storage(storage)
    for run, batch in (("20260101-010101", 16), ("other-night", 32)):
        shared.enqueue_trial({"batch_size": batch})
        trial = shared.ask({"batch_size": optuna.distributions.CategoricalDistribution([16, 32])})
        trial_id = raw.get_trial_id_from_study_id_trial_number(raw.get_study_id_from_name("s"), trial.number)
        raw.set_trial_system_attr(trial_id, RUN, run)
    mine, theirs = shared.get_trials(deepcopy=False)
    tracker = InMemoryTracker()
    recover_search(run_dir, study, tracker, tracker.start_run("study"))
    after = {t.number: t for t in optuna.load_study(study_name="s", storage=storage).get_trials(deepcopy=False)}
    assert after[mine.number].state.name == "FAIL" and after[mine.number].system_attrs[CUT_OFF]
    assert after[theirs.number].state.name == "RUNNING" and CUT_OFF not in after[theirs.number].system_attrs
    waiting = [t.system_attrs["fixed_params"] for t in after.values() if t.state.name == "WAITING"]
    assert waiting == [{"batch_size": 16}]  # enqueued again: runs first
