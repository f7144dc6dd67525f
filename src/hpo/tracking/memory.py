"""``InMemoryTracker``: the ``Tracker`` protocol in dicts, for tests that must run in milliseconds without
MLflow. It keeps what MLflow would (runs, params, metric histories, tags, parents, statuses, deleted flags,
registered versions and aliases) and behaves as MLflow does where hpo relies on it: a deleted run drops
out of lookups, deleting a run deletes the model versions registered from it, and a deleted version's
aliases go with it."""

from __future__ import annotations

import itertools
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hpo import __version__
from hpo.names import RunKind, RunStatus, Tag
from hpo.tracking.base import (
    DELETED,
    PARENT_RUN_TAG,
    RUN_NAME_TAG,
    LoggedModel,
    MetricPoint,
    ModelVersion,
    Run,
    RunData,
    RunInfo,
    TrackerBase,
)


@dataclass
class StoredRun:
    run_id: str
    name: str
    parent: str | None
    status: str = RunStatus.RUNNING
    deleted: bool = False
    start_time: int = 0
    end_time: int | None = None
    params: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, list[MetricPoint]] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    artifacts: dict[str, Any] = field(default_factory=dict)  # artifact path -> the dict, text or file logged


@dataclass
class StoredVersion:
    name: str
    version: str
    source: str
    run_id: str
    tags: dict[str, str] = field(default_factory=dict)
    description: str = ""


