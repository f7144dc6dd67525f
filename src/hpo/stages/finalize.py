"""Finalize: retrain the winning configuration on train+val for its best epoch count, test it once,
log the evaluation, the model and its exports, register it, and move the ``champion`` alias if it won.

Retraining, the test and the exports run as one Ray task on a worker, with the study's resources (a whole
GPU when trials use GPUs: ``final_task_options``); the driver logs what the task sends back
(``Retrained``: a cluster's nodes share no filesystem) and registers the model."""

from __future__ import annotations

import json
import math
import queue
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from hpo._torchvision import import_torchvision
from hpo.config.study import Resources
from hpo.data import ImageData
from hpo.data.streaming import FileImages, head
from hpo.engine.pareto import choose_pareto
from hpo.engine.records import TrialRecord
from hpo.errors import HpoError
from hpo.names import Metric, RunKind, Tag
from hpo.stages.champion import CHAMPION, ChampionGuard, ChampionRule, apply
from hpo.study import Study
from hpo.tracking import Tracker, flatten

__all__ = ["CHAMPION", "ChampionGuard", "FinalResult", "Retrained", "final_task_options", "finalize", "register"]


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
    """Retrain, test and export in the final task (on a worker), then log what it sends back and
    register the model. Interrupted while the task runs (Ctrl-C, or SIGTERM raised as
    ``KeyboardInterrupt``), the driver cancels the task and raises on."""
    import ray

    from hpo.report import learning_curves_png
    from hpo.report.evaluation import write_evaluation, write_multilabel_evaluation
    from hpo.report.pareto import write_pareto
    from hpo.report.study_plots import family_table, optuna_plots_html

    c = study.config
    start = time.time()
    if best_epoch is None:
        best_epoch = winner.best(c.objective.metric, c.objective.direction)[1]
    epochs = best_epoch if c.final.epochs == "best" else c.final.epochs
    if epochs is None:  # cannot happen for a winner picked by its best value, which has an epoch
        raise HpoError(f"trial #{winner.number} reported no {c.objective.metric}: no epoch count to retrain for")
    train_images = len(data.y_train) + (len(data.y_val) if c.final.retrain_on == "train+val" else 0)

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
            "final.train_images": train_images,
            "seed": c.seed,
        },
    )
    with tracker.finishing(run_id):
        streaming = not ray.util.client.ray.is_connected()  # Ray Client (ray://) runs no generator tasks
        options = final_task_options(
            c.resources, c.failures.retries, streaming=streaming, machine_cpus=_single_node_cpus()
        )
        job = FinalJob(
            config=winner.config.model_dump(mode="json"),
            epochs=epochs,
            seed=c.seed,
            retrain_on=c.final.retrain_on,
            resources=c.resources,
            threads=threads or max(1, math.floor(options["num_cpus"])),
            exports=tuple(f for f in c.final.export if f in EXPORT_FILES),
        )
        task = ray.remote(**options)(_final_task if streaming else _final_task_at_once)
        submitted: Any = task.remote(job, ray.put(data))  # an ObjectRefGenerator, or one ObjectRef
        # the model it sends back unpickles here: a torchvision or timm network imports torchvision, which
        # needs its operators defined first where torch and torchvision builds differ (hpo._torchvision)
        import_torchvision()
        retrained: Retrained | None = None
        logged = 0  # epochs logged so far
        try:
            for ref in submitted if streaming else [submitted]:  # each epoch as it ends, then the result
                item = ray.get(ref)
                rows = [item] if isinstance(item, dict) else item.history[logged:]
                for row in rows:
                    tracker.log_metrics(run_id, {k: v for k, v in row.items() if k != "epoch"}, step=row["epoch"])
                    if progress is not None:
                        progress(
                            f"epoch {row['epoch']}/{epochs}: train_accuracy {row[Metric.TRAIN_ACCURACY]:.4f}, "
                            f"{row[Metric.SECONDS]:.0f} s"
                        )
                logged += len(rows)
                if isinstance(item, Retrained):
                    retrained = item
        except KeyboardInterrupt:  # the driver is stopping: the retrain on the worker stops with it
            ray.cancel(submitted, force=True)
            raise
        except ray.exceptions.RayTaskError as exc:  # the error as the task raised it; Ray's (its traceback) chained
            raise raised_in_task(exc) from exc
        if retrained is None:
            raise HpoError("the final task ended without sending its result back")
        tracker.set_tags(run_id, retrained.tags)
        test_accuracy, test_loss = retrained.test_accuracy, retrained.test_loss

        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp)
            if data.multilabel:
                metrics = write_multilabel_evaluation(retrained.logits, data.y_test, data.classes, out, study.name)
            else:
                metrics = write_evaluation(
                    retrained.logits,
                    data.y_test,
                    data.x_test,  # type: ignore[arg-type]  # FileImages too
                    data.classes,
                    out,
                    study.name,
                )
            learning_curves_png(
                winner.history,
                retrained.history,
                out / "learning_curves.png",
                f"{study.name}: winning trial #{winner.number} and its retrain",
            )
            family_table(
                records, c.objective.metric, c.objective.direction, winner, test_accuracy, out / "families.csv"
            )
            if c.objective.multi:  # the front, the limits and the winner (chosen by the rule, or re-checked)
                choice = replace(choose_pareto(records, list(c.objective), c.final.choose), chosen=winner)
                write_pareto(choice, out, f"{study.name}: Pareto front of {len(choice.points)} trials")
            if optuna_storage:
                optuna_plots_html(
                    optuna_storage, optuna_study or study.name, out / "optuna_plots.html", c.objective.metric
                )
            for path in sorted(out.iterdir()):
                tracker.log_artifact(run_id, path, "evaluation")
        metrics = {
            "test_accuracy": test_accuracy,
            "test_loss": test_loss,
            **metrics,
            "retrain_seconds": sum(row[Metric.SECONDS] for row in retrained.history),
        }
        tracker.log_metrics(run_id, metrics)

        model_uri, model_id = _log_model(tracker, run_id, retrained.model, data)
        _log_exports(tracker, run_id, retrained.exports, data)
        name, version, promotion = register(tracker, study, run_id, model_uri, model_id, metrics)
        tracker.set_tags(run_id, {Tag.PROMOTION: promotion})
    return FinalResult(
        run_id, epochs, test_accuracy, test_loss, metrics, model_uri, name, version, promotion, time.time() - start
    )


