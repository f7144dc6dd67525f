"""The MLflow implementation of the ``Tracker`` protocol. MLflow is imported when a tracker is made, not
when this module is: ``hpo --help`` and ``hpo validate`` stay fast."""

from __future__ import annotations

import functools
import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, TypeVar

from hpo import __version__
from hpo._locks import exclusive
from hpo.names import RunStatus, Tag
from hpo.security import redact
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


_Method = TypeVar("_Method", bound=Callable[..., Any])


def _timed(method: _Method) -> _Method:
    """Accumulate the time spent writing to MLflow (reported as tracking overhead)."""

    @functools.wraps(method)
    def wrapper(self: MlflowTracker, *args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return method(self, *args, **kwargs)
        finally:
            self.busy_seconds += time.perf_counter() - start

    return wrapper  # type: ignore[return-value]


class MlflowTracker(TrackerBase):
    """The ``Tracker`` on MLflow: every call goes through one ``MlflowClient`` bound to ``uri``, so
    nothing here reads or sets MLflow's process-wide tracking URI or active run (one exception, the
    model logger and the registry: see ``_process_tracking_uri``)."""

    def __init__(self, uri: str, experiment: str) -> None:
        from mlflow.tracking import MlflowClient

        logging.getLogger("mlflow").setLevel(logging.WARNING)  # table creation, registry chatter
        logging.getLogger("alembic").setLevel(logging.WARNING)
        self.uri = uri
        self.busy_seconds = 0.0
        db = Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None
        if db is not None:
            db.parent.mkdir(parents=True, exist_ok=True)
        # Two studies starting at once against a new SQLite file would both run MLflow's schema migrations
        # and trip over each other: the first to arrive creates the store while the other waits.
        with exclusive(db.with_name(db.name + ".lock")) if db is not None else nullcontext():
            self._client = MlflowClient(tracking_uri=uri)
            found = self._client.get_experiment_by_name(experiment)
            if found is None:
                artifacts = None
                if db is not None:  # keep artifacts beside the database, not in the cwd
                    artifacts = (db.parent / "artifacts").resolve().as_uri()
                elif "://" in uri and not uri.startswith(("http://", "https://", "databricks")):
                    # another database (postgresql://...) written directly: artifacts go to ./mlflow/ as for
                    # the local default (a tracking server decides for itself)
                    artifacts = (DEFAULT_STORE / "artifacts").resolve().as_uri()
                self.experiment_id = self._client.create_experiment(
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
            self._client.set_experiment_tag(self.experiment_id, EXPERIMENT_KIND, CUSTOM_MODEL_DEVELOPMENT)
        if not tags.get(EXPERIMENT_NOTE):
            self._client.set_experiment_tag(self.experiment_id, EXPERIMENT_NOTE, EXPERIMENT_DESCRIPTION)

    def experiment_tags(self) -> dict[str, str]:
        return dict(self._client.get_experiment(self.experiment_id).tags)

    # ------------------------------------------------------------------------------ writing runs
    @_timed
    def start_run(self, name: str, *, parent: str | None = None, tags: Mapping[str, Any] | None = None) -> str:
        all_tags = {RUN_NAME_TAG: name, Tag.VERSION: __version__, **{k: str(v) for k, v in (tags or {}).items()}}
        if parent:
            all_tags[PARENT_RUN_TAG] = parent
        return self._client.create_run(self.experiment_id, tags=all_tags, run_name=name).info.run_id

    @_timed
    def log_params(self, run_id: str, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, redact(str(v))[:MAX_PARAM_LENGTH]) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self._client.log_batch(run_id, params=items[i : i + 100])

    @_timed
    def log_metrics(self, run_id: str, metrics: Mapping[str, float | None], step: int | None = None) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step or 0) for k, v in metrics.items() if v is not None]
        if items:
            self._client.log_batch(run_id, metrics=items)

    @_timed
    def set_tags(self, run_id: str, tags: Mapping[str, Any]) -> None:
        from mlflow.entities import RunTag

        self._client.log_batch(run_id, tags=[RunTag(k, redact(str(v))[:5000]) for k, v in tags.items()])

    @_timed
    def end_run(self, run_id: str, status: str = RunStatus.FINISHED) -> None:
        self._client.set_terminated(run_id, status=str(status))

    def _set_running(self, run_id: str) -> None:
        self._client.update_run(run_id, status=RunStatus.RUNNING)

    @_timed
    def delete_run(self, run_id: str) -> None:
        """Discard a run whose work is being redone (MLflow keeps it, marked deleted, out of the UI), with
        any model versions registered from it."""
        try:
            versions = list(self._client.search_model_versions(f"run_id = '{run_id}'"))
        except Exception:
            versions = []
        for version in versions:
            self._client.delete_model_version(version.name, version.version)
        if self._client.get_run(run_id).info.lifecycle_stage != DELETED:
            self._client.delete_run(run_id)

    # ------------------------------------------------------------------------------ artifacts
    @_timed
    def log_dict(self, run_id: str, data: Mapping[str, Any], artifact_file: str) -> None:
        self._client.log_dict(run_id, dict(data), artifact_file)

    @_timed
    def log_text(self, run_id: str, text: str, artifact_file: str) -> None:
        self._client.log_text(run_id, text, artifact_file)

    @_timed
    def log_artifact(self, run_id: str, path: str | Path, artifact_path: str | None = None) -> None:
        self._client.log_artifact(run_id, str(path), artifact_path)

    def log_model(
        self, run_id: str, model: Any, *, input_example: Any, pip_requirements: list[str], metadata: dict[str, Any]
    ) -> LoggedModel:
        """Log the model as a torch.export program: graph and weights, no pickled Python objects."""
        import mlflow.pytorch

        with _process_tracking_uri(self.uri, self.experiment_id):
            info = mlflow.pytorch.log_model(
                model,
                name="model",
                input_example=input_example,
                pip_requirements=pip_requirements,
                serialization_format="pt2",
                metadata=metadata,
                run_id=run_id,  # passed on to mlflow.models.Model.log: no active run is started
            )
        return LoggedModel(info.model_uri, info.model_id)

    # ------------------------------------------------------------------------------ reading runs
    def get_run(self, run_id: str) -> Run:
        return _run(self._client.get_run(run_id))

    def child_runs(self, parent: str, kind: str) -> list[Run]:
        found = self._client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.{PARENT_RUN_TAG} = '{parent}' and tags.`{Tag.KIND}` = '{kind}'",
            max_results=5000,
        )
        return [_run(r) for r in found]

    def study_runs(self, study: str, *, status: str = RunStatus.FINISHED, max_results: int = 20) -> list[Run]:
        from hpo.names import RunKind

        found = self._client.search_runs(
            [self.experiment_id],
            filter_string=(
                f"tags.`{Tag.KIND}` = '{RunKind.STUDY}' and tags.`{Tag.STUDY}` = '{study}' "
                f"and attributes.status = '{status}'"
            ),
            order_by=["attributes.start_time DESC"],
            max_results=max_results,
        )
        return [_run(r) for r in found]

    def metric_history(self, run_id: str, key: str) -> list[MetricPoint]:
        return [MetricPoint(m.key, m.value, m.step, m.timestamp) for m in self._client.get_metric_history(run_id, key)]

    # ------------------------------------------------------------------------------ model registry
    def ensure_registered_model(self, name: str, tags: Mapping[str, str]) -> None:
        from mlflow.exceptions import MlflowException

        try:
            self._client.get_registered_model(name)
        except MlflowException:
            self._client.create_registered_model(name, tags=dict(tags))

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
        # MLflow's SQL registry store looks up a ``models:/<id>`` source with a client of the process-wide URI
        # (a TODO in mlflow.store.model_registry.sqlalchemy_store): that URI must be this tracker's for the call.
        with _process_tracking_uri(self.uri):
            version = self._client.create_model_version(
                name, source=source, run_id=run_id, model_id=model_id, tags=dict(tags), description=description
            )
        return str(version.version)

    def version_by_alias(self, name: str, alias: str) -> ModelVersion | None:
        from mlflow.exceptions import MlflowException

        try:
            found = self._client.get_model_version_by_alias(name, alias)
        except MlflowException:
            return None
        return ModelVersion(found.name, str(found.version), found.run_id, dict(found.tags))

    def set_alias(self, name: str, alias: str, version: str) -> None:
        self._client.set_registered_model_alias(name, alias, version)

    def set_version_tag(self, name: str, version: str, key: str, value: str) -> None:
        self._client.set_model_version_tag(name, version, key, value)


