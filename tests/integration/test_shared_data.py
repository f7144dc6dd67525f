"""The dataset is held once per node: trials map it read-only from Ray's object store, and the trainer
wraps those pages without copying them."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.integration


def test_trials_map_the_dataset_from_the_object_store(fashion_subset):
    import ray

    from hpo.engine.ray_tune import start_ray
    from hpo.testing import probe_shared_arrays

    start_ray(None, num_cpus=2)
    try:
        ref = ray.put(fashion_subset)
        probe = ray.remote(num_cpus=1)(probe_shared_arrays)
        results = ray.get([probe.remote(ref) for _ in range(2)])
    finally:
        ray.shutdown()
    for r in results:
        assert not r["owndata"] and not r["writeable"], r  # a view of shared memory, not a private copy
        assert r["torch_shares"], r
