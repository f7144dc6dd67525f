"""The AutoKeras baseline's worker process: ``python -m hpo.backends._autokeras_worker SPEC.json``.

Runs in its own process so that Keras (and TensorFlow, on that backend) never shares an interpreter with
the PyTorch trials. It reads the exact arrays the search uses from ``data.npz``, runs
``autokeras.ImageClassifier`` under the study's budget, and reports through an append-only JSON-lines
file of events (``split``, ``trial_begin``, ``epoch``, ``trial_end``, ``final_begin``, ``final_epoch``,
``done``) that the driver turns into MLflow runs as they arrive. Keras Tuner's project folder persists
finished trials, so a killed worker started again continues the search instead of repeating it.

The spec's keys: ``data``, ``events``, ``directory``, ``tuner``, ``block_type`` (null: AutoKeras' own
``ImageClassifier`` space), ``max_trials``, ``epochs``, ``batch_size``,
``deadline`` (epoch seconds or null), ``seed``, ``objective``, ``retrain_on`` ("train+val" | "train"),
``final_epochs`` (an int or "best"), ``threads``, ``memory_bytes`` (the cap on what the search may
allocate), ``driver_pid`` (the worker exits when that process is
gone).
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import sys
import time
from pathlib import Path

import numpy as np

from hpo.data import split_record


class Events:
    """Append one JSON object per line, flushed at once: the driver tails this file."""

    def __init__(self, path: Path) -> None:
        self.fh = path.open("a", buffering=1)

    def __call__(self, event: str, **fields) -> None:
        self.fh.write(json.dumps({"event": event, "time": time.time(), **fields}, default=_plain) + "\n")
        self.fh.flush()


def _plain(value):
    if isinstance(value, np.generic):
        return value.item()
    return str(value)


def _epoch_metrics(logs: dict | None) -> dict[str, float]:
    names = {"loss": "train_loss", "accuracy": "train_accuracy", "val_loss": "val_loss", "val_accuracy": "val_accuracy"}
    return {names[k]: float(v) for k, v in (logs or {}).items() if k in names}


def logged_tuner(base: type, spec: dict, emit: Events) -> type:
    """``base`` (an AutoKeras tuner class) reporting its trials as events, stopping at the deadline, and
    retraining its winner the way the study's final stage does."""
    import keras
    import tree
    from autokeras.utils.utils import fit_with_adaptive_batch_size

    deadline = spec["deadline"]
    driver = spec.get("driver_pid")

    def orphaned() -> None:
        """A killed driver leaves this process to its parent's parent: stop rather than go on alone
        (the next ``hpo run`` continues the baseline, from what the tuner saved)."""
        if driver is not None and os.getppid() != driver:
            emit("orphaned", driver=driver)
            os._exit(3)

    class Logged(base):
        _epoch_start = 0.0
        _out_of_time = False

        def _build_and_fit_model(self, trial, *args, **kwargs):
            # AutoKeras 3.0.0's own version, except for one line: it traces the model on the whole training
            # set (``compute_output_spec(model, x)``), which on the torch backend is a real forward pass over
            # every image at once and runs out of memory for its ResNet50 at 224 px. Two images suffice.
            model = self._try_build(trial.hyperparameters)
            pipeline, (kwargs["x"], kwargs["y"]), kwargs["validation_data"] = self._prepare_model_build(
                trial.hyperparameters, **kwargs
            )
            pipeline.save(self._pipeline_path(trial.trial_id))
            keras.src.backend.compute_output_spec(model, tree.map_structure(lambda a: a[:2], kwargs["x"]))
            self.adapt(model, kwargs["x"])
            _, history = fit_with_adaptive_batch_size(model, **kwargs)
            return history

        def _past_deadline(self) -> bool:
            """Past the time budget: this trial stops at its next batch and no other starts."""
            if deadline is not None and time.time() >= deadline and not self._out_of_time:
                self._out_of_time = True
                self.oracle.max_trials = len(self.oracle.trials)
            return self._out_of_time

        def on_trial_begin(self, trial):
            super().on_trial_begin(trial)
            emit("trial_begin", trial=trial.trial_id, params=dict(trial.hyperparameters.values))
            self._epoch_start = time.time()
            self._past_deadline()  # a trial begun after the deadline (a resumed run) trains one batch

        def on_epoch_end(self, trial, model, epoch, logs=None):
            super().on_epoch_end(trial, model, epoch, logs)
            now = time.time()
            emit(
                "epoch", trial=trial.trial_id, epoch=epoch + 1, seconds=now - self._epoch_start, **_epoch_metrics(logs)
            )
            self._epoch_start = now

        def on_batch_end(self, trial, model, batch, logs=None):
            super().on_batch_end(trial, model, batch, logs)
            orphaned()
            if self._past_deadline():
                model.stop_training = True

        def on_trial_end(self, trial):
            super().on_trial_end(trial)
            best = trial.best_step + 1 if trial.best_step is not None else None
            emit(
                "trial_end",
                trial=trial.trial_id,
                status=str(trial.status),
                score=trial.score,
                best_epoch=best,
                stopped_by_deadline=self._out_of_time,
                message=(trial.message or "")[-2000:],
            )

        def final_fit(self, **kwargs):
            best = self.oracle.get_best_trials(1)[0]
            if spec["final_epochs"] == "best":
                kwargs["epochs"] = (best.best_step or 0) + 1
            else:
                kwargs["epochs"] = int(spec["final_epochs"])
            validation = kwargs.pop("validation_data", None)
            if spec["retrain_on"] == "train+val" and validation is not None:
                x_val, y_val = validation
                kwargs["x"] = tree.map_structure(lambda a, b: np.concatenate([a, b]), kwargs["x"], x_val)
                kwargs["y"] = tree.map_structure(lambda a, b: np.concatenate([a, b]), kwargs["y"], y_val)
            images = len(tree.flatten(kwargs["y"])[0])
            emit(
                "final_begin",
                trial=best.trial_id,
                epochs=kwargs["epochs"],
                retrain_on=spec["retrain_on"],
                images=images,
                params=dict(best.hyperparameters.values),
            )
            kwargs["callbacks"] = [*kwargs.get("callbacks", []), FinalEpochs()]
            return super().final_fit(**kwargs)

    class FinalEpochs(keras.callbacks.Callback):
        start = 0.0

        def on_epoch_begin(self, epoch, logs=None):
            orphaned()
            self.start = time.time()

        def on_epoch_end(self, epoch, logs=None):
            emit("final_epoch", epoch=epoch + 1, seconds=time.time() - self.start, **_epoch_metrics(logs))

    Logged.__name__ = Logged.__qualname__ = f"Logged{base.__name__}"
    return Logged