def _run(run: Any) -> Run:
    """An MLflow ``Run`` as the protocol's plain record."""
    info = run.info
    return Run(
        RunInfo(
            info.run_id, info.run_name or "", info.status, info.start_time or 0, info.end_time, info.lifecycle_stage
        ),
        RunData(dict(run.data.params), dict(run.data.metrics), dict(run.data.tags)),
    )


@contextmanager
def _process_tracking_uri(uri: str, experiment_id: str | None = None) -> Iterator[None]:
    """Two MLflow calls find their store through process-wide state whatever client makes them: logging a
    model (``mlflow.models.Model.log`` takes a run id, but neither a tracking URI nor an experiment: the
    model goes to the process's current experiment, not the run's) and registering a version from a
    ``models:/`` source (MLflow's SQL registry store looks the model up with a default client). For such a
    call only, the tracking URI (and ``$MLFLOW_EXPERIMENT_ID``) are this tracker's; then all is put back as
    it was (MLflow mirrors the URI in ``$MLFLOW_TRACKING_URI``, which is restored too). This is the only
    place hpo touches MLflow's global state; ``mlflow.start_run`` is avoided (it would also end the run)."""
    import mlflow

    keys = ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME")
    before_env = {key: os.environ.get(key) for key in keys}
    before = mlflow.get_tracking_uri() if mlflow.is_tracking_uri_set() else None
    mlflow.set_tracking_uri(uri)
    if experiment_id is not None:
        os.environ.pop("MLFLOW_EXPERIMENT_NAME", None)  # it would win over the id
        os.environ["MLFLOW_EXPERIMENT_ID"] = experiment_id
    try:
        yield
    finally:
        mlflow.set_tracking_uri(before)  # type: ignore[arg-type]  # None: back to unset
        for key, value in before_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
