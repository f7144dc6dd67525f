"""The winner of a study with several objectives: the Pareto front of its trials, and a stated rule.

A trial's values are its best first objective over its epochs (what ASHA and Optuna judge it by) and, for
each other objective, its last report's value (a cost: the same every epoch). Trials without all of them
(failed before an epoch) are left out. The rule (``final.choose``):

- ``best``: among the trials within every objective's ``limit`` (``<=`` a minimised one, ``>=`` a
  maximised one), the best first objective; ties go to the one better on the next objectives.
- ``knee``: among the trials within the limits that are on their Pareto front, the one nearest the ideal
  point once each objective is scaled to the front's range (0 its best value there, 1 its worst): the
  compromise where giving up a little of one objective no longer buys much of another.

A study whose trials all miss a limit has no winner: ``NoTrialWithinLimits`` says which limits and how
near the trials came, rather than finalising a model the study ruled out.

A single objective keeps the plain rule (``records.best_trial``); ``choose_winner`` serves both.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from hpo.config.study import Objective, Objectives
from hpo.engine.records import TrialRecord, best_trial
from hpo.errors import HpoError

__all__ = [
    "NoTrialWithinLimits",
    "ParetoChoice",
    "ParetoPoint",
    "choose_pareto",
    "choose_winner",
    "dominates",
    "pareto_front",
    "rule_text",
    "within_limits",
]

RULES = ("best", "knee")


class NoTrialWithinLimits(HpoError):
    """Every trial with a result misses one of the objectives' limits: no model to finalise."""


@dataclass(frozen=True)
class ParetoPoint:
    record: TrialRecord
    values: tuple[float, ...]  # one per objective, in the study's order
    on_front: bool  # no other trial is at least as good on every objective and better on one
    feasible: bool  # within every objective's limit


@dataclass(frozen=True)
class ParetoChoice:
    objectives: tuple[Objective, ...]
    rule: str  # best | knee
    points: list[ParetoPoint]  # every trial with all its values, in trial order
    chosen: TrialRecord | None  # None: no trial within the limits

    @property
    def front(self) -> list[ParetoPoint]:
        return [p for p in self.points if p.on_front]

    def describe(self) -> str:
        """The rule in words, e.g. ``best val_accuracy with params <= 100000``."""
        return rule_text(self.objectives, self.rule)


def _better(a: float, b: float, direction: str) -> bool:
    return a > b if direction == "max" else a < b


def dominates(a: Sequence[float], b: Sequence[float], directions: Sequence[str]) -> bool:
    """``a`` is at least as good as ``b`` on every objective and better on one."""
    no_worse = all(not _better(y, x, d) for x, y, d in zip(a, b, directions, strict=True))
    return no_worse and any(_better(x, y, d) for x, y, d in zip(a, b, directions, strict=True))


def pareto_front(values: Sequence[Sequence[float]], directions: Sequence[str]) -> list[int]:
    """The indices of ``values`` no other value dominates (equal values are all on the front)."""
    return [
        i for i, v in enumerate(values) if not any(dominates(w, v, directions) for j, w in enumerate(values) if j != i)
    ]


def within_limits(values: Sequence[float], objectives: Sequence[Objective]) -> bool:
    """Every objective with a ``limit`` meets it: ``<=`` for a minimised one, ``>=`` for a maximised one."""
    for value, o in zip(values, objectives, strict=True):
        if o.limit is not None and (value < o.limit if o.direction == "max" else value > o.limit):
            return False
    return True


def objective_values(record: TrialRecord, objectives: Sequence[Objective]) -> tuple[float, ...] | None:
    """The first objective's best over the epochs, then each other's last reported value; None where one
    is missing."""
    first = objectives[0]
    values = [record.best(first.metric, first.direction)[0]]
    last = record.history[-1] if record.history else {}
    values += [last.get(o.metric) for o in objectives[1:]]
    if any(v is None or not math.isfinite(v) for v in values):
        return None
    return tuple(float(v) for v in values if v is not None)


