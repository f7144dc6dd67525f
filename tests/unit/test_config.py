from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from hpo.config.backends import BACKENDS, stage_sequence
from hpo.errors import StudyError, StudyErrors
from hpo.names import Stage
from hpo.study import load_study
from hpo.testing import REPO_ROOT

STUDY = """\
name: t
dataset: {{name: fashion_mnist, validation_split: 0.2}}
search_space: space.yaml
budget: {{trials: {trials}, max_epochs: 2, time: 1m}}
scheduler: {{type: asha, grace_period: {grace}}}
"""
SPACE = """\
model:
  one_of:
    cnn:
      depth: {int: [2, 3]}
optimizer:
  lr: {float: [0.01, 0.1], log: true}
"""


def write(tmp_path: Path, study: str = STUDY.format(trials=2, grace=1), space: str = SPACE) -> Path:
    (tmp_path / "space.yaml").write_text(space)
    (tmp_path / "study.yaml").write_text(study)
    return tmp_path / "study.yaml"


def messages(exc_info) -> list[str]:
    exc = exc_info.value
    return [str(e) for e in exc.errors] if isinstance(exc, StudyErrors) else [str(exc)]


SHIPPED = sorted(p.stem for p in (REPO_ROOT / "studies").glob("*.yaml"))


def test_the_reference_studies_are_shipped():
    assert {"fashion_mnist", "cifar10", "tiny_imagenet", "apparel_multilabel"} <= set(SHIPPED)


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_studies_validate(repo_root, name):
    study = load_study(repo_root / "studies" / f"{name}.yaml")
    assert study.config.name
    assert study.space.params


def test_a_valid_study_resolves_defaults(tmp_path):
    study = load_study(write(tmp_path))
    assert study.config.objective.direction == "max"
    assert study.config.budget.time == 60.0
    assert study.resolved()["search_space"]["optimizer"]["lr"] == {"float": [0.01, 0.1], "log": True}


def test_range_errors_name_file_line_and_field(tmp_path):
    with pytest.raises(StudyErrors) as info:
        load_study(write(tmp_path, STUDY.format(trials=0, grace=1)))
    assert messages(info) == [f"{tmp_path / 'study.yaml'}:4: budget.trials: must be >= 1 (got 0)"]


def test_unknown_key_suggests_the_close_one(tmp_path):
    study = STUDY.format(trials=2, grace=1).replace("max_epochs", "max_epoch")
    with pytest.raises(StudyErrors) as info:
        load_study(write(tmp_path, study))
    found = messages(info)
    assert any(":4: budget.max_epoch: unknown key 'max_epoch' (did you mean 'max_epochs'?)" in m for m in found)


def test_cross_field_check_points_at_the_field(tmp_path):
    with pytest.raises(StudyErrors) as info:
        load_study(write(tmp_path, STUDY.format(trials=2, grace=5)))
    assert messages(info) == [
        (f"{tmp_path / 'study.yaml'}:5: scheduler.grace_period: must be <= budget.max_epochs (2) (got 5)")
    ]


def test_missing_search_space_file(tmp_path):
    study = STUDY.format(trials=2, grace=1).replace("space.yaml", "nowhere.yaml")
    with pytest.raises(StudyError, match=r"study.yaml:3: search_space: search-space file not found: nowhere.yaml"):
        load_study(write(tmp_path, study))


def test_unknown_dataset_lists_the_known_ones(tmp_path):
    study = STUDY.format(trials=2, grace=1).replace("fashion_mnist", "fashion_mnst")
    with pytest.raises(StudyErrors) as info:
        load_study(write(tmp_path, study))
    assert "dataset.name: unknown dataset 'fashion_mnst'; known: fashion_mnist" in messages(info)[0]


