"""The sampler and scheduler registries (hpo.engine.strategies): every sampler is seeded (the same seed
proposes the same configurations on a real Optuna study), the samplers a study does not fit are refused
when it loads, and each scheduler is Ray's own, built from the study."""

from __future__ import annotations

import math
from pathlib import Path

import optuna
import pytest

from hpo.config.trial import TrialConfig
from hpo.engine._private_api import asha_rungs
from hpo.engine.records import TrialRecord
from hpo.engine.strategies import list_samplers, list_schedulers, make_sampler, make_scheduler
from hpo.errors import HpoError, StudyErrors
from hpo.space import define_by_run
from hpo.study import Study, grid_values, load_study, sampler_misfit

# Numeric ranges every trial has: a space every sampler fits (the grid included: each range has a step).
NUMERIC = """\
model: {name: cnn, depth: {int: [2, 4]}, width: 16}
optimizer: {name: sgd, lr: {float: [0.05, 0.3], step: 0.05}}
augment: {hflip: {float: [0.0, 0.5], step: 0.25}}
"""
BRANCHES = """\
model:
  one_of:
    cnn: {depth: {int: [2, 3]}}
    vgg: {head_width: {int: [64, 128]}}
optimizer: {name: sgd, lr: {float: [0.001, 0.3], log: true}}
"""
CATEGORICAL = """\
model: {name: cnn, depth: {int: [2, 3]}, width: {categorical: [8, 16]}}
optimizer: {name: sgd, lr: {float: [0.001, 0.3], log: true}}
"""


def write_study(where: Path, space: str = NUMERIC, **keys: str) -> Path:
    (where / "space.yaml").write_text(space)
    lines = {
        "name": "s",
        "seed": "0",
        "dataset": "{name: fashion_mnist, subset: {train: 300, test: 100}}",
        "search_space": "space.yaml",
        "objective": "{metric: val_accuracy}",
        "budget": "{trials: 12, max_epochs: 4}",
        "final": "{enabled: false}",
        **keys,
    }
    file = where / "study.yaml"
    file.write_text("".join(f"{k}: {v}\n" for k, v in lines.items()))
    return file


def study_with(tmp_path: Path, space: str = NUMERIC, **keys: str) -> Study:
    return load_study(write_study(tmp_path, space, **keys))


def suggestions(study: Study, seed: int, n: int = 6) -> list[dict]:
    """The parameters the study's sampler proposes for ``n`` trials, one at a time, each told a value
    that follows its parameters (so that model-based samplers have something to model)."""
    directions = [o.direction + "imize" for o in study.config.objective]
    ot = optuna.create_study(directions=directions, sampler=make_sampler(study, seed))
    for _ in range(n):
        trial = ot.ask()
        define_by_run(trial, study.space)
        value = -((trial.params["optimizer.lr"] - 0.1) ** 2) - 0.01 * trial.params["model.depth"]
        ot.tell(trial, value if len(directions) == 1 else [value, trial.params["model.depth"]])
    return [t.params for t in ot.trials]


def test_the_registries_hold_every_name_the_schema_allows():
    from hpo.config.study import SamplerConfig, SchedulerConfig

    assert set(list_samplers()) == set(SamplerConfig.model_fields["type"].annotation.__args__)
    assert set(list_schedulers()) == set(SchedulerConfig.model_fields["type"].annotation.__args__)


@pytest.mark.parametrize("name", list_samplers())
def test_each_sampler_is_seeded(tmp_path, name):
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = study_with(tmp_path, sampler=f"{{type: {name}, seed: 3}}" if name != "grid" else "grid")
    first = suggestions(study, seed=3)
    assert suggestions(study, seed=3) == first  # the same seed, the same configurations
    assert suggestions(study, seed=4) != first  # another seed, another search
    assert len({tuple(sorted(p.items())) for p in first}) > 1  # it does search


