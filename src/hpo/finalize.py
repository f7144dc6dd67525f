"""Finalize: retrain the winning configuration on train+val for its best epoch count, test it once,
log plots and the model, and register it."""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hpo.backends.records import TrialRecord
from hpo.config import Study
from hpo.data import ImageData
from hpo.tracking import Tracker, flatten


@dataclass
class FinalResult:
    run_id: str
    epochs: int
    test_accuracy: float
    test_loss: float
    model_uri: str
    registered_name: str | None
    registered_version: str | None
    seconds: float


def pip_requirements() -> list[str]:
    """Requirements that reinstall the model's environment: torch pinned without its local label
    (``2.13.0+cpu`` -> ``torch==2.13.0``, which every index resolves), plus what the loader needs."""
    import mlflow
    import numpy
    import torch

    return [f"torch=={torch.__version__.split('+')[0]}", f"mlflow=={mlflow.__version__}",
            f"numpy=={numpy.__version__}"]


def finalize(study: Study, data: ImageData, winner: TrialRecord, tracker: Tracker, parent_run: str,
             threads: int | None = None) -> FinalResult:
    import torch

    from hpo.report import confusion_matrix_png, learning_curves_png
    from hpo.train import TrainData, predict_logits, train

    c = study.config
    start = time.time()
    _, best_epoch = winner.best(c.objective.metric, c.objective.direction)
    epochs = best_epoch if c.final.epochs == "best" else c.final.epochs
    if c.final.retrain_on == "train+val":
        x = np.concatenate([data.x_train, data.x_val])
        y = np.concatenate([data.y_train, data.y_val])
    else:
        x, y = data.x_train, data.y_train

    run_id = tracker.start_run("final", parent=parent_run, tags={
        "hpo.kind": "final", "hpo.winner_trial": winner.trial_id, "hpo.winner_run": winner.run_id or ""})
    tracker.log_params(run_id, {**flatten(winner.config.model_dump(mode="json")),
                                "final.epochs": epochs, "final.retrain_on": c.final.retrain_on,
                                "final.train_images": len(y), "seed": c.seed})
    with tracker.finishing(run_id):
        train_data = TrainData.from_arrays(x, y, None, None, data.num_classes, data.mean, data.std)

        def report(epoch, _model) -> None:
            tracker.log_metrics(run_id, epoch.metrics(), step=epoch.epoch)

        result = train(winner.config, train_data, epochs=epochs, seed=c.seed,
                       threads=threads or os.cpu_count(), report=report)
        model = result.model.cpu().to(memory_format=torch.contiguous_format).eval()

        x_test = torch.as_tensor(data.x_test)
        y_test = torch.as_tensor(data.y_test)
        logits = predict_logits(model, x_test, device="cpu")
        test_loss = torch.nn.functional.cross_entropy(logits, y_test).item()
        predicted = logits.argmax(1).numpy()
        test_accuracy = float((predicted == data.y_test).mean())
        cm = np.bincount(data.y_test * data.num_classes + predicted,
                         minlength=data.num_classes ** 2).reshape(data.num_classes, data.num_classes)
        tracker.log_metrics(run_id, {"test_accuracy": test_accuracy, "test_loss": test_loss,
                                     "retrain_seconds": sum(e.seconds for e in result.history)})

        with tempfile.TemporaryDirectory() as tmp:
            tmp_path = Path(tmp)
            confusion_matrix_png(cm, data.classes, tmp_path / "confusion_matrix.png",
                                 f"{study.name}: test accuracy {test_accuracy:.2%}")
            learning_curves_png(winner.history, [_row(e) for e in result.history],
                                tmp_path / "learning_curves.png",
                                f"{study.name}: winning trial #{winner.number} and its retrain")
            np.savetxt(tmp_path / "confusion_matrix.csv", cm, fmt="%d", delimiter=",",
                       header=",".join(data.classes))
            for name in ("confusion_matrix.png", "learning_curves.png", "confusion_matrix.csv"):
                tracker.log_artifact(run_id, tmp_path / name, "evaluation")

        model_uri, name, version = _log_model(tracker, run_id, model, data, study)
    return FinalResult(run_id, epochs, test_accuracy, test_loss, model_uri, name, version, time.time() - start)


def _row(epoch) -> dict:
    return {"epoch": epoch.epoch, "train_loss": epoch.train_loss, "train_accuracy": epoch.train_accuracy,
            "val_loss": epoch.val_loss, "val_accuracy": epoch.val_accuracy}


def _log_model(tracker: Tracker, run_id: str, model, data: ImageData, study: Study):
    """Log the model as a torch.export program (weights and graph, no pickled code) and register it."""
    import mlflow
    from mlflow.exceptions import MlflowException

    example = (data.x_test[:4].astype(np.float32) / 255.0)  # batch > 1: the batch dim stays dynamic
    with mlflow.start_run(run_id=run_id):
        info = mlflow.pytorch.log_model(
            model, name="model", input_example=example, pip_requirements=pip_requirements(),
            serialization_format="pt2",
            metadata={"classes": data.classes, "input": "float32 (N, C, H, W) in [0, 1]",
                      "mean": list(data.mean), "std": list(data.std)},
        )
    name = study.config.registered_model_name
    try:
        tracker.client.get_registered_model(name)
    except MlflowException:
        tracker.client.create_registered_model(name, tags={"hpo.study": study.name})
    version = tracker.client.create_model_version(name, source=info.model_uri, run_id=run_id,
                                                  model_id=info.model_id,
                                                  tags={"hpo.study": study.name})
    return info.model_uri, name, str(version.version)
