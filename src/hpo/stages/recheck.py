"""Winner re-check: ASHA ranks trials on one noisy run each, often cut short. Re-run the top-k
configurations at the full epoch budget with fresh seeds, as Ray tasks, and pick by the mean of their
best validation metric; the spread across seeds is recorded.

Each run is a trial in all but name: a Ray task with a trial's resources, on whichever node Ray places it
(tagged ``hpo.node``), training on the device Ray assigned it (``hpo.engine.devices``) under the same memory
caps, and running out of memory is classed as for trials (``TrialOutOfMemory``). A run
that raises (out of memory, a loss gone NaN, anything) is recorded, its tracker run failed with the
reason, and the others go on; a candidate none of whose runs finished is out, and when every run failed
the search's winner stands, with a note saying so."""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hpo.config import TrialConfig
from hpo.config.study import Resources
from hpo.data import ImageData
from hpo.engine.pareto import choose_pareto
from hpo.engine.records import TrialRecord
from hpo.engine.trial_book import error_status, error_text
from hpo.names import RunKind, RunStatus, Tag
from hpo.study import Study
from hpo.tracking import Tracker, flatten


@dataclass
class Candidate:
    record: TrialRecord
    histories: dict[int, list[dict]] = field(default_factory=dict)  # seed -> per-epoch rows
    failures: dict[int, str] = field(default_factory=dict)  # seed -> "TypeName: message" of a run that raised

    def bests(self, metric: str, mode: str) -> list[float]:
        pick = max if mode == "max" else min
        return [pick(r[metric] for r in rows) for rows in self.histories.values() if rows]

    def mean_curve(self, metric: str) -> np.ndarray:
        length = min(len(rows) for rows in self.histories.values())
        return np.mean([[r[metric] for r in rows[:length]] for rows in self.histories.values()], axis=0)

    @property
    def finished(self) -> bool:
        """At least one of its runs finished with a result: it stays in the comparison."""
        return any(self.histories.values())


@dataclass
class RecheckResult:
    winner: TrialRecord
    best_epoch: int
    mean: float
    std: float
    candidates: list[Candidate]
    note: str = ""  # what failed, in words (empty when every run finished)
    fell_back: bool = False  # every run failed: the winner is the search's, not a re-checked one


def _train_task(
    config_json: dict, data: ImageData, epochs: int, seed: int, threads: int, resources: Resources
) -> dict[str, Any]:
    from hpo.engine.devices import assigned_device

    # First, before anything asks torch about CUDA (see hpo.engine.ray_tune.run_trial).
    device = assigned_device(resources.gpus_per_trial, who="re-check run")

    import ray

    from hpo.engine.limits import memory_cap, out_of_memory_as_infeasible
    from hpo.train import Preferences, TrainData, train

    config = TrialConfig.model_validate(config_json)
    memory = resources.memory_per_trial
    gpus = resources.gpus_per_trial
    cap = memory.human_readable(separator=" ") if memory else ""
    with (
        memory_cap(int(memory) if memory else None, gpus if 0 < gpus < 1 else None, device.device),
        out_of_memory_as_infeasible(config.batch_size, device.device, cap),
    ):
        train_data = TrainData.from_image_data(data)
        result = train(
            config,
            train_data,
            epochs=epochs,
            seed=seed,
            device=device.device,
            threads=threads,
            prefs=Preferences.from_resources(resources),
        )
    return {
        "history": [{"epoch": e.epoch, **e.metrics()} for e in result.history],
        "tags": {**result.plan.tags(), **device.tags(), Tag.NODE.value: ray.get_runtime_context().get_node_id()},
    }


