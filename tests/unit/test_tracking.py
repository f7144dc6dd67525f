"""The MLflow tracker: the experiments hpo writes open on their runs in MLflow's UI (not its GenAI
overview), described; runs, lookups, the registry and model logging through the ``Tracker`` protocol,
read back with MLflow's own client; and MLflow's process-wide state left as it was."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hpo.names import RunKind, RunStatus, Tag, TrialStatus
from hpo.tracking import InMemoryTracker, MlflowTracker, Tracker
from hpo.tracking.base import PARENT_RUN_TAG
from hpo.tracking.mlflow_tracker import (
    CUSTOM_MODEL_DEVELOPMENT,
    EXPERIMENT_DESCRIPTION,
    EXPERIMENT_KIND,
    EXPERIMENT_NOTE,
)


def experiment_tags(tracker: MlflowTracker) -> dict[str, str]:
    return tracker.experiment_tags()


def test_a_new_experiment_opens_on_its_runs_and_is_described(tmp_path):
    tracker = MlflowTracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "fresh")
    tags = experiment_tags(tracker)
    assert tags[EXPERIMENT_KIND] == CUSTOM_MODEL_DEVELOPMENT == "custom_model_development"
    assert tags[EXPERIMENT_NOTE] == EXPERIMENT_DESCRIPTION


def test_an_existing_experiment_is_tagged_where_it_lacks_the_tags(tmp_path):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    MlflowTracker(uri, "first")  # creates the store
    client = MlflowClient(tracking_uri=uri)
    bare = client.create_experiment("bare")
    guessed = client.create_experiment(
        "guessed", tags={EXPERIMENT_KIND: "genai_development_inferred", EXPERIMENT_NOTE: "the team's own words"}
    )
    chosen = client.create_experiment("chosen", tags={EXPERIMENT_KIND: "genai_development"})

    trackers = {name: MlflowTracker(uri, name) for name in ("bare", "guessed", "chosen")}
    assert [t.experiment_id for t in trackers.values()] == [bare, guessed, chosen]  # opened, not made anew
    tags = {name: experiment_tags(tracker) for name, tracker in trackers.items()}
    assert tags["bare"][EXPERIMENT_KIND] == CUSTOM_MODEL_DEVELOPMENT
    assert tags["bare"][EXPERIMENT_NOTE] == EXPERIMENT_DESCRIPTION
    assert tags["guessed"][EXPERIMENT_KIND] == CUSTOM_MODEL_DEVELOPMENT  # the UI's guess is replaced
    assert tags["guessed"][EXPERIMENT_NOTE] == "the team's own words"  # a description someone wrote stays
    assert tags["chosen"][EXPERIMENT_KIND] == "genai_development"  # so does a kind someone chose
    assert tags["chosen"][EXPERIMENT_NOTE] == EXPERIMENT_DESCRIPTION


def mlflow_tracker(tmp_path) -> Tracker:
    return MlflowTracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "protocol")


def memory_tracker(tmp_path) -> Tracker:
    return InMemoryTracker("protocol")


def artifact_text(tracker: Tracker, run_id: str, path: str, tmp_path: Path) -> str:
    """An artifact read back: from MLflow's store with its own client, or from the in-memory run."""
    if isinstance(tracker, InMemoryTracker):
        stored = tracker.runs[run_id].artifacts[path]
        return stored.read_text() if isinstance(stored, Path) else stored
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracker.uri)  # type: ignore[attr-defined]
    return Path(client.download_artifacts(run_id, path, str(tmp_path / "downloads"))).read_text()


