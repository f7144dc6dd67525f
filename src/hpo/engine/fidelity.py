"""Data-size fidelity (``scheduler: {fidelity: data}``): the fraction of the training images each epoch of
a search's trial trains on. The epochs up to ASHA's first rung train on the first fraction, those up to
the second rung on the second, and so on; after the listed fractions, on all images. A promoted trial
goes on training the same model on more data: it does not start over."""

from __future__ import annotations

import math

from hpo.config.study import SchedulerConfig

__all__ = ["epoch_fractions", "rung_epochs"]


def rung_epochs(grace_period: int, reduction_factor: float, max_epochs: int) -> list[int]:
    """The epochs at which ASHA judges a trial, up to ``max_epochs``: grace, grace x rf, grace x rf^2, ...
    Ray's ASHA judges a rung at the first epoch that reaches its milestone (rounded up, for a fractional
    reduction factor). Hyperband's brackets start at later rungs of the same ladder: its base bracket's."""
    rungs: list[int] = []
    k = 0
    while (epoch := math.ceil(grace_period * reduction_factor**k - 1e-9)) <= max_epochs:
        if not rungs or epoch > rungs[-1]:
            rungs.append(epoch)
        k += 1
    return rungs


def epoch_fractions(scheduler: SchedulerConfig, max_epochs: int) -> list[float]:
    """The fraction of the training images each epoch (1 .. ``max_epochs``) trains on; empty where the
    fidelity is epochs (every epoch on all images).

    The epochs up to the k-th rung train on ``fractions[k]``. The epochs after the last rung before
    ``max_epochs`` train on all images whatever is listed: a trial that survives every cut finishes on the
    whole training set (fractions beyond the rungs a budget has are left unused)."""
    fractions = scheduler.fractions
    if not fractions or scheduler.type not in ("asha", "hyperband"):
        return []
    rungs = [r for r in rung_epochs(scheduler.grace_period, scheduler.reduction_factor, max_epochs) if r < max_epochs]
    per_epoch = []
    for epoch in range(1, max_epochs + 1):
        passed = sum(1 for r in rungs if r < epoch)  # rungs this epoch's model has already passed
        last = passed == len(rungs)
        per_epoch.append(1.0 if last or passed >= len(fractions) else fractions[passed])
    return per_epoch