@pytest.mark.parametrize(
    "space, line, field, message",
    [
        (
            "optimizer:\n  lr: {float: [0.1, 0.01]}\n",
            2,
            "optimizer.lr.float",
            "`low <= high` must hold, but got (low=0.1, high=0.01)",
        ),
        ("optimizer:\n  lr: {float: [0.0, 0.1], log: true}\n", 2, "optimizer.lr.float", "a log scale needs `low > 0`"),
        ("augment:\n  hflip: {float: [0.0, 1.5]}\n", 2, "augment.hflip", "must be <= 1.0 (got 1.5)"),
        (
            "model:\n  one_of:\n    cnn:\n      dpeth: 3\n",
            4,
            "model.one_of.cnn.dpeth",
            "unknown key 'dpeth' (did you mean 'depth'?)",
        ),
        (
            "model:\n  one_of:\n    cnn:\n      batchnorm: {categorical: [none, sideways]}\n",
            4,
            "model.one_of.cnn.batchnorm",
            "must be one of",
        ),
        ("batch_size: {int: [1, 64]}\n", 1, "batch_size", "must be >= 2 (got 1)"),
        ("lr: {float: [0.1, 1]}\n", 1, "lr", "unknown key 'lr'"),
        ("optimizer:\n  lr: {float: [0.1, 1], q: 2}\n", 2, "optimizer.lr.q", "unknown key 'q'"),
        ("batch_size: {categorical: []}\n", 1, "batch_size.categorical", "non-empty list"),
    ],
)
def test_search_space_errors_name_the_line_in_the_space_file(tmp_path, space, line, field, message):
    with pytest.raises(StudyErrors) as info:
        load_study(write(tmp_path, space=space))
    found = messages(info)
    assert any(f"space.yaml:{line}: {field}: " in m and message in m for m in found), found


def test_a_value_that_fits_no_member_of_a_union_is_one_error_at_its_own_key(tmp_path):
    study = STUDY.format(trials=2, grace=1) + "final: {epochs: bestest}\n"
    with pytest.raises(StudyErrors) as info:
        load_study(write(tmp_path, study))
    expected = f"{tmp_path / 'study.yaml'}:6: final.epochs: must be an integer or one of 'best' (got 'bestest')"
    assert messages(info) == [expected]


@pytest.mark.parametrize("time, ok", [("10s", True), ("1h", True), ("9s", False), (0, False)])
def test_a_search_budget_must_leave_time_for_one_epoch(tmp_path, time, ok):
    study = STUDY.format(trials=2, grace=1).replace("time: 1m", f"time: {time}")
    if ok:
        assert load_study(write(tmp_path, study)).config.budget.time >= 10
        return
    with pytest.raises(StudyErrors) as info:
        load_study(write(tmp_path, study))
    assert (
        f"budget.time: must be at least 10s, or left out: a shorter search stops every trial before its first "
        f"epoch (got {time!r})" in messages(info)[0]
    )


@pytest.mark.parametrize(
    "until, expected",
    [
        ("06:00", datetime(2026, 12, 3, 6, 0)),  # the next 06:00: tomorrow's, it is 22:30
        ("23:15", datetime(2026, 12, 2, 23, 15)),
        ("2026-12-05T07:30+01:00", datetime(2026, 12, 5, 7, 30)),
        ("45m", datetime(2026, 12, 2, 23, 15)),  # a duration: that long after the run's start
        ("1h30m", datetime(2026, 12, 3, 0, 0)),
    ],
)
def test_a_deadline_is_a_time_of_day_a_date_time_or_a_duration_from_the_start(until, expected):
    from hpo.config.study import parse_deadline

    zone = timezone(timedelta(hours=1))
    start = datetime(2026, 12, 2, 22, 30, tzinfo=zone)
    assert parse_deadline(until, start) == expected.replace(tzinfo=zone)


def test_a_deadline_that_is_none_of_those_names_all_three(tmp_path):
    study = STUDY.format(trials=2, grace=1).replace("time: 1m", 'until: "soon"')
    with pytest.raises(StudyErrors) as info:
        load_study(write(tmp_path, study))
    assert messages(info) == [
        f"{tmp_path / 'study.yaml'}:4: budget.until: must be a time of day like 06:00, an ISO date-time like "
        "2026-11-23T06:00 or a duration from the run's start like 45m (got 'soon')"
    ]


def _hide(monkeypatch, *packages: str) -> None:
    """Make ``packages`` look uninstalled to the extra checks (importlib.util.find_spec)."""
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in packages else real(name, *a))


