"""The AutoKeras baseline backend: ``autokeras.ImageClassifier`` on exactly the splits the search uses,
under the same budget, tracked in the same layout.

The driver (this module, no Keras import) hands the study's arrays to a worker process
(:mod:`hpo.backends._autokeras_worker`) and turns the events it writes into MLflow runs as they arrive:

    <study experiment>
    ├── <study>            hpo.kind=study     (the search backend: trials, re-check, final)
    └── <study>/autokeras  hpo.kind=baseline  hpo.backend=autokeras
        ├── autokeras-trial-001 ...            one per AutoKeras model: flattened hyperparameters,
        │                                      per-epoch train_loss / val_loss / val_accuracy
        └── final                              the winner retrained, test metrics, confusion matrix,
                                               the exported Keras model

Both parents carry the same metric names (``test_accuracy``, ``wall_seconds``, ``trials_completed``,
``trial_epochs``, ``best_val_accuracy``) and split digests (``hpo.split.*`` tags), so the MLflow UI
compares them column by column and shows that they saw the same images.
"""

from __future__ import annotations

import csv
import importlib.metadata
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hpo.backends.base import BackendSummary, RunContext
from hpo.engine.run_dir import BACKEND_STAGES, advance_past
from hpo.errors import HpoError

KERAS_RANGE = ((3, 12), (3, 13))  # AutoKeras 3.0.0 breaks on Keras 3.13+
INSTALL = {"torch": 'pip install -e ".[autokeras]"', "tensorflow": 'pip install -e ".[tensorflow]"'}
POLL_SECONDS = 0.5
STATUS = {"COMPLETED": "completed", "INVALID": "failed", "FAILED": "failed", "STOPPED": "stopped"}
RUN_STATUS = {"completed": "FINISHED", "stopped": "KILLED", "failed": "FAILED"}


class BaselineFailed(HpoError):
    """The AutoKeras worker failed: its log says why."""


@dataclass
class Missing:
    packages: list[str]
    keras_backend: str
    detail: str = ""

    def __str__(self) -> str:
        what = ", ".join(self.packages)
        return (
            f"the autokeras backend on Keras' {self.keras_backend} backend needs {what}{self.detail}: "
            f"{INSTALL[self.keras_backend]}"
        )


def missing_packages(keras_backend: str = "torch") -> Missing | None:
    """What the baseline lacks in this environment (None: ready). Imports nothing heavy."""
    needed = ["autokeras", "keras"] + (["tensorflow"] if keras_backend == "tensorflow" else [])
    missing = [name for name in needed if importlib.util.find_spec(name) is None]
    if missing:
        return Missing(missing, keras_backend)
    version = importlib.metadata.version("keras")
    parts = tuple(int(p) for p in version.split(".")[:2] if p.isdigit())
    if not KERAS_RANGE[0] <= parts < KERAS_RANGE[1]:
        return Missing(
            ["keras>=3.12,<3.13"], keras_backend, f" (found keras {version}, which AutoKeras 3.0.0 cannot run on)"
        )
    return None


@dataclass
class BaselineResult:
    """What the baseline reached: the same fields the search reports, for the side-by-side table."""

    run_id: str
    test_accuracy: float
    test_loss: float
    trials: int
    trial_epochs: int
    best_val_accuracy: float | None
    search_seconds: float
    wall_seconds: float
    final_run_id: str
    parameters: int

    def summary(self) -> BackendSummary:
        return BackendSummary(
            "autokeras",
            self.run_id,
            self.test_accuracy,
            self.test_loss,
            self.trials,
            self.trial_epochs,
            self.best_val_accuracy,
            self.search_seconds,
            self.wall_seconds,
        )


@dataclass
class _Trial:
    key: str
    number: int
    run_id: str
    params: dict
    history: list[dict] = field(default_factory=list)
    status: str = "running"

    def best(self, metric: str, mode: str) -> tuple[float | None, int | None]:
        rows = [r for r in self.history if r.get(metric) is not None]
        if not rows:
            return None, None
        row = (max if mode == "max" else min)(rows, key=lambda r: r[metric])
        return row[metric], row["epoch"]


