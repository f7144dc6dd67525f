"""The private attributes of Ray Tune and Optuna that hpo reads (all in hpo/engine/_private_api.py) are
still there: the real objects are built (no Ray cluster is started) and read through the adapter, which
names the attribute when a library update removed it."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from hpo.engine._private_api import PrivateApiChanged, asha_rungs


def test_asha_still_keeps_its_rungs_per_bracket():
    from ray.tune.schedulers import ASHAScheduler

    scheduler = ASHAScheduler(time_attr="training_iteration", max_t=8, grace_period=1, reduction_factor=2)
    rungs = asha_rungs(scheduler)
    assert {1, 2, 4} <= {int(m) for m, _ in rungs}  # milestones are epoch counts
    assert all(isinstance(recorded, dict) for _, recorded in rungs)
    rungs[0][1]["resumed-1"] = 0.5  # the scheduler's own dict: what is added counts in its cut-offs
    assert asha_rungs(scheduler)[0][1] == {"resumed-1": 0.5}


def test_a_missing_attribute_is_named():
    with pytest.raises(PrivateApiChanged, match=r"has no attribute '_brackets'.*_private_api\.py"):
        asha_rungs(SimpleNamespace())
