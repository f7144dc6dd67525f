"""The driver's trial bookkeeping (``TrialBook``) on an in-memory tracker: records, runs, tags, metrics and
the journal for each trial event, with no Ray and no MLflow."""

from __future__ import annotations

from pathlib import Path

import pytest

from hpo.config.yaml_loader import parse_yaml
from hpo.engine.records import TrialRecord
from hpo.engine.trial_book import HISTORY_KEYS, OUTPUT, TrialBook, classify, error_status, error_text
from hpo.names import COST_METRICS, EPOCH_METRICS, Artifact, Metric, RunKind, RunStatus, Tag, TrialStatus
from hpo.space import SearchSpace, parse_space
from hpo.tracking import InMemoryTracker, Tracker

SPACE = """\
model:
  one_of:
    cnn:
      depth: {int: [2, 6], step: 2}
      width: {categorical: [16, 32]}
optimizer:
  one_of:
    sgd: {lr: {float: [0.01, 0.1], log: true}, momentum: 0.8}
batch_size: {categorical: [64, 128]}
"""
PARAMS = {"model.name": "cnn", "model.cnn.depth": 4, "model.cnn.width": 16, "optimizer.name": "sgd",
          "optimizer.sgd.lr": 0.05, "batch_size": 64}  # fmt: skip
OTHER = {**PARAMS, "model.cnn.width": 32}


@pytest.fixture(scope="module")
def space() -> SearchSpace:
    return parse_space(parse_yaml(SPACE, Path("s.yaml")))


class Journal:
    def __init__(self) -> None:
        self.writes: list[list[dict]] = []

    def __call__(self, records: list[TrialRecord]) -> None:
        self.writes.append([r.to_json() for r in records])


def result(epoch: int, val_accuracy: float, **extra) -> dict:
    return {
        "epoch": epoch,
        **dict.fromkeys((*EPOCH_METRICS, *COST_METRICS), 0.5),  # a trial's costs come with every epoch
        Metric.VAL_ACCURACY: val_accuracy,
        "early_stop": False,
        "trial_started": 100.0,
        "reported_at": 100.0 + epoch,
        "pid": 42,
        "node": "node-1",
        "done": False,  # Ray's own keys are not kept
        **extra,
    }


def make_book(space, tracker, *, records=None, restarts=None, max_epochs=3, **kwargs) -> tuple[TrialBook, str]:
    parent = tracker.start_run("study", tags={Tag.KIND: RunKind.STUDY})
    return TrialBook(space, tracker, parent, records if records is not None else [], max_epochs,
                     restarts=restarts, **kwargs), parent  # fmt: skip


def test_the_in_memory_tracker_is_a_tracker():
    assert isinstance(InMemoryTracker(), Tracker)


def test_a_trial_that_runs_its_budget_is_recorded_tracked_and_journaled(space):
    tracker, journal, seen = InMemoryTracker(), Journal(), []
    book, parent = make_book(space, tracker, journal=journal, on_change=seen.append, optuna_number=lambda _: 7)
    record = book.started("t1", PARAMS)
    assert (record.number, record.optuna_number, record.status) == (1, 7, TrialStatus.RUNNING)
    run = tracker.runs[record.run_id]
    assert run.parent == parent and run.name == "trial-001"
    assert run.tags[Tag.KIND] == RunKind.TRIAL and run.tags[Tag.STATUS] == TrialStatus.RUNNING
    assert run.tags[Tag.TRIAL_KEY] == f"{parent}:1" and run.tags[Tag.ATTEMPT] == "1"
    assert run.params["model.depth"] == "4" and run.params["batch_size"] == "64"

    for epoch, value in enumerate([0.6, 0.7, 0.65], start=1):
        book.reported("t1", result(epoch, value))
    assert list(record.history[0]) == list(HISTORY_KEYS)  # Ray's own keys dropped, order kept
    assert tracker.metrics_of(record.run_id, Metric.VAL_ACCURACY) == [0.6, 0.7, 0.65]
    assert [p.step for p in tracker.metric_history(record.run_id, Metric.VAL_ACCURACY)] == [1, 2, 3]
    assert "epoch" not in run.metrics and "early_stop" not in run.metrics
    assert run.tags[Tag.NODE] == "node-1" and record.worker_pid == 42 and record.worker_last == 103.0

    book.completed("t1")
    assert record.status == TrialStatus.COMPLETED and record.ended is not None
    assert run.status == RunStatus.FINISHED
    assert run.tags[Tag.STATUS] == TrialStatus.COMPLETED and run.tags[Tag.REASON] == "completed 3 epochs"
    assert run.tags[Tag.EPOCHS] == "3"
    assert journal.writes[-1][0]["status"] == TrialStatus.COMPLETED and len(journal.writes) == 5
    assert seen == [record] * 5


