"""Ray Tune backend: Optuna's TPE (define-by-run over the compiled space) proposes, ASHA stops weak
trials, Ray packs trials onto the CPUs/GPUs it has. The dataset is put in Ray's object store once and
every trial reads it from there."""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from hpo.config.study import VALIDATION_METRICS
from hpo.data import ImageData
from hpo.engine.asha import seed_asha
from hpo.engine.fidelity import epoch_fractions
from hpo.engine.records import TrialRecord
from hpo.engine.run_dir import StudyDir
from hpo.engine.trial_book import OUTPUT, TrialBook, classify, may_retry
from hpo.engine.trial_output import OutputCapture
from hpo.errors import HpoError
from hpo.space import SearchSpace
from hpo.study import Study
from hpo.tracking import Tracker

__all__ = ["TrialSettings", "classify", "run_search", "run_trial", "seed_asha", "start_ray"]


@dataclass(frozen=True)
class TrialSettings:
    """What every trial needs besides its sampled parameters."""

    max_epochs: int
    seed: int
    threads: int
    memory_bytes: int | None = None  # resources.memory_per_trial
    gpu_fraction: float | None = None  # a fractional gpus_per_trial: the share of the card's memory
    gpus: float = 0.0  # resources.gpus_per_trial: what each trial holds (the device follows it)
    precision: str = "auto"  # resources.precision / channels_last / compile (hpo.train.plan)
    channels_last: bool | str = "auto"
    compile: bool | str = "auto"
    costs: tuple[str, ...] = ()  # the cost objectives the study names: measured too (hpo.train.costs)
    known_plans: dict[str, dict] = field(default_factory=dict)  # plans this run measured already
    # scheduler.fidelity: data: the share of the training images each epoch trains on (hpo.engine.fidelity);
    # empty: every epoch on all of them. Only the search's trials have one: re-checks and the final retrain
    # train on all the data.
    data_fractions: tuple[float, ...] = ()


def run_trial(params: dict[str, Any], *, space: SearchSpace, data: ImageData, settings: TrialSettings) -> None:
    """The Ray Tune trainable: one trial, reporting once per epoch. Imports stay inside so that the
    driver's import of this module stays light.

    Everything the trial's process writes to stdout and stderr (C code's included) goes to the driver
    with its reports, and the rest with its error: see ``hpo.engine.trial_output``."""
    with OutputCapture() as output:
        _train_trial(params, space=space, data=data, settings=settings, output=output)


