"""Each backend's result prints its own summary and gives its row of the side-by-side table; the runner's
outcome holds them by backend without naming any. In memory: no Ray, no MLflow, no training."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from rich.console import Console

from hpo.backends.autokeras import BaselineResult
from hpo.backends.base import RunContext
from hpo.backends.search import SearchOutcome
from hpo.engine.records import TrialRecord
from hpo.names import TrialStatus
from hpo.runner import StudyOutcome, print_comparison
from hpo.study import Study, load_study

STUDY = """\
name: t
dataset: {name: fashion_mnist}
search_space: {model: {name: cnn}, optimizer: {lr: {float: [0.01, 0.1]}}}
budget: {trials: 2, max_epochs: 2}
"""


@pytest.fixture
def study(tmp_path: Path) -> Study:
    (tmp_path / "study.yaml").write_text(STUDY)
    return load_study(tmp_path / "study.yaml")


def _printed(result, study: Study) -> str:
    console = Console(file=io.StringIO(), width=200)
    run = RunContext(
        study=study,
        data=None,  # the summaries read none of these
        tracker=None,
        run_dir=None,
        resumed=False,
        console=console,
        tracking_uri="sqlite:///mlflow.db",
    )
    result.print_summary(console, run)
    return console.file.getvalue()


def _record(number: int, accuracies: list[float], status: TrialStatus) -> TrialRecord:
    history = [{"epoch": i + 1, "val_accuracy": a} for i, a in enumerate(accuracies)]
    return TrialRecord(
        trial_id=f"t{number}",
        number=number,
        params={"optimizer.lr": 0.05},
        config=None,
        history=history,
        status=status,
    )


@pytest.fixture
def search() -> SearchOutcome:
    records = [_record(1, [0.5, 0.7], TrialStatus.COMPLETED), _record(2, [0.4], TrialStatus.PRUNED)]
    return SearchOutcome(
        run_id="study-run",
        records=records,
        winner=records[0],
        final=None,
        seconds=180.0,
        search_seconds=60.0,
        metric="val_accuracy",
        mode="max",
    )


@pytest.fixture
def baseline() -> BaselineResult:
    return BaselineResult(
        run_id="baseline-run",
        test_accuracy=0.8,
        test_loss=0.5,
        trials=1,
        trial_epochs=2,
        best_val_accuracy=0.75,
        search_seconds=30.0,
        wall_seconds=90.0,
        final_run_id="final-run",
        parameters=1234,
    )


def test_the_search_prints_its_trials_its_winner_and_its_wall_time(study, search):
    text = _printed(search, study)
    assert "2 (1 completed, 1 pruned)" in text
    assert "#1: val_accuracy 0.7000 at epoch 2" in text
    assert "optimizer.lr = 0.05" in text and "study-run" in text and "sqlite:///mlflow.db" in text
    assert "3.0 min" in text  # the wall time, not the search's 1.0 min
    row = search.summary()
    assert (row.backend, row.trials, row.trial_epochs, row.best_value) == ("search", 2, 3, 0.7)
    assert (row.search_seconds, row.wall_seconds, row.test_accuracy) == (60.0, 180.0, None)


def test_the_baseline_prints_its_own_summary(study, baseline):
    text = _printed(baseline, study)
    assert "autokeras baseline" in text and "1,234 parameters" in text and "final-run" in text
    assert "1 (2 epochs)" in text and "best val_accuracy" in text and "1.5 min" in text
    assert baseline.summary().backend == "autokeras"


def test_the_outcome_holds_each_backends_result_and_compares_them(study, search, baseline):
    outcome = StudyOutcome(results={"search": search, "autokeras": baseline}, seconds=1.0, tracking_uri="u")
    assert outcome.result(SearchOutcome) is search and outcome.result(BaselineResult) is baseline
    with pytest.raises(LookupError, match="no int among this run's results"):
        outcome.result(int)
    console = Console(file=io.StringIO(), width=200)
    print_comparison(console, study, outcome.summaries())
    rows = [line.split("│")[1].strip() for line in console.file.getvalue().splitlines() if line.startswith("│")]
    assert rows == ["search", "autokeras"]
