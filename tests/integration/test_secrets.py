"""Credentials in tracking URIs never reach the terminal, MLflow, or any file a run writes; Ray serves no
dashboard and the MLflow UI binds loopback (tests/unit/test_cli.py)."""

from __future__ import annotations

import os

import psutil
import pytest

from hpo.testing import run_hpo

pytestmark = pytest.mark.integration

PASSWORD, TOKEN = "pw-s3cr3t-77", "tok-9f8e7d"
SECRET_URI = f"postgresql://hpo:{PASSWORD}@db.invalid:5432/mlflow?sslmode=require&token={TOKEN}"
STUDY = """\
name: secretive
dataset: {{name: fashion_mnist, validation_split: 0.2, subset: {{train: 400, test: 100}}, data_dir: {data}}}
search_space: {{model: {{name: cnn, depth: 1, width: 4}}, batch_size: 64}}
budget: {{trials: 1, max_epochs: 1}}
scheduler: {{type: none}}
final: {{enabled: false}}
tracking: {{uri: "{uri}"}}
"""


def _files_containing(root, needle: bytes) -> list[str]:
    hits = []
    for dirpath, _, files in os.walk(root):
        for name in files:
            path = os.path.join(dirpath, name)
            try:
                with open(path, "rb") as fh:
                    if needle in fh.read():
                        hits.append(path)
            except OSError:
                pass
    return hits


def test_a_password_in_the_tracking_uri_is_never_printed_or_stored(tmp_path, data_dir):
    import mlflow

    (tmp_path / "study.yaml").write_text(STUDY.format(data=data_dir, uri=SECRET_URI))
    checked = run_hpo(["validate", "study.yaml"], tmp_path)
    assert checked.returncode == 0, checked.stderr
    assert "hpo:***@db.invalid" in checked.stdout and "token=***" in checked.stdout

    store = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"  # the study's server is overridden for the test
    result = run_hpo(["run", "study.yaml", "--tracking-uri", store], tmp_path)
    assert result.returncode == 0, result.stderr
    for secret in (PASSWORD, TOKEN):
        assert secret not in checked.stdout + checked.stderr + result.stdout + result.stderr
        assert _files_containing(tmp_path, secret.encode()) == [str(tmp_path / "study.yaml")]  # the user's own

    client = mlflow.MlflowClient(tracking_uri=store)
    study_run = client.search_runs(
        [client.get_experiment_by_name("secretive").experiment_id], "tags.`hpo.kind` = 'study'"
    )[0]
    logged = mlflow.artifacts.load_text(f"{study_run.info.artifact_uri}/study.resolved.yaml")
    assert "postgresql://hpo:***@db.invalid:5432/mlflow?sslmode=require&token=***" in logged


def test_an_unreachable_server_with_credentials_fails_without_showing_them(tmp_path, data_dir):
    (tmp_path / "study.yaml").write_text(STUDY.format(data=data_dir, uri=f"http://hpo:{PASSWORD}@127.0.0.1:9/"))
    result = run_hpo(
        ["run", "study.yaml"],
        tmp_path,
        env={"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "3"},
    )
    assert result.returncode == 1, result.stderr
    assert "127.0.0.1:9" in result.stderr and "hpo:***@" in result.stderr
    assert PASSWORD not in result.stdout + result.stderr


def test_in_process_ray_serves_no_dashboard_and_binds_its_head_to_loopback():
    """Ray's head process (dashboard.py, kept for its job APIs) binds 127.0.0.1; no web UI is served. Ray's
    gRPC services listen on the node's address by Ray's design and are guarded by its token auth."""
    import ray

    from hpo.engine.ray_tune import start_ray

    start_ray(None, num_cpus=1)
    try:
        family = [p for p in psutil.Process().children(recursive=True) if p.is_running()]
        heads = [p.cmdline() for p in family if any(a.endswith("dashboard/dashboard.py") for a in p.cmdline())]
        assert all("--host=127.0.0.1" in cmd for cmd in heads), heads
        pids = {p.pid for p in family}
        ports = {c.laddr.port for c in psutil.net_connections("inet") if c.pid in pids and c.status == "LISTEN"}
        assert 8265 not in ports
    finally:
        ray.shutdown()
