"""What the engine and the stages need from an experiment tracker, stated once: the ``Tracker`` protocol.

Two implementations: :class:`~hpo.tracking.mlflow_tracker.MlflowTracker` (the real one) and
:class:`~hpo.tracking.memory.InMemoryTracker` (dicts, for tests that must not import MLflow). Runs are
returned as plain :class:`Run` records shaped like MLflow's (``run.info.run_id``, ``run.data.tags``), so
callers read them the same way whichever tracker wrote them.

The operations built from the primitives (``finishing``, ``reopen``, ``log_split``, ``start_study``) live
in :class:`TrackerBase`, shared by both implementations, so they behave the same in tests as in production.
"""

from __future__ import annotations

import platform
import subprocess
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import yaml

from hpo import __version__
from hpo.names import RunKind, RunStatus, Tag, TrialStatus
from hpo.security import redact

if TYPE_CHECKING:
    from hpo.study import Study

PARENT_RUN_TAG = "mlflow.parentRunId"  # MLflow's own tag keys: what its UI nests and names runs by
RUN_NAME_TAG = "mlflow.runName"
GIT_COMMIT_TAG = "mlflow.source.git.commit"
DELETED = "deleted"  # a deleted run's lifecycle stage


@dataclass(frozen=True)
class RunInfo:
    run_id: str
    run_name: str = ""
    status: str = RunStatus.RUNNING
    start_time: int = 0  # milliseconds since the epoch, as MLflow keeps it
    end_time: int | None = None
    lifecycle_stage: str = "active"  # or "deleted"


@dataclass(frozen=True)
class RunData:
    params: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)  # the latest value of each
    tags: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Run:
    """A run as read back: ``run.info.run_id``, ``run.data.metrics`` (the names MLflow's ``Run`` uses)."""

    info: RunInfo
    data: RunData


@dataclass(frozen=True)
class MetricPoint:
    key: str
    value: float
    step: int
    timestamp: int  # milliseconds since the epoch


@dataclass(frozen=True)
class ModelVersion:
    name: str
    version: str
    run_id: str | None = None
    tags: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class LoggedModel:
    uri: str  # what a model version's ``source`` points at
    model_id: str | None


@runtime_checkable
class Tracker(Protocol):
    """Writes and reads a study's runs and its registered models. Every call names its run: there is no
    active-run state, so the driver can write trial runs from callbacks in any order."""

    busy_seconds: float  # time spent writing (reported as tracking overhead)

    # ------------------------------------------------------------------------------ writing runs
    def start_run(self, name: str, *, parent: str | None = None, tags: Mapping[str, Any] | None = None) -> str:
        """A new run (a child of ``parent`` if given), running; returns its id."""
        ...

    def start_study(
        self,
        study: Study,
        resolved: Mapping[str, Any],
        *,
        name: str | None = None,
        kind: str = RunKind.STUDY,
        backend: str = "search",
    ) -> str: ...

    def log_params(self, run_id: str, params: Mapping[str, Any]) -> None: ...

    def log_metrics(self, run_id: str, metrics: Mapping[str, float | None], step: int | None = None) -> None: ...

    def set_tags(self, run_id: str, tags: Mapping[str, Any]) -> None: ...

    def end_run(self, run_id: str, status: str = RunStatus.FINISHED) -> None: ...

    def reopen(self, run_id: str, tags: Mapping[str, Any]) -> None: ...

    def opened_study_runs(self) -> list[str]:
        """The study runs this tracker started (``start_study``) or reopened, in order."""
        ...

    def delete_run(self, run_id: str) -> None:
        """Discard a run whose work is redone, with the model versions registered from it."""
        ...

    def finishing(self, run_id: str) -> AbstractContextManager[str]: ...

    def log_split(self, run_id: str, record: Mapping[str, Mapping[str, Any]], *, seen: bool = False) -> None: ...

    # ------------------------------------------------------------------------------ artifacts
    def log_dict(self, run_id: str, data: Mapping[str, Any], artifact_file: str) -> None: ...

    def log_text(self, run_id: str, text: str, artifact_file: str) -> None: ...

    def log_artifact(self, run_id: str, path: str | Path, artifact_path: str | None = None) -> None: ...

    def log_model(
        self, run_id: str, model: Any, *, input_example: Any, pip_requirements: list[str], metadata: dict[str, Any]
    ) -> LoggedModel:
        """Log a torch model on ``run_id`` as a ``torch.export`` program (artifact ``model``)."""
        ...

    # ------------------------------------------------------------------------------ reading runs
    def get_run(self, run_id: str) -> Run: ...

    def child_runs(self, parent: str, kind: str) -> list[Run]:
        """The live runs of one ``hpo.kind`` under ``parent``."""
        ...

    def study_runs(self, study: str, *, status: str = RunStatus.FINISHED, max_results: int = 20) -> list[Run]:
        """The live study runs (``hpo.kind`` = study) of ``study`` with that status, newest first."""
        ...

    def metric_history(self, run_id: str, key: str) -> list[MetricPoint]: ...

    # ------------------------------------------------------------------------------ model registry
    def ensure_registered_model(self, name: str, tags: Mapping[str, str]) -> None:
        """Create the registered model ``name`` unless it exists."""
        ...

    def create_model_version(
        self,
        name: str,
        *,
        source: str,
        run_id: str,
        model_id: str | None,
        tags: Mapping[str, str],
        description: str,
    ) -> str:
        """A new version of ``name``; returns its number."""
        ...

    def version_by_alias(self, name: str, alias: str) -> ModelVersion | None: ...

    def set_alias(self, name: str, alias: str, version: str) -> None: ...

    def set_version_tag(self, name: str, version: str, key: str, value: str) -> None: ...


