from __future__ import annotations

import functools
import logging
import os
import platform
import subprocess
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import yaml

from hpo import __version__
from hpo._locks import exclusive
from hpo.security import redact

DEFAULT_STORE = Path("mlflow")
MAX_PARAM_LENGTH = 6000
# MLflow 3 opens an experiment on its GenAI overview unless the experiment says it holds model training:
# these tags make the UI open on the runs, and describe the experiment there.
EXPERIMENT_KIND = "mlflow.experimentKind"
CUSTOM_MODEL_DEVELOPMENT = "custom_model_development"
EXPERIMENT_NOTE = "mlflow.note.content"
EXPERIMENT_DESCRIPTION = (
    "Hyperparameter search by hpo: a parent run per study and backend, a nested run per "
    "trial, and the final run with the retrained, tested model."
)
_EXPERIMENT_TAGS = {EXPERIMENT_KIND: CUSTOM_MODEL_DEVELOPMENT, EXPERIMENT_NOTE: EXPERIMENT_DESCRIPTION}


def default_tracking_uri(configured: str | None = None) -> str:
    """The study's ``tracking.uri``, else ``$MLFLOW_TRACKING_URI``, else a SQLite store under ./mlflow/."""
    if configured:
        return configured
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return f"sqlite:///{(DEFAULT_STORE / 'mlflow.db').resolve()}"


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``: MLflow params and UI columns are flat."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def _git_commit() -> str | None:
    try:
        return (
            subprocess.run(
                ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True
            ).stdout.strip()
            or None
        )
    except (OSError, subprocess.SubprocessError):
        return None