class _Quiet:
    def update(self, *_args) -> None:
        pass


class AutoKerasBackend:
    """Runs the baseline for one study run; ``run()`` returns its result. Continues a killed baseline:
    Keras Tuner keeps finished trials in ``<run folder>/autokeras/``, their MLflow runs are kept, and the
    trial or final fit that was cut off is redone."""

    name = "autokeras"
    stages = BACKEND_STAGES["autokeras"]

    def __init__(self, run: RunContext) -> None:
        self.study, self.data, self.tracker, self.run_dir = run.study, run.data, run.tracker, run.run_dir
        self.console = run.console
        self.folder = run.run_dir.path / "autokeras"
        self.trials: dict[str, _Trial] = {}
        self.final_run: str | None = None
        self.final_params: dict = {}
        self.done: dict | None = None
        self.search_seconds = 0.0
        self._begin, self._elapsed_before = time.time(), 0.0

    # ----------------------------------------------------------------------------------- the run
    def run(self) -> BaselineResult:
        c = self.study.config
        self.folder.mkdir(parents=True, exist_ok=True)
        state = dict(self.run_dir.state.baseline or {})
        if state.get("result"):
            return BaselineResult(**state["result"])
        start = time.time()
        parent = state.get("run_id")
        if parent is None:
            parent = self._start_parent()
            state = {"run_id": parent, "elapsed": 0.0}
            self.run_dir.advance("baseline", baseline=state)
        else:
            self.parent = parent
            self.tracker.reopen(parent, {"hpo.attempts": self.run_dir.state.attempts})
            self._adopt_children(parent, state)
        self.parent = parent
        elapsed_before = float(state.get("elapsed", 0.0))
        with self.tracker.finishing(parent):
            self._run_worker(elapsed_before, state)
            result = self._finish(time.time() - start + elapsed_before)
        self.run_dir.advance(self.run_dir.state.stage, baseline={**state, "result": result.__dict__})
        advance_past(self.run_dir, c, self.name)
        return result

    def _start_parent(self) -> str:
        c = self.study.config
        run_id = self.tracker.start_study(
            self.study, self.study.resolved(), name=f"{c.name}/autokeras", kind="baseline", backend="autokeras"
        )
        a = c.autokeras
        self.tracker.log_params(
            run_id,
            {
                "autokeras.tuner": a.tuner,
                "autokeras.max_trials": self.max_trials,
                "autokeras.batch_size": a.batch_size,
                "autokeras.keras_backend": a.keras_backend,
            },
        )
        self.tracker.log_split(run_id, self.data.split_record())
        return run_id

    def memory_cap(self) -> int:
        """What the AutoKeras search may allocate: ``resources.memory_per_trial``, else 3/4 of this
        machine's memory (a model that needs more fails its trial instead of the machine)."""
        configured = self.study.config.resources.memory_per_trial
        if configured:
            return int(configured)
        return int(0.75 * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))

    @property
    def max_trials(self) -> int:
        c = self.study.config
        return c.autokeras.max_trials or c.budget.trials

    def _adopt_children(self, parent: str, state: dict) -> None:
        """After a kill: take over the trial runs, log what the dead worker wrote that the dead driver had
        not read (``state["offset"]`` on), then drop what was cut off: a trial still running (Keras Tuner
        runs it again) and an unfinished final run (the worker redoes the final fit)."""
        for old in self.tracker.child_runs(parent, "trial"):
            key = old.data.tags.get("hpo.trial_id", "")
            trial = _Trial(
                key,
                int(old.data.tags.get("hpo.number", 0)),
                old.info.run_id,
                {},
                status="running" if old.info.status == "RUNNING" else old.data.tags.get("hpo.status", "completed"),
            )
            for m in self.tracker.metric_history(old.info.run_id, "val_accuracy"):
                trial.history.append({"epoch": m.step, "val_accuracy": m.value})
            self.trials[key] = trial
        events = self.folder / "events.jsonl"
        if events.exists():
            with events.open() as fh:
                fh.seek(state.get("offset", 0))
                self._drain(fh, None, state)
        for key, trial in list(self.trials.items()):
            if trial.status == "running":
                self.tracker.delete_run(trial.run_id)
                del self.trials[key]
        for old in self.tracker.child_runs(parent, "final"):
            self.tracker.delete_run(old.info.run_id)
        self.final_run, self.done = None, None

    def _drain(self, fh, status, state: dict) -> int:
        """Handle every complete event line from ``fh``'s position on (a line still being written waits);
        the offset reached goes into ``state``. Returns how many were handled."""
        handled = 0
        while True:
            position = fh.tell()
            line = fh.readline()
            if not line.endswith("\n"):
                fh.seek(position)
                return handled
            self._on_event(json.loads(line), status)
            state["offset"] = fh.tell()
            handled += 1

    def _run_worker(self, elapsed_before: float, state: dict) -> None:
        c = self.study.config
        data_file = self.folder / "data.npz"
        if not data_file.exists():
            d = self.data
            tmp = self.folder / "data.tmp.npz"
            np.savez(
                tmp,
                x_train=d.x_train,
                y_train=d.y_train,
                x_val=d.x_val,
                y_val=d.y_val,
                x_test=d.x_test,
                y_test=d.y_test,
                train_index=d.train_index,
                val_index=d.val_index,
                test_index=d.test_index,
            )
            tmp.replace(data_file)
        events = self.folder / "events.jsonl"
        events.touch()
        offset = events.stat().st_size  # earlier attempts' events are in MLflow (see _adopt_children)
        state["offset"] = offset
        left = None if c.budget.time is None else max(0.0, c.budget.time - elapsed_before)
        spec = {
            "data": str(data_file),
            "events": str(events),
            "directory": str(self.folder / "tuner"),
            "tuner": c.autokeras.tuner,
            "max_trials": self.max_trials,
            "epochs": c.budget.max_epochs,
            "batch_size": c.autokeras.batch_size,
            "seed": c.seed,
            "num_classes": self.data.num_classes,
            "objective": c.objective.metric,
            "deadline": None if left is None else time.time() + left,
            "retrain_on": c.final.retrain_on,
            "final_epochs": c.final.epochs,
            "threads": os.cpu_count(),
            "driver_pid": os.getpid(),
            "memory_bytes": self.memory_cap(),
        }
        spec_file = self.folder / "spec.json"
        spec_file.write_text(json.dumps(spec, indent=1))
        env = {
            **os.environ,
            "KERAS_BACKEND": c.autokeras.keras_backend,
            "PYTHONUNBUFFERED": "1",
            "TF_CPP_MIN_LOG_LEVEL": "2",
        }
        log = self.folder / "worker.log"
        begin = self._begin = time.time()
        self._elapsed_before = elapsed_before
        with log.open("a") as log_fh, self.console.status("autokeras: starting the worker") as status:
            worker = subprocess.Popen(
                [sys.executable, "-m", "hpo.backends._autokeras_worker", str(spec_file)],
                stdout=log_fh,
                stderr=subprocess.STDOUT,
                env=env,
            )
            try:
                with events.open() as fh:
                    fh.seek(offset)
                    while True:
                        exited = worker.poll() is not None
                        handled = self._drain(fh, status, state)
                        state["elapsed"] = elapsed_before + (time.time() - begin)
                        if handled:  # a kill from here on loses neither the events read nor the time spent
                            self.run_dir.advance(self.run_dir.state.stage, baseline=state)
                        if exited:
                            break
                        time.sleep(POLL_SECONDS)
            except BaseException:
                worker.terminate()
                try:
                    worker.wait(10)
                except subprocess.TimeoutExpired:
                    worker.kill()
                self.run_dir.advance(self.run_dir.state.stage, baseline=state)
                raise
        self.run_dir.advance(self.run_dir.state.stage, baseline=state)
        if worker.returncode != 0 or self.done is None:
            tail = "".join(log.read_text(errors="replace").splitlines(keepends=True)[-15:])
            raise BaselineFailed(
                f"the AutoKeras worker exited with code {worker.returncode}; the end of its log ({log}):\n{tail}"
            )

    # ----------------------------------------------------------------------------------- events
    def _on_event(self, event: dict, status) -> None:
        """One event from the worker into MLflow (``status``: the terminal's spinner, None on replay)."""
        kind = event["event"]
        if status is None:
            status = _Quiet()
        c = self.study.config
        if kind == "split":
            # what the worker process itself read and trained on, digested there
            self.tracker.log_split(self.parent, {k: event[k] for k in ("train", "val", "test")}, seen=True)
        elif kind == "started":
            self.tracker.set_tags(
                self.parent,
                {
                    "hpo.keras": event["keras"],
                    "hpo.autokeras": event["autokeras"],
                    "hpo.keras_backend": event["backend"],
                },
            )
        elif kind == "trial_begin":
            key = event["trial"]
            if key in self.trials:  # started again after a kill: the cut-off attempt goes
                self.tracker.delete_run(self.trials.pop(key).run_id)
            number = max((t.number for t in self.trials.values()), default=0) + 1
            run_id = self.tracker.start_run(
                f"autokeras-trial-{number:03d}",
                parent=self.parent,
                tags={
                    "hpo.kind": "trial",
                    "hpo.backend": "autokeras",
                    "hpo.trial_id": key,
                    "hpo.number": str(number),
                    "hpo.status": "running",
                },
            )
            self.tracker.log_params(run_id, {f"autokeras.{k}": v for k, v in event["params"].items()})
            self.trials[key] = _Trial(key, number, run_id, event["params"])
            status.update(
                f"autokeras: trial {number}/{self.max_trials} "
                f"({event['params'].get('image_block_1/block_type', '?')}){self._best_so_far()}"
            )
        elif kind == "epoch":
            trial = self.trials[event["trial"]]
            row = {
                k: event[k]
                for k in ("epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "seconds")
                if k in event
            }
            trial.history.append(row)
            self.tracker.log_metrics(trial.run_id, {k: v for k, v in row.items() if k != "epoch"}, step=row["epoch"])
            status.update(
                f"autokeras: trial {trial.number}/{self.max_trials}, epoch {row['epoch']}/"
                f"{c.budget.max_epochs}{self._best_so_far()}"
            )
        elif kind == "trial_end":
            trial = self.trials[event["trial"]]
            trial.status = "stopped" if event["stopped_by_deadline"] else STATUS.get(event["status"], "failed")
            tags = {"hpo.status": trial.status, "hpo.epochs": len(trial.history)}
            if event["stopped_by_deadline"]:
                tags["hpo.reason"] = "stopped by the time budget"
            if event.get("message"):
                tags["hpo.error"] = event["message"][-500:]
            self.tracker.set_tags(trial.run_id, tags)
            self.tracker.end_run(trial.run_id, RUN_STATUS[trial.status])
        elif kind == "final_begin":
            self.search_seconds = self._elapsed_before + (event["time"] - self._begin)
            winner = self.trials.get(event["trial"])
            self.final_run = self.tracker.start_run(
                "final",
                parent=self.parent,
                tags={
                    "hpo.kind": "final",
                    "hpo.backend": "autokeras",
                    "hpo.winner_trial": event["trial"],
                    "hpo.winner_run": winner.run_id if winner else "",
                },
            )
            self.final_params = {
                **{f"autokeras.{k}": v for k, v in event["params"].items()},
                "final.epochs": event["epochs"],
                "final.retrain_on": event["retrain_on"],
                "final.train_images": event["images"],
                "seed": c.seed,
            }
            self.tracker.log_params(self.final_run, self.final_params)
            status.update(f"autokeras: retraining its winner on {event['retrain_on']} for {event['epochs']} epochs")
        elif kind == "final_epoch":
            row = {k: event[k] for k in ("train_loss", "train_accuracy", "seconds") if k in event}
            self.tracker.log_metrics(self.final_run, row, step=event["epoch"])
        elif kind == "done":
            self.done = event

    def _best_so_far(self) -> str:
        values = [v for t in self.trials.values() for v in [t.best("val_accuracy", "max")[0]] if v is not None]
        return f", best val_accuracy {max(values):.4f}" if values else ""

    # ----------------------------------------------------------------------------------- the end
    def _finish(self, wall_seconds: float) -> BaselineResult:
        from hpo.report.evaluation import write_evaluation

        c = self.study.config
        data = self.data
        probs = np.load(self.done["probabilities"]).astype(np.float64)
        eps = 1e-12
        test_loss = float(-np.log(np.clip(probs[np.arange(len(data.y_test)), data.y_test], eps, 1)).mean())
        test_accuracy = float((probs.argmax(1) == data.y_test).mean())
        with self.tracker.finishing(self.final_run):
            with tempfile.TemporaryDirectory() as tmp:
                out = Path(tmp)
                metrics = write_evaluation(
                    np.log(np.clip(probs, eps, 1)), data.y_test, data.x_test, data.classes, out, f"{c.name} (autokeras)"
                )
                for path in sorted(out.iterdir()):
                    self.tracker.log_artifact(self.final_run, path, "evaluation")
            metrics = {
                "test_accuracy": test_accuracy,
                "test_loss": test_loss,
                **metrics,
                "parameters": self.done["parameters"],
            }
            self.tracker.log_metrics(self.final_run, metrics)
            self.tracker.log_artifact(self.final_run, self.done["model"], "model")
            self.tracker.log_dict(
                self.final_run,
                {
                    "classes": data.classes,
                    "input": "float32 (N, H, W, C) in [0, 255]: the model normalises itself",
                    "keras_backend": c.autokeras.keras_backend,
                    "load": "import autokeras, keras; keras.models.load_model('model.keras')",
                },
                "model/model_metadata.json",
            )

        trials = sorted(self.trials.values(), key=lambda t: t.number)
        best = [v for t in trials for v in [t.best(c.objective.metric, c.objective.direction)[0]] if v is not None]
        best_value = (max if c.objective.direction == "max" else min)(best) if best else None
        counts = {s: sum(t.status == s for t in trials) for s in ("completed", "stopped", "failed")}
        self.tracker.log_metrics(
            self.parent,
            {
                **{f"trials_{k}": v for k, v in counts.items()},
                "trial_epochs": sum(len(t.history) for t in trials),
                f"best_{c.objective.metric}": best_value,
                "test_accuracy": test_accuracy,
                "test_loss": test_loss,
                "search_seconds": self.search_seconds,
                "wall_seconds": wall_seconds,
            },
        )
        self.tracker.set_tags(self.parent, {"hpo.final_run": self.final_run})
        with tempfile.TemporaryDirectory() as tmp:
            board = Path(tmp) / "leaderboard.csv"
            with board.open("w", newline="") as fh:
                writer = csv.writer(fh)
                writer.writerow(
                    ["trial", "status", "epochs", f"best_{c.objective.metric}", "best_epoch", "run_id", "params"]
                )
                for t in trials:
                    value, epoch = t.best(c.objective.metric, c.objective.direction)
                    writer.writerow(
                        [
                            t.number,
                            t.status,
                            len(t.history),
                            value,
                            epoch,
                            t.run_id,
                            ", ".join(f"{k.split('/')[-1]}={v}" for k, v in t.params.items()),
                        ]
                    )
            self.tracker.log_artifact(self.parent, board)
        for name in ("events.jsonl", "worker.log"):
            self.tracker.log_artifact(self.parent, self.folder / name)
        return BaselineResult(
            self.parent,
            test_accuracy,
            test_loss,
            len(trials),
            sum(len(t.history) for t in trials),
            best_value,
            self.search_seconds,
            wall_seconds,
            self.final_run,
            int(self.done["parameters"]),
        )