def test_a_trial_cut_at_a_rung_is_pruned_and_one_the_search_stops_is_stopped(space):
    tracker = InMemoryTracker()
    book, _ = make_book(space, tracker, max_epochs=4)
    pruned, stopped = book.started("a", PARAMS), book.started("b", OTHER)
    book.reported("a", result(1, 0.5))
    book.completed("a")
    assert pruned.status == TrialStatus.PRUNED
    assert tracker.runs[pruned.run_id].tags[Tag.PRUNED_AT_EPOCH] == "1"
    assert tracker.runs[pruned.run_id].status == RunStatus.KILLED
    book.stop_reason = "the deadline is near"
    book.reported("b", result(1, 0.5))
    book.completed("b")
    assert stopped.status == TrialStatus.STOPPED
    assert tracker.runs[stopped.run_id].tags[Tag.REASON] == "stopped at epoch 1: the deadline is near"


def test_an_error_fails_the_trial_and_out_of_memory_makes_it_infeasible(space):
    tracker = InMemoryTracker()
    book, _ = make_book(space, tracker)
    failed, oom = book.started("a", PARAMS), book.started("b", OTHER)
    book.errored("a", "ValueError: bad")
    book.errored("b", "TrialOutOfMemory: out of memory with batch size 64 on cpu")
    assert (failed.status, oom.status) == (TrialStatus.FAILED, TrialStatus.INFEASIBLE)
    assert tracker.runs[failed.run_id].status == tracker.runs[oom.run_id].status == RunStatus.FAILED
    assert tracker.runs[failed.run_id].tags[Tag.ERROR] == "ValueError: bad"
    assert tracker.runs[failed.run_id].tags[Tag.REASON] == "failed: ValueError: bad"
    book.errored("unknown", "ValueError: x")  # a trial it never saw start: ignored


def test_a_retried_trial_replaces_its_run_and_keeps_its_number(space):
    tracker = InMemoryTracker()
    book, _ = make_book(space, tracker)
    record = book.started("a", PARAMS)
    first_run = record.run_id
    book.reported("a", result(1, 0.5))
    book.retried("a", "RuntimeError: flaky")
    assert record.status == TrialStatus.RETRYING and record.attempts == 2 and record.history == []
    assert tracker.runs[first_run].deleted and record.run_id != first_run
    run = tracker.runs[record.run_id]
    assert run.tags[Tag.ATTEMPT] == "2" and run.tags[Tag.RETRY_ERRORS] == "RuntimeError: flaky"
    again = book.started("a", PARAMS)  # Ray starts it again
    assert again is record and record.status == TrialStatus.RUNNING and record.number == 1
    assert [r.info.run_id for r in tracker.child_runs(book.parent_run, RunKind.TRIAL)] == [record.run_id]


def test_a_restarted_trial_gets_its_old_number_and_its_cut_off_run_is_replaced(space, tmp_path):
    tracker = InMemoryTracker()
    parent = tracker.start_run("study", tags={Tag.KIND: RunKind.STUDY})
    old_run = tracker.start_run("trial-002", parent=parent, tags={Tag.KIND: RunKind.TRIAL})
    done = TrialRecord("old-1", 1, OTHER, space.resolve(OTHER), status=TrialStatus.COMPLETED)
    cut = TrialRecord("old-2", 2, PARAMS, space.resolve(PARAMS), run_id=old_run)
    book = TrialBook(space, tracker, parent, [done], 3, restarts=[cut])
    assert book.started("new", PARAMS).number == 2 and tracker.runs[old_run].deleted
    assert book.started("newer", OTHER).number == 3  # new parameters: the next free number