def _timed(method):
    """Accumulate the time spent writing to MLflow (reported as tracking overhead)."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        start = time.perf_counter()
        try:
            return method(self, *args, **kwargs)
        finally:
            self.busy_seconds += time.perf_counter() - start

    return wrapper


class Tracker:
    """Writes a study's runs. All calls take explicit run ids: no global active-run state."""

    busy_seconds = 0.0

    def __init__(self, uri: str, experiment: str) -> None:
        from mlflow.tracking import MlflowClient

        import mlflow

        logging.getLogger("mlflow").setLevel(logging.WARNING)  # table creation, registry chatter
        logging.getLogger("alembic").setLevel(logging.WARNING)
        self.uri = uri
        mlflow.set_tracking_uri(uri)
        self.mlflow = mlflow
        db = Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None
        if db is not None:
            db.parent.mkdir(parents=True, exist_ok=True)
        # Two studies starting at once against a new SQLite file would both run MLflow's schema migrations
        # and trip over each other: the first to arrive creates the store while the other waits.
        with exclusive(db.with_name(db.name + ".lock")) if db is not None else nullcontext():
            self.client = MlflowClient(tracking_uri=uri)
            found = self.client.get_experiment_by_name(experiment)
            if found is None:
                artifacts = None
                if db is not None:  # keep artifacts beside the database, not in the cwd
                    artifacts = (db.parent / "artifacts").resolve().as_uri()
                elif "://" in uri and not uri.startswith(("http://", "https://", "databricks")):
                    # another database (postgresql://...) written directly: artifacts go to ./mlflow/ as for
                    # the local default (a tracking server decides for itself)
                    artifacts = (DEFAULT_STORE / "artifacts").resolve().as_uri()
                self.experiment_id = self.client.create_experiment(
                    experiment, artifact_location=artifacts, tags=_EXPERIMENT_TAGS
                )
            else:
                self.experiment_id = found.experiment_id
                self._tag_experiment(found.tags)

    def _tag_experiment(self, tags: Mapping[str, str]) -> None:
        """An experiment made before hpo tagged its own (or by someone else) opens on the runs as well. A
        kind the UI only guessed (``*_inferred``) is replaced; a kind or a description someone set is kept."""
        kind = tags.get(EXPERIMENT_KIND, "")
        if not kind or kind.endswith("_inferred") or kind == "no_inferred_type":
            self.client.set_experiment_tag(self.experiment_id, EXPERIMENT_KIND, CUSTOM_MODEL_DEVELOPMENT)
        if not tags.get(EXPERIMENT_NOTE):
            self.client.set_experiment_tag(self.experiment_id, EXPERIMENT_NOTE, EXPERIMENT_DESCRIPTION)

    # ------------------------------------------------------------------------------------- runs
    @_timed
    def start_run(self, name: str, *, parent: str | None = None, tags: Mapping[str, str] | None = None) -> str:
        all_tags = {"mlflow.runName": name, "hpo.version": __version__, **{k: str(v) for k, v in (tags or {}).items()}}
        if parent:
            all_tags["mlflow.parentRunId"] = parent
        return self.client.create_run(self.experiment_id, tags=all_tags, run_name=name).info.run_id

    def start_study(
        self,
        study,
        resolved: Mapping[str, Any],
        *,
        name: str | None = None,
        kind: str = "study",
        backend: str = "search",
    ) -> str:
        """The parent run of one backend's work on a study: the study's settings as params (the same
        columns for every backend), the resolved study file and the environment."""
        import optuna
        import ray
        import torch

        run_id = self.start_run(
            name or study.name,
            tags={
                "hpo.kind": kind,
                "hpo.backend": backend,
                "hpo.study": study.name,
                "hpo.study_file": str(study.file),
                "hpo.fingerprint": study.fingerprint(),
                "mlflow.source.git.commit": _git_commit() or "unknown",
            },
        )
        c = study.config
        self.log_params(
            run_id,
            {
                "seed": c.seed,
                "dataset.name": c.dataset.name,
                "dataset.validation_split": c.dataset.validation_split,
                "objective.metric": c.objective.metric,
                "budget.trials": c.budget.trials,
                "budget.time_s": c.budget.time,
                "budget.max_epochs": c.budget.max_epochs,
                "scheduler.type": c.scheduler.type,
                "scheduler.grace_period": c.scheduler.grace_period,
                "scheduler.reduction_factor": c.scheduler.reduction_factor,
                "resources.cpus_per_trial": c.resources.cpus_per_trial,
                "resources.gpus_per_trial": c.resources.gpus_per_trial,
                "resources.compile": c.resources.compile,
            },
        )
        self.client.log_text(run_id, redact(yaml.safe_dump(dict(resolved), sort_keys=False)), "study.resolved.yaml")
        self.client.log_dict(
            run_id,
            {
                "python": platform.python_version(),
                "platform": platform.platform(),
                "hpo": __version__,
                "torch": torch.__version__,
                "ray": ray.__version__,
                "optuna": optuna.__version__,
                "mlflow": self.mlflow.__version__,
            },
            "environment.json",
        )
        return run_id

    @_timed
    def log_params(self, run_id: str, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, redact(str(v))[:MAX_PARAM_LENGTH]) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(run_id, params=items[i : i + 100])

    @_timed
    def log_metrics(self, run_id: str, metrics: Mapping[str, float], step: int | None = None) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step or 0) for k, v in metrics.items() if v is not None]
        if items:
            self.client.log_batch(run_id, metrics=items)

    @_timed
    def set_tags(self, run_id: str, tags: Mapping[str, Any]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(run_id, tags=[RunTag(k, redact(str(v))[:5000]) for k, v in tags.items()])

    @_timed
    def end_run(self, run_id: str, status: str = "FINISHED") -> None:
        self.client.set_terminated(run_id, status=status)

    def reopen(self, run_id: str, tags: Mapping[str, Any]) -> None:
        """Mark a run that a killed or interrupted attempt left behind as running again."""
        self.client.update_run(run_id, status="RUNNING")
        self.set_tags(run_id, {**tags, "hpo.status": "running"})

    @_timed
    def delete_run(self, run_id: str) -> None:
        """Discard a run whose work is being redone (MLflow keeps it, marked deleted, out of the UI), with
        any model versions registered from it."""
        try:
            versions = self.client.search_model_versions(f"run_id = '{run_id}'")
        except Exception:
            versions = []
        for version in versions:
            self.client.delete_model_version(version.name, version.version)
        if self.client.get_run(run_id).info.lifecycle_stage != "deleted":
            self.client.delete_run(run_id)

    def child_runs(self, parent: str, kind: str) -> list:
        """The live runs of one ``hpo.kind`` under a study run."""
        return self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.mlflow.parentRunId = '{parent}' and tags.`hpo.kind` = '{kind}'",
            max_results=5000,
        )

    @contextmanager
    def finishing(self, run_id: str) -> Iterator[str]:
        """End ``run_id`` when the block ends: completed, or failed with the error (killed on Ctrl-C)."""
        try:
            yield run_id
        except BaseException as exc:
            self.set_tags(run_id, {"hpo.status": "failed", "hpo.error": f"{type(exc).__name__}: {exc}"[:500]})
            self.end_run(run_id, "FAILED" if isinstance(exc, Exception) else "KILLED")
            raise
        self.set_tags(run_id, {"hpo.status": "completed"})
        self.end_run(run_id)

    @_timed
    def log_dict(self, run_id: str, data: Mapping[str, Any], artifact_file: str) -> None:
        self.client.log_dict(run_id, dict(data), artifact_file)

    def log_split(self, run_id: str, record: Mapping[str, Mapping[str, Any]], *, seen: bool = False) -> None:
        """A split record (see ``ImageData.split_record``) as ``split.json`` and ``hpo.split.<part>.<key>``
        tags; ``seen=True``: as reported back by a worker process (``split_seen.json``, ``hpo.split_seen.*``)."""
        prefix = "hpo.split_seen" if seen else "hpo.split"
        self.set_tags(
            run_id, {f"{prefix}.{part}.{key}": value for part, row in record.items() for key, value in row.items()}
        )
        self.log_dict(run_id, record, "split_seen.json" if seen else "split.json")

    @_timed
    def log_artifact(self, run_id: str, path: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(run_id, str(path), artifact_path)