def _knee(points: list[ParetoPoint], directions: Sequence[str]) -> ParetoPoint:
    """The point nearest the ideal one, each objective scaled to the points' range (0 best, 1 worst)."""
    columns = list(zip(*(p.values for p in points), strict=True))

    def scaled(value: float, column: Sequence[float], direction: str) -> float:
        lo, hi = min(column), max(column)
        if hi == lo:
            return 0.0
        share = (value - lo) / (hi - lo)
        return 1.0 - share if direction == "max" else share

    def distance(p: ParetoPoint) -> float:
        return math.hypot(*(scaled(v, col, d) for v, col, d in zip(p.values, columns, directions, strict=True)))

    return min(points, key=lambda p: (distance(p), p.record.number))


def choose_pareto(records: Sequence[TrialRecord], objectives: Sequence[Objective], rule: str = "best") -> ParetoChoice:
    """Every trial's values, the front, and the trial ``rule`` chooses (None when none is within the limits)."""
    if rule not in RULES:
        raise ValueError(f"rule must be one of {', '.join(RULES)} (got {rule!r})")
    objectives = tuple(objectives)
    directions = [o.direction for o in objectives]
    scored = [(r, v) for r in records if (v := objective_values(r, objectives)) is not None]
    front = set(pareto_front([v for _, v in scored], directions))
    points = [
        ParetoPoint(r, v, on_front=i in front, feasible=within_limits(v, objectives)) for i, (r, v) in enumerate(scored)
    ]
    feasible = [p for p in points if p.feasible]
    chosen: ParetoPoint | None = None
    if feasible and rule == "best":
        # best on the first objective; a tie goes to the better on the next ones, then to the earlier trial
        def key(p: ParetoPoint) -> tuple[float, ...]:
            signed = [-v if d == "max" else v for v, d in zip(p.values, directions, strict=True)]
            return (*signed, p.record.number)

        chosen = min(feasible, key=key)
    elif feasible:  # knee: on the front of the trials within the limits
        on_front = pareto_front([p.values for p in feasible], directions)
        chosen = _knee([feasible[i] for i in on_front], directions)
    return ParetoChoice(objectives, rule, points, chosen.record if chosen else None)


def _bound(o: Objective) -> str:
    return ">=" if o.direction == "max" else "<="


def rule_text(objectives: Sequence[Objective], rule: str = "best") -> str:
    """The rule in words: ``best val_accuracy with params <= 100000`` or ``the knee of ... with ...``."""
    first = objectives[0]
    limits = [f"{o.metric} {_bound(o)} {o.limit:g}" for o in objectives if o.limit is not None]
    within = f" with {' and '.join(limits)}" if limits else ""
    if rule == "knee":
        names = ", ".join(f"{o.metric} ({o.direction})" for o in objectives)
        return f"the knee of the Pareto front of {names}{within}"
    return f"best {first.metric}{within}"


def _no_winner(choice: ParetoChoice) -> NoTrialWithinLimits:
    """What the nearest trials reached on each limited objective, in the error's words."""
    near = []
    for i, o in enumerate(choice.objectives):
        if o.limit is None or not choice.points:
            continue
        pick = max if o.direction == "max" else min
        best = pick(choice.points, key=lambda p: p.values[i])
        extreme = "highest" if o.direction == "max" else "lowest"
        near.append(f"the {extreme} {o.metric}: {best.values[i]:g} (trial #{best.record.number})")
    return NoTrialWithinLimits(
        f"no trial is within the objectives' limits ({choice.describe()}); of {len(choice.points)} trials with a "
        f"result, {'; '.join(near)}. Loosen a limit or widen the search space toward it"
    )


def choose_winner(records: Sequence[TrialRecord], objectives: Objectives, rule: str = "best") -> TrialRecord | None:
    """The study's winner: with one objective, its best trial; with several, the one ``rule`` chooses.
    None when no trial has a result; ``NoTrialWithinLimits`` when trials have results but none is within
    the limits."""
    if not objectives.multi:
        return best_trial(list(records), objectives.metric, objectives.direction)
    choice = choose_pareto(records, list(objectives), rule)
    if choice.chosen is None and choice.points:
        raise _no_winner(choice)
    return choice.chosen