@pytest.mark.parametrize("make", [mlflow_tracker, memory_tracker])
def test_runs_lookups_and_the_registry_through_the_protocol(tmp_path, make):
    """The same behaviour from both trackers: the in-memory twin stands in for MLflow in unit tests."""
    before = os.environ.get("MLFLOW_TRACKING_URI")
    tracker = make(tmp_path)
    assert isinstance(tracker, Tracker)
    study = tracker.start_run("study", tags={Tag.KIND: RunKind.STUDY, Tag.STUDY: "s"})
    trial = tracker.start_run("trial-001", parent=study, tags={Tag.KIND: RunKind.TRIAL})
    tracker.log_params(trial, {"a.b": 1})
    tracker.log_metrics(trial, {"val_accuracy": 0.5, "skipped": None}, step=1)
    tracker.log_metrics(trial, {"val_accuracy": 0.75}, step=2)
    traceback = "Traceback (most recent call last):\n" + "  a frame\n" * 100 + "ValueError: boom"
    tracker.log_text(trial, traceback, "attempt-1/traceback.txt")  # a trial's traceback: whole, in a folder
    with pytest.raises(ValueError), tracker.finishing(trial):
        raise ValueError("boom")
    tracker.log_text(study, "hello", "notes.md")
    with tracker.finishing(study):
        pass
    (tmp_path / "driver.log").write_text("the console's lines\n")
    tracker.log_artifact(study, tmp_path / "driver.log")  # on a run already ended, as the driver's log is
    assert artifact_text(tracker, trial, "attempt-1/traceback.txt", tmp_path) == traceback
    assert artifact_text(tracker, study, "notes.md", tmp_path) == "hello"
    assert artifact_text(tracker, study, "driver.log", tmp_path) == "the console's lines\n"
    old = tracker.start_run("study", tags={Tag.KIND: RunKind.STUDY, Tag.STUDY: "s"})
    tracker.end_run(old, RunStatus.KILLED)

    failed = tracker.get_run(trial)
    assert failed.info.status == RunStatus.FAILED and failed.data.tags[Tag.ERROR] == "ValueError: boom"
    assert failed.data.tags[Tag.STATUS] == TrialStatus.FAILED and failed.data.tags[PARENT_RUN_TAG] == study
    assert failed.data.params == {"a.b": "1"} and failed.data.metrics == {"val_accuracy": 0.75}
    assert [(p.step, p.value) for p in tracker.metric_history(trial, "val_accuracy")] == [(1, 0.5), (2, 0.75)]
    assert [r.info.run_id for r in tracker.child_runs(study, RunKind.TRIAL)] == [trial]
    assert tracker.child_runs(study, RunKind.FINAL) == []
    assert [r.info.run_id for r in tracker.study_runs("s")] == [study]  # finished ones only
    assert tracker.get_run(study).data.tags[Tag.STATUS] == TrialStatus.COMPLETED
    assert tracker.opened_study_runs() == []  # started with start_run: not a study run of this tracker's
    tracker.reopen(study, {Tag.ATTEMPTS: 2})
    assert tracker.get_run(study).info.status == RunStatus.RUNNING and tracker.study_runs("s") == []
    assert tracker.opened_study_runs() == [study]  # where the driver's log goes

    tracker.ensure_registered_model("m", {Tag.STUDY: "s"})
    tracker.ensure_registered_model("m", {})  # exists: left alone
    version = tracker.create_model_version(
        "m", source=f"runs:/{trial}/model", run_id=trial, model_id=None, tags={"test_accuracy": "0.9"},
        description="",
    )  # fmt: skip
    assert version == "1" and tracker.version_by_alias("m", "champion") is None
    tracker.set_alias("m", "champion", version)
    tracker.set_version_tag("m", version, Tag.ROLE, "champion")
    found = tracker.version_by_alias("m", "champion")
    assert found is not None and found.version == "1" and found.tags["test_accuracy"] == "0.9"
    assert found.tags[Tag.ROLE] == "champion"
    tracker.delete_run(trial)  # with the version registered from it, and so its alias
    assert tracker.version_by_alias("m", "champion") is None and tracker.child_runs(study, RunKind.TRIAL) == []
    assert tracker.get_run(trial).info.lifecycle_stage == "deleted"
    # nothing above touched MLflow's process-wide tracking URI
    assert os.environ.get("MLFLOW_TRACKING_URI") == before


def test_the_calls_that_need_mlflows_process_state_get_the_trackers_and_it_is_put_back(monkeypatch):
    """Model logging finds its store and experiment through process-wide state (see _process_tracking_uri):
    inside, they are the tracker's, so the model lands in the study's experiment beside its database (not
    in ./mlruns); outside, they are as they were, a name someone set included."""
    import mlflow
    from hpo.tracking.mlflow_tracker import _process_tracking_uri

    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "someone's")
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)
    found = mlflow.get_tracking_uri() if mlflow.is_tracking_uri_set() else None  # put back at the end
    for uri_before in (None, "sqlite:////tmp/someone-elses.db"):  # unset, and set by whoever ran before
        mlflow.set_tracking_uri(uri_before)
        env_before = os.environ.get("MLFLOW_TRACKING_URI")
        with _process_tracking_uri("sqlite:////tmp/x.db", "7"):
            assert mlflow.get_tracking_uri() == "sqlite:////tmp/x.db"
            assert os.environ["MLFLOW_EXPERIMENT_ID"] == "7" and "MLFLOW_EXPERIMENT_NAME" not in os.environ
        assert mlflow.is_tracking_uri_set() == (uri_before is not None)
        assert uri_before is None or mlflow.get_tracking_uri() == uri_before
        assert os.environ.get("MLFLOW_TRACKING_URI") == env_before
    mlflow.set_tracking_uri(found)
    assert os.environ["MLFLOW_EXPERIMENT_NAME"] == "someone's" and "MLFLOW_EXPERIMENT_ID" not in os.environ
