"""Optuna's grid sampler, less its stop (a module of its own so that the class pickles by reference,
as Ray's checkpoints of the searcher need, while hpo.engine.strategies imports Optuna lazily)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import optuna


class GridSampler(optuna.samplers.GridSampler):
    """Once every point is taken, Optuna's grid calls ``Study.stop``, which raises outside
    ``Study.optimize`` (hpo asks and tells). The search ends at budget.trials anyway, and that is at most
    the grid's size (``hpo.study.sampler_misfit``)."""

    def after_trial(
        self, study: Any, trial: Any, state: optuna.trial.TrialState, values: Sequence[float] | None
    ) -> None:
        return None