# What the final task exports beside the logged model: format -> file name (artifact folder ``exports/``).
EXPORT_FILES = {"torchscript": "model.torchscript.pt", "onnx": "model.onnx"}


@dataclass(frozen=True)
class FinalJob:
    """What the final task is asked to do; the data goes beside it, through Ray's object store."""

    config: dict[str, Any]  # the winner's TrialConfig, as JSON
    epochs: int
    seed: int
    retrain_on: str  # train+val | train
    resources: Resources
    threads: int
    exports: tuple[str, ...]  # formats, keys of EXPORT_FILES


@dataclass
class Retrained:
    """What the final task sends back. A cluster's nodes share no filesystem, so all the driver logs
    travels in it: the model (on the CPU), the test set's logits (the evaluation's metrics and plots are
    drawn from them), the exported files' bytes, and where and how it trained (tags: node, device, plan)."""

    history: list[dict[str, Any]]  # one row per epoch: ``epoch`` and its metrics (``hpo.names.Metric``)
    model: Any  # the trained torch module: on the CPU, contiguous, in eval mode
    logits: np.ndarray  # float32 (test images, classes)
    test_loss: float
    test_accuracy: float  # multi-label: the mean per-label accuracy
    exports: dict[str, bytes]  # file name -> content
    tags: dict[str, str]


def _single_node_cpus() -> float | None:
    """The CPUs of the one node with CPUs when Ray is one machine (``hpo run`` without ``--address``, or
    a one-node cluster); None for a pool of several."""
    import ray

    nodes = [n for n in ray.nodes() if n.get("Alive") and n.get("Resources", {}).get("CPU", 0) > 0]
    return float(nodes[0]["Resources"]["CPU"]) if len(nodes) == 1 else None


def final_task_options(
    resources: Resources, retries: int, *, streaming: bool = True, machine_cpus: float | None = None
) -> dict[str, Any]:
    """The final task's Ray options: a trial's CPUs (and memory), and a whole GPU when trials use GPUs
    (a fractional share packs trials side by side; the final run is alone). On one machine
    (``machine_cpus``: Ray has a single node) the final run, alone once the search is over, takes all
    its CPUs, as a retrain in the driver did; a pool of several nodes gives it a trial's. ``retries``
    (``failures.retries``) runs it again elsewhere if its worker or node is lost. ``streaming``: a
    generator task, each epoch reaching the driver as it ends (not under Ray Client)."""
    options: dict[str, Any] = {
        "num_cpus": max(resources.cpus_per_trial, machine_cpus or 0),
        "num_gpus": 1 if resources.gpus_per_trial > 0 else 0,
        "max_retries": retries,
    }
    if streaming:
        options["num_returns"] = "streaming"
    if resources.memory_per_trial:
        options["memory"] = int(resources.memory_per_trial)  # as trials ask (hpo.engine.ray_tune)
    return options


def raised_in_task(exc: BaseException) -> BaseException:
    """What a Ray task raised, out of Ray's wrapper (whose text is the task's whole traceback): a final
    stage that runs out of memory reads ``TrialOutOfMemory: ...`` on the console, as in a trial."""
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, BaseException) else exc