def test_after_the_search_unfinished_and_unrestarted_trials_end_stopped(space):
    tracker = InMemoryTracker()
    parent = tracker.start_run("study", tags={Tag.KIND: RunKind.STUDY})
    cut_run = tracker.start_run("trial-001", parent=parent, tags={Tag.KIND: RunKind.TRIAL})
    cut = TrialRecord("old-1", 1, OTHER, space.resolve(OTHER), run_id=cut_run, history=[{"epoch": 1}])
    records: list[TrialRecord] = []
    book = TrialBook(space, tracker, parent, records, 3, restarts=[cut])
    running = book.started("a", PARAMS)
    book.close_unfinished()
    assert [r.number for r in records] == [1, 2]
    assert running.status == cut.status == TrialStatus.STOPPED
    assert tracker.runs[running.run_id].tags[Tag.REASON] == "stopped at epoch 0: the search's time budget ran out"
    assert "cut off by a crash" in tracker.runs[cut_run].tags[Tag.REASON]
    assert tracker.runs[cut_run].status == RunStatus.KILLED and tracker.runs[cut_run].tags[Tag.EPOCHS] == "1"


def test_the_plan_is_tagged_once_and_handed_on(space):
    tracker, plans = InMemoryTracker(), []
    book, _ = make_book(space, tracker, on_plan=lambda record, key: plans.append(key))
    record = book.started("a", PARAMS)
    plan = {"plan": {"precision": "fp32"}, "plan_key": "k1", "plan_tags": {Tag.PLAN_PRECISION: "fp32"}}
    book.reported("a", result(1, 0.5, **plan))
    book.reported("a", result(2, 0.5, **plan))
    assert plans == ["k1"] and record.plan == {"precision": "fp32"}
    assert tracker.runs[record.run_id].tags[Tag.PLAN_PRECISION] == "fp32"


def test_every_attempts_run_carries_the_device_the_trial_reported(space):
    from hpo.engine.devices import Device

    tracker = InMemoryTracker()
    book, _ = make_book(space, tracker)
    record = book.started("a", PARAMS)
    gpu = Device("cuda", "NVIDIA A100-SXM4-40GB", "8.0", 0.25, ("3",)).tags()
    book.reported("a", result(1, 0.5, device_tags=gpu))
    first = record.run_id
    book.retried("a", "InjectedFault: boom")
    book.reported("a", result(1, 0.5, device_tags=gpu))  # the retry's own run, tagged again
    assert first != record.run_id
    for run_id in (first, record.run_id):
        tags = tracker.runs[run_id].tags
        assert tags[Tag.DEVICE] == "cuda" and tags[Tag.DEVICE_NAME] == "NVIDIA A100-SXM4-40GB"
        assert tags[Tag.DEVICE_CAPABILITY] == "8.0" and tags[Tag.GPU_SHARE] == "0.25" and tags[Tag.GPU_IDS] == "3"


def test_a_retry_on_the_same_node_names_its_node_and_plan_on_its_new_run(space):
    tracker, plans = InMemoryTracker(), []
    book, _ = make_book(space, tracker, on_plan=lambda record, key: plans.append(key))
    record = book.started("a", PARAMS)
    plan = {"plan": {"precision": "fp32"}, "plan_key": "k1", "plan_tags": {Tag.PLAN_PRECISION: "fp32"}}
    book.reported("a", result(1, 0.5, **plan))
    book.retried("a", "TrialProcessDied: the trial's process died")
    book.reported("a", result(1, 0.5, **plan))  # the same node ("node-1") and plan as the first attempt
    tags = tracker.runs[record.run_id].tags
    assert tags[Tag.NODE] == "node-1" and tags[Tag.PLAN_PRECISION] == "fp32", tags
    assert plans == ["k1"]  # handed on once


def test_what_ray_pickles_leaves_the_view_and_journal_behind(space):
    import pickle

    book, _ = make_book(space, InMemoryTracker(), journal=Journal(), on_change=print, optuna_number=lambda _: 1)
    book.started("a", PARAMS)
    book.reported("a", result(1, 0.5, **{OUTPUT: "x" * 1000}))
    state = book.__getstate__()
    assert state["journal"] is not book.journal and state["on_change"] is not print
    assert state["optuna_number"]("x") is None
    assert state["outputs"] == {} and len(book.outputs["a"].text()) == 1000  # Ray snapshots often: not the logs
    pickle.dumps(state["journal"])


