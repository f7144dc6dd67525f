"""The pure training loop: ``train(config, data, epochs=..., report=...)`` knows nothing of Ray or
MLflow, so trials, the final retrain and the benchmarks all run the same code."""

from hpo.train.loop import EpochResult, TrainData, TrainResult, evaluate, predict_logits, train

__all__ = ["EpochResult", "TrainData", "TrainResult", "evaluate", "predict_logits", "train"]
