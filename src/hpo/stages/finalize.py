"""Finalize: retrain the winning configuration on train+val for its best epoch count, test it once,
log the evaluation, the model and its exports, register it, and move the ``champion`` alias if it won."""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from hpo.data import ImageData
from hpo.data.streaming import FileImages, concat_images, head
from hpo.engine.devices import describe
from hpo.engine.records import TrialRecord
from hpo.errors import HpoError
from hpo.names import Metric, RunKind, Tag
from hpo.stages.champion import CHAMPION, ChampionGuard, ChampionRule, apply
from hpo.study import Study
from hpo.tracking import Tracker, flatten

__all__ = ["CHAMPION", "ChampionGuard", "FinalResult", "finalize", "register"]


@dataclass
class FinalResult:
    run_id: str
    epochs: int
    test_accuracy: float
    test_loss: float
    metrics: dict[str, float]
    model_uri: str
    registered_name: str | None
    registered_version: str | None
    promotion: str  # what happened to the champion alias, in words
    seconds: float


def pip_requirements() -> list[str]:
    """Requirements that reinstall the model's environment: torch pinned without its local label
    (``2.13.0+cpu`` -> ``torch==2.13.0``, which every index resolves), plus what the loader needs."""
    import numpy
    import torch

    mlflow = metadata.version("mlflow")  # named, not imported: the tracker imports it where it is used
    return [f"torch=={torch.__version__.split('+')[0]}", f"mlflow=={mlflow}", f"numpy=={numpy.__version__}"]


def finalize(
    study: Study,
    data: ImageData,
    winner: TrialRecord,
    records: list[TrialRecord],
    tracker: Tracker,
    parent_run: str,
    *,
    optuna_storage: str | None = None,
    optuna_study: str | None = None,
    best_epoch: int | None = None,
    threads: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> FinalResult:
    import torch

    from hpo.report import learning_curves_png
    from hpo.report.evaluation import write_evaluation, write_multilabel_evaluation
    from hpo.report.study_plots import family_table, optuna_plots_html
    from hpo.train import Preferences, TrainData, predict_logits, train
    from hpo.train.loop import accuracy, loss_fn

    c = study.config
    start = time.time()
    if best_epoch is None:
        best_epoch = winner.best(c.objective.metric, c.objective.direction)[1]
    epochs = best_epoch if c.final.epochs == "best" else c.final.epochs
    if epochs is None:  # cannot happen for a winner picked by its best value, which has an epoch
        raise HpoError(f"trial #{winner.number} reported no {c.objective.metric}: no epoch count to retrain for")
    if c.final.retrain_on == "train+val":
        x = concat_images([data.x_train, data.x_val])
        y = np.concatenate([data.y_train, data.y_val])
    else:
        x, y = data.x_train, data.y_train

    run_id = tracker.start_run(
        "final",
        parent=parent_run,
        tags={Tag.KIND: RunKind.FINAL, Tag.WINNER_TRIAL: winner.trial_id, Tag.WINNER_RUN: winner.run_id or ""},
    )
    tracker.log_params(
        run_id,
        {
            **flatten(winner.config.model_dump(mode="json")),
            "final.epochs": epochs,
            "final.retrain_on": c.final.retrain_on,
            "final.train_images": len(y),
            "seed": c.seed,
        },
    )
    with tracker.finishing(run_id):
        train_data = TrainData.from_arrays(x, y, None, None, data.num_classes, data.mean, data.std)

        def report(epoch, _model) -> None:
            tracker.log_metrics(run_id, epoch.metrics(), step=epoch.epoch)
            if progress is not None:
                progress(
                    f"epoch {epoch.epoch}/{epochs}: train_accuracy {epoch.train_accuracy:.4f}, {epoch.seconds:.0f} s"
                )

        result = train(
            winner.config,
            train_data,
            epochs=epochs,
            seed=c.seed,
            device=final_device(c.resources.gpus_per_trial),
            threads=threads or os.cpu_count(),
            prefs=Preferences.from_resources(c.resources),
            report=report,
        )
        device = describe(result.plan.torch_device)  # uncapped: the driver holds what it trains on whole
        tracker.set_tags(run_id, {**result.plan.tags(), **device.tags()})
        # tested once, on the device it trained on, as it trained (precision, layout)
        logits = predict_logits(
            result.model,
            data.x_test if isinstance(data.x_test, FileImages) else torch.as_tensor(data.x_test),
            plan=result.plan,
        )
        model = result.model.cpu().to(memory_format=torch.contiguous_format).eval()  # type: ignore[call-overload]
        y_test = torch.as_tensor(data.y_test)
        test_loss = loss_fn(logits, y_test, multilabel=data.multilabel).item()
        test_accuracy = accuracy(logits, y_test)  # multi-label: the mean per-label accuracy

        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp)
            if data.multilabel:
                metrics = write_multilabel_evaluation(logits.numpy(), data.y_test, data.classes, out, study.name)
            else:
                metrics = write_evaluation(
                    logits.numpy(),
                    data.y_test,
                    data.x_test,  # type: ignore[arg-type]  # FileImages too
                    data.classes,
                    out,
                    study.name,
                )
            learning_curves_png(
                winner.history,
                [_row(e) for e in result.history],
                out / "learning_curves.png",
                f"{study.name}: winning trial #{winner.number} and its retrain",
            )
            family_table(
                records, c.objective.metric, c.objective.direction, winner, test_accuracy, out / "families.csv"
            )
            if optuna_storage:
                optuna_plots_html(optuna_storage, optuna_study or study.name, out / "optuna_plots.html")
            for path in sorted(out.iterdir()):
                tracker.log_artifact(run_id, path, "evaluation")
        metrics = {
            "test_accuracy": test_accuracy,
            "test_loss": test_loss,
            **metrics,
            "retrain_seconds": sum(e.seconds for e in result.history),
        }
        tracker.log_metrics(run_id, metrics)

        model_uri, model_id = _log_model(tracker, run_id, model, data)
        _log_exports(tracker, run_id, model, data, c.final.export)
        name, version, promotion = register(tracker, study, run_id, model_uri, model_id, metrics)
        tracker.set_tags(run_id, {Tag.PROMOTION: promotion})
    return FinalResult(
        run_id, epochs, test_accuracy, test_loss, metrics, model_uri, name, version, promotion, time.time() - start
    )