def tuner_class(name: str) -> type:
    import autokeras.tuners as tuners

    return {
        "greedy": tuners.ImageClassifierTuner,
        "bayesian": tuners.BayesianOptimization,
        "hyperband": tuners.Hyperband,
        "random": tuners.RandomSearch,
    }[name]


def image_classifier(spec: dict, emit: Events):
    """``autokeras.ImageClassifier`` as the spec says; with a ``block_type``, the same network (an image
    block, then a classification head) with that block type alone, and the greedy tuner's first models
    those of AutoKeras' hand-picked ones that have it."""
    import autokeras as ak
    import autokeras.tuners as tuners

    common = {
        "max_trials": int(spec["max_trials"]),
        "directory": spec["directory"],
        "project_name": "autokeras",
        "objective": spec["objective"],
        "overwrite": False,
        "seed": spec["seed"],
    }
    block_type = spec.get("block_type")
    if block_type is None:
        tuner = logged_tuner(tuner_class(spec["tuner"]), spec, emit)
        return ak.ImageClassifier(num_classes=int(spec["num_classes"]), tuner=tuner, **common)
    key = "image_block_1/block_type"
    if spec["tuner"] == "greedy":  # its hand-picked first models, those of this block type
        common["initial_hps"] = [
            {k: v for k, v in hps.items() if k != key}
            for hps in tuners.task_specific.IMAGE_CLASSIFIER
            if hps.get(key) == block_type
        ]
        tuner = logged_tuner(tuners.Greedy, spec, emit)
    else:
        tuner = logged_tuner(tuner_class(spec["tuner"]), spec, emit)
    images = ak.ImageInput()
    head = ak.ClassificationHead(num_classes=int(spec["num_classes"]))(ak.ImageBlock(block_type=block_type)(images))
    return ak.AutoModel(inputs=images, outputs=head, tuner=tuner, **common)