def test_the_built_samplers_are_the_named_ones_with_their_settings(tmp_path):
    study = study_with(tmp_path, sampler="{type: tpe, startup_trials: 5}")
    tpe = make_sampler(study, 0)
    assert isinstance(tpe, optuna.samplers.TPESampler)
    assert (tpe._n_startup_trials, tpe._multivariate, tpe._group, tpe._constant_liar) == (5, True, True, True)
    kinds = {
        "gp": optuna.samplers.GPSampler,
        "cmaes": optuna.samplers.CmaEsSampler,
        "random": optuna.samplers.RandomSampler,
        "qmc": optuna.samplers.QMCSampler,
        "grid": optuna.samplers.GridSampler,
        "nsga2": optuna.samplers.NSGAIISampler,
    }
    for name, kind in kinds.items():
        assert isinstance(make_sampler(study_with(tmp_path, sampler=name), 0), kind)
    # default start-up: min(10, max(2, trials // 3)): 4 of 12 trials
    assert make_sampler(study_with(tmp_path, sampler="gp"), 0)._n_startup_trials == 4
    assert make_sampler(study_with(tmp_path, sampler="nsga2"), 0)._population_size == 4


def test_the_grid_walks_every_point_once(tmp_path):
    study = study_with(tmp_path, sampler="grid", budget="{trials: 54, max_epochs: 2}")
    grid = grid_values(study.space)
    assert grid["optimizer.lr"] == [0.05, 0.1, 0.15, 0.2, 0.25, 0.3]
    assert grid["augment.hflip"] == [0.0, 0.25, 0.5] and grid["model.depth"] == [2, 3, 4]
    points = suggestions(study, seed=0, n=54)
    assert len({tuple(sorted(p.items())) for p in points}) == 54 == math.prod(len(v) for v in grid.values())


def test_the_multi_objective_samplers_search_several_objectives(tmp_path):
    two = "[{metric: val_accuracy}, {metric: params}]"
    for name in ("tpe", "gp", "random", "qmc", "grid", "nsga2"):
        points = suggestions(study_with(tmp_path, sampler=name, objective=two), seed=0, n=5)
        assert len(points) == 5
    with pytest.raises(StudyErrors, match="cmaes optimises one objective"):
        study_with(tmp_path, sampler="cmaes", objective=two)


REFUSALS = [
    ({"sampler": "cmaes"}, CATEGORICAL, "sampler.type", "model.width would be sampled at random"),
    ({"sampler": "cmaes"}, BRANCHES, "sampler.type", "cmaes models float and int ranges"),
    ({"sampler": "gp"}, BRANCHES, "sampler.type", "gp models the parameters every trial has; model.cnn.depth"),
    ({"sampler": "qmc"}, BRANCHES, "sampler.type", "qmc models the parameters every trial has"),
    ({"sampler": "nsga2"}, BRANCHES, "sampler.type", "nsga2 models the parameters every trial has"),
    ({"sampler": "grid"}, BRANCHES, "sampler.type", "would repeat points of the other branches"),
    ({"sampler": "grid"}, CATEGORICAL, "sampler.type", "optimizer.lr is a continuous range"),
    ({"sampler": "grid", "budget": "{trials: 200, max_epochs: 2}"}, NUMERIC, "budget.trials", "must be <= 54"),
    ({"sampler": "{type: random, startup_trials: 3}"}, NUMERIC, "sampler.startup_trials", "not random"),
    ({"sampler": "{type: gp, startup_trials: 12}"}, NUMERIC, "sampler.startup_trials", "must be < budget.trials"),
    ({"scheduler": "{type: asha, brackets: 2}"}, NUMERIC, "scheduler.brackets", "applies to scheduler hyperband"),
    ({"scheduler": "{type: median, reduction_factor: 2}"}, NUMERIC, "scheduler.reduction_factor", "not median"),
    ({"scheduler": "{type: none, grace_period: 2}"}, NUMERIC, "scheduler.grace_period", "stops no trial early"),
    ({"scheduler": "{type: hyperband, brackets: 3}"}, NUMERIC, "scheduler.brackets", "must be <= 2 (got 3)"),
]


