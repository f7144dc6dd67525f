"""The bookkeeping's unit tests run without Ray or MLflow: importing the modules they cover, and the
tests themselves, loads neither, nor Optuna or torch (a fresh interpreter, so what other tests imported
does not count)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the tests import as tests.unit.*

MODULES = [
    "hpo.tracking",
    "hpo.tracking.memory",
    "hpo.engine.trial_book",
    "hpo.engine.asha",
    "hpo.engine.recovery",
    "hpo.stages.champion",
    "hpo.stages.nightly",
    "tests.unit.test_trial_book",
    "tests.unit.test_champion_rule",
    "tests.unit.test_recovery_reconcile",
    "tests.unit.test_asha_seed",
]


def test_the_bookkeeping_and_its_tests_import_neither_ray_nor_mlflow():
    code = (
        "import importlib, sys\n"
        f"for name in {MODULES!r}:\n"
        "    importlib.import_module(name)\n"
        "print(sorted(m for m in ('ray', 'mlflow', 'optuna', 'torch') if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True, cwd=ROOT
    )
    assert out.stdout.strip() == "[]"


def test_a_trial_worker_importing_the_trainer_loads_no_ray_mlflow_optuna_or_yaml():
    """What a Ray worker pays for ``import hpo.train``: torch and the model zoo, not the study's YAML parser,
    the tracking stack or the search libraries (package ``__init__`` imports count here, which
    import-linter's contracts do not see)."""
    code = (
        "import sys, hpo.train\n"
        "print(sorted(m for m in ('ray', 'mlflow', 'optuna', 'yaml', 'hpo.config.yaml_loader', 'hpo.study',"
        " 'hpo.data.formats', 'hpo.data.fashion_mnist') if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True, cwd=ROOT
    )
    assert out.stdout.strip() == "[]"
