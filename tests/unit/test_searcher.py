"""hpo's searcher tells Optuna what happened to each trial (hpo.engine.searcher), against real Optuna storage
(a SQLite file): driven with the calls Ray Tune makes (suggest, on_trial_result, on_trial_complete) in the
order Ray 2.60's controller makes them (the result that ends a trial comes only with on_trial_complete)."""

from __future__ import annotations

import warnings
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from hpo.config.study import Objectives
from hpo.config.yaml_loader import parse_yaml
from hpo.engine.run_dir import RUN, STOPPED_BY
from hpo.engine.searcher import OptunaSearcher
from hpo.errors import HpoError
from hpo.space import parse_space

SPACE = "optimizer: {lr: {float: [1.0e-4, 1.0e-1], log: true}}\nbatch_size: {categorical: [32, 64]}\n"
MAX_EPOCHS = 4


@pytest.fixture(scope="module")
def space():
    return parse_space(parse_yaml(SPACE, Path("s.yaml")))


@pytest.fixture
def storage(tmp_path) -> str:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return f"sqlite:///{tmp_path / 'optuna.db'}"


def searcher(space, storage, objective=None, *, run="run-1", points=(), seed=0) -> OptunaSearcher:
    return OptunaSearcher(
        space,
        Objectives.model_validate(objective or {"metric": "val_accuracy"}),
        sampler=optuna.samplers.RandomSampler(seed=seed),
        storage=storage,
        study_name="study",
        max_epochs=MAX_EPOCHS,
        run=run,
        points=points,
    )


def epoch(n: int, acc: float, **more) -> dict:
    return {"epoch": n, "training_iteration": n, "val_accuracy": acc, "early_stop": False, **more}


def run_trial(s: OptunaSearcher, trial_id: str, accs: list[float], *, end: str = "complete", **last) -> int:
    """Tune's calls for one trial: each epoch but the last through on_trial_result, the last with
    on_trial_complete (as Ray does when its scheduler, or the trial's end, decides STOP)."""
    s.suggest(trial_id)
    results = [epoch(i + 1, a) for i, a in enumerate(accs)]
    results[-1].update(last)
    for r in results[:-1]:
        s.on_trial_result(trial_id, r)
    if end == "error":
        s.on_trial_result(trial_id, results[-1])
        s.on_trial_complete(trial_id, error=True)
    elif end == "budget":
        s.on_trial_result(trial_id, results[-1])  # Tune then tells the searcher nothing more
    else:
        s.on_trial_complete(trial_id, result=results[-1])
    number = s.optuna_number(trial_id)
    assert number is not None
    return number


def stored(storage: str) -> dict[int, optuna.trial.FrozenTrial]:
    return {t.number: t for t in optuna.load_study(study_name="study", storage=storage).get_trials(deepcopy=False)}


def test_each_trial_is_told_what_really_happened(space, storage):
    s = searcher(space, storage)
    pruned = run_trial(s, "asha", [0.50, 0.55])  # ASHA stopped it at epoch 2 of 4
    full = run_trial(s, "full", [0.60, 0.80, 0.75, 0.70])  # ran its budget; best at epoch 2
    early = run_trial(s, "early", [0.62, 0.64, 0.63], early_stop=True)  # its own early stopping
    failed = run_trial(s, "boom", [0.40], end="error")
    budget = run_trial(s, "budget", [0.52, 0.58, 0.61], end="budget")
    never = s.suggest("never") and s.optuna_number("never")  # asked, then the budget ran out before it ran
    s.close("budget")

    trials = stored(storage)
    assert trials[pruned].state == TrialState.PRUNED
    assert trials[pruned].intermediate_values == {1: 0.50, 2: 0.55}
    assert trials[pruned].system_attrs[STOPPED_BY] == "scheduler"
    assert trials[full].state == TrialState.COMPLETE and trials[full].value == 0.80  # the best, not the last
    assert trials[full].intermediate_values == {1: 0.60, 2: 0.80, 3: 0.75, 4: 0.70}
    assert trials[early].state == TrialState.COMPLETE and trials[early].value == 0.64
    assert trials[failed].state == TrialState.FAIL
    assert trials[budget].state == TrialState.PRUNED and trials[budget].system_attrs[STOPPED_BY] == "budget"
    assert trials[budget].intermediate_values == {1: 0.52, 2: 0.58, 3: 0.61}
    assert never is not None and trials[never].state == TrialState.FAIL  # never measured: not ranked as worst
    assert trials[never].system_attrs[STOPPED_BY] == "budget"
    assert {t.system_attrs[RUN] for t in trials.values()} == {"run-1"}
    assert [s.optuna_number(i) for i in ("asha", "full")] == [pruned, full] and s.optuna_number("other") is None


