"""Ray Tune backend: Optuna's TPE (define-by-run over the compiled space) proposes, ASHA stops weak
trials, Ray packs trials onto the CPUs/GPUs it has. The dataset is put in Ray's object store once and
every trial reads it from there."""

from __future__ import annotations

import functools
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hpo.backends.records import TrialRecord
from hpo.config import Study
from hpo.data import ImageData
from hpo.space import SearchSpace, define_by_run
from hpo.tracking import Tracker, flatten


@dataclass(frozen=True)
class TrialSettings:
    """What every trial needs besides its sampled parameters."""

    max_epochs: int
    seed: int
    threads: int


def run_trial(params: dict[str, Any], *, space: SearchSpace, data: ImageData, settings: TrialSettings) -> None:
    """The Ray Tune trainable: one trial, reporting once per epoch. Imports stay inside so that the
    driver's import of this module stays light."""
    from ray import tune

    from hpo.train import TrainData, train

    started = time.time()  # for the orchestration-overhead accounting (benchmarks/orchestration.py)
    config = space.resolve(params)
    train_data = TrainData.from_arrays(data.x_train, data.y_train, data.x_val, data.y_val,
                                       data.num_classes, data.mean, data.std)

    def report(epoch, _model) -> None:
        tune.report({**epoch.metrics(), "epoch": epoch.epoch, "early_stop": epoch.early_stop,
                     "trial_started": started, "reported_at": time.time()})

    train(config, train_data, epochs=settings.max_epochs, seed=settings.seed, threads=settings.threads,
          report=report)


def _tune_callback_class():
    from ray import tune

    class TrialTracker(tune.Callback):
        """Runs in the driver: records every trial, mirrors it to MLflow, feeds the live view."""

        def __init__(self, space: SearchSpace, tracker: Tracker, parent_run: str, records: list[TrialRecord],
                     max_epochs: int, on_change: Callable[[TrialRecord], None] | None = None) -> None:
            self.space, self.tracker, self.parent_run = space, tracker, parent_run
            self.records, self.max_epochs = records, max_epochs
            self.on_change = on_change or _ignore
            self.by_id: dict[str, TrialRecord] = {}

        def __getstate__(self) -> dict:
            # Ray pickles callbacks into its experiment state; the terminal view holds locks and stays here.
            return {**self.__dict__, "on_change": _ignore}

        def on_trial_start(self, iteration, trials, trial, **info):
            if trial.trial_id in self.by_id:  # restarted after a failure: same record, same run
                self.by_id[trial.trial_id].status = "running"
                return
            params = dict(trial.config)
            config = self.space.resolve(params)
            record = TrialRecord(trial.trial_id, len(self.records) + 1, params, config)
            record.run_id = self.tracker.start_run(
                f"trial-{record.number:03d}", parent=self.parent_run,
                tags={"hpo.kind": "trial", "hpo.trial_id": trial.trial_id, "hpo.status": "running"})
            self.tracker.log_params(record.run_id, flatten(config.model_dump(mode="json")))
            self.records.append(record)
            self.by_id[trial.trial_id] = record
            self.on_change(record)

        def on_trial_result(self, iteration, trials, trial, result, **info):
            record = self.by_id[trial.trial_id]
            row = {k: result[k] for k in ("epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy",
                                          "lr", "seconds", "images_per_second", "early_stop") if k in result}
            record.history.append(row)
            record.worker_started = result.get("trial_started", record.worker_started)
            record.worker_last = result.get("reported_at", record.worker_last)
            metrics = {k: v for k, v in row.items() if k not in ("epoch", "early_stop")}
            self.tracker.log_metrics(record.run_id, metrics, step=row["epoch"])

        def on_trial_complete(self, iteration, trials, trial, **info):
            record = self.by_id.get(trial.trial_id)
            if record is None:
                return
            last = record.history[-1] if record.history else {}
            if last.get("early_stop"):
                record.status, reason = "early_stopped", f"early stopping at epoch {record.epochs}"
            elif record.epochs < self.max_epochs:
                record.status, reason = "pruned", f"pruned by ASHA at epoch {record.epochs}"
            else:
                record.status, reason = "completed", f"completed {record.epochs} epochs"
            self.end(record, reason, "FINISHED" if record.status != "pruned" else "KILLED")

        def on_trial_error(self, iteration, trials, trial, **info):
            record = self.by_id.get(trial.trial_id)
            if record is None:
                return
            record.status = "failed"
            record.error = _error_text(trial)
            self.end(record, f"failed: {record.error}", "FAILED")

        def end(self, record: TrialRecord, reason: str, status: str) -> None:
            record.ended = time.time()
            tags = {"hpo.status": record.status, "hpo.reason": reason, "hpo.epochs": record.epochs}
            if record.status == "pruned":
                tags["hpo.pruned_at_epoch"] = record.epochs
            if record.error:
                tags["hpo.error"] = record.error
            self.tracker.set_tags(record.run_id, tags)
            self.tracker.end_run(record.run_id, status)
            self.on_change(record)

    return TrialTracker


