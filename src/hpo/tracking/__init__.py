"""Experiment tracking: one parent run per study, a nested run per trial, a final run with the model.

``Tracker`` is the protocol the engine and the stages write through; ``MlflowTracker`` implements it on
MLflow, ``InMemoryTracker`` in dicts (for tests). Only the driver process writes (trials report through
Ray), so a SQLite store never sees two writers from one study.
"""

from hpo.tracking.base import LoggedModel, MetricPoint, ModelVersion, Run, RunData, RunInfo, Tracker, TrackerBase
from hpo.tracking.memory import InMemoryTracker
from hpo.tracking.mlflow_tracker import MlflowTracker, default_tracking_uri, flatten

__all__ = [
    "InMemoryTracker",
    "LoggedModel",
    "MetricPoint",
    "MlflowTracker",
    "ModelVersion",
    "Run",
    "RunData",
    "RunInfo",
    "Tracker",
    "TrackerBase",
    "default_tracking_uri",
    "flatten",
]