class TrackerBase:
    """The operations composed of a tracker's primitives, the same for every implementation."""

    busy_seconds: float = 0.0
    _opened_studies: tuple[str, ...] = ()

    # the primitives each implementation provides (see ``Tracker``)
    def start_run(self, name: str, *, parent: str | None = None, tags: Mapping[str, Any] | None = None) -> str:
        raise NotImplementedError

    def log_params(self, run_id: str, params: Mapping[str, Any]) -> None:
        raise NotImplementedError

    def set_tags(self, run_id: str, tags: Mapping[str, Any]) -> None:
        raise NotImplementedError

    def end_run(self, run_id: str, status: str = RunStatus.FINISHED) -> None:
        raise NotImplementedError

    def _set_running(self, run_id: str) -> None:
        raise NotImplementedError

    def log_dict(self, run_id: str, data: Mapping[str, Any], artifact_file: str) -> None:
        raise NotImplementedError

    def log_text(self, run_id: str, text: str, artifact_file: str) -> None:
        raise NotImplementedError

    # the composed operations
    def start_study(
        self,
        study: Study,
        resolved: Mapping[str, Any],
        *,
        name: str | None = None,
        kind: str = RunKind.STUDY,
        backend: str = "search",
    ) -> str:
        """The parent run of one backend's work on a study: the study's settings as params (the same
        columns for every backend), the resolved study file and the environment."""
        run_id = self.start_run(
            name or study.name,
            tags={
                Tag.KIND: kind,
                Tag.BACKEND: backend,
                Tag.STUDY: study.name,
                Tag.STUDY_FILE: str(study.file),
                Tag.FINGERPRINT: study.fingerprint(),
                GIT_COMMIT_TAG: git_commit() or "unknown",
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
        self.log_text(run_id, redact(yaml.safe_dump(dict(resolved), sort_keys=False)), "study.resolved.yaml")
        self.log_dict(run_id, environment(), "environment.json")
        self._opened_studies = (*self._opened_studies, run_id)
        return run_id

    def reopen(self, run_id: str, tags: Mapping[str, Any]) -> None:
        """Mark a study run that a killed or interrupted attempt left behind as running again."""
        self._set_running(run_id)
        self.set_tags(run_id, {**tags, Tag.STATUS: TrialStatus.RUNNING})
        if run_id not in self._opened_studies:
            self._opened_studies = (*self._opened_studies, run_id)

    def opened_study_runs(self) -> list[str]:
        """The study runs this tracker started (``start_study``) or reopened, in order: where the
        driver's log goes at the end of ``hpo run``."""
        return list(self._opened_studies)

    @contextmanager
    def finishing(self, run_id: str) -> Iterator[str]:
        """End ``run_id`` when the block ends: completed, or failed with the error (killed on Ctrl-C)."""
        try:
            yield run_id
        except BaseException as exc:
            self.set_tags(run_id, {Tag.STATUS: TrialStatus.FAILED, Tag.ERROR: f"{type(exc).__name__}: {exc}"[:500]})
            self.end_run(run_id, RunStatus.FAILED if isinstance(exc, Exception) else RunStatus.KILLED)
            raise
        self.set_tags(run_id, {Tag.STATUS: TrialStatus.COMPLETED})
        self.end_run(run_id)

    def log_split(self, run_id: str, record: Mapping[str, Mapping[str, Any]], *, seen: bool = False) -> None:
        """A split record (see ``ImageData.split_record``) as ``split.json`` and ``hpo.split.<part>.<key>``
        tags; ``seen=True``: as reported back by a worker process (``split_seen.json``, ``hpo.split_seen.*``)."""
        prefix = Tag.SPLIT_SEEN if seen else Tag.SPLIT
        self.set_tags(
            run_id, {f"{prefix}.{part}.{key}": value for part, row in record.items() for key, value in row.items()}
        )
        self.log_dict(run_id, record, "split_seen.json" if seen else "split.json")


def environment() -> dict[str, str | None]:
    """The versions a run was made with (``environment.json``), read from package metadata: naming Ray's
    version must not import Ray."""
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "hpo": __version__,
        "torch": _version("torch"),
        "ray": _version("ray"),
        "optuna": _version("optuna"),
        "mlflow": _version("mlflow"),
    }


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def git_commit() -> str | None:
    """The code version a run was made from (``git rev-parse HEAD`` in the working directory)."""
    try:
        return (
            subprocess.run(
                ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True
            ).stdout.strip()
            or None
        )
    except (OSError, subprocess.SubprocessError):
        return None
