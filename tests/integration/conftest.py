from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from hpo.testing import REPO_ROOT, run_hpo


@dataclass
class StudyRun:
    work: Path
    stderr: str
    seconds: float
    stdout: str = ""

    @property
    def uri(self) -> str:
        return f"sqlite:///{self.work / 'mlflow' / 'mlflow.db'}"


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory, data_dir) -> StudyRun:
    """`hpo run studies/smoke.yaml` once for the whole session, in a fresh working directory."""
    work = tmp_path_factory.mktemp("smoke")
    start = time.time()
    result = run_hpo(["run", str(REPO_ROOT / "studies" / "smoke.yaml")], work, data_dir)
    assert result.returncode == 0, result.stdout + result.stderr
    return StudyRun(work, result.stderr, time.time() - start, result.stdout)


@pytest.fixture(scope="session")
def smoke_runs(smoke_run):
    """(client, runs by hpo.kind) for the smoke study's store."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=smoke_run.uri)
    experiment = client.get_experiment_by_name("smoke")
    assert experiment is not None
    by_kind: dict[str, list] = {}
    for run in client.search_runs([experiment.experiment_id]):
        by_kind.setdefault(run.data.tags.get("hpo.kind"), []).append(run)
    return client, by_kind


@pytest.fixture(scope="session")
def smoke_data(data_dir):
    """The smoke study's splits, exactly as the run saw them."""
    from hpo.data import load_data
    from hpo.study import load_study

    study = load_study(REPO_ROOT / "studies" / "smoke.yaml")
    return load_data(study.config.dataset.model_copy(update={"data_dir": str(data_dir)}), study.config.seed)


@pytest.fixture(scope="session")
def smoke_model(smoke_run):
    import mlflow

    mlflow.set_tracking_uri(smoke_run.uri)
    return mlflow.pytorch.load_model("models:/smoke@champion")


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray (2 CPUs) for a module's in-process studies: `run_study` keeps a Ray it did not start,
    so each study skips Ray's start-up (seconds on 2 cores)."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    try:
        yield
    finally:
        ray.shutdown()