def test_a_deadline_stop_is_not_complete_and_says_so(space, storage):
    s = searcher(space, storage)
    number = run_trial(s, "t", [0.5, 0.6], end="budget")
    s.close("deadline")
    trial = stored(storage)[number]
    assert trial.state == TrialState.PRUNED and trial.system_attrs[STOPPED_BY] == "deadline"


def test_a_retried_trial_reports_its_epochs_again_quietly_and_is_told_its_last_attempt(space, storage):
    s = searcher(space, storage)
    s.suggest("t")
    s.on_trial_result("t", epoch(1, 0.9))
    s.on_trial_result("t", epoch(2, 0.91))  # then it failed, and Ray retries it under the same id
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Optuna's "step already reported" warning would fail the test
        for n, acc in enumerate([0.5, 0.6, 0.7], start=1):
            s.on_trial_result("t", epoch(n, acc))
        s.on_trial_complete("t", result=epoch(4, 0.65))
    trial = stored(storage)[s.optuna_number("t") or 0]
    assert trial.state == TrialState.COMPLETE and trial.value == 0.7  # the attempt that finished
    assert trial.intermediate_values == {1: 0.9, 2: 0.91, 3: 0.7, 4: 0.65}  # Optuna keeps each step's first


def test_several_objectives(space, storage):
    objectives = [{"metric": "val_accuracy"}, {"metric": "params"}, {"metric": "latency_ms"}]
    s = searcher(space, storage, objectives)
    costs = {"params": 12_000.0, "latency_ms": 1.5}
    s.suggest("full")
    for n, acc in enumerate([0.6, 0.8, 0.7], start=1):
        s.on_trial_result("full", epoch(n, acc, **costs))
    s.on_trial_complete("full", result=epoch(4, 0.75, params=12_000.0, latency_ms=1.25))
    pruned = run_trial(s, "pruned", [0.4], **costs)
    trials = stored(storage)
    full = trials[s.optuna_number("full") or 0]
    assert full.state == TrialState.COMPLETE and full.values == [0.8, 12_000.0, 1.25]  # others: the last result's
    assert full.intermediate_values == {}  # Optuna refuses report() on a multi-objective study
    assert trials[pruned].state == TrialState.PRUNED and trials[pruned].values is None
    study = optuna.load_study(study_name="study", storage=storage)
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE", "MINIMIZE"]


def test_a_shared_study_with_other_directions_is_refused_naming_both(space, storage):
    searcher(space, storage)  # val_accuracy, maximised
    with pytest.raises(HpoError, match=r"optimises maximize.*val_loss \(min\).*\(minimize\)"):
        searcher(space, storage, {"metric": "val_loss"})


def test_start_points_come_first_and_those_another_run_evaluated_are_skipped(space, storage):
    point = {"optimizer.lr": 0.01, "batch_size": 64}
    other = {"optimizer.lr": 0.002, "batch_size": 32}
    first = searcher(space, storage, run="night-1", points=[point])
    assert first.suggest("a") == point
    first.on_trial_complete("a", result=epoch(MAX_EPOCHS, 0.8))
    second = searcher(space, storage, run="night-2", points=[point, other])
    assert second.skipped_points == [point]
    assert second.suggest("b") == other
    assert stored(storage)[second.optuna_number("b") or 0].system_attrs[RUN] == "night-2"


def test_a_pickled_searcher_opens_its_study_again(space, storage):
    """Tune pickles the search algorithm with its tuner (and runs it remotely under Ray Client)."""
    import pickle

    s = searcher(space, storage)
    run_trial(s, "a", [0.5, 0.6, 0.7, 0.8])
    copy = pickle.loads(pickle.dumps(s))
    number = run_trial(copy, "b", [0.4, 0.45])
    assert stored(storage)[number].state == TrialState.PRUNED and copy.optuna_number("a") == 0