def final_device(gpus_per_trial: float) -> str:
    """Where the driver retrains the winner: on the CPU for a study whose trials held no GPU (as they
    trained, and a GPU the driver's machine has may belong to others' tasks); else on a GPU where this
    machine has one (a head node without one retrains on its CPU, tagged so)."""
    return "cpu" if gpus_per_trial == 0 else "auto"


def _row(epoch: Any) -> dict[str, Any]:
    return {
        "epoch": epoch.epoch,
        Metric.TRAIN_LOSS: epoch.train_loss,
        Metric.TRAIN_ACCURACY: epoch.train_accuracy,
        Metric.VAL_LOSS: epoch.val_loss,
        Metric.VAL_ACCURACY: epoch.val_accuracy,
    }


def model_metadata(data: ImageData) -> dict:
    """Stored with the logged model; ``hpo predict`` rebuilds the preprocessing from it."""
    return {
        "classes": data.classes,
        "task": "multilabel" if data.multilabel else "multiclass",
        "input": "float32 (N, C, H, W) in [0, 1]",
        "channels": data.in_channels,
        "image_size": list(data.image_size),
        "background": background_kind(head(data.x_train, 512)),
        "mean": list(data.mean),
        "std": list(data.std),
    }


def background_kind(images: np.ndarray) -> str:
    """What the training images' borders are: ``dark`` or ``light`` where nine in ten border pixels are
    near black or near white (objects on a plain background: Fashion-MNIST, MNIST, product shots), else
    ``varied`` (photos that fill the frame: CIFAR). ``hpo predict`` inverts and crops outside photos only
    for a plain background; measured from the images, not taken from the dataset's name."""
    border = np.concatenate(
        [
            images[:, :, 0, :].ravel(),
            images[:, :, -1, :].ravel(),
            images[:, :, :, 0].ravel(),
            images[:, :, :, -1].ravel(),
        ]
    ).astype(np.float32)
    if (border < 48).mean() >= 0.9:
        return "dark"
    if (border > 207).mean() >= 0.9:
        return "light"
    return "varied"


def _log_model(tracker: Tracker, run_id: str, model: Any, data: ImageData) -> tuple[str, str | None]:
    """Log the model as a torch.export program: graph and weights, no pickled Python objects."""
    example = head(data.x_test, 4).astype(np.float32) / 255.0  # batch > 1: the batch dim stays dynamic
    logged = tracker.log_model(
        run_id, model, input_example=example, pip_requirements=pip_requirements(), metadata=model_metadata(data)
    )
    return logged.uri, logged.model_id


def _log_exports(tracker: Tracker, run_id: str, model: Any, data: ImageData, formats: Sequence[str]) -> None:
    """TorchScript and ONNX files beside the logged model (artifact folder ``exports/``)."""
    import torch

    example = torch.as_tensor(head(data.x_test, 4).astype(np.float32) / 255.0)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        if "torchscript" in formats:
            torch.jit.trace(model, example).save(str(out / "model.torchscript.pt"))
        if "onnx" in formats:
            torch.onnx.export(
                model,
                (example,),
                str(out / "model.onnx"),
                input_names=["images"],
                output_names=["logits"],
                dynamo=True,
                verbose=False,
                external_data=False,
                dynamic_shapes={"x": {0: torch.export.Dim("batch")}},
            )
        (out / "model_metadata.json").write_text(json.dumps(model_metadata(data), indent=2))
        for path in sorted(out.iterdir()):
            tracker.log_artifact(run_id, path, "exports")


def register(
    tracker: Tracker, study: Study, run_id: str, model_uri: str, model_id: str | None, metrics: dict[str, float]
) -> tuple[str, str, str]:
    """Create a registered version carrying its metrics and study; move ``champion`` per the study's rule.
    Returns (name, version, what happened to the alias)."""
    import yaml

    c = study.config
    name = c.registered_model_name
    tracker.ensure_registered_model(name, {Tag.STUDY: study.name})
    tags = {Tag.STUDY: study.name, Tag.RUN_ID: run_id, **{k: repr(float(v)) for k, v in metrics.items()}}
    version = tracker.create_model_version(
        name,
        source=model_uri,
        run_id=run_id,
        model_id=model_id,
        tags=tags,
        description=yaml.safe_dump(study.resolved(), sort_keys=False)[:5000],
    )
    promotion = apply(tracker, name, version, ChampionRule.from_final(c.final), metrics)
    return name, version, promotion