def _ignore(record: TrialRecord) -> None:
    return None


def _error_text(trial) -> str:
    try:
        error = trial.get_pickled_error() or trial.get_error()
    except Exception:  # noqa: BLE001 - reading the error must never break the search
        error = None
    if error is not None:
        cause = getattr(error, "cause", None) or error
        return f"{type(cause).__name__}: {cause}".splitlines()[0][:500]
    if trial.error_file and Path(trial.error_file).is_file():
        lines = Path(trial.error_file).read_text().strip().splitlines()
        return (lines[-1] if lines else "unknown error")[:500]
    return "unknown error"


def run_search(study: Study, data: ImageData, tracker: Tracker, parent_run: str, workdir: Path,
               records: list[TrialRecord], view=None, points: list[dict] | None = None) -> list[TrialRecord]:
    """Run the search; fills ``records`` (also on interruption) and returns them. ``points`` are flat
    Optuna parameter sets to evaluate first (enqueued in the Optuna study), e.g. to warm-start or to
    compare schedulers on identical configurations."""
    import optuna
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search.optuna import OptunaSearch

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    c = study.config
    cluster_cpus = ray.cluster_resources().get("CPU", 1.0)
    cluster_gpus = ray.cluster_resources().get("GPU", 0.0)
    concurrency = max(1, math.floor(cluster_cpus / c.resources.cpus_per_trial))
    if c.resources.gpus_per_trial > 0:
        concurrency = min(concurrency, max(1, math.floor(cluster_gpus / c.resources.gpus_per_trial)))
    concurrency = min(concurrency, c.resources.max_concurrent or concurrency, c.budget.trials)

    metric, mode = c.objective.metric, c.objective.direction
    sampler = optuna.samplers.TPESampler(seed=c.seed, n_startup_trials=min(10, max(2, c.budget.trials // 3)))
    storage = optuna.storages.RDBStorage(f"sqlite:///{(workdir / 'optuna.db').resolve()}")
    searcher = OptunaSearch(functools.partial(define_by_run, space=study.space), metric=metric, mode=mode,
                            sampler=sampler, storage=storage, study_name=study.name,
                            points_to_evaluate=points or None)
    if c.scheduler.type == "asha":
        scheduler = ASHAScheduler(time_attr="training_iteration", max_t=c.budget.max_epochs,
                                  grace_period=c.scheduler.grace_period,
                                  reduction_factor=c.scheduler.reduction_factor)
    else:
        scheduler = FIFOScheduler()

    settings = TrialSettings(max_epochs=c.budget.max_epochs, seed=c.seed,
                             threads=max(1, math.floor(c.resources.cpus_per_trial)))
    put_start = time.perf_counter()
    trainable = tune.with_parameters(run_trial, space=study.space, data=data, settings=settings)  # ray.put once
    put_seconds = time.perf_counter() - put_start
    trainable = tune.with_resources(trainable, {"cpu": c.resources.cpus_per_trial,
                                                "gpu": c.resources.gpus_per_trial})
    callback = _tune_callback_class()(study.space, tracker, parent_run, records, c.budget.max_epochs,
                                      on_change=view.trial_changed if view is not None else None)
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(metric=metric, mode=mode, search_alg=searcher, scheduler=scheduler,
                                    num_samples=c.budget.trials, max_concurrent_trials=concurrency,
                                    time_budget_s=c.budget.time, reuse_actors=True),
        run_config=tune.RunConfig(name="search", storage_path=str((workdir / "ray").resolve()),
                                  callbacks=[callback], verbose=0,
                                  failure_config=tune.FailureConfig(max_failures=0)),
    )
    fit_start = time.time()
    if view is not None:
        with view:
            tuner.fit()
    else:
        tuner.fit()
    fit_end = time.time()
    for record in records:  # trials still running when the time budget ran out get no completion event
        if record.status == "running":
            record.status = "stopped"
            callback.end(record, f"stopped at epoch {record.epochs}: the search's time budget ran out", "KILLED")
    stats = {"slots": concurrency, "data_put_seconds": put_seconds, "fit_start": fit_start, "fit_end": fit_end,
             "tracking_seconds": tracker.busy_seconds,
             "trials": [{"number": r.number, "status": r.status, "epochs": r.epochs,
                         "compute_seconds": r.compute_seconds, "worker_started": r.worker_started,
                         "worker_last": r.worker_last, "driver_started": r.started, "driver_ended": r.ended}
                        for r in records]}
    (workdir / "search_stats.json").write_text(json.dumps(stats, indent=1))
    return records


def start_ray(address: str | None, num_cpus: int | None = None) -> None:
    """Connect to ``address`` (or $RAY_ADDRESS), else start Ray in this process's machine."""
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")  # no CSV/JSON/TensorBoard per trial
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # the new reporter prints banners even at verbose=0
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    kwargs: dict[str, Any] = dict(include_dashboard=False, log_to_driver=False, logging_level="ERROR",
                                  configure_logging=True)
    if address:
        ray.init(address=address, **kwargs)
    else:
        ray.init(num_cpus=num_cpus, **kwargs)
