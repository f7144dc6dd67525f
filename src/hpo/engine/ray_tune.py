"""Ray Tune backend: Optuna's TPE (define-by-run over the compiled space) proposes, ASHA stops weak
trials, Ray packs trials onto the CPUs/GPUs it has. The dataset is put in Ray's object store once and
every trial reads it from there."""

from __future__ import annotations

import functools
import json
import math
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hpo.data import ImageData
from hpo.engine.records import TrialRecord
from hpo.engine.run_dir import StudyDir
from hpo.errors import HpoError
from hpo.space import SearchSpace, define_by_run
from hpo.study import Study
from hpo.tracking import Tracker, flatten


@dataclass(frozen=True)
class TrialSettings:
    """What every trial needs besides its sampled parameters."""

    max_epochs: int
    seed: int
    threads: int
    memory_bytes: int | None = None  # resources.memory_per_trial
    gpu_fraction: float | None = None  # a fractional gpus_per_trial: the share of the card's memory
    precision: str = "auto"  # resources.precision / channels_last / compile (hpo.train.plan)
    channels_last: bool | str = "auto"
    compile: bool | str = "auto"
    known_plans: dict[str, dict] = field(default_factory=dict)  # plans this run measured already


def run_trial(params: dict[str, Any], *, space: SearchSpace, data: ImageData, settings: TrialSettings) -> None:
    """The Ray Tune trainable: one trial, reporting once per epoch. Imports stay inside so that the
    driver's import of this module stays light."""
    import ray
    from pydantic import ByteSize
    from ray import tune

    from hpo.engine.limits import TrialOutOfMemory, is_out_of_memory, memory_cap
    from hpo.train import PlanCache, Preferences, TrainData, plan_training, train
    from hpo.train.loop import pick_device

    started = time.time()  # for the orchestration-overhead accounting (benchmarks/orchestration.py)
    pid, node = os.getpid(), ray.get_runtime_context().get_node_id()
    config = space.resolve(params)
    device = pick_device().type

    plan_info: dict[str, Any] = {}

    def report(epoch, _model) -> None:
        tune.report(
            {
                **epoch.metrics(),
                "epoch": epoch.epoch,
                "early_stop": epoch.early_stop,
                "trial_started": started,
                "reported_at": time.time(),
                "pid": pid,
                "node": node,
                **plan_info,
            }
        )

    with memory_cap(settings.memory_bytes, settings.gpu_fraction, device):
        try:
            train_data = TrainData.from_arrays(
                data.x_train, data.y_train, data.x_val, data.y_val, data.num_classes, data.mean, data.std
            )
            prefs = Preferences(settings.precision, settings.channels_last, settings.compile)
            plan = plan_training(
                config,
                train_data,
                device=device,
                threads=settings.threads,
                prefs=prefs,
                cache=PlanCache(known=settings.known_plans),
                epochs=settings.max_epochs,
            )
            plan_info.update(plan=plan.to_dict(), plan_key=plan.key, plan_tags=plan.tags())
            train(config, train_data, epochs=settings.max_epochs, seed=settings.seed, plan=plan, report=report)
        except (RuntimeError, MemoryError) as exc:
            if not is_out_of_memory(exc):
                raise
            cap = (
                f", capped at {ByteSize(settings.memory_bytes).human_readable(separator=' ')}"
                if settings.memory_bytes
                else ""
            )
            detail = str(exc).strip().splitlines()[0][-200:] if str(exc).strip() else type(exc).__name__
            raise TrialOutOfMemory(
                f"out of memory with batch size {config.batch_size} on {device}{cap} ({detail})"
            ) from None


