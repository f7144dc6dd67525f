"""The pure training loop: ``train(config, data, epochs=..., report=...)`` knows nothing of Ray or
MLflow, so trials, the final retrain and the benchmarks all run the same code. How it runs on the
machine at hand (precision, layout, compile, threads) is its execution plan (``hpo.train.plan``)."""

from hpo.train.loop import EpochResult, TrainData, TrainResult, evaluate, predict_logits, train
from hpo.train.plan import ExecutionPlan, PlanCache, Preferences, describe_machine, plan_training

__all__ = [
    "EpochResult",
    "ExecutionPlan",
    "PlanCache",
    "Preferences",
    "TrainData",
    "TrainResult",
    "describe_machine",
    "evaluate",
    "plan_training",
    "predict_logits",
    "train",
]