def test_each_trial_run_gets_its_output_and_a_failed_one_its_whole_traceback(space):
    tracker = InMemoryTracker()
    book, _ = make_book(space, tracker, max_epochs=2)
    ok, failed, silent = book.started("a", PARAMS), book.started("b", OTHER), book.started("c", PARAMS)
    book.reported("a", result(1, 0.5, **{OUTPUT: "epoch 1 of a\n"}))
    book.reported("b", result(1, 0.5, **{OUTPUT: "epoch 1 of b\n"}))
    book.reported("a", result(2, 0.6, **{OUTPUT: "epoch 2 of a\n"}))
    book.completed("a")
    traceback = "Traceback (most recent call last):\n" + '  File "x.py", line 1, in f\n' * 200 + "ValueError: bad"
    book.errored("b", "ValueError: bad", traceback, "after the last report\n")
    book.close_unfinished()  # ran here but wrote nothing: an empty log all the same
    artifacts = {tracker.runs[r.run_id].name: tracker.runs[r.run_id].artifacts for r in (ok, failed, silent)}
    assert artifacts["trial-001"] == {Artifact.TRIAL_LOG: "epoch 1 of a\nepoch 2 of a\n"}
    assert artifacts["trial-002"][Artifact.TRIAL_LOG] == "epoch 1 of b\nafter the last report\n"
    assert artifacts["trial-002"][Artifact.TRACEBACK] == traceback  # all of it, not the tag's 500 characters
    assert artifacts["trial-003"] == {Artifact.TRIAL_LOG: ""}
    assert book.outputs == {}  # handed over: nothing held for ended trials


def test_a_retried_trials_new_run_keeps_the_failed_attempts_traceback_and_output(space):
    tracker = InMemoryTracker()
    book, _ = make_book(space, tracker)
    record = book.started("a", PARAMS)
    book.reported("a", result(1, 0.5, **{OUTPUT: "first attempt\n"}))
    book.retried("a", "RuntimeError: flaky", "Traceback ...\nRuntimeError: flaky", "its last words\n")
    book.started("a", PARAMS)
    book.reported("a", result(1, 0.5, **{OUTPUT: "second attempt\n"}))
    book.completed("a")
    assert tracker.runs[record.run_id].artifacts == {
        f"attempt-1/{Artifact.TRIAL_LOG}": "first attempt\nits last words\n",
        f"attempt-1/{Artifact.TRACEBACK}": "Traceback ...\nRuntimeError: flaky",
        Artifact.TRIAL_LOG: "second attempt\n",
    }


@pytest.mark.parametrize(
    ("rows", "status", "reason"),
    [
        ([{"early_stop": False}] * 3, TrialStatus.COMPLETED, "completed 3 epochs"),
        ([{"early_stop": False}, {"early_stop": True}], TrialStatus.EARLY_STOPPED, "early stopping at epoch 2"),
        ([{"early_stop": True}] * 3, TrialStatus.EARLY_STOPPED, "early stopping at epoch 3"),  # before the budget
        ([{"early_stop": False}], TrialStatus.PRUNED, "pruned by ASHA at epoch 1"),
        ([], TrialStatus.PRUNED, "pruned by ASHA at epoch 0"),
    ],
)
def test_classify(space, rows, status, reason):
    record = TrialRecord("t", 1, PARAMS, space.resolve(PARAMS), history=rows)
    assert classify(record, 3) == (status, reason)


def test_error_text_and_status():
    assert error_text("ray.exceptions.RayTaskError: boom") == "RayTaskError: boom"
    assert error_text("hpo.engine.limits.TrialOutOfMemory: big") == "TrialOutOfMemory: big"
    assert error_text("The worker process has died").startswith("TrialProcessDied: ")
    assert error_status("TrialOutOfMemory: big") == TrialStatus.INFEASIBLE
    assert error_status("ValueError: x") == TrialStatus.FAILED