@pytest.mark.parametrize("name", list(BACKENDS))
def test_each_registered_backend_is_implemented_as_declared(name):
    """The declaration (hpo.config.backends) and the implementation agree on the name and the stages."""
    from hpo.backends import backend_class

    declared = BACKENDS[name]
    cls = backend_class(name)
    assert (cls.name, cls.stages) == (declared.name, declared.stages)
    assert declared.stages and Stage.DONE not in declared.stages
    assert all(hasattr(cls, method) for method in ("run", "__init__"))


def test_a_study_may_name_exactly_the_registered_backends(tmp_path):
    from hpo.config.study import StudyConfig

    assert StudyConfig.model_json_schema()["properties"]["backends"]["items"]["enum"] == list(BACKENDS)
    with pytest.raises(StudyErrors) as info:
        load_study(write(tmp_path, STUDY.format(trials=2, grace=1) + "backends: [search, sklearn]\n"))
    *others, last = (repr(n) for n in BACKENDS)  # pydantic's way: 'a', 'b' or 'c'
    assert messages(info) == [
        f"{tmp_path / 'study.yaml'}:6: backends.1: must be one of {', '.join(others)} or {last} (got 'sklearn')"
    ]


def test_a_run_passes_through_its_backends_stages_in_the_order_the_study_names_them():
    both = stage_sequence(["autokeras", "search"])
    assert both == (*BACKENDS["autokeras"].stages, *BACKENDS["search"].stages, Stage.DONE)


@pytest.mark.parametrize(
    "line, hidden, where, command",
    [
        ("backends: [search, autokeras]\n", ("autokeras",), "6: backends", 'pip install -e ".[autokeras]"'),
        (
            "backends: [autokeras]\nautokeras: {keras_backend: tensorflow}\n",
            ("tensorflow",),
            "7: autokeras.keras_backend",
            'pip install -e ".[tensorflow]"',
        ),
    ],
)
def test_a_backend_whose_extra_is_missing_fails_validation_with_the_install_command(
    tmp_path, monkeypatch, line, hidden, where, command
):
    _hide(monkeypatch, *hidden)
    with pytest.raises(StudyErrors) as info:
        load_study(write(tmp_path, STUDY.format(trials=2, grace=1) + line))
    (message,) = messages(info)
    assert message.startswith(f"{tmp_path / 'study.yaml'}:{where}: ")
    assert message.endswith(command) and hidden[0] in message


def test_a_backend_named_twice_is_an_error(tmp_path):
    with pytest.raises(StudyErrors) as info:
        load_study(write(tmp_path, STUDY.format(trials=2, grace=1) + "backends: [search, search]\n"))
    assert messages(info) == [f"{tmp_path / 'study.yaml'}:6: backends: names a backend twice: search"]


@pytest.mark.skipif(
    __import__("importlib.util").util.find_spec("autokeras") is None, reason="the autokeras extra is not installed"
)
def test_with_the_extra_installed_an_autokeras_study_validates(tmp_path):
    study = load_study(write(tmp_path, STUDY.format(trials=2, grace=1) + "backends: [search, autokeras]\n"))
    assert study.config.backends == ["search", "autokeras"]
    assert study.config.autokeras.keras_backend == "torch"


def test_start_with_points_must_lie_in_the_space(tmp_path):
    good = "start_with:\n  - {model.name: cnn, model.cnn.depth: 3, optimizer.lr: 0.05}\n"
    study = load_study(write(tmp_path, STUDY.format(trials=2, grace=1) + good))
    assert study.config.start_with == [{"model.name": "cnn", "model.cnn.depth": 3, "optimizer.lr": 0.05}]
    bad = (
        "start_with:\n  - {model.name: cnn, model.cnn.depth: 3, optimizer.lr: 0.05}\n"
        "  - {model.name: cnn, model.cnn.depth: 9, optimizer.lr: 0.05, batch_size: 64}\n"
    )
    with pytest.raises(StudyErrors) as info:
        load_study(write(tmp_path, STUDY.format(trials=2, grace=1) + bad))
    assert messages(info) == [
        f"{tmp_path / 'study.yaml'}:8: start_with.1: not a point of the search space: "
        "model.cnn.depth=9 outside int [2, 3]; batch_size not in this space"
    ]