def _final_task(job: FinalJob, data: ImageData) -> Iterator[dict[str, Any] | Retrained]:
    """The Ray task: yields each epoch's row as it ends, then the ``Retrained``. Training runs in a thread
    of the task so that its per-epoch callback can hand rows to this generator."""
    from hpo.engine.devices import assigned_device

    # First, before anything asks torch about CUDA (see hpo.engine.ray_tune.run_trial).
    device = assigned_device(1.0 if job.resources.gpus_per_trial > 0 else 0.0, who="final run")

    import ray

    node = ray.get_runtime_context().get_node_id()
    events: queue.Queue[tuple[str, Any]] = queue.Queue()

    def work() -> None:
        try:
            retrained = _retrain(job, data, device.device, lambda row: events.put(("epoch", row)))
            retrained.tags.update({**device.tags(), Tag.NODE.value: node})
            events.put(("done", retrained))
        except BaseException as exc:  # raised again by the task itself, which fails with it
            events.put(("error", exc))

    threading.Thread(target=work, name="final-retrain", daemon=True).start()
    while True:
        kind, item = events.get()
        if kind == "error":
            raise item
        yield item
        if kind == "done":
            return


def _final_task_at_once(job: FinalJob, data: ImageData) -> Retrained:
    """The final task where Ray runs no generator tasks (Ray Client): its epochs come with its result."""
    *_, retrained = _final_task(job, data)
    if not isinstance(retrained, Retrained):  # the generator ends with it, or raises
        raise HpoError("the final task ended without its result")
    return retrained


def _retrain(job: FinalJob, data: ImageData, device: str, on_epoch: Callable[[dict[str, Any]], None]) -> Retrained:
    """Train, test once and export: the final task's work, in the task's process."""
    import torch

    from hpo.config import TrialConfig
    from hpo.engine.limits import out_of_memory_as_infeasible
    from hpo.train import Preferences, TrainData, predict_logits, train
    from hpo.train.loop import accuracy, loss_fn

    config = TrialConfig.model_validate(job.config)
    with out_of_memory_as_infeasible(config.batch_size, device):
        train_data = TrainData.from_image_data(data, val="train" if job.retrain_on == "train+val" else "drop")
        result = train(
            config,
            train_data,
            epochs=job.epochs,
            seed=job.seed,
            device=device,
            threads=job.threads,
            prefs=Preferences.from_resources(job.resources),
            report=lambda epoch, _model: on_epoch(_row(epoch)),
        )
        # tested once, on the device it trained on, as it trained (precision, layout)
        x_test = data.x_test if isinstance(data.x_test, FileImages) else torch.as_tensor(data.x_test)
        logits = predict_logits(result.model, x_test, plan=result.plan)
    model = result.model.cpu().to(memory_format=torch.contiguous_format).eval()  # type: ignore[call-overload]
    y_test = torch.as_tensor(data.y_test)
    return Retrained(
        history=[_row(e) for e in result.history],
        model=model,
        logits=logits.numpy(),
        test_loss=loss_fn(logits, y_test, multilabel=data.multilabel).item(),
        test_accuracy=accuracy(logits, y_test),
        exports=_export_files(model, data, job.exports),
        tags=dict(result.plan.tags()),
    )


def _row(epoch: Any) -> dict[str, Any]:
    """An epoch of the retrain as plain values (they cross from the task to the driver): its number and
    metrics (no validation ones: the retrain holds nothing out)."""
    return {"epoch": epoch.epoch, **epoch.metrics()}


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


def _export_files(model: Any, data: ImageData, formats: Sequence[str]) -> dict[str, bytes]:
    """TorchScript and ONNX files of ``model`` (made in the final task, where the model is), as bytes."""
    import torch

    example = torch.as_tensor(head(data.x_test, 4).astype(np.float32) / 255.0)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        if "torchscript" in formats:
            torch.jit.trace(model, example).save(str(out / EXPORT_FILES["torchscript"]))
        if "onnx" in formats:
            torch.onnx.export(
                model,
                (example,),
                str(out / EXPORT_FILES["onnx"]),
                input_names=["images"],
                output_names=["logits"],
                dynamo=True,
                verbose=False,
                external_data=False,
                dynamic_shapes={"x": {0: torch.export.Dim("batch")}},
            )
        return {path.name: path.read_bytes() for path in sorted(out.iterdir())}


def _log_exports(tracker: Tracker, run_id: str, exports: Mapping[str, bytes], data: ImageData) -> None:
    """The final task's exported files beside the logged model, with the model's metadata (artifact
    folder ``exports/``)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        for name, content in exports.items():
            (out / name).write_bytes(content)
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