def _tune_callback_class():
    from ray import tune

    class TrialTracker(tune.Callback):
        """Runs in the driver: records every trial, mirrors it to MLflow, journals it to disk (for a
        restart after a crash) and feeds the live view.

        ``restarts`` are trials an earlier, killed attempt left unfinished; re-run with the same
        parameters, each gets its old number back. One MLflow run per trial number: an attempt that is
        cut off (crash, or a retry after an error) has its partial run deleted and a new one started."""

        def __init__(
            self,
            space: SearchSpace,
            tracker: Tracker,
            parent_run: str,
            records: list[TrialRecord],
            max_epochs: int,
            *,
            restarts: list[TrialRecord] | None = None,
            journal: Callable[[list[TrialRecord]], None] | None = None,
            on_change: Callable[[TrialRecord], None] | None = None,
            searcher: Any = None,
            on_plan: Callable[[TrialRecord, str], None] | None = None,
        ) -> None:
            self.space, self.tracker, self.parent_run = space, tracker, parent_run
            self.records, self.max_epochs = records, max_epochs
            self.restarts = list(restarts or [])
            self.journal = journal or _ignore
            self.on_change = on_change or _ignore
            self.searcher = searcher
            self.on_plan = on_plan or _ignore_plan
            self.by_id: dict[str, TrialRecord] = {}
            self.stop_reason: str | None = None  # set when the search as a whole is stopped early
            self.next_number = max((r.number for r in [*records, *self.restarts]), default=0) + 1

        def __getstate__(self) -> dict:
            # Ray pickles callbacks into its experiment state; the view, the journal and the searcher stay here.
            return {
                **self.__dict__,
                "on_change": _ignore,
                "journal": _ignore,
                "searcher": None,
                "on_plan": _ignore_plan,
            }

        def on_trial_start(self, iteration, trials, trial, **info):
            if trial.trial_id in self.by_id:  # started again by the retry policy (see on_trial_recover)
                record = self.by_id[trial.trial_id]
                record.status = "running"
                self.changed(record)
                return
            params = dict(trial.config)
            record = TrialRecord(
                trial.trial_id,
                self._number_for(params),
                params,
                self.space.resolve(params),
                optuna_number=self._optuna_number(trial.trial_id),
            )
            record.run_id = self._start_run(record)
            self.records.append(record)
            self.by_id[trial.trial_id] = record
            self.changed(record)

        def on_trial_result(self, iteration, trials, trial, result, **info):
            record = self.by_id[trial.trial_id]
            row = {
                k: result[k]
                for k in (
                    "epoch",
                    "train_loss",
                    "train_accuracy",
                    "val_loss",
                    "val_accuracy",
                    "lr",
                    "seconds",
                    "images_per_second",
                    "early_stop",
                )
                if k in result
            }
            record.history.append(row)
            record.worker_started = result.get("trial_started", record.worker_started)
            record.worker_last = result.get("reported_at", record.worker_last)
            record.worker_pid = result.get("pid", record.worker_pid)
            if result.get("node") and result["node"] != record.node:  # where it runs, on a cluster
                record.node = result["node"]
                self.tracker.set_tags(record.run_id, {"hpo.node": record.node})
            if result.get("plan") and record.plan is None:  # how it trains: precision, layout, threads
                record.plan = dict(result["plan"])
                self.tracker.set_tags(record.run_id, result.get("plan_tags") or {})
                self.on_plan(record, result.get("plan_key", ""))
            metrics = {k: v for k, v in row.items() if k not in ("epoch", "early_stop")}
            self.tracker.log_metrics(record.run_id, metrics, step=row["epoch"])
            self.changed(record)

        def on_trial_complete(self, iteration, trials, trial, **info):
            record = self.by_id.get(trial.trial_id)
            if record is None:
                return
            record.status, reason = classify(record, self.max_epochs)
            if self.stop_reason and record.status == "pruned":
                record.status, reason = "stopped", f"stopped at epoch {record.epochs}: {self.stop_reason}"
            self.end(record, reason)

        def on_trial_recover(self, iteration, trials, trial, **info):
            record = self.by_id.get(trial.trial_id)
            if record is None:
                return
            error = _error_text(trial)
            self.tracker.delete_run(record.run_id)
            record.retry_errors.append(error)
            record.attempts += 1
            record.history.clear()
            record.status = "retrying"
            record.run_id = self._start_run(record)
            self.changed(record)

        def on_trial_error(self, iteration, trials, trial, **info):
            record = self.by_id.get(trial.trial_id)
            if record is None:
                return
            record.error = _error_text(trial)
            record.status = "infeasible" if record.error.startswith("TrialOutOfMemory") else "failed"
            self.end(record, f"{record.status}: {record.error}")

        def end(self, record: TrialRecord, reason: str) -> None:
            record.ended = time.time()
            tags = {"hpo.status": record.status, "hpo.reason": reason, "hpo.epochs": record.epochs}
            if record.status == "pruned":
                tags["hpo.pruned_at_epoch"] = record.epochs
            if record.error:
                tags["hpo.error"] = record.error
            self.tracker.set_tags(record.run_id, tags)
            self.tracker.end_run(record.run_id, RUN_STATUS[record.status])
            self.changed(record)

        def changed(self, record: TrialRecord) -> None:
            self.journal(self.records)
            self.on_change(record)

        def _start_run(self, record: TrialRecord) -> str:
            tags = {
                "hpo.kind": "trial",
                "hpo.trial_id": record.trial_id,
                "hpo.status": "running",
                "hpo.trial_key": f"{self.parent_run}:{record.number}",
                "hpo.attempt": record.attempts,
            }
            if record.retry_errors:
                tags["hpo.retry_errors"] = " | ".join(record.retry_errors)
            run_id = self.tracker.start_run(f"trial-{record.number:03d}", parent=self.parent_run, tags=tags)
            self.tracker.log_params(run_id, flatten(record.config.model_dump(mode="json")))
            return run_id

        def _number_for(self, params: dict[str, Any]) -> int:
            for i, cut_off in enumerate(self.restarts):
                if cut_off.params == params:
                    self.tracker.delete_run(cut_off.run_id)  # the cut-off attempt: replaced by this one
                    return self.restarts.pop(i).number
            number, self.next_number = self.next_number, self.next_number + 1
            return number

        def _optuna_number(self, trial_id: str) -> int | None:
            ot_trial = getattr(self.searcher, "_ot_trials", {}).get(trial_id)
            return None if ot_trial is None else ot_trial.number

    return TrialTracker