class InMemoryTracker(TrackerBase):
    """A ``Tracker`` that keeps everything in this object. ``runs`` holds deleted runs too (flagged)."""

    def __init__(self, experiment: str = "test") -> None:
        self.experiment = experiment
        self.busy_seconds = 0.0
        self.runs: dict[str, StoredRun] = {}
        self.registered: dict[str, dict[str, str]] = {}  # model name -> its tags
        self.versions: dict[str, dict[str, StoredVersion]] = {}  # model name -> version -> version
        self.aliases: dict[str, dict[str, str]] = {}  # model name -> alias -> version
        self._version_numbers: dict[str, int] = {}
        self._ids = itertools.count(1)
        self._clock = itertools.count(1)  # start times that order runs even within one millisecond

    # ------------------------------------------------------------------------------ writing runs
    def start_run(self, name: str, *, parent: str | None = None, tags: Mapping[str, Any] | None = None) -> str:
        run_id = f"run-{next(self._ids)}"
        run = StoredRun(run_id, name, parent, start_time=int(time.time() * 1000) + next(self._clock))
        run.tags = {RUN_NAME_TAG: name, Tag.VERSION: __version__, **{k: str(v) for k, v in (tags or {}).items()}}
        if parent:
            run.tags[PARENT_RUN_TAG] = parent
        self.runs[run_id] = run
        return run_id

    def log_params(self, run_id: str, params: Mapping[str, Any]) -> None:
        run = self._live(run_id)
        for key, value in params.items():
            if key in run.params and run.params[key] != str(value):  # MLflow refuses to change a param
                raise ValueError(f"param {key!r} of run {run_id} is {run.params[key]!r}: cannot log {value!r}")
            run.params[key] = str(value)

    def log_metrics(self, run_id: str, metrics: Mapping[str, float | None], step: int | None = None) -> None:
        run = self._live(run_id)
        now = int(time.time() * 1000)
        for key, value in metrics.items():
            if value is not None:
                run.metrics.setdefault(key, []).append(MetricPoint(key, float(value), step or 0, now))

    def set_tags(self, run_id: str, tags: Mapping[str, Any]) -> None:
        self._live(run_id).tags.update({k: str(v) for k, v in tags.items()})

    def end_run(self, run_id: str, status: str = RunStatus.FINISHED) -> None:
        run = self._live(run_id)
        run.status, run.end_time = RunStatus(status), int(time.time() * 1000)

    def _set_running(self, run_id: str) -> None:
        run = self._live(run_id)
        run.status, run.end_time = RunStatus.RUNNING, None

    def delete_run(self, run_id: str) -> None:
        for name, versions in self.versions.items():
            for version in [v for v in versions.values() if v.run_id == run_id]:
                self._delete_version(name, version.version)
        self.runs[run_id].deleted = True

    def _delete_version(self, name: str, version: str) -> None:
        del self.versions[name][version]
        aliases = self.aliases.get(name, {})
        for alias in [a for a, v in aliases.items() if v == version]:
            del aliases[alias]

    # ------------------------------------------------------------------------------ artifacts
    def log_dict(self, run_id: str, data: Mapping[str, Any], artifact_file: str) -> None:
        self._live(run_id).artifacts[artifact_file] = dict(data)

    def log_text(self, run_id: str, text: str, artifact_file: str) -> None:
        self._live(run_id).artifacts[artifact_file] = text

    def log_artifact(self, run_id: str, path: str | Path, artifact_path: str | None = None) -> None:
        name = Path(path).name
        self._live(run_id).artifacts[f"{artifact_path}/{name}" if artifact_path else name] = Path(path)

    def log_model(
        self, run_id: str, model: Any, *, input_example: Any, pip_requirements: list[str], metadata: dict[str, Any]
    ) -> LoggedModel:
        self._live(run_id).artifacts["model"] = {"model": model, "metadata": metadata}
        return LoggedModel(f"runs:/{run_id}/model", f"m-{run_id}")

    # ------------------------------------------------------------------------------ reading runs
    def get_run(self, run_id: str) -> Run:
        run = self.runs[run_id]
        return Run(
            RunInfo(
                run.run_id, run.name, run.status, run.start_time, run.end_time, DELETED if run.deleted else "active"
            ),
            RunData(dict(run.params), {k: v[-1].value for k, v in run.metrics.items()}, dict(run.tags)),
        )

    def child_runs(self, parent: str, kind: str) -> list[Run]:
        return [
            self.get_run(r.run_id)
            for r in self.runs.values()
            if not r.deleted and r.parent == parent and r.tags.get(Tag.KIND) == kind
        ]

    def study_runs(self, study: str, *, status: str = RunStatus.FINISHED, max_results: int = 20) -> list[Run]:
        found = [
            r
            for r in self.runs.values()
            if not r.deleted
            and r.tags.get(Tag.KIND) == RunKind.STUDY
            and r.tags.get(Tag.STUDY) == study
            and r.status == status
        ]
        found.sort(key=lambda r: r.start_time, reverse=True)
        return [self.get_run(r.run_id) for r in found[:max_results]]

    def metric_history(self, run_id: str, key: str) -> list[MetricPoint]:
        return list(self.runs[run_id].metrics.get(key, []))

    # ------------------------------------------------------------------------------ model registry
    def ensure_registered_model(self, name: str, tags: Mapping[str, str]) -> None:
        if name not in self.registered:
            self.registered[name] = dict(tags)
            self.versions[name] = {}
            self.aliases[name] = {}

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
        if name not in self.registered:
            raise KeyError(f"registered model {name!r} does not exist")
        self._version_numbers[name] = self._version_numbers.get(name, 0) + 1  # MLflow never reuses a number
        version = str(self._version_numbers[name])
        self.versions[name][version] = StoredVersion(name, version, source, run_id, dict(tags), description)
        return version

    def version_by_alias(self, name: str, alias: str) -> ModelVersion | None:
        version = self.aliases.get(name, {}).get(alias)
        if version is None:
            return None
        stored = self.versions[name][version]
        return ModelVersion(name, version, stored.run_id, dict(stored.tags))

    def set_alias(self, name: str, alias: str, version: str) -> None:
        if version not in self.versions.get(name, {}):
            raise KeyError(f"{name} has no version {version}")
        self.aliases[name][alias] = version

    def set_version_tag(self, name: str, version: str, key: str, value: str) -> None:
        self.versions[name][version].tags[key] = str(value)

    # ------------------------------------------------------------------------------ for tests
    def _live(self, run_id: str) -> StoredRun:
        run = self.runs[run_id]
        if run.deleted:
            raise ValueError(f"run {run_id} is deleted")
        return run

    def live_runs(self, kind: str | None = None) -> list[StoredRun]:
        """The runs not deleted (of one ``hpo.kind``), in the order they were started."""
        return [r for r in self.runs.values() if not r.deleted and (kind is None or r.tags.get(Tag.KIND) == kind)]

    def metrics_of(self, run_id: str, key: str) -> list[float]:
        """The values of ``key`` logged on ``run_id``, in order."""
        return [p.value for p in self.runs[run_id].metrics.get(key, [])]
