"""The model registry's ``champion``: the rule that decides whether a new model takes the alias, and the
registry operations around it, through the ``Tracker`` protocol (no MLflow here).

The rule (``final.promote``): ``always`` moves the alias, ``never`` leaves it, ``if_better`` moves it when
the new model beats the champion's ``final.promote_metric`` by more than ``final.min_improvement`` (a tie
is not a win), or when there is no champion (or the champion never recorded that metric).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from hpo.names import Role, Tag
from hpo.tracking import ModelVersion, Tracker

if TYPE_CHECKING:
    from hpo.config.study import FinalConfig

CHAMPION = Role.CHAMPION  # the registry alias, and the role tag of the version that holds it
# Which way each promote_metric improves; another metric is taken as a loss (lower is better).
PROMOTE_MODES: dict[str, Literal["max", "min"]] = {"test_accuracy": "max", "test_loss": "min"}


@dataclass(frozen=True)
class Champion:
    """The version holding the alias, and its value of the rule's metric (None: never recorded)."""

    version: str
    value: float | None


@dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str  # why, in words: "beats v3 (test_accuracy 0.9012) by 0.0123", "promotion is off", ...


@dataclass(frozen=True)
class ChampionRule:
    metric: str  # a test metric the final stage logs (test_accuracy, test_loss)
    mode: Literal["max", "min"]
    promote: Literal["if_better", "always", "never"] = "if_better"
    min_improvement: float = 0.0

    @classmethod
    def from_final(cls, final: FinalConfig) -> ChampionRule:
        """The rule a study's ``final:`` section states."""
        metric = final.promote_metric
        return cls(metric, PROMOTE_MODES.get(metric, "min"), final.promote, final.min_improvement)

    def beats(self, new: float, old: float | None) -> bool:
        """Whether ``new`` improves on ``old`` by more than ``min_improvement`` (anything beats nothing)."""
        if old is None:
            return True
        gain = new - old if self.mode == "max" else old - new
        return gain > self.min_improvement

    def decide(self, new: float, champion: Champion | None) -> Decision:
        """Whether a model with ``new`` (its value of ``metric``) takes the alias from ``champion``."""
        if self.promote == "never":
            return Decision(False, "promotion is off")
        old = champion.value if champion is not None else None
        if self.promote == "always":
            return Decision(True, "promotion is always")
        if champion is None:
            return Decision(True, f"no {CHAMPION} yet")
        if old is None:
            return Decision(True, f"{CHAMPION} v{champion.version} has no {self.metric}")
        if self.beats(new, old):
            return Decision(True, f"beats v{champion.version} ({self.metric} {old:.4f})")
        return Decision(False, f"{CHAMPION} v{champion.version} keeps the alias with {self.metric} {old:.4f}")


def current_champion(tracker: Tracker, name: str, metric: str) -> Champion | None:
    """The version of registered model ``name`` holding the alias, with its value of ``metric`` (from the
    version's tags, where ``register`` writes a model's test metrics)."""
    found = tracker.version_by_alias(name, CHAMPION)
    return None if found is None else _champion(found, metric)


def _champion(version: ModelVersion, metric: str) -> Champion:
    value = version.tags.get(metric)
    return Champion(version.version, float(value) if value is not None else None)


def apply(tracker: Tracker, name: str, version: str, rule: ChampionRule, metrics: dict[str, float]) -> str:
    """Decide on ``version`` of ``name`` (whose test ``metrics`` are given), move the alias and tag the
    version's role accordingly; returns what happened, in words."""
    new = metrics[rule.metric]
    champion = current_champion(tracker, name, rule.metric)
    decision = rule.decide(new, champion)
    if decision.promote:
        tracker.set_alias(name, CHAMPION, version)
        tracker.set_version_tag(name, version, Tag.ROLE, Role.CHAMPION)
        was = (
            f" (was v{champion.version}: {rule.metric} {champion.value:.4f})"
            if champion is not None and champion.value is not None
            else ""
        )
        return f"v{version} is now {CHAMPION}: {rule.metric} {new:.4f}{was}"
    tracker.set_version_tag(name, version, Tag.ROLE, Role.CHALLENGER)
    return f"v{version} is a challenger ({rule.metric} {new:.4f}); {decision.reason}"


class ChampionGuard:
    """Keeps the ``champion`` alias right when a final stage is redone after a crash: deleting the
    half-finished stage's model version also drops an alias it had taken, which then goes back to the
    version that held it before."""

    def __init__(self, tracker: Tracker, name: str) -> None:
        self.tracker, self.name = tracker, name

    def current(self) -> str | None:
        found = self.tracker.version_by_alias(self.name, CHAMPION)
        return None if found is None else found.version

    def restore(self, before: str | None) -> None:
        if before and self.current() is None:
            self.tracker.set_alias(self.name, CHAMPION, before)
