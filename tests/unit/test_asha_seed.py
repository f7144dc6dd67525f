"""Seeding a fresh ASHA with the rung results of trials finished before a crash (a stand-in scheduler
with ASHA's shape; tests/unit/test_private_api.py checks the real one still has it)."""

from __future__ import annotations

from types import SimpleNamespace

from hpo.config.trial import TrialConfig
from hpo.engine.asha import rung_results, seed_asha
from hpo.engine.records import TrialRecord


def record(number: int, values: list[float | None]) -> TrialRecord:
    history = [{"epoch": i + 1, "val_loss": v} for i, v in enumerate(values)]
    return TrialRecord(f"t{number}", number, {}, TrialConfig.model_construct(), history=history)


RECORDS = [record(1, [0.9, 0.5, 0.4, 0.3]), record(2, [0.8]), record(3, [None, 0.6])]


def test_rung_results_take_the_value_at_each_milestone_sign_adjusted():
    assert rung_results(RECORDS, [4, 2, 1], "val_loss", "min") == {
        4: {"resumed-1": -0.3},
        2: {"resumed-1": -0.5, "resumed-3": -0.6},
        1: {"resumed-1": -0.9, "resumed-2": -0.8},  # trial 3 reported no value at epoch 1
    }
    assert rung_results(RECORDS, [1.0], "val_loss", "max") == {1.0: {"resumed-1": 0.9, "resumed-2": 0.8}}


def test_seed_asha_fills_every_bracket_and_keeps_what_the_scheduler_had():
    rungs = [(4.0, {}), (2.0, {"live": -0.1}), (1.0, {})]
    scheduler = SimpleNamespace(_brackets=[SimpleNamespace(_rungs=rungs), SimpleNamespace(_rungs=[(2.0, {})])])
    seed_asha(scheduler, RECORDS, "val_loss", "min")
    assert rungs[1][1] == {"live": -0.1, "resumed-1": -0.5, "resumed-3": -0.6}
    assert rungs[0][1] == {"resumed-1": -0.3}
    assert scheduler._brackets[1]._rungs[0][1] == {"resumed-1": -0.5, "resumed-3": -0.6}
