"""Every sampler and every scheduler, end to end: a tiny study (400 Fashion-MNIST images, 3 trials of at
most 2 epochs of a small CNN, no final stage) runs in this process on one local Ray for the module, and
the Optuna storage and the trials show that the named strategy did the work: each sampler (with ASHA)
proposed the trials and left its own marks, each other scheduler (with TPE) stopped, or did not stop,
the weak trial as it should."""

from __future__ import annotations

import io
import math
from pathlib import Path

import pytest
from rich.console import Console

from hpo.backends.search import SearchOutcome
from hpo.engine import strategies

pytestmark = pytest.mark.integration

# Numeric ranges every trial has, each with a step: a space every sampler fits (the grid has 3 x 30 points).
SPACE = """\
model: {name: cnn, depth: 2, width: 8}
optimizer: {name: sgd, momentum: 0.9, lr: {float: [0.0002, 0.06], step: 0.0002}}
schedule: {name: constant, warmup_fraction: 0}
batch_size: 16
augment: {hflip: {float: [0.0, 0.5], step: 0.25}}
"""
STUDY = """\
name: {name}
seed: 0
dataset: {{name: fashion_mnist, validation_split: 0.2, subset: {{train: 400, test: 100}}, data_dir: {data}}}
search_space: space.yaml
objective: {{metric: val_accuracy}}
budget: {{trials: 3, max_epochs: 2}}
sampler: {sampler}
scheduler: {scheduler}
# A fixed plan: nothing measured per run.
resources: {{cpus_per_trial: 1, max_concurrent: {concurrent}, precision: fp32, channels_last: false, compile: false}}
final: {{enabled: false}}
"""
ASHA = "{type: asha, grace_period: 1, reduction_factor: 2}"
# The model-based samplers model from the first finished trial on (a single start-up trial).
SAMPLER_CASES = {
    "tpe": "{type: tpe, startup_trials: 1}",
    "gp": "{type: gp, startup_trials: 1}",
    "cmaes": "{type: cmaes, startup_trials: 1}",
    "random": "random",
    "qmc": "qmc",
    "grid": "grid",
    "nsga2": "{type: nsga2, startup_trials: 1}",
}
SCHEDULER_CASES = {
    "hyperband": "{type: hyperband, grace_period: 1, reduction_factor: 2, brackets: 1}",
    "median": "{type: median, grace_period: 1}",
    "none": "none",  # a scheduler by its name alone
}
# Two learning rates that learn and one too small to move the network in an epoch: the weak trial, last.
POINTS = [
    {"optimizer.lr": 0.05, "augment.hflip": 0.0},
    {"optimizer.lr": 0.04, "augment.hflip": 0.0},
    {"optimizer.lr": 0.0002, "augment.hflip": 0.0},
]


@pytest.fixture(scope="module")
def local_ray(tmp_path_factory):
    """One Ray for the module, and one MLflow store (a new SQLite store costs its migrations): its URI."""
    import ray

    from hpo.engine.ray_tune import start_ray

    start_ray(None, num_cpus=2)
    yield f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    ray.shutdown()


def run(tracking: str, tmp_path: Path, data_dir: Path, monkeypatch, sampler: str, scheduler: str, points=None):
    """Run the study; return (what run_search built: {"sampler": ..., "scheduler": ...}, the search's
    records, the Optuna study in the run's storage)."""
    import optuna

    from hpo.runner import run_study
    from hpo.study import load_study

    monkeypatch.chdir(tmp_path)
    (tmp_path / "space.yaml").write_text(SPACE)
    # The scheduler cases run one trial at a time, so that each trial meets the ones before it; the
    # sampler cases two at once, as the CPUs allow.
    concurrent = 1 if points else 2
    text = STUDY.format(
        name=f"strategies-{tmp_path.name}", data=data_dir, sampler=sampler, scheduler=scheduler, concurrent=concurrent
    )
    (tmp_path / "study.yaml").write_text(text)
    study = load_study(tmp_path / "study.yaml")
    built: dict = {}
    make_sampler, make_scheduler = strategies.make_sampler, strategies.make_scheduler

    def spy_sampler(study, seed):
        built["sampler"] = make_sampler(study, seed)
        return built["sampler"]

    def spy_scheduler(study, records):
        built["scheduler"] = make_scheduler(study, records)
        return built["scheduler"]

    monkeypatch.setattr(strategies, "make_sampler", spy_sampler)
    monkeypatch.setattr(strategies, "make_scheduler", spy_scheduler)
    screen = io.StringIO()
    outcome = run_study(study, tracking_uri=tracking, console=Console(file=screen), live=False, points=points)
    records = outcome.result(SearchOutcome).records
    (db,) = (tmp_path / "runs").glob("*/*/optuna.db")
    optuna_study = optuna.load_study(study_name=None, storage=f"sqlite:///{db}")
    return built, records, optuna_study


