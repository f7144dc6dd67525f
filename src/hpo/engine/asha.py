"""Seeding a fresh ASHA scheduler with what a search knew before a crash."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from hpo.engine._private_api import asha_rungs
from hpo.engine.records import TrialRecord


def rung_results(
    records: Iterable[TrialRecord], milestones: Iterable[float], metric: str, mode: str
) -> dict[float, dict[str, float]]:
    """For each rung milestone (an epoch count), the value each trial had of ``metric`` at that epoch,
    sign-adjusted as ASHA keeps it (it maximises: ``min`` mode negates), keyed ``resumed-<number>``.
    Trials that did not reach the epoch, or reported no value there, are left out."""
    sign = 1.0 if mode == "max" else -1.0
    records = list(records)
    out: dict[float, dict[str, float]] = {}
    for milestone in milestones:
        epoch = int(milestone)
        out[milestone] = {
            f"resumed-{record.number}": sign * record.history[epoch - 1][metric]
            for record in records
            if len(record.history) >= epoch and record.history[epoch - 1].get(metric) is not None
        }
    return out


def seed_asha(scheduler: Any, records: list[TrialRecord], metric: str, mode: str) -> None:
    """Give a fresh ASHA the rung results of trials finished before a crash, so that a resumed search
    stops trials as the uninterrupted one would have."""
    for milestone, recorded in asha_rungs(scheduler):
        recorded.update(rung_results(records, [milestone], metric, mode)[milestone])
