"""The search's strategies, one registry each: the Optuna sampler that proposes configurations
(``sampler:``) and the Ray Tune scheduler that stops weak trials early (``scheduler:``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from hpo.engine.asha import seed_asha
from hpo.engine.records import TrialRecord
from hpo.study import Study

if TYPE_CHECKING:
    import optuna
    from ray.tune.schedulers import TrialScheduler

__all__ = ["make_sampler", "make_scheduler", "startup_trials"]


def startup_trials(study: Study) -> int:
    """Random trials before a model-based sampler starts modelling: ``sampler.startup_trials`` or
    min(10, max(2, budget.trials // 3))."""
    c = study.config
    if c.sampler.startup_trials is not None:
        return c.sampler.startup_trials
    return min(10, max(2, c.budget.trials // 3))


def make_sampler(study: Study, seed: int) -> optuna.samplers.BaseSampler:
    """The Optuna sampler ``study.config.sampler`` names, seeded with ``seed``."""
    import optuna

    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup_trials(study))


def make_scheduler(study: Study, records: list[TrialRecord]) -> TrialScheduler:
    """The Ray Tune scheduler ``study.config.scheduler`` names. ``records``: the trials a resumed run
    already finished, whose rung results a fresh ASHA is given."""
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    c = study.config
    if c.scheduler.type == "asha":
        scheduler = ASHAScheduler(
            time_attr="training_iteration",
            max_t=c.budget.max_epochs,
            grace_period=c.scheduler.grace_period,
            reduction_factor=c.scheduler.reduction_factor,
        )
        seed_asha(scheduler, records, c.objective.metric, c.objective.direction)
        return scheduler
    return FIFOScheduler()
