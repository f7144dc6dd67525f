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