@pytest.mark.parametrize(("keys", "space", "field", "says"), REFUSALS)
def test_a_strategy_the_study_does_not_fit_is_refused_with_its_field(tmp_path, keys, space, field, says):
    with pytest.raises(StudyErrors) as caught:
        study_with(tmp_path, space, **keys)
    (error,) = caught.value.errors
    assert error.path == field and says in error.message, str(error)
    assert error.line is not None


def test_what_fits_loads(tmp_path):
    for name in list_samplers():
        assert sampler_misfit(study_with(tmp_path, sampler=name).config, study_with(tmp_path).space) is None
    for name in ("tpe", "random"):  # the samplers that handle conditional branches
        study_with(tmp_path, BRANCHES, sampler=name)
    study_with(tmp_path, CATEGORICAL, sampler="gp")  # gp models categoricals every trial has
    # a one_of of a single branch is no condition: every trial has its parameters
    study_with(tmp_path, "model: {one_of: {cnn: {depth: {int: [2, 3]}}}}\n", sampler="qmc")


def test_make_sampler_refuses_what_loading_refuses(tmp_path):
    study = study_with(tmp_path, CATEGORICAL)
    study.config.sampler.type = "cmaes"  # a study changed in code, past the checks
    with pytest.raises(HpoError, match=r"sampler\.type: cmaes models float and int ranges"):
        make_sampler(study, 0)


def record(number: int, values: list[float]) -> TrialRecord:
    history = [{"epoch": i + 1, "val_accuracy": v} for i, v in enumerate(values)]
    return TrialRecord(f"t{number}", number, {}, TrialConfig.model_construct(), history=history)


def test_each_scheduler_is_rays_own_built_from_the_study(tmp_path):
    from ray.tune.schedulers import AsyncHyperBandScheduler, FIFOScheduler, MedianStoppingRule

    records = [record(0, [0.5, 0.6, 0.7, 0.8]), record(1, [0.3])]
    asha = make_scheduler(study_with(tmp_path, scheduler="{type: asha, grace_period: 1, reduction_factor: 2}"), records)
    assert isinstance(asha, AsyncHyperBandScheduler) and len(asha._brackets) == 1
    resumed = [(4.0, {"resumed-0": 0.8}), (2.0, {"resumed-0": 0.6}), (1.0, {"resumed-0": 0.5, "resumed-1": 0.3})]
    assert asha_rungs(asha) == resumed

    hyperband = make_scheduler(study_with(tmp_path, scheduler="{type: hyperband, reduction_factor: 2}"), records)
    assert isinstance(hyperband, AsyncHyperBandScheduler)
    # grace 1, factor 2, 4 epochs: brackets start at epochs 1 and 2; the default 3 is cut to the 2 that fit
    assert [[m for m, _ in b._rungs] for b in hyperband._brackets] == [[4.0, 2.0, 1.0], [4.0, 2.0]]
    assert all(rung[1] for rung in asha_rungs(hyperband))  # a resumed run's records seed every bracket

    median = make_scheduler(study_with(tmp_path, scheduler="{type: median, grace_period: 2}"), records)
    assert isinstance(median, MedianStoppingRule)
    assert (median._grace_period, median._min_samples_required, median._time_attr) == (2.0, 2, "training_iteration")

    none = make_scheduler(study_with(tmp_path, scheduler="{type: none}"), records)
    assert type(none) is FIFOScheduler


def test_the_eta_foresees_hyperbands_brackets_and_no_rungs_for_median():
    from hpo.engine.eta import epoch_survival

    one = epoch_survival(4, (1, 2.0))
    assert one == [1.0, 1.0, 0.5, 0.25, 0.25]  # ASHA: rungs at epochs 1 and 2
    # bracket 1 starts its rungs at epoch 2: its trials train longer, and the mix lies between the two
    mixed = epoch_survival(4, (1, 2.0), brackets=2)
    assert mixed[:2] == [1.0, 1.0] and all(a < m < 1.0 for a, m in zip(one[2:], mixed[2:], strict=True))
    assert epoch_survival(4, None) == [1.0] * 5  # median and none: no rungs to foresee
