"""A robust re-check: real Ray tasks, one running out of memory for real (a batch of 800 at width 256 under
a 300 MiB ``memory_per_trial``, RLIMIT_DATA on the CPU) and one whose loss goes NaN for real (lr 10 with
momentum 0.99, batches of 4, no batch norm: NaN in the first epoch at seed 1001); each is recorded (its run
failed with the reason, the table shows it) and the stage finishes with the rest. When every run fails, the
search's winner stands, with a note."""

from __future__ import annotations

import csv

import pytest

from hpo.engine.records import TrialRecord
from hpo.names import RunKind, RunStatus, Tag, TrialStatus
from hpo.stages.recheck import recheck
from hpo.tracking import InMemoryTracker

pytestmark = pytest.mark.integration  # real Ray tasks

SPACE = """\
model: {name: cnn, depth: 2, width: {categorical: [8, 256]}, batchnorm: {categorical: [before_activation, none]}}
optimizer: {name: sgd, momentum: 0.99, lr: {categorical: [0.05, 10.0]}}
batch_size: {categorical: [4, 64, 1000]}
schedule: {name: constant, warmup_fraction: 0}
"""
STUDY = """\
name: recheck-faults
seed: 1
dataset: {{name: fashion_mnist, validation_split: 0.2, subset: {{train: 1000, test: 200}}, data_dir: {data}}}
search_space: space.yaml
objective: {{metric: val_accuracy}}
budget: {{trials: 3, max_epochs: 1}}
resources: {{cpus_per_trial: 1, memory_per_trial: 300MiB}}
final: {{recheck: {{top_k: {top_k}, seeds: 1}}}}
"""
OK = {"model.width": 8, "model.batchnorm": "before_activation", "optimizer.lr": 0.05, "batch_size": 64}
NAN = {"model.width": 8, "model.batchnorm": "none", "optimizer.lr": 10.0, "batch_size": 4}
OOM = {"model.width": 256, "model.batchnorm": "before_activation", "optimizer.lr": 0.05, "batch_size": 1000}


@pytest.fixture(scope="module")
def ray_local():
    import ray

    if ray.is_initialized():
        pytest.skip("Ray is already running in this process")
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    try:
        yield ray
    finally:
        ray.shutdown()


def _study(tmp_path, data_dir, top_k: int):
    from hpo.data import load_data
    from hpo.study import load_study

    (tmp_path / "space.yaml").write_text(SPACE)
    (tmp_path / "study.yaml").write_text(STUDY.format(data=data_dir, top_k=top_k))
    study = load_study(tmp_path / "study.yaml")
    return study, load_data(study.config.dataset, seed=study.config.seed)


def _records(study, points: list[tuple[dict, float]]) -> list[TrialRecord]:
    """Search results that rank the points in the order given (best first)."""
    return [
        TrialRecord(
            f"t{i}",
            i,
            params,
            study.space.resolve(params),
            history=[{"epoch": 1, "val_accuracy": value}],
            status=TrialStatus.COMPLETED,
        )
        for i, (params, value) in enumerate(points, start=1)
    ]


def _rechecks(tracker: InMemoryTracker, parent: str) -> dict[int, object]:
    """The re-check runs by the trial number they re-ran."""
    return {
        int(run.data.tags[Tag.TRIAL_ID].removeprefix("t")): run for run in tracker.child_runs(parent, RunKind.RECHECK)
    }


def test_a_run_out_of_memory_and_a_run_gone_nan_are_recorded_and_the_rest_decide(ray_local, tmp_path, data_dir):
    study, data = _study(tmp_path, data_dir, top_k=3)
    records = _records(study, [(OOM, 0.9), (NAN, 0.8), (OK, 0.7)])
    tracker = InMemoryTracker()
    parent = tracker.start_run("study", tags={Tag.KIND: RunKind.STUDY})

    result = recheck(study, data, records, tracker, parent)

    assert result is not None and not result.fell_back
    assert result.winner is records[2]  # the only one that finished
    runs = _rechecks(tracker, parent)
    assert set(runs) == {1, 2, 3}
    oom, nan, ok = runs[1], runs[2], runs[3]
    assert oom.info.status == nan.info.status == RunStatus.FAILED and ok.info.status == RunStatus.FINISHED
    assert oom.data.tags[Tag.STATUS] == TrialStatus.INFEASIBLE
    assert oom.data.tags[Tag.ERROR].startswith(
        "TrialOutOfMemory: out of memory with batch size 1000 on cpu, capped at 300.0 MiB"
    ), oom.data.tags[Tag.ERROR]
    assert nan.data.tags[Tag.STATUS] == TrialStatus.FAILED
    assert nan.data.tags[Tag.ERROR].startswith("FloatingPointError: training loss became"), nan.data.tags
    assert ok.data.tags[Tag.DEVICE] == "cpu" and "val_accuracy" in ok.data.metrics
    assert "2 of 3 re-check runs failed" in result.note and "out, with no run finished: trial #1, #2" in result.note
    assert tracker.runs[parent].tags[Tag.RECHECK_NOTE] == result.note

    table = list(csv.DictReader(tracker.runs[parent].artifacts["recheck.csv"].splitlines()))
    by_trial = {int(row["trial"]): row for row in table}
    assert by_trial[1]["failed"] == "1" and "TrialOutOfMemory" in by_trial[1]["errors"]
    assert by_trial[2]["failed"] == "1" and "FloatingPointError" in by_trial[2]["errors"]
    assert by_trial[3]["failed"] == "0" and by_trial[3]["chosen"] == "True" and by_trial[3]["mean_best_val_accuracy"]


def test_when_every_run_fails_the_searchs_winner_stands_with_a_note(ray_local, tmp_path, data_dir):
    study, data = _study(tmp_path, data_dir, top_k=2)
    records = _records(study, [(NAN, 0.8), (OOM, 0.7)])
    tracker = InMemoryTracker()
    parent = tracker.start_run("study", tags={Tag.KIND: RunKind.STUDY})

    result = recheck(study, data, records, tracker, parent)

    assert result is not None and result.fell_back
    assert result.winner is records[0] and result.best_epoch == 1 and result.mean == 0.8
    assert (
        result.note.startswith("every re-check run failed (trial #")
        and "the search's winner, trial #1, stands" in result.note
    )
    assert all(run.info.status == RunStatus.FAILED for run in _rechecks(tracker, parent).values())
