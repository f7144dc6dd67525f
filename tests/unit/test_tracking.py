"""The experiments hpo writes to open on their runs in MLflow's UI (not its GenAI overview), described."""

from __future__ import annotations

from hpo.tracking import Tracker
from hpo.tracking.mlflow_tracker import (
    CUSTOM_MODEL_DEVELOPMENT,
    EXPERIMENT_DESCRIPTION,
    EXPERIMENT_KIND,
    EXPERIMENT_NOTE,
)


def experiment_tags(tracker: Tracker) -> dict[str, str]:
    return dict(tracker.client.get_experiment(tracker.experiment_id).tags)


def test_a_new_experiment_opens_on_its_runs_and_is_described(tmp_path):
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "fresh")
    tags = experiment_tags(tracker)
    assert tags[EXPERIMENT_KIND] == CUSTOM_MODEL_DEVELOPMENT == "custom_model_development"
    assert tags[EXPERIMENT_NOTE] == EXPERIMENT_DESCRIPTION


def test_an_existing_experiment_is_tagged_where_it_lacks_the_tags(tmp_path):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    Tracker(uri, "first")  # creates the store
    client = MlflowClient(tracking_uri=uri)
    bare = client.create_experiment("bare")
    guessed = client.create_experiment(
        "guessed", tags={EXPERIMENT_KIND: "genai_development_inferred", EXPERIMENT_NOTE: "the team's own words"}
    )
    chosen = client.create_experiment("chosen", tags={EXPERIMENT_KIND: "genai_development"})

    trackers = {name: Tracker(uri, name) for name in ("bare", "guessed", "chosen")}
    assert [t.experiment_id for t in trackers.values()] == [bare, guessed, chosen]  # opened, not made anew
    tags = {name: experiment_tags(tracker) for name, tracker in trackers.items()}
    assert tags["bare"][EXPERIMENT_KIND] == CUSTOM_MODEL_DEVELOPMENT
    assert tags["bare"][EXPERIMENT_NOTE] == EXPERIMENT_DESCRIPTION
    assert tags["guessed"][EXPERIMENT_KIND] == CUSTOM_MODEL_DEVELOPMENT  # the UI's guess is replaced
    assert tags["guessed"][EXPERIMENT_NOTE] == "the team's own words"  # a description someone wrote stays
    assert tags["chosen"][EXPERIMENT_KIND] == "genai_development"  # so does a kind someone chose
    assert tags["chosen"][EXPERIMENT_NOTE] == EXPERIMENT_DESCRIPTION
