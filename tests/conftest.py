from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import pytest

from hpo.testing import REPO_ROOT, find_fashion_mnist

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# Execution plans measured by the tests (and the Ray workers and `hpo` processes they start, which inherit
# this) go to a cache of this session's, not the user's: each key is measured once per test session.
os.environ.setdefault("HPO_PLAN_CACHE", str(Path(tempfile.mkdtemp(prefix="hpo-plans-")) / "plans.json"))


@pytest.fixture(scope="session")
def data_dir() -> Path:
    found = find_fashion_mnist()
    if found is None:
        pytest.fail(
            "Fashion-MNIST not found: set HPO_DATA_DIR to a folder holding the four IDX files "
            "(or apt-get install dataset-fashion-mnist)"
        )
    return found


@pytest.fixture(scope="session")
def fashion_subset(data_dir):
    """A real, stratified Fashion-MNIST subset: 3,000 train+val and 1,000 test images."""
    from hpo.config.study import DatasetConfig
    from hpo.data import load_data

    config = DatasetConfig(
        name="fashion_mnist", validation_split=0.2, data_dir=str(data_dir), subset={"train": 3000, "test": 1000}
    )
    return load_data(config, seed=0)


@pytest.fixture
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)
