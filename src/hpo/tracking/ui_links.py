"""The MLflow UI address that opens a study on its training runs, its trials listed.

MLflow 3.17's UI does not decide where an experiment opens by the experiment's kind tag: a browser that has
never chosen "Model training" in the UI's toggle opens ``#/experiments/<id>`` on the GenAI overview (its
default workflow, kept in the browser's localStorage), tag or no tag. Its runs table also folds nested runs
under their parent while it sorts by start time, so a study's trials hide under the study run. The address
below says what to show instead: the runs page, in the model-training workflow, sorted by the study's
objective, a sort under which the table lists every run flat, best first.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote, urlencode


def runs_address(base: str, experiment_id: str, metric: str, direction: str) -> str:
    """``base`` (``http://host:port``) + the experiment's runs page, ranked by ``metric`` (``direction``:
    max or min)."""
    query = urlencode(
        {
            "workflowType": "machine_learning",
            "orderByKey": f"metrics.`{metric}`",
            "orderByAsc": "true" if direction == "min" else "false",
        },
        quote_via=quote,
    )
    return f"{base}/#/experiments/{experiment_id}/runs?{query}"


def study_address(base: str, uri: str, study: str, metric: str, direction: str) -> str:
    """The study's runs page if the store at ``uri`` holds its experiment, else ``base`` (the study has not
    run yet, or the store cannot be read now: the UI will say why). A SQLite store that does not exist is
    not created by looking."""
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        return base
    try:
        import logging

        from mlflow.tracking import MlflowClient

        logging.getLogger("mlflow").setLevel(logging.WARNING)
        logging.getLogger("alembic").setLevel(logging.WARNING)
        experiment = MlflowClient(tracking_uri=uri).get_experiment_by_name(study)
    except Exception:
        return base
    return runs_address(base, experiment.experiment_id, metric, direction) if experiment else base
