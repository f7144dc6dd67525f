import functools
import pickle
from pathlib import Path

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from hpo.config.trial import TrialConfig
from hpo.config.yaml_loader import parse_yaml
from hpo.errors import StudyError, StudyErrors
from hpo.space import SearchSpace, define_by_run, parse_space

SPACE = """\
model:
  one_of:
    cnn:
      depth: {int: [2, 6], step: 2}
      width: {categorical: [16, 32]}
      dropout: {placement: head, rate: {float: [0.0, 0.5]}}
optimizer:
  one_of:
    sgd: {lr: {float: [0.01, 0.1], log: true}, momentum: 0.8}
    adamw: {lr: {float: [1.0e-4, 1.0e-2], log: true}, weight_decay: {float: [0.0, 0.1]}}
batch_size: {categorical: [64, 128]}
"""


@pytest.fixture
def space() -> SearchSpace:
    return parse_space(parse_yaml(SPACE, Path("s.yaml")))


def run_trials(space: SearchSpace, n: int) -> optuna.Study:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(lambda t: (space.suggest_with(t), 0.0)[1], n_trials=n)
    return study


def test_parameters_compile_to_optuna_distributions(space):
    study = run_trials(space, 40)
    dists = {}
    for t in study.trials:
        dists.update(t.distributions)
    assert dists["model.cnn.depth"] == IntDistribution(2, 6, step=2)
    assert dists["model.cnn.width"] == CategoricalDistribution([16, 32])
    assert dists["model.cnn.dropout.rate"] == FloatDistribution(0.0, 0.5)
    assert dists["optimizer.sgd.lr"] == FloatDistribution(0.01, 0.1, log=True)
    assert dists["optimizer.name"] == CategoricalDistribution(["sgd", "adamw"])


def test_conditional_branches_sample_only_the_chosen_branch(space):
    study = run_trials(space, 40)
    chosen = {t.params["optimizer.name"] for t in study.trials}
    assert chosen == {"sgd", "adamw"}
    for t in study.trials:
        branch = t.params["optimizer.name"]
        other = "adamw" if branch == "sgd" else "sgd"
        assert f"optimizer.{branch}.lr" in t.params
        assert not any(name.startswith(f"optimizer.{other}.") for name in t.params)


def test_resolve_builds_the_trial_config_with_constants(space):
    t = run_trials(space, 1).trials[0]
    config = space.resolve(t.params)
    assert isinstance(config, TrialConfig)
    assert config.model.dropout.placement == "head"
    assert config.model.depth in (2, 4, 6)
    if config.optimizer.name == "sgd":
        assert config.optimizer.momentum == 0.8
        assert config.optimizer.lr == t.params["optimizer.sgd.lr"]


def test_define_by_run_pickles_by_reference(space):
    """Ray pickles the searcher for Tuner.restore; the function must travel by module path."""
    fn = functools.partial(define_by_run, space=space)
    blob = pickle.dumps(fn)
    assert b"hpo.space._private" in blob
    restored = pickle.loads(blob)
    study = optuna.create_study()
    study.optimize(lambda t: (restored(t), 0.0)[1], n_trials=2)
    assert len(study.trials) == 2


def test_describe_rows_show_conditions(space):
    rows = {name: (dist, cond) for name, dist, cond in space.describe_rows()}
    assert rows["optimizer.adamw.weight_decay"] == ("float [0, 0.1] linear", "optimizer.name == 'adamw'")
    assert rows["model.cnn.depth"][0] == "int [2, 6], step 2"


# ------------------------------------------------------------------------------------------- extends

BASE = """\
model:
  one_of:
    cnn:
      depth: {int: [2, 6]}
      width: {categorical: [16, 32]}
optimizer:
  name: sgd
  lr: {float: [0.01, 0.1], log: true}
  momentum: 0.9
augment: {hflip: 0.5, translate: {float: [0.0, 0.5]}}
"""
CHILD = """\
extends: ../base/base.yaml
model:
  one_of:
    cnn:
      width: 64
optimizer:
  lr: {categorical: [0.05, 0.1]}
batch_size: 64
"""


def write_spaces(tmp_path: Path, **files: str) -> None:
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_extends_deep_merges_with_the_extending_file_winning(tmp_path):
    from hpo.space import load_space

    write_spaces(tmp_path, **{"base/base.yaml": BASE, "spaces/child.yaml": CHILD})
    doc = load_space(tmp_path / "spaces" / "child.yaml")
    assert doc.data == {
        "model": {"one_of": {"cnn": {"depth": {"int": [2, 6]}, "width": 64}}},  # branches merge key by key
        "optimizer": {"name": "sgd", "lr": {"categorical": [0.05, 0.1]}, "momentum": 0.9},  # a distribution
        "augment": {"hflip": 0.5, "translate": {"float": [0.0, 0.5]}},  # is replaced whole
        "batch_size": 64,
    }
    names = {p.name: p.param for p in parse_space(doc).params}
    assert set(names) == {"model.name", "model.cnn.depth", "optimizer.lr", "augment.translate"}


def test_extends_chains_and_errors_point_at_the_file_that_says_it(tmp_path):
    from hpo.space import load_space

    write_spaces(
        tmp_path,
        **{
            "a.yaml": "extends: b.yaml\nbatch_size: {int: [1, 64]}\n",  # batch_size >= 2: a's line 2
            "b.yaml": "extends: c.yaml\noptimizer:\n  momentum: 0.9\n",
            "c.yaml": "optimizer:\n  name: sgd\n  lr: {float: [0.1, 0.01]}\n",  # inverted: c's line 3
        },
    )
    with pytest.raises(StudyErrors) as info:
        parse_space(load_space(tmp_path / "a.yaml"))
    assert [str(e) for e in info.value.errors] == [
        f"{tmp_path / 'c.yaml'}:3: optimizer.lr.float: `low <= high` must hold, but got (low=0.1, high=0.01)"
    ]
    write_spaces(tmp_path, **{"c.yaml": "optimizer:\n  name: sgd\n  lr: 0.1\n"})
    with pytest.raises(StudyErrors) as info:
        parse_space(load_space(tmp_path / "a.yaml"))
    assert [str(e) for e in info.value.errors] == [f"{tmp_path / 'a.yaml'}:2: batch_size: must be >= 2 (got 1)"]


def test_extends_cycles_show_the_chain(tmp_path):
    from hpo.space import load_space

    write_spaces(tmp_path, **{"a.yaml": "extends: sub/b.yaml\n", "sub/b.yaml": "extends: ../a.yaml\n"})
    with pytest.raises(StudyError, match=r"sub/b.yaml:1: extends: circular extends: a.yaml -> sub/b.yaml -> a.yaml$"):
        load_space(tmp_path / "a.yaml")


def test_a_study_logs_the_resolved_space(tmp_path):
    from hpo.study import load_study

    write_spaces(
        tmp_path,
        **{
            "base/base.yaml": BASE,
            "spaces/child.yaml": CHILD,
            "study.yaml": (
                "name: t\ndataset: {name: fashion_mnist}\nsearch_space: spaces/child.yaml\n"
                "budget: {trials: 2, max_epochs: 2}\n"
            ),
        },
    )
    study = load_study(tmp_path / "study.yaml")
    assert "extends" not in study.resolved()["search_space"]
    assert study.resolved()["search_space"]["optimizer"]["momentum"] == 0.9