def recheck(
    study: Study, data: ImageData, records: list[TrialRecord], tracker: Tracker, parent_run: str
) -> RecheckResult | None:
    import ray

    c = study.config
    metric, mode = c.objective.metric, c.objective.direction
    scored = [r for r in records if r.best(metric, mode)[0] is not None]
    if c.objective.multi:  # several objectives: the top-k of the trials within every limit (hpo.engine.pareto)
        feasible = {p.record.trial_id for p in choose_pareto(records, list(c.objective)).points if p.feasible}
        scored = [r for r in scored if r.trial_id in feasible]
    if not scored or c.final.recheck.top_k == 0:
        return None
    scored.sort(key=lambda r: r.best(metric, mode)[0] or 0.0, reverse=(mode == "max"))  # all have a value
    candidates = [Candidate(r) for r in scored[: c.final.recheck.top_k]]
    seeds = [c.seed + 1000 + i for i in range(c.final.recheck.seeds)]

    options: dict[str, Any] = {
        "num_cpus": c.resources.cpus_per_trial,
        "num_gpus": c.resources.gpus_per_trial,
        "max_retries": c.failures.retries,  # a run whose process or node is lost runs again, as a trial would
    }
    if c.resources.memory_per_trial:
        options["memory"] = int(c.resources.memory_per_trial)  # as trials ask (hpo.engine.ray_tune)
    task = ray.remote(**options)(_train_task)
    data_ref = ray.put(data)
    threads = max(1, math.floor(c.resources.cpus_per_trial))
    pending = {
        task.remote(
            cand.record.config.model_dump(mode="json"), data_ref, c.budget.max_epochs, seed, threads, c.resources
        ): (cand, seed)
        for cand in candidates
        for seed in seeds
    }
    try:
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            cand, seed = pending.pop(done[0])
            try:
                outcome = ray.get(done[0])
            except Exception as exc:  # this run failed; the others go on
                cand.failures[seed] = _error(exc)
                _log_run(tracker, parent_run, cand, seed, [], {}, cand.failures[seed])
                continue
            cand.histories[seed] = outcome["history"]
            _log_run(tracker, parent_run, cand, seed, outcome["history"], outcome["tags"], None)
    except KeyboardInterrupt:  # the driver is stopping: so do the runs still going on the workers
        for ref in pending:
            ray.cancel(ref, force=True)
        raise

    def mean_best(cand: Candidate) -> float:
        return float(np.mean(cand.bests(metric, mode)))

    failed = [(cand, seed, error) for cand in candidates for seed, error in cand.failures.items()]
    finished = [cand for cand in candidates if cand.finished]
    if not finished:
        winner = scored[0]
        value, epoch = winner.best(metric, mode)
        note = (
            f"every re-check run failed ({_failures(failed)}): the search's winner, trial #{winner.number}, "
            f"stands with its search {metric} {value:.4f}"
        )
        result = RecheckResult(winner, epoch or 1, float(value or 0.0), 0.0, candidates, note, fell_back=True)
    else:
        best = max(finished, key=mean_best) if mode == "max" else min(finished, key=mean_best)
        curve = best.mean_curve(metric)
        best_epoch = int(np.argmax(curve) if mode == "max" else np.argmin(curve)) + 1
        bests = best.bests(metric, mode)
        note = ""
        if failed:
            out = [f"#{cand.record.number}" for cand in candidates if not cand.finished]
            note = f"{len(failed)} of {len(candidates) * len(seeds)} re-check runs failed ({_failures(failed)})"
            note += f"; out, with no run finished: trial {', '.join(out)}" if out else ""
        result = RecheckResult(best.record, best_epoch, float(np.mean(bests)), float(np.std(bests)), candidates, note)
    if result.note:
        tracker.set_tags(parent_run, {Tag.RECHECK_NOTE: result.note[:5000]})
    _log_table(tracker, parent_run, result, metric, mode)
    return result


def _error(exc: BaseException) -> str:
    """``"TypeName: message"`` of what a Ray task raised (its cause, not Ray's wrapper)."""
    cause = getattr(exc, "cause", None) or exc
    text = str(cause).strip()
    return error_text(f"{type(cause).__name__}: {text.splitlines()[0] if text else ''}".rstrip(": ")[:500])


def _failures(failed: list[tuple[Candidate, int, str]]) -> str:
    return "; ".join(f"trial #{cand.record.number} seed {seed}: {error}" for cand, seed, error in failed)


def _log_run(
    tracker: Tracker,
    parent_run: str,
    cand: Candidate,
    seed: int,
    rows: list[dict],
    tags: dict[str, str],
    error: str | None,
) -> None:
    """One tracker run per re-check run: its epochs, or (failed) the error as its reason."""
    run_id = tracker.start_run(
        f"recheck-trial-{cand.record.number:03d}-seed-{seed}",
        parent=parent_run,
        tags={Tag.KIND: RunKind.RECHECK, Tag.TRIAL_ID: cand.record.trial_id, **tags},
    )
    tracker.log_params(run_id, {**flatten(cand.record.config.model_dump(mode="json")), "seed": seed})
    if error is not None:
        status = error_status(error)
        tracker.set_tags(run_id, {Tag.STATUS: status, Tag.ERROR: error, Tag.REASON: f"{status}: {error}"})
        tracker.end_run(run_id, RunStatus.FAILED)
        return
    with tracker.finishing(run_id):  # completed, or failed if logging raises
        for row in rows:
            tracker.log_metrics(run_id, {k: v for k, v in row.items() if k != "epoch"}, step=row["epoch"])


def _log_table(tracker: Tracker, parent_run: str, result: RecheckResult, metric: str, mode: str) -> None:
    table = io.StringIO()
    writer = csv.writer(table)
    writer.writerow(
        ["trial", f"search_best_{metric}", f"mean_best_{metric}", "std", "seeds", "failed", "chosen", "errors"]
    )
    for cand in result.candidates:
        bests = cand.bests(metric, mode)
        writer.writerow(
            [
                cand.record.number,
                f"{cand.record.best(metric, mode)[0]:.4f}",
                f"{np.mean(bests):.4f}" if bests else "",
                f"{np.std(bests):.4f}" if bests else "",
                len(bests),
                len(cand.failures),
                cand.record is result.winner,
                " | ".join(f"seed {seed}: {error}" for seed, error in sorted(cand.failures.items())),
            ]
        )
    tracker.log_text(parent_run, table.getvalue(), "recheck.csv")
    if not result.fell_back:
        tracker.log_metrics(parent_run, {f"recheck_mean_{metric}": result.mean, f"recheck_std_{metric}": result.std})
