"""When the search will end: an estimate from the epochs measured so far and what the budget leaves.

Pure (no Ray, no clock of its own): the live view and the log lines call :func:`estimate` with the trial
records and the time, and show ``ETA ~12 min``. The estimate is the smaller of two figures:

- **trials**: the epochs still to train, times the mean measured epoch time, spread over the trials that
  run at once. Under ASHA a trial trains epoch ``t`` only if it was promoted at every rung below ``t``
  (rungs at ``grace_period * reduction_factor**k``, each promoting ``1 / reduction_factor`` of the trials),
  so a new trial is expected to train ``sum_t P(epoch t)`` epochs, and a running trial at epoch ``e`` the
  rest of that sum given that it reached ``e``. Once trials finish, their epoch counts (early stopping,
  pruning, failures) pull the expectation towards what this search actually does.
  Hyperband is ASHA over several brackets, each starting its rungs later: its curve is the brackets'
  mixed; the median rule has no rungs to model, so it is taken as stopping nothing until trials finish.
  With data fidelity an epoch costs in proportion to the share of the training images it trains on: the
  epochs are counted in full-data epochs (an epoch on a ninth of the images is a ninth of one), and the
  measured epoch time is per full-data epoch.
- **time**: what is left of the time budget or before the deadline, which ends the search whatever remains.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from hpo.engine.records import ACTIVE, TrialRecord
from hpo.names import Metric, TrialStatus

PRIOR_WEIGHT = 2.0  # the model's expectation of a trial's epochs counts as this many finished trials


@dataclass(frozen=True, kw_only=True)
class SearchBudget:
    """What bounds a search: its trials and epochs, ASHA's rungs, and when the clock ends it."""

    trials: int
    max_epochs: int
    asha: tuple[int, float] | None = None  # (grace_period, reduction_factor); None: no rungs (none, median)
    brackets: int = 1  # asynchronous Hyperband's brackets (scheduler: hyperband)
    ends_at: float | None = None  # wall clock (epoch seconds) where the time budget or the deadline ends it
    # scheduler fidelity: data: the share of the training images epoch 1, 2, ... trains on; empty: all of them
    fractions: tuple[float, ...] = ()

    def weights(self) -> list[float]:
        """What epoch ``t`` (index ``t``; index 0 unused) costs, in full-data epochs."""
        return [1.0, *(self.fractions or [1.0] * self.max_epochs)]


@dataclass(frozen=True)
class Eta:
    seconds: float
    bound_by: str  # "trials": the trials left; "time": the time budget or the deadline comes first

    def describe(self) -> str:
        """``~40 s``, ``~12 min``, ``~2.5 h``; ``(time budget)`` when the clock, not the trials, ends it."""
        s = self.seconds
        text = f"~{s:.0f} s" if s < 90 else f"~{s / 60:.0f} min" if s < 90 * 60 else f"~{s / 3600:.1f} h"
        return text + (" (time budget)" if self.bound_by == "time" else "")


def epoch_survival(max_epochs: int, asha: tuple[int, float] | None, brackets: int = 1) -> list[float]:
    """``P(a trial trains epoch t)`` for ``t`` in ``0..max_epochs`` (index 0 is 1: every trial starts).
    ``brackets`` > 1: asynchronous Hyperband, bracket s starting its rungs at grace * factor**s; a trial
    joins bracket s with Ray's odds, proportional to e**(its rungs)."""
    if asha is None:
        return [1.0] * (max_epochs + 1)
    grace, factor = asha
    curves, weights = [], []
    for s in range(brackets):
        rungs = []
        k = s
        while grace * factor**k < max_epochs:  # a rung at max_epochs stops nothing: the trial is done there
            rungs.append(grace * factor**k)
            k += 1
        curves.append([1.0] + [factor ** -sum(r < t for r in rungs) for t in range(1, max_epochs + 1)])
        weights.append(math.exp(len(rungs)))
    return [sum(w * c[t] for w, c in zip(weights, curves, strict=True)) / sum(weights) for t in range(max_epochs + 1)]


def remaining_epochs(survival: Sequence[float], trained: int, weights: Sequence[float] | None = None) -> float:
    """Epochs a trial that trained ``trained`` epochs is expected to train still (``weights``: each epoch's
    cost, in full-data epochs; default 1 each)."""
    if trained >= len(survival) - 1:
        return 0.0
    w = weights or [1.0] * len(survival)
    return sum(p * c for p, c in zip(survival[trained + 1 :], w[trained + 1 :], strict=True)) / survival[trained]


def estimate(records: Sequence[TrialRecord], budget: SearchBudget, *, now: float, concurrency: int = 1) -> Eta | None:
    """Seconds until the search ends, or None before any epoch was measured (nothing to go by yet).
    ``concurrency``: the trials that run at once (as seen: the most that ran together so far)."""
    timed = [row for r in records for row in r.history if row.get(Metric.SECONDS)]
    left = None if budget.ends_at is None else max(0.0, budget.ends_at - now)
    if not timed:
        return Eta(left, "time") if left is not None and left <= 0 else None
    # seconds per full-data epoch: an epoch on a third of the images took about a third of one
    epoch = sum(row[Metric.SECONDS] for row in timed) / sum(_share(row) for row in timed)
    survival = epoch_survival(budget.max_epochs, budget.asha, budget.brackets)
    weights = budget.weights()
    finished = [r for r in records if r.status not in ACTIVE]
    expected = remaining_epochs(survival, 0, weights)
    done = sum(_share(row) for r in finished for row in r.history)
    per_trial = (PRIOR_WEIGHT * expected + done) / (PRIOR_WEIGHT + len(finished))
    # A trial's time beyond its epochs (its start, the validation and checks outside its epoch seconds). The
    # first trial in each worker also paid the worker's start-up and its plan's measurement, which trials
    # after it (on the same, reused worker) do not: they count only while no other trial has finished.
    spans = sorted((r.started, r.ended - r.started - r.compute_seconds) for r in finished if r.ended is not None)
    overheads = [max(0.0, extra) for _, extra in spans[concurrency:] or spans]
    overhead = sum(overheads) / len(overheads) if overheads else 0.0

    running = [
        epoch * (remaining_epochs(survival, r.epochs, weights) if r.status == TrialStatus.RUNNING else per_trial)
        for r in records
        if r.status in ACTIVE  # a retrying trial starts again from scratch
    ]
    new = max(0, budget.trials - len(records))
    work = sum(running) + new * (per_trial * epoch + overhead)
    slots = max(1, min(concurrency, len(running) + new))
    trials_eta = max(work / slots, max(running, default=0.0))
    if left is not None and left < trials_eta:
        return Eta(left, "time")
    return Eta(trials_eta, "trials")


def _share(row: dict) -> float:
    """The share of the training images an epoch trained on (1 without data fidelity)."""
    return float(row.get(Metric.DATA_FRACTION) or 1.0)
