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
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol, TextIO

import numpy as np
from rich.console import Console
from rich.table import Table

from hpo.backends.base import BackendSummary, RunContext
from hpo.config.backends import BACKENDS
from hpo.errors import HpoError
from hpo.names import Metric, RunKind, RunStatus, Stage, Tag, TrialStatus

POLL_SECONDS = 0.5
# Keras Tuner's trial statuses -> hpo's
STATUS = {
    "COMPLETED": TrialStatus.COMPLETED,
    "INVALID": TrialStatus.FAILED,
    "FAILED": TrialStatus.FAILED,
    "STOPPED": TrialStatus.STOPPED,
}
COUNTED = (TrialStatus.COMPLETED, TrialStatus.STOPPED, TrialStatus.FAILED)  # how its trials end
# what the worker reports per epoch of a trial, and of the final fit
TRIAL_METRICS = (Metric.TRAIN_LOSS, Metric.TRAIN_ACCURACY, Metric.VAL_LOSS, Metric.VAL_ACCURACY, Metric.SECONDS)
FINAL_METRICS = (Metric.TRAIN_LOSS, Metric.TRAIN_ACCURACY, Metric.SECONDS)


class BaselineFailed(HpoError):
    """The AutoKeras worker failed: its log says why."""


@dataclass(kw_only=True)
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
            backend=AutoKerasBackend.name,
            run_id=self.run_id,
            test_accuracy=self.test_accuracy,
            test_loss=self.test_loss,
            trials=self.trials,
            trial_epochs=self.trial_epochs,
            best_value=self.best_val_accuracy,
            search_seconds=self.search_seconds,
            wall_seconds=self.wall_seconds,
        )

    def print_summary(self, console: Console, run: RunContext) -> None:
        c = run.study.config
        table = Table(title=f"study {run.study.name}: autokeras baseline", show_header=False, title_justify="left")
        table.add_column(style="bold")
        table.add_column()
        table.add_row("trials", f"{self.trials} ({self.trial_epochs} epochs)")
        if self.best_val_accuracy is not None:
            table.add_row(f"best {c.objective.metric}", f"{self.best_val_accuracy:.4f}")
        table.add_row(
            "test accuracy",
            f"{self.test_accuracy:.4f} (loss {self.test_loss:.4f}), {self.parameters:,} parameters",
        )
        table.add_row("final run", self.final_run_id)
        table.add_row("baseline run", self.run_id)
        table.add_row("wall time", f"{self.wall_seconds / 60:.1f} min")
        console.print(table)


@dataclass(kw_only=True)
class _Trial:
    key: str
    number: int
    run_id: str
    params: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)
    status: str = TrialStatus.RUNNING

    def best(self, metric: str, mode: str) -> tuple[float | None, int | None]:
        rows = [r for r in self.history if r.get(metric) is not None]
        if not rows:
            return None, None
        row = (max if mode == "max" else min)(rows, key=lambda r: r[metric])
        return row[metric], row["epoch"]


class _Status(Protocol):
    """Where progress goes: rich's spinner (``console.status``), or nowhere on replay."""

    def update(self, status: str) -> None: ...


class _Quiet:
    def update(self, status: str) -> None:
        pass