RUN_STATUS = {
    "completed": "FINISHED",
    "early_stopped": "FINISHED",
    "pruned": "KILLED",
    "stopped": "KILLED",
    "failed": "FAILED",
    "infeasible": "FAILED",
}


def _plan_logger(run_dir: StudyDir, view) -> Callable[[TrialRecord, str], None]:
    """Keeps each plan a trial reports in the run folder (a resumed run reuses it) and shows the plan
    once per model family."""
    shown: set[str] = set()

    def on_plan(record: TrialRecord, key: str) -> None:
        if key and key not in run_dir.load_plans():
            run_dir.save_plan(key, record.plan or {})
        family = record.config.model.name
        if family not in shown and view is not None and record.plan:
            shown.add(family)
            from hpo.train.plan import ExecutionPlan

            view.note(f"plan for {family} (trial {record.number}): {ExecutionPlan.from_dict(record.plan).describe()}")

    return on_plan


def classify(record: TrialRecord, max_epochs: int) -> tuple[str, str]:
    """(status, reason) of a trial that ended without an error."""
    last = record.history[-1] if record.history else {}
    if last.get("early_stop"):
        return "early_stopped", f"early stopping at epoch {record.epochs}"
    if record.epochs < max_epochs:
        return "pruned", f"pruned by ASHA at epoch {record.epochs}"
    return "completed", f"completed {record.epochs} epochs"


def _ignore(record: TrialRecord) -> None:
    return None


def _ignore_plan(record: TrialRecord, key: str) -> None:
    return None


def _error_text(trial) -> str:
    """``"TypeName: message"`` (first line, module path dropped) of the error that ended ``trial``."""
    text = _raw_error_text(trial)
    if "worker process has died" in text or "actor died unexpectedly" in text:
        return (
            "TrialProcessDied: the trial's process died (killed by a signal, by the kernel's OOM killer, "
            "or crashed in native code)"
        )
    return re.sub(r"^(?:[A-Za-z_][\w]*\.)+(?=\w+(?::|$))", "", text)


def _raw_error_text(trial) -> str:
    try:
        error = trial.get_pickled_error() or trial.get_error()
    except Exception:
        error = None
    if error is not None:
        cause = getattr(error, "cause", None) or error
        return f"{type(cause).__name__}: {cause}".splitlines()[0][:500]
    if trial.error_file and Path(trial.error_file).is_file():
        lines = Path(trial.error_file).read_text().strip().splitlines()
        return (lines[-1] if lines else "unknown error")[:500]
    return "unknown error"