def die_with_driver(driver: int | None, emit: Events) -> None:
    """Ask the kernel (Linux) to signal this process the moment its driver dies, whatever it is doing then,
    and stop there: the checks between batches alone leave it training on for minutes while AutoKeras
    builds and traces its next model. The next ``hpo run`` continues the baseline."""
    if driver is None or not sys.platform.startswith("linux"):
        return

    def on_driver_death(_signum=None, _frame=None) -> None:
        emit("orphaned", driver=driver)
        os._exit(3)

    signal.signal(signal.SIGUSR1, on_driver_death)
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGUSR1)  # PR_SET_PDEATHSIG: the driver spawned us from its main thread
    if os.getppid() != driver:  # it died before the request was in place
        on_driver_death()


def main(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    emit = Events(Path(spec["events"]))
    die_with_driver(spec.get("driver_pid"), emit)
    if spec.get("threads"):
        os.environ.setdefault("OMP_NUM_THREADS", str(spec["threads"]))
    arrays = dict(np.load(spec["data"]))
    emit("split", **split_record(arrays))  # what this process trains, validates and tests on

    import autokeras as ak
    import keras

    if keras.backend.backend() == "torch" and spec.get("threads"):
        import torch

        torch.set_num_threads(int(spec["threads"]))
    keras.utils.set_random_seed(spec["seed"])
    emit("started", keras=keras.__version__, autokeras=ak.__version__, backend=keras.backend.backend())

    def nhwc(x: np.ndarray) -> np.ndarray:  # Keras wants channels last; values stay 0-255 (AutoKeras normalises)
        return np.ascontiguousarray(x.transpose(0, 2, 3, 1)).astype(np.float32)

    classifier = image_classifier(spec, emit)
    # A model too big for this machine (AutoKeras' ResNet50 at 224 px takes ~22 GB on a CPU) fails its
    # trial with an allocation error, which Keras Tuner records, instead of waking the OOM killer.
    from hpo.engine.limits import memory_cap

    on_gpu = keras.backend.backend() == "torch" and __import__("torch").cuda.is_available()
    with memory_cap(spec.get("memory_bytes"), None, "cuda" if on_gpu else "cpu"):
        classifier.fit(
            nhwc(arrays["x_train"]),
            arrays["y_train"],
            validation_data=(nhwc(arrays["x_val"]), arrays["y_val"]),
            epochs=int(spec["epochs"]),
            batch_size=int(spec["batch_size"]),
            verbose=0,
        )

    model = classifier.export_model()
    pipeline = classifier.tuner.get_best_pipeline()
    probs = model.predict(pipeline.transform_x(nhwc(arrays["x_test"])), batch_size=256, verbose=0)
    out = Path(spec["directory"])
    np.save(out / "test_probabilities.npy", np.asarray(probs, dtype=np.float32))
    model.save(out / "model.keras")
    emit(
        "done",
        probabilities=str(out / "test_probabilities.npy"),
        model=str(out / "model.keras"),
        parameters=int(model.count_params()),
    )


if __name__ == "__main__":
    main(sys.argv[1])
