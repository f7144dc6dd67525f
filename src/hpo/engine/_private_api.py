"""Every read of a private attribute of Ray Tune or Optuna, in one place.

hpo needs two things neither library offers publicly (which Optuna trial stands for a Tune trial, once
read from Ray's ``OptunaSearch``, is now hpo's own searcher's to say: ``hpo.engine.searcher``):

- ASHA's rungs (``AsyncHyperBandScheduler._brackets``, ``_Bracket._rungs``), so that a resumed search can
  hand a fresh scheduler the rung results of trials finished before the crash;
- a say in whether a failed trial is retried (``Trial.should_recover``), so that a trial that ran out of
  memory is not run again only to run out again.

Each accessor raises ``PrivateApiChanged`` naming the attribute when a library update removes it, and
``tests/unit/test_private_api.py`` builds the real objects to catch that on the upgrade, not in a run.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any


class PrivateApiChanged(RuntimeError):
    """A private attribute hpo reads is gone: the library changed, and this module must follow."""


def _attribute(owner: Any, name: str) -> Any:
    try:
        return getattr(owner, name)
    except AttributeError:
        raise PrivateApiChanged(
            f"{type(owner).__module__}.{type(owner).__qualname__} has no attribute {name!r} any more: "
            "update hpo/engine/_private_api.py for this version"
        ) from None


def asha_rungs(scheduler: Any) -> list[tuple[float, dict[str, float]]]:
    """(milestone, recorded results) of every rung of every bracket of Ray's ASHA ``scheduler``. The dicts
    are the scheduler's own: what is added to them counts in its cut-offs. ``recorded`` maps a trial id to
    the trial's sign-adjusted metric at that milestone (ASHA always maximises)."""
    rungs = []
    for bracket in _attribute(scheduler, "_brackets"):
        for milestone, recorded in _attribute(bracket, "_rungs"):
            rungs.append((milestone, recorded))
    return rungs


@contextmanager
def retry_rule(may_retry: Callable[[Any], bool]) -> Iterator[None]:
    """While the block runs, Ray Tune retries a failed trial only if ``may_retry(trial)`` agrees as well as
    its own count (``Trial.should_recover``: failures <= ``FailureConfig.max_failures``). Tune asks that
    method right after recording the error and offers no hook of its own there (callbacks hear of the
    retry only once it is scheduled), so the class's method is wrapped for the block, in the driver, where
    the controller runs (under Ray Client, Tune runs it in a remote task: there Ray's count alone decides).

    A retried trial starts over (on whichever node has room: a lost node's trial goes to another) and
    reports its epochs again: hpo's searcher skips the steps its Optuna trial has already (hpo's own
    records and tracker runs follow the attempt that finished)."""
    from ray.tune.experiment import Trial

    ray_rule = _attribute(Trial, "should_recover")

    def should_recover(trial: Any) -> bool:
        return bool(ray_rule(trial)) and may_retry(trial)

    Trial.should_recover = should_recover  # type: ignore[method-assign]
    try:
        yield
    finally:
        Trial.should_recover = ray_rule  # type: ignore[method-assign]
