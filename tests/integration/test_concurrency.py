"""Two studies at once against one local SQLite MLflow store: both finish, no "database is locked"."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from hpo.testing import REPO_ROOT

pytestmark = pytest.mark.integration


def test_two_studies_share_one_sqlite_store(tmp_path, data_dir):
    import mlflow

    smoke = (REPO_ROOT / "studies" / "smoke.yaml").read_text()
    (tmp_path / "search_spaces").mkdir()
    (tmp_path / "search_spaces" / "smoke.yaml").write_text((REPO_ROOT / "search_spaces" / "smoke.yaml").read_text())
    (tmp_path / "studies").mkdir()
    # the smoke study, smaller: what matters is two drivers writing to one store at once, start to end (the
    # exports are files beside the store, not writes to it)
    for old, new in (
        ("subset: {train: 5000, test: 1000}", "subset: {train: 800, test: 200}"),
        ("trials: 4", "trials: 2"),
        ("recheck: {top_k: 2, seeds: 2}", "recheck: {top_k: 1, seeds: 2}, export: []"),
    ):
        assert old in smoke, old
        smoke = smoke.replace(old, new)
    for name in ("twin-a", "twin-b"):
        text = smoke.replace("name: smoke", f"name: {name}").replace("register_as: smoke", f"register_as: {name}")
        (tmp_path / "studies" / f"{name}.yaml").write_text(text)

    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "HPO_DATA_DIR": str(data_dir)}
    env.pop("MLFLOW_TRACKING_URI", None)
    procs = {
        name: subprocess.Popen(
            [sys.executable, "-m", "hpo.cli", "run", f"studies/{name}.yaml"],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for name in ("twin-a", "twin-b")
    }
    outputs = {name: proc.communicate(timeout=600)[0] for name, proc in procs.items()}
    for name, proc in procs.items():
        assert proc.returncode == 0, outputs[name]
        assert "database is locked" not in outputs[name]

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}")
    for name in ("twin-a", "twin-b"):
        experiment = client.get_experiment_by_name(name)
        runs = client.search_runs([experiment.experiment_id])
        kinds = [r.data.tags.get("hpo.kind") for r in runs]
        assert kinds.count("study") == 1 and kinds.count("trial") == 2 and kinds.count("final") == 1
        assert all(r.info.status in ("FINISHED", "KILLED") for r in runs)
        assert str(client.get_model_version_by_alias(name, "champion").version) == "1"
