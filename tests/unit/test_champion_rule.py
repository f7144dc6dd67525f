"""The champion rule (promote only when beaten; ties; min mode; no champion yet), its registry moves and
the guard that restores the alias after a crash, on an in-memory tracker."""

from __future__ import annotations

import pytest

from hpo.names import Role, Tag
from hpo.stages.champion import CHAMPION, Champion, ChampionGuard, ChampionRule, apply, current_champion
from hpo.tracking import InMemoryTracker

ACC = ChampionRule("test_accuracy", "max")
LOSS = ChampionRule("test_loss", "min")


@pytest.mark.parametrize(
    ("rule", "new", "champion", "promote"),
    [
        (ACC, 0.90, None, True),  # no champion yet
        (ACC, 0.90, Champion("1", None), True),  # a champion that never recorded the metric
        (ACC, 0.91, Champion("1", 0.90), True),
        (ACC, 0.89, Champion("1", 0.90), False),
        (ACC, 0.90, Champion("1", 0.90), False),  # a tie is not a win
        (LOSS, 0.30, Champion("1", 0.35), True),  # lower is better
        (LOSS, 0.40, Champion("1", 0.35), False),
        (LOSS, 0.35, Champion("1", 0.35), False),
        (ChampionRule("test_accuracy", "max", min_improvement=0.02), 0.91, Champion("1", 0.90), False),
        (ChampionRule("test_accuracy", "max", min_improvement=0.02), 0.93, Champion("1", 0.90), True),
        (ChampionRule("test_loss", "min", min_improvement=0.1), 0.30, Champion("1", 0.35), False),
        (ChampionRule("test_accuracy", "max", promote="always"), 0.10, Champion("1", 0.90), True),
        (ChampionRule("test_accuracy", "max", promote="never"), 0.99, None, False),
    ],
)
def test_the_rule(rule, new, champion, promote):
    assert rule.decide(new, champion).promote is promote


def test_the_reasons_name_the_champion():
    assert ACC.decide(0.8, Champion("3", 0.9)).reason == f"{CHAMPION} v3 keeps the alias with test_accuracy 0.9000"
    assert ChampionRule("test_accuracy", "max", promote="never").decide(0.8, None).reason == "promotion is off"


def test_the_rule_comes_from_the_study():
    from hpo.config.study import FinalConfig

    rule = ChampionRule.from_final(FinalConfig(promote_metric="test_loss", min_improvement=0.01))
    assert (rule.metric, rule.mode, rule.promote, rule.min_improvement) == ("test_loss", "min", "if_better", 0.01)
    assert ChampionRule.from_final(FinalConfig()).mode == "max"


def _version(tracker: InMemoryTracker, accuracy: float) -> str:
    run = tracker.start_run("final")
    tracker.ensure_registered_model("m", {})
    return tracker.create_model_version(
        "m", source=f"runs:/{run}/model", run_id=run, model_id=None, tags={"test_accuracy": repr(accuracy)},
        description="",
    )  # fmt: skip


def test_apply_moves_the_alias_only_to_a_better_model_and_tags_roles():
    tracker = InMemoryTracker()
    first = _version(tracker, 0.80)
    said = apply(tracker, "m", first, ACC, {"test_accuracy": 0.80})
    assert said == "v1 is now champion: test_accuracy 0.8000"
    worse = _version(tracker, 0.70)
    said = apply(tracker, "m", worse, ACC, {"test_accuracy": 0.70})
    assert said == "v2 is a challenger (test_accuracy 0.7000); champion v1 keeps the alias with test_accuracy 0.8000"
    better = _version(tracker, 0.85)
    said = apply(tracker, "m", better, ACC, {"test_accuracy": 0.85})
    assert said == "v3 is now champion: test_accuracy 0.8500 (was v1: test_accuracy 0.8000)"
    assert current_champion(tracker, "m", "test_accuracy") == Champion("3", 0.85)
    roles = {v: s.tags[Tag.ROLE] for v, s in tracker.versions["m"].items()}
    assert roles == {"1": Role.CHAMPION, "2": Role.CHALLENGER, "3": Role.CHAMPION}


def test_the_guard_gives_the_alias_back_when_a_redone_stage_deletes_the_version_that_took_it():
    tracker = InMemoryTracker()
    _version(tracker, 0.8)
    guard = ChampionGuard(tracker, "m")
    assert guard.current() is None
    tracker.set_alias("m", CHAMPION, "1")
    before = guard.current()
    half_done = _version(tracker, 0.9)
    tracker.set_alias("m", CHAMPION, half_done)  # the half-finished stage promoted v2 ...
    tracker.delete_run(tracker.versions["m"][half_done].run_id)  # ... and is redone: its run and version go
    assert guard.current() is None  # the alias went with the version
    guard.restore(before)
    assert guard.current() == "1"
    guard.restore(None)  # nothing held it before: nothing to do
    assert guard.current() == "1"
