"""MLflow tracking: one parent run per study, a nested run per trial, a final run with the model.

Only the driver process writes (trials report through Ray), so a SQLite store never sees two writers
from one study.
"""

from hpo.tracking.mlflow_tracker import Tracker, default_tracking_uri, flatten

__all__ = ["Tracker", "default_tracking_uri", "flatten"]
