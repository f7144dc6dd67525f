"""The search's strategies, one registry each: the Optuna sampler that proposes configurations
(``sampler:``) and the Ray Tune scheduler that stops weak trials early (``scheduler:``).

What a sampler cannot do with a study (a conditional space, several objectives, a range with no grid)
is refused when the study loads (``hpo.study.sampler_misfit``), not found out mid-run as a sampler that
quietly falls back to random sampling; ``make_sampler`` asks the same question, for studies built in code.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from hpo.engine.asha import seed_asha
from hpo.engine.records import TrialRecord
from hpo.errors import HpoError
from hpo.study import Study, grid_values, hyperband_brackets, sampler_misfit

if TYPE_CHECKING:
    import optuna
    from ray.tune.schedulers import TrialScheduler

__all__ = [
    "SAMPLERS",
    "SCHEDULERS",
    "list_samplers",
    "list_schedulers",
    "make_sampler",
    "make_scheduler",
    "startup_trials",
]

TIME_ATTR = "training_iteration"  # one per epoch: every trial reports once per epoch


def startup_trials(study: Study) -> int:
    """Random trials before a model-based sampler starts modelling: ``sampler.startup_trials`` or
    min(10, max(2, budget.trials // 3))."""
    c = study.config
    if c.sampler.startup_trials is not None:
        return c.sampler.startup_trials
    return min(10, max(2, c.budget.trials // 3))


# ------------------------------------------------------------------------------------------ samplers


def _tpe(study: Study, seed: int) -> optuna.samplers.BaseSampler:
    import optuna

    # group: each one_of branch is modelled on the trials that took it; constant_liar: trials running at
    # once count as bad guesses, so that they do not all propose the same point.
    return optuna.samplers.TPESampler(
        seed=seed, n_startup_trials=startup_trials(study), multivariate=True, group=True, constant_liar=True
    )


def _gp(study: Study, seed: int) -> optuna.samplers.BaseSampler:
    import optuna

    return optuna.samplers.GPSampler(seed=seed, n_startup_trials=startup_trials(study))


def _cmaes(study: Study, seed: int) -> optuna.samplers.BaseSampler:
    import optuna

    # The start-up trials come from the independent sampler, seeded like the rest.
    return optuna.samplers.CmaEsSampler(
        seed=seed,
        n_startup_trials=startup_trials(study),
        independent_sampler=optuna.samplers.RandomSampler(seed=seed),
    )


def _random(study: Study, seed: int) -> optuna.samplers.BaseSampler:
    import optuna

    return optuna.samplers.RandomSampler(seed=seed)


def _qmc(study: Study, seed: int) -> optuna.samplers.BaseSampler:
    import optuna

    # Scrambled Sobol: the seed picks the scramble, so two seeds give two sequences. The first trial comes
    # from the independent sampler (QMC learns the space from it), seeded as well.
    return optuna.samplers.QMCSampler(
        qmc_type="sobol", scramble=True, seed=seed, independent_sampler=optuna.samplers.RandomSampler(seed=seed)
    )


def _grid(study: Study, seed: int) -> optuna.samplers.BaseSampler:
    grid = grid_values(study.space)
    if isinstance(grid, str):
        raise HpoError(f"sampler grid: {grid}")
    from hpo.engine._grid import GridSampler

    return GridSampler(grid, seed=seed)  # the seed shuffles the order the grid is walked


def _nsga2(study: Study, seed: int) -> optuna.samplers.BaseSampler:
    import optuna

    # The first generation is random, as a model-based sampler's start-up; its size is the start-up count
    # (at least 2), so that a small budget sees more than one generation.
    return optuna.samplers.NSGAIISampler(seed=seed, population_size=max(2, startup_trials(study)))


SAMPLERS: dict[str, Callable[[Study, int], Any]] = {
    "tpe": _tpe,
    "gp": _gp,
    "cmaes": _cmaes,
    "random": _random,
    "qmc": _qmc,
    "grid": _grid,
    "nsga2": _nsga2,
}


def list_samplers() -> list[str]:
    return list(SAMPLERS)


def make_sampler(study: Study, seed: int) -> optuna.samplers.BaseSampler:
    """The Optuna sampler ``study.config.sampler`` names, seeded with ``seed``: the same seed proposes
    the same configurations. Raises HpoError for a sampler the study does not fit (as loading does)."""
    c = study.config
    name = c.sampler.type
    if name not in SAMPLERS:
        raise HpoError(f"unknown sampler {name!r}; one of: {', '.join(SAMPLERS)}")
    misfit = sampler_misfit(c, study.space)
    if misfit is not None:
        raise HpoError(f"{'.'.join(str(p) for p in misfit[0])}: {misfit[1]}")
    import optuna

    # group (TPE) and QMC are experimental in Optuna: chosen knowingly, so their warning is not the user's.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return SAMPLERS[name](study, seed)


# ---------------------------------------------------------------------------------------- schedulers


def _asha(study: Study, records: list[TrialRecord]) -> TrialScheduler:
    from ray.tune.schedulers import ASHAScheduler

    c = study.config
    scheduler = ASHAScheduler(
        time_attr=TIME_ATTR,
        max_t=c.budget.max_epochs,
        grace_period=c.scheduler.grace_period,
        reduction_factor=c.scheduler.reduction_factor,
    )
    seed_asha(scheduler, records, c.objective.metric, c.objective.direction)
    return scheduler


def _hyperband(study: Study, records: list[TrialRecord]) -> TrialScheduler:
    """Asynchronous Hyperband: ASHA over ``brackets`` brackets, bracket s starting its rungs at
    grace_period * reduction_factor**s, each new trial put in one of them. Ray's synchronous
    ``HyperBandScheduler`` pauses trials and resumes them from checkpoints, which hpo's function trainable
    does not write, so it is not offered. Ray picks a trial's bracket with numpy's global generator: the
    bracket a trial lands in is not seeded. A resumed run's records go into every bracket's rungs."""
    from ray.tune.schedulers import AsyncHyperBandScheduler

    c = study.config
    scheduler = AsyncHyperBandScheduler(
        time_attr=TIME_ATTR,
        max_t=c.budget.max_epochs,
        grace_period=c.scheduler.grace_period,
        reduction_factor=c.scheduler.reduction_factor,
        brackets=max(1, hyperband_brackets(c)),
    )
    seed_asha(scheduler, records, c.objective.metric, c.objective.direction)
    return scheduler


def _median(study: Study, records: list[TrialRecord]) -> TrialScheduler:
    """The median stopping rule: after grace_period epochs, a trial whose best result so far is worse
    than the median of the other trials' running averages at the same epoch stops, once 2 other trials
    have reached that epoch (Ray's default of 3 is too many for the small budgets hpo often runs). It keeps
    its history in memory: a resumed run starts it afresh."""
    from ray.tune.schedulers import MedianStoppingRule

    return MedianStoppingRule(
        time_attr=TIME_ATTR, grace_period=float(study.config.scheduler.grace_period), min_samples_required=2
    )


def _none(study: Study, records: list[TrialRecord]) -> TrialScheduler:
    from ray.tune.schedulers import FIFOScheduler

    return FIFOScheduler()  # every trial trains all budget.max_epochs


SCHEDULERS: dict[str, Callable[[Study, list[TrialRecord]], TrialScheduler]] = {
    "asha": _asha,
    "hyperband": _hyperband,
    "median": _median,
    "none": _none,
}


def list_schedulers() -> list[str]:
    return list(SCHEDULERS)


def make_scheduler(study: Study, records: list[TrialRecord]) -> TrialScheduler:
    """The Ray Tune scheduler ``study.config.scheduler`` names, with ``training_iteration`` (one per
    epoch) as its clock. ``records``: the trials a resumed run already finished, whose rung results a
    fresh ASHA or Hyperband is given, so that it stops trials as the uninterrupted run would have."""
    name = study.config.scheduler.type
    if name not in SCHEDULERS:
        raise HpoError(f"unknown scheduler {name!r}; one of: {', '.join(SCHEDULERS)}")
    return SCHEDULERS[name](study, records)