def _train_trial(
    params: dict[str, Any], *, space: SearchSpace, data: ImageData, settings: TrialSettings, output: OutputCapture
) -> None:
    import ray

    from hpo.engine.devices import assigned_device

    # First, before anything asks torch about CUDA: the device is the one Ray assigned (none: the CPU,
    # with no GPU visible; a GPU share torch cannot use: an error, not a silent CPU run).
    device = assigned_device(settings.gpus)

    from pydantic import ByteSize
    from ray import tune

    from hpo.engine.limits import memory_cap, out_of_memory_as_infeasible
    from hpo.train import PlanCache, Preferences, TrainData, plan_training, train
    from hpo.train.costs import ALWAYS_MEASURED, measure_costs

    started = time.time()  # for the orchestration-overhead accounting (benchmarks/orchestration.py)
    pid, node = os.getpid(), ray.get_runtime_context().get_node_id()
    config = space.resolve(params)

    plan_info: dict[str, Any] = {"device_tags": device.tags()}

    costs: dict[str, float] = {}  # what the network costs, measured once, sent with every epoch (hpo.train.costs)

    def report(epoch, _model) -> None:
        if not costs:
            which = {*ALWAYS_MEASURED, *settings.costs}
            costs.update(measure_costs(_model, train_data.x_train.shape[1:], plan, which))
        tune.report(
            {
                **epoch.metrics(),
                **costs,
                "epoch": epoch.epoch,
                "early_stop": epoch.early_stop,
                "trial_started": started,
                "reported_at": time.time(),
                "pid": pid,
                "node": node,
                **plan_info,
                OUTPUT: output.take(),
            }
        )

    cap = ByteSize(settings.memory_bytes).human_readable(separator=" ") if settings.memory_bytes else ""
    with (
        memory_cap(settings.memory_bytes, settings.gpu_fraction, device.device),
        out_of_memory_as_infeasible(config.batch_size, device.device, cap),
    ):
        train_data = TrainData.from_image_data(data)
        prefs = Preferences(settings.precision, settings.channels_last, settings.compile)
        plan = plan_training(
            config,
            train_data,
            device=device.device,
            threads=settings.threads,
            prefs=prefs,
            cache=PlanCache(known=settings.known_plans),
            epochs=settings.max_epochs,
        )
        plan_info.update(plan=plan.to_dict(), plan_key=plan.key, plan_tags=plan.tags())
        train(
            config,
            train_data,
            epochs=settings.max_epochs,
            seed=settings.seed,
            plan=plan,
            report=report,
            data_fractions=settings.data_fractions,
        )


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

    from hpo.engine import searcher as searchers
    from hpo.engine._private_api import retry_rule
    from hpo.engine.concurrency import ElasticLimiter, TrialDemand
    from hpo.engine.ray_callbacks import DeadlineStopper, TrialTracker, trial_error
    from hpo.engine.strategies import make_sampler, make_scheduler

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    c = study.config
    workdir = run_dir.path
    remaining = c.budget.trials - len(records)
    time_left = None if c.budget.time is None else c.budget.time - time_spent
    if deadline is not None:
        time_left = min(time_left if time_left is not None else math.inf, deadline - time.time() - DEADLINE_MARGIN)
    # whether the search's time limit is the deadline's (budget.until) rather than budget.time's
    deadline_bound = deadline is not None and (c.budget.time is None or time_left != c.budget.time - time_spent)

    metric, mode = c.objective.metric, c.objective.direction
    # A seed per run (recorded), so that runs sharing a storage do not replay each other's start-up trials.
    seed = run_dir.sampler_seed(c.sampler.seed, c.seed)
    tracker.set_tags(parent_run, {SAMPLER_SEED_TAG: seed})
    searcher = searchers.build_searcher(
        study,
        sampler=make_sampler(study, seed),
        storage=run_dir.optuna_storage,
        study_name=run_dir.optuna_study,
        run=run_dir.run_name,
        points=points,
    )
    own = searcher if isinstance(searcher, searchers.OptunaSearcher) else None  # (a benchmark's may differ)
    if own is not None and own.skipped_points and view is not None:
        n = len(own.skipped_points)
        view.note(f"{n} start point{'s' * (n != 1)} skipped: an earlier run of the shared study evaluated it")
    scheduler = make_scheduler(study, records)

    gpu_fraction = c.resources.gpus_per_trial if 0 < c.resources.gpus_per_trial < 1 else None
    memory = c.resources.memory_per_trial
    settings = TrialSettings(
        max_epochs=c.budget.max_epochs,
        seed=c.seed,
        threads=max(1, math.floor(c.resources.cpus_per_trial)),
        memory_bytes=int(memory) if memory else None,
        gpu_fraction=gpu_fraction,
        gpus=c.resources.gpus_per_trial,
        precision=c.resources.precision,
        channels_last=c.resources.channels_last,
        compile=c.resources.compile,
        costs=tuple(o.metric for o in c.objective if o.metric not in VALIDATION_METRICS),
        known_plans=run_dir.load_plans(),
        data_fractions=tuple(epoch_fractions(c.scheduler, c.budget.max_epochs)),
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
    # Concurrency follows the cluster as nodes join and leave (hpo.engine.concurrency).
    limiter = ElasticLimiter(
        searcher,
        TrialDemand.from_tune(resources),
        cap=max(1, min(c.resources.max_concurrent or remaining, remaining)),
        on_change=(lambda old, new: view.note(f"trials at once: {new} (was {old}): the cluster changed"))
        if view is not None
        else None,
    )
    fit_start = time.time()
    book = TrialBook(
        study.space,
        tracker,
        parent_run,
        records,
        c.budget.max_epochs,
        restarts=restarts,
        journal=lambda recs: run_dir.save_trials(recs, time_spent + time.time() - fit_start),
        on_change=view.trial_changed if view is not None else None,
        optuna_number=own.optuna_number if own is not None else None,
        on_plan=_plan_logger(run_dir, view),
    )
    stopper = (
        DeadlineStopper(deadline, after_search, records, book)
        if deadline is not None and after_search is not None
        else None
    )
    if remaining > 0 and (time_left is None or time_left > 0):
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(
                metric=metric,
                mode=mode,
                search_alg=limiter,
                scheduler=scheduler,
                num_samples=remaining,
                time_budget_s=time_left,
                reuse_actors=True,
            ),
            run_config=tune.RunConfig(
                name=f"search-{run_dir.state.attempts}",
                storage_path=str((workdir / "ray").resolve()),
                callbacks=[TrialTracker(book)],
                verbose=0,
                failure_config=tune.FailureConfig(max_failures=c.failures.retries),
                stop=stopper,
            ),
        )
        # A trial that ran out of memory is infeasible at once: the same configuration runs out again.
        with retry_rule(lambda trial: may_retry(trial_error(trial))):
            _fit(tuner, view)
    fit_end = time.time()
    if book.stop_reason and view is not None:
        view.note(f"the search stopped early: {book.stop_reason}")
    if own is not None:  # trials the time budget or the deadline ended: Tune told the searcher nothing
        own.close(searchers.DEADLINE if book.stop_reason or deadline_bound else searchers.BUDGET)
    book.close_unfinished()
    run_dir.save_trials(records, time_spent + fit_end - fit_start)
    stats = {
        "slots": limiter.peak,  # the most trials allowed at once; slots_history: (time, slots) at each change
        "slots_history": limiter.history,
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
SAMPLER_SEED_TAG = "hpo.sampler_seed"  # on the study run: the seed this run's sampler had


def _fit(tuner, view) -> None:
    if view is None:
        tuner.fit()
        return
    with view:
        tuner.fit()


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
    kwargs: dict[str, Any] = {
        "include_dashboard": False,
        "log_to_driver": False,
        "logging_level": "ERROR",
        "configure_logging": True,
    }
    if address:
        ray.init(address=address, **kwargs)
    else:
        ray.init(num_cpus=num_cpus, **kwargs)