@pytest.mark.parametrize("name", list(SAMPLER_CASES))
def test_each_sampler_proposes_the_trials_of_a_study(local_ray, tmp_path, data_dir, monkeypatch, name):
    import optuna
    from optuna.trial import TrialState

    built, records, ot = run(local_ray, tmp_path, data_dir, monkeypatch, SAMPLER_CASES[name], ASHA)
    sampler = built["sampler"]
    kinds = {
        "tpe": optuna.samplers.TPESampler,
        "gp": optuna.samplers.GPSampler,
        "cmaes": optuna.samplers.CmaEsSampler,
        "random": optuna.samplers.RandomSampler,
        "qmc": optuna.samplers.QMCSampler,
        "grid": optuna.samplers.GridSampler,
        "nsga2": optuna.samplers.NSGAIISampler,
    }
    assert isinstance(sampler, kinds[name])
    assert type(built["scheduler"]).__name__ == "AsyncHyperBandScheduler"  # ASHA
    assert len(records) == 3 and all(r.status in ("completed", "pruned") for r in records), records
    trials = ot.get_trials(deepcopy=False)
    assert len(trials) == 3 and all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
    assert {tuple(sorted(t.params.items())) for t in trials} == {tuple(sorted(r.params.items())) for r in records}
    assert all(isinstance(t.distributions["optimizer.lr"], optuna.distributions.FloatDistribution) for t in trials)
    # What each sampler leaves behind where it, not a fallback, proposed the trial.
    if name == "grid":
        from hpo.study import grid_values

        grid = grid_values(load_space_of(tmp_path))
        assert all("grid_id" in t.system_attrs for t in trials)
        assert all(t.params[k] in grid[k] for t in trials for k in t.params)
        assert len({t.system_attrs["grid_id"] for t in trials}) == 3
    elif name == "cmaes":  # the first trial is the random start-up one; the last comes from a CMA-ES generation
        assert "cma:generation" not in trials[0].system_attrs and "cma:generation" in trials[-1].system_attrs
    elif name == "nsga2":
        assert all("NSGAIISampler:generation" in t.system_attrs for t in trials)
    elif name == "qmc":  # QMC counts the points of its sequence it handed out
        (count,) = [v for k, v in ot._storage.get_study_system_attrs(ot._study_id).items() if k.startswith("qmc:")]
        assert count >= 1
    elif name == "gp":  # a Gaussian process was fitted to the trials before the last
        assert sampler._gprs_cache_list is not None
    lrs = [t.params["optimizer.lr"] for t in trials]
    assert all(0.0002 <= lr <= 0.06 and math.isclose(lr / 0.0002, round(lr / 0.0002)) for lr in lrs)


def load_space_of(folder: Path):
    from hpo.study import load_study

    return load_study(folder / "study.yaml").space


@pytest.mark.parametrize("name", list(SCHEDULER_CASES))
def test_each_scheduler_stops_the_weak_trial_or_not(local_ray, tmp_path, data_dir, monkeypatch, name):
    from optuna.trial import TrialState
    from ray.tune.schedulers import AsyncHyperBandScheduler, FIFOScheduler, MedianStoppingRule

    from hpo.engine.run_dir import SCHEDULER, STOPPED_BY

    built, records, ot = run(local_ray, tmp_path, data_dir, monkeypatch, "tpe", SCHEDULER_CASES[name], points=POINTS)
    kind = {"hyperband": AsyncHyperBandScheduler, "median": MedianStoppingRule, "none": FIFOScheduler}[name]
    assert type(built["scheduler"]) is kind
    by_lr = {r.params["optimizer.lr"]: r for r in records}
    trials = {t.params["optimizer.lr"]: t for t in ot.get_trials(deepcopy=False)}
    assert set(by_lr) == set(trials) == {0.05, 0.04, 0.0002}
    weak, strong = by_lr[0.0002], [by_lr[0.05], by_lr[0.04]]
    assert weak.history[0]["val_accuracy"] < min(r.history[0]["val_accuracy"] for r in strong)
    assert all(r.status == "completed" and len(r.history) == 2 for r in strong)
    if name == "none":  # nothing is stopped early
        assert weak.status == "completed" and len(weak.history) == 2
        assert all(t.state == TrialState.COMPLETE for t in trials.values())
    else:  # the weak trial is stopped after its first epoch, by the scheduler
        assert weak.status == "pruned" and len(weak.history) == 1
        assert trials[0.0002].state == TrialState.PRUNED
        assert trials[0.0002].system_attrs[STOPPED_BY] == SCHEDULER
