"""The team stack on a real PostgreSQL (Debian's package, on loopback, in a temporary folder): MLflow and
Optuna storage both on it, then a second study warm-started from the first's top-k configurations."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest

from hpo.testing import run_hpo

pytestmark = pytest.mark.integration

PASSWORD = "pg-pw-4411"  # the server trusts loopback; the URI carries a password to prove it is never shown
STUDY = """\
name: {name}
seed: {seed}
dataset: {{name: fashion_mnist, validation_split: 0.2, subset: {{train: 600, test: 200}}, data_dir: {data}}}
search_space:
  model: {{name: cnn, depth: 2, width: {{categorical: [8, 16]}}, batchnorm: before_activation}}
  optimizer: {{name: sgd, lr: {{float: [0.003, 0.3], log: true}}}}
  batch_size: 64
budget: {{trials: {trials}, max_epochs: 2}}
scheduler: {{type: asha, grace_period: 1, reduction_factor: 2}}
resources: {{max_concurrent: 1}}
final: {{register_as: nightly, export: []}}
tracking: {{uri: "{pg}/mlflow", experiment: nightly, optuna_storage: "{pg}/optuna"}}
{extra}
"""


def _pg_bin() -> str | None:
    """Debian's versioned folder holds every server tool; PATH may hold only some of them."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb")) or [shutil.which("initdb")]
    return os.path.dirname(os.path.realpath(found[-1])) if found[-1] else None


@pytest.fixture(scope="module")
def postgres():
    """A PostgreSQL server of our own: initdb in a temporary folder, listening on 127.0.0.1 only."""
    bindir = _pg_bin()
    if bindir is None:
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL is not installed (.ci/run installs Debian's postgresql)")
        pytest.skip("PostgreSQL is not installed: apt-get install postgresql")
    # Outside pytest's (root-only) tmp folder: as root, the server runs as the postgres user (initdb
    # refuses root), who must be able to reach its folder.
    root = Path(tempfile.mkdtemp(prefix="hpo-pg-"))
    as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    if as_postgres:
        shutil.chown(root, "postgres")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    def pg(tool: str, *args: str) -> None:
        done = subprocess.run([*as_postgres, f"{bindir}/{tool}", *args], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, f"{tool} failed: {done.stdout}{done.stderr}"

    pg("initdb", "-D", str(root / "data"), "-U", "hpo", "--auth=trust")
    pg(
        "pg_ctl",
        "-D",
        str(root / "data"),
        "-l",
        str(root / "log"),
        "-w",
        "start",
        "-o",
        f"-h 127.0.0.1 -p {port} -k {root}",
    )
    try:
        for db in ("mlflow", "optuna"):
            pg("createdb", "-h", "127.0.0.1", "-p", str(port), "-U", "hpo", db)
        yield f"postgresql://hpo:{PASSWORD}@127.0.0.1:{port}"
    finally:
        pg("pg_ctl", "-D", str(root / "data"), "-m", "fast", "-w", "stop")
        shutil.rmtree(root, ignore_errors=True)


def test_mlflow_and_optuna_on_postgres_and_a_warm_started_second_study(tmp_path, data_dir, postgres):
    import optuna

    import mlflow

    for name, seed, trials, extra in (("first", 0, 4, ""), ("second", 7, 3, "warm_start: {from: first, top_k: 2}")):
        (tmp_path / f"{name}.yaml").write_text(
            STUDY.format(name=name, seed=seed, trials=trials, data=data_dir, pg=postgres, extra=extra)
        )
    first = run_hpo(["run", "first.yaml"], tmp_path)
    assert first.returncode == 0, first.stderr
    second = run_hpo(["run", "second.yaml"], tmp_path)
    assert second.returncode == 0, second.stderr
    assert "warm start: 2 configurations from" in second.stderr
    assert PASSWORD not in first.stdout + first.stderr + second.stdout + second.stderr
    assert not (tmp_path / "mlflow" / "mlflow.db").exists()  # nothing went to the local default store

    # Optuna: both runs' sampler histories live in PostgreSQL; the second began with the first's top 2.
    storage = f"{postgres}/optuna"
    names = optuna.get_all_study_names(storage=storage)
    first_name, second_name = "first", "second"  # one Optuna study per study name, for all its runs
    assert {first_name, second_name} <= set(names)
    first_trials = optuna.load_study(study_name=first_name, storage=storage).trials
    told = [t for t in first_trials if t.state.name == "COMPLETE"]  # warm start ranks the complete ones
    top2 = [t.params for t in sorted(told, key=lambda t: t.value, reverse=True)[:2]]
    second_trials = sorted(optuna.load_study(study_name=second_name, storage=storage).trials, key=lambda t: t.number)
    assert [t.params for t in second_trials[:2]] == top2
    assert len(second_trials) == 3

    # MLflow: one experiment holds both studies, their trials and final runs, in PostgreSQL.
    client = mlflow.MlflowClient(tracking_uri=f"{postgres}/mlflow")
    runs = client.search_runs([client.get_experiment_by_name("nightly").experiment_id])
    studies = {r.data.tags["hpo.study"]: r for r in runs if r.data.tags.get("hpo.kind") == "study"}
    assert set(studies) == {"first", "second"} and all(r.info.status == "FINISHED" for r in studies.values())
    assert sum(r.data.tags.get("hpo.kind") == "trial" for r in runs) == 7
    assert studies["second"].data.tags["hpo.warm_start"] == "first"
    assert studies["second"].data.metrics["warm_start_points"] == 2
    versions = client.search_model_versions("name = 'nightly'")
    assert len(versions) == 2
    summary = mlflow.artifacts.load_text(f"{studies['second'].info.artifact_uri}/nightly_summary.md")
    assert "warm start: 2 configurations" in summary and "**Champion:**" in summary