class AutoKerasBackend:
    """Runs the baseline for one study run; ``run()`` returns its result. Continues a killed baseline:
    Keras Tuner keeps finished trials in ``<run folder>/autokeras/``, their MLflow runs are kept, and the
    trial or final fit that was cut off is redone."""

    name = BACKENDS["autokeras"].name
    stages = BACKENDS["autokeras"].stages

    def __init__(self, run: RunContext) -> None:
        self.study, self.data, self.tracker, self.run_dir = run.study, run.data, run.tracker, run.run_dir
        self.console = run.console
        self.folder = run.run_dir.path / "autokeras"
        self.trials: dict[str, _Trial] = {}
        self._adopting = False  # replaying the events of a killed attempt (see _adopt_children)
        self.final_run: str | None = None
        self.final_params: dict[str, Any] = {}
        self.done: dict[str, Any] | None = None
        self.parent = ""
        self.search_seconds = 0.0
        self._begin, self._elapsed_before = time.time(), 0.0

    # ----------------------------------------------------------------------------------- the run
    def run(self) -> BaselineResult:
        self.folder.mkdir(parents=True, exist_ok=True)
        # its MLflow run, the seconds spent, how far the events were read, and at last its result
        state = dict(self.run_dir.state.stage_state.get(Stage.BASELINE) or {})
        if state.get("result"):
            return BaselineResult(**state["result"])
        start = time.time()
        parent = state.get("run_id")
        if parent is None:
            parent = self._start_parent()
            state = {"run_id": parent, "elapsed": 0.0}
            self.run_dir.save_stage_state(Stage.BASELINE, state)
        else:
            self.parent = parent
            self.tracker.reopen(parent, {Tag.ATTEMPTS: self.run_dir.state.attempts})
            self._adopt_children(parent, state)
        self.parent = parent
        elapsed_before = float(state.get("elapsed", 0.0))
        with self.tracker.finishing(parent):
            self._run_worker(elapsed_before, state)
            result = self._finish(time.time() - start + elapsed_before)
        self.run_dir.save_stage_state(Stage.BASELINE, {**state, "result": asdict(result)})
        self.run_dir.advance_past(self.stages)
        return result

    def _start_parent(self) -> str:
        c = self.study.config
        run_id = self.tracker.start_study(
            self.study, self.study.resolved(), name=f"{c.name}/autokeras", kind=RunKind.BASELINE, backend=self.name
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

    def _adopt_children(self, parent: str, state: dict[str, Any]) -> None:
        """After a kill: take over the trial runs, log what the dead worker wrote that the dead driver had
        not read (``state["offset"]`` on), then drop what was cut off: a trial still running (Keras Tuner
        runs it again) and an unfinished final run (the worker redoes the final fit)."""
        for old in self.tracker.child_runs(parent, RunKind.TRIAL):
            key = old.data.tags.get(Tag.TRIAL_ID, "")
            trial = _Trial(
                key=key,
                number=int(old.data.tags.get(Tag.NUMBER, 0)),
                run_id=old.info.run_id,
                params={},
                status=TrialStatus.RUNNING
                if old.info.status == RunStatus.RUNNING
                else old.data.tags.get(Tag.STATUS, TrialStatus.COMPLETED),
            )
            for m in self.tracker.metric_history(old.info.run_id, "val_accuracy"):
                trial.history.append({"epoch": m.step, "val_accuracy": m.value})
            self.trials[key] = trial
        events = self.folder / "events.jsonl"
        if events.exists():
            with events.open() as fh:
                fh.seek(state.get("offset", 0))
                self._adopting = True  # events the dead driver may have logged before it saved the offset
                try:
                    self._drain(fh, None, state)
                finally:
                    self._adopting = False
        for key, trial in list(self.trials.items()):
            if trial.status == TrialStatus.RUNNING:
                self.tracker.delete_run(trial.run_id)
                del self.trials[key]
        for old in self.tracker.child_runs(parent, RunKind.FINAL):
            self.tracker.delete_run(old.info.run_id)
        self.final_run, self.done = None, None

    def _drain(self, fh: TextIO, status: _Status | None, state: dict[str, Any]) -> int:
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

    def _run_worker(self, elapsed_before: float, state: dict[str, Any]) -> None:
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
            "block_type": c.autokeras.block_type,
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
                            self.run_dir.save_stage_state(Stage.BASELINE, state)
                        if exited:
                            break
                        time.sleep(POLL_SECONDS)
            except BaseException:
                worker.terminate()
                try:
                    worker.wait(10)
                except subprocess.TimeoutExpired:
                    worker.kill()
                self.run_dir.save_stage_state(Stage.BASELINE, state)
                raise
        self.run_dir.save_stage_state(Stage.BASELINE, state)
        if worker.returncode != 0 or self.done is None:
            tail = "".join(log.read_text(errors="replace").splitlines(keepends=True)[-15:])
            raise BaselineFailed(
                f"the AutoKeras worker exited with code {worker.returncode}; the end of its log ({log}):\n{tail}"
            )

    # ----------------------------------------------------------------------------------- events
    def _on_event(self, event: dict[str, Any], status: _Status | None) -> None:
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
                    Tag.KERAS: event["keras"],
                    Tag.AUTOKERAS: event["autokeras"],
                    Tag.KERAS_BACKEND: event["backend"],
                },
            )
        elif kind == "trial_begin":
            key = event["trial"]
            if self._adopting and key in self.trials:  # its run is the one the dead driver started for it
                self.trials[key].params = event["params"]
                return
            if key in self.trials:  # started again after a kill: the cut-off attempt goes
                self.tracker.delete_run(self.trials.pop(key).run_id)
            number = max((t.number for t in self.trials.values()), default=0) + 1
            run_id = self.tracker.start_run(
                f"autokeras-trial-{number:03d}",
                parent=self.parent,
                tags={
                    Tag.KIND: RunKind.TRIAL,
                    Tag.BACKEND: self.name,
                    Tag.TRIAL_ID: key,
                    Tag.NUMBER: str(number),
                    Tag.STATUS: TrialStatus.RUNNING,
                },
            )
            self.tracker.log_params(run_id, {f"autokeras.{k}": v for k, v in event["params"].items()})
            self.trials[key] = _Trial(key=key, number=number, run_id=run_id, params=event["params"])
            status.update(
                f"autokeras: trial {number}/{self.max_trials} "
                f"({event['params'].get('image_block_1/block_type', '?')}){self._best_so_far()}"
            )
        elif kind == "epoch":
            trial = self.trials[event["trial"]]
            if self._adopting and any(r["epoch"] == event["epoch"] for r in trial.history):
                return  # the dead driver logged it (its run's metric history holds it)
            row: dict[str, Any] = {k: event[k] for k in ("epoch", *TRIAL_METRICS) if k in event}
            trial.history.append(row)
            self.tracker.log_metrics(trial.run_id, {k: v for k, v in row.items() if k != "epoch"}, step=row["epoch"])
            status.update(
                f"autokeras: trial {trial.number}/{self.max_trials}, epoch {row['epoch']}/"
                f"{c.budget.max_epochs}{self._best_so_far()}"
            )
        elif kind == "trial_end":
            trial = self.trials[event["trial"]]
            status_now = (
                TrialStatus.STOPPED if event["stopped_by_deadline"] else STATUS.get(event["status"], TrialStatus.FAILED)
            )
            trial.status = status_now
            tags: dict[str, Any] = {Tag.STATUS: status_now, Tag.EPOCHS: len(trial.history)}
            if event["stopped_by_deadline"]:
                tags[Tag.REASON] = "stopped by the time budget"
            if event.get("message"):
                tags[Tag.ERROR] = event["message"][-500:]
            self.tracker.set_tags(trial.run_id, tags)
            self.tracker.end_run(trial.run_id, status_now.run_status())
        elif kind == "final_begin":
            self.search_seconds = self._elapsed_before + (event["time"] - self._begin)
            winner = self.trials.get(event["trial"])
            self.final_run = self.tracker.start_run(
                "final",
                parent=self.parent,
                tags={
                    Tag.KIND: RunKind.FINAL,
                    Tag.BACKEND: self.name,
                    Tag.WINNER_TRIAL: event["trial"],
                    Tag.WINNER_RUN: winner.run_id if winner else "",
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
            row = {k: event[k] for k in FINAL_METRICS if k in event}
            self.tracker.log_metrics(self.final_run, row, step=event["epoch"])
        elif kind == "done":
            self.done = event

    def _best_so_far(self) -> str:
        values = [v for t in self.trials.values() for v in [t.best(Metric.VAL_ACCURACY, "max")[0]] if v is not None]
        return f", best {Metric.VAL_ACCURACY} {max(values):.4f}" if values else ""

    # ----------------------------------------------------------------------------------- the end
    def _finish(self, wall_seconds: float) -> BaselineResult:
        from hpo.report.evaluation import write_evaluation

        c = self.study.config
        data = self.data
        done, final_run = self.done, self.final_run
        if done is None or final_run is None or not isinstance(data.x_test, np.ndarray):
            raise BaselineFailed("the AutoKeras worker ended without its final model")  # _run_worker checked
        probs = np.load(done["probabilities"]).astype(np.float64)
        eps = 1e-12
        test_loss = float(-np.log(np.clip(probs[np.arange(len(data.y_test)), data.y_test], eps, 1)).mean())
        test_accuracy = float((probs.argmax(1) == data.y_test).mean())
        with self.tracker.finishing(final_run):
            with tempfile.TemporaryDirectory() as tmp:
                out = Path(tmp)
                metrics = write_evaluation(
                    np.log(np.clip(probs, eps, 1)), data.y_test, data.x_test, data.classes, out, f"{c.name} (autokeras)"
                )
                for path in sorted(out.iterdir()):
                    self.tracker.log_artifact(final_run, path, "evaluation")
            metrics = {
                "test_accuracy": test_accuracy,
                "test_loss": test_loss,
                **metrics,
                "parameters": done["parameters"],
            }
            self.tracker.log_metrics(final_run, metrics)
            self.tracker.log_artifact(final_run, done["model"], "model")
            self.tracker.log_dict(
                final_run,
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
        counts = {s: sum(t.status == s for t in trials) for s in COUNTED}
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
        self.tracker.set_tags(self.parent, {Tag.FINAL_RUN: final_run})
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
            run_id=self.parent,
            test_accuracy=test_accuracy,
            test_loss=test_loss,
            trials=len(trials),
            trial_epochs=sum(len(t.history) for t in trials),
            best_val_accuracy=best_value,
            search_seconds=self.search_seconds,
            wall_seconds=wall_seconds,
            final_run_id=final_run,
            parameters=int(done["parameters"]),
        )