def run_search(
    study: Study,
    data: ImageData,
    tracker: Tracker,
    parent_run: str,
    run_dir: StudyDir,
    records: list[TrialRecord],
    view=None,
    points: list[dict] | None = None,
    restarts: list[TrialRecord] | None = None,
    time_spent: float = 0.0,
    deadline: float | None = None,
    after_search: Callable[[list[TrialRecord]], float | None] | None = None,
) -> list[TrialRecord]:
    """Run the search; fills ``records`` (also on interruption) and returns them. ``points`` are flat
    Optuna parameter sets to evaluate first (enqueued in the Optuna study), e.g. to warm-start or to
    compare schedulers on identical configurations.

    On a resumed run, ``records`` holds the trials an earlier attempt finished (kept, not re-run),
    ``restarts`` those it left unfinished (their parameters are already enqueued in the sampler), and
    ``time_spent`` the search seconds already used.

    With a ``deadline`` (epoch seconds), the search stops once ``after_search(records)`` (an estimate of the
    seconds the later stages need) no longer fits before it; 30 s before it at the latest."""
    import optuna
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search.optuna import OptunaSearch

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    c = study.config
    workdir = run_dir.path
    remaining = c.budget.trials - len(records)
    time_left = None if c.budget.time is None else c.budget.time - time_spent
    if deadline is not None:
        time_left = min(time_left if time_left is not None else math.inf, deadline - time.time() - DEADLINE_MARGIN)
    cluster_cpus = ray.cluster_resources().get("CPU", 1.0)
    cluster_gpus = ray.cluster_resources().get("GPU", 0.0)
    concurrency = max(1, math.floor(cluster_cpus / c.resources.cpus_per_trial))
    if c.resources.gpus_per_trial > 0:
        concurrency = min(concurrency, max(1, math.floor(cluster_gpus / c.resources.gpus_per_trial)))
    concurrency = max(1, min(concurrency, c.resources.max_concurrent or concurrency, remaining))

    metric, mode = c.objective.metric, c.objective.direction
    sampler = optuna.samplers.TPESampler(seed=c.seed, n_startup_trials=min(10, max(2, c.budget.trials // 3)))
    storage = optuna.storages.RDBStorage(run_dir.optuna_storage)
    searcher = OptunaSearch(
        functools.partial(define_by_run, space=study.space),
        metric=metric,
        mode=mode,
        sampler=sampler,
        storage=storage,
        study_name=run_dir.optuna_study,
        points_to_evaluate=points or None,
    )
    if c.scheduler.type == "asha":
        scheduler = ASHAScheduler(
            time_attr="training_iteration",
            max_t=c.budget.max_epochs,
            grace_period=c.scheduler.grace_period,
            reduction_factor=c.scheduler.reduction_factor,
        )
        seed_asha(scheduler, records, metric, mode)
    else:
        scheduler = FIFOScheduler()

    gpu_fraction = c.resources.gpus_per_trial if 0 < c.resources.gpus_per_trial < 1 else None
    memory = c.resources.memory_per_trial
    settings = TrialSettings(
        max_epochs=c.budget.max_epochs,
        seed=c.seed,
        threads=max(1, math.floor(c.resources.cpus_per_trial)),
        memory_bytes=int(memory) if memory else None,
        gpu_fraction=gpu_fraction,
        precision=c.resources.precision,
        channels_last=c.resources.channels_last,
        compile=c.resources.compile,
        known_plans=run_dir.load_plans(),
    )
    put_start = time.perf_counter()
    trainable = tune.with_parameters(run_trial, space=study.space, data=data, settings=settings)  # ray.put once
    put_seconds = time.perf_counter() - put_start
    resources = {"cpu": c.resources.cpus_per_trial, "gpu": c.resources.gpus_per_trial}
    if memory:
        resources["memory"] = int(memory)
        largest = max((n["Resources"].get("memory", 0) for n in ray.nodes() if n.get("Alive")), default=0)
        if int(memory) > largest:  # Ray would leave every trial pending, silently
            raise HpoError(
                f"resources.memory_per_trial is {memory.human_readable(separator=' ')}, but the largest node of the "
                f"Ray cluster offers {largest / 2**30:.1f} GiB to tasks: lower it"
            )
    trainable = tune.with_resources(trainable, resources)
    fit_start = time.time()
    callback = _tune_callback_class()(
        study.space,
        tracker,
        parent_run,
        records,
        c.budget.max_epochs,
        restarts=restarts,
        journal=lambda recs: run_dir.save_trials(recs, time_spent + time.time() - fit_start),
        on_change=view.trial_changed if view is not None else None,
        searcher=searcher,
        on_plan=_plan_logger(run_dir, view),
    )
    stopper = None
    if deadline is not None and after_search is not None:
        stopper = _deadline_stopper_class()(deadline, after_search, records, callback)
    if remaining > 0 and (time_left is None or time_left > 0):
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(
                metric=metric,
                mode=mode,
                search_alg=searcher,
                scheduler=scheduler,
                num_samples=remaining,
                max_concurrent_trials=concurrency,
                time_budget_s=time_left,
                reuse_actors=True,
            ),
            run_config=tune.RunConfig(
                name=f"search-{run_dir.state.attempts}",
                storage_path=str((workdir / "ray").resolve()),
                callbacks=[callback],
                verbose=0,
                failure_config=tune.FailureConfig(max_failures=c.failures.retries),
                stop=stopper,
            ),
        )
        _fit(tuner, view)
    fit_end = time.time()
    for record in records:  # trials still running when the time budget ran out get no completion event
        if record.status in ("running", "retrying"):
            record.status = "stopped"
            reason = callback.stop_reason or "the search's time budget ran out"
            callback.end(record, f"stopped at epoch {record.epochs}: {reason}")
    for record in callback.restarts:  # cut off by a crash, and no budget was left to run them again
        records.append(record)
        record.status = "stopped"
        callback.end(
            record,
            f"stopped at epoch {record.epochs}: cut off by a crash, and the search's budget had no room to restart it",
        )
    records.sort(key=lambda r: r.number)
    run_dir.save_trials(records, time_spent + fit_end - fit_start)
    stats = {
        "slots": concurrency,
        "data_put_seconds": put_seconds,
        "fit_start": fit_start,
        "fit_end": fit_end,
        "tracking_seconds": tracker.busy_seconds,
        "trials": [
            {
                "number": r.number,
                "status": r.status,
                "epochs": r.epochs,
                "compute_seconds": r.compute_seconds,
                "worker_started": r.worker_started,
                "worker_last": r.worker_last,
                "driver_started": r.started,
                "driver_ended": r.ended,
            }
            for r in records
        ],
    }
    (workdir / "search_stats.json").write_text(json.dumps(stats, indent=1))
    return records


DEADLINE_MARGIN = 30.0  # seconds the search leaves before a deadline even without an estimate


def _deadline_stopper_class():
    from ray import tune

    class DeadlineStopper(tune.Stopper):
        """Ends the search when what must follow it (re-check, final stage) would no longer finish before
        the deadline, as estimated from the epochs seen so far."""

        def __init__(self, deadline: float, after_search, records: list[TrialRecord], callback) -> None:
            self.deadline, self.after_search, self.records, self.callback = deadline, after_search, records, callback

        def __getstate__(self) -> dict:
            return {"deadline": self.deadline}  # Ray pickles stoppers into its state; the estimate stays here

        def __call__(self, trial_id: str, result: dict) -> bool:
            return False

        def stop_all(self) -> bool:
            need = self.after_search(self.records) if self.after_search else None
            if need is None or time.time() + need < self.deadline:
                return False
            self.callback.stop_reason = (
                f"the deadline is {time.strftime('%H:%M', time.localtime(self.deadline))} "
                f"and the final stage needs about {need / 60:.1f} min"
            )
            return True

    return DeadlineStopper


def _fit(tuner, view) -> None:
    if view is None:
        tuner.fit()
        return
    with view:
        tuner.fit()


def seed_asha(scheduler, records: list[TrialRecord], metric: str, mode: str) -> None:
    """Give a fresh ASHA the rung results of trials finished before a crash, so that a resumed search
    stops trials as the uninterrupted one would have. ASHA keeps, per rung, the metric (sign-adjusted)
    each trial had when it reached the rung's epoch."""
    sign = 1.0 if mode == "max" else -1.0
    for bracket in scheduler._brackets:
        for milestone, recorded in bracket._rungs:
            for record in records:
                epoch = int(milestone)
                if len(record.history) >= epoch and record.history[epoch - 1].get(metric) is not None:
                    recorded[f"resumed-{record.number}"] = sign * record.history[epoch - 1][metric]


def start_ray(address: str | None, num_cpus: int | None = None) -> None:
    """Connect to ``address`` (or $RAY_ADDRESS), else start Ray in this process's machine."""
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")  # no CSV/JSON/TensorBoard per trial
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # the new reporter prints banners even at verbose=0
    # Ctrl-C must interrupt the run (resumable later), not end the search quietly and go on to finalize.
    os.environ.setdefault("TUNE_DISABLE_SIGINT_HANDLER", "1")
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    kwargs: dict[str, Any] = dict(
        include_dashboard=False, log_to_driver=False, logging_level="ERROR", configure_logging=True
    )
    if address:
        ray.init(address=address, **kwargs)
    else:
        ray.init(num_cpus=num_cpus, **kwargs)
