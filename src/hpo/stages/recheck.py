"""Winner re-check: ASHA ranks trials on one noisy run each, often cut short. Re-run the top-k
configurations at the full epoch budget with fresh seeds, as Ray tasks, and pick by the mean of their
best validation metric; the spread across seeds is recorded."""

from __future__ import annotations

import csv
import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hpo.config import TrialConfig
from hpo.config.study import Resources
from hpo.data import ImageData
from hpo.engine.records import TrialRecord
from hpo.names import RunKind, Tag
from hpo.study import Study
from hpo.tracking import Tracker, flatten


@dataclass
class Candidate:
    record: TrialRecord
    histories: dict[int, list[dict]] = field(default_factory=dict)  # seed -> per-epoch rows

    def bests(self, metric: str, mode: str) -> list[float]:
        pick = max if mode == "max" else min
        return [pick(r[metric] for r in rows) for rows in self.histories.values()]

    def mean_curve(self, metric: str) -> np.ndarray:
        length = min(len(rows) for rows in self.histories.values())
        return np.mean([[r[metric] for r in rows[:length]] for rows in self.histories.values()], axis=0)


@dataclass
class RecheckResult:
    winner: TrialRecord
    best_epoch: int
    mean: float
    std: float
    candidates: list[Candidate]


def _train_task(
    config_json: dict, data: ImageData, epochs: int, seed: int, threads: int, resources: Resources
) -> list[dict]:
    from hpo.train import Preferences, TrainData, train

    config = TrialConfig.model_validate(config_json)
    train_data = TrainData.from_arrays(
        data.x_train,  # type: ignore[arg-type]  # from_arrays takes FileImages too: hpo.train says ndarray
        data.y_train,
        data.x_val,  # type: ignore[arg-type]
        data.y_val,
        data.num_classes,
        data.mean,
        data.std,
    )
    result = train(
        config, train_data, epochs=epochs, seed=seed, threads=threads, prefs=Preferences.from_resources(resources)
    )
    return [{"epoch": e.epoch, **e.metrics()} for e in result.history]


def recheck(
    study: Study, data: ImageData, records: list[TrialRecord], tracker: Tracker, parent_run: str
) -> RecheckResult | None:
    import ray

    c = study.config
    metric, mode = c.objective.metric, c.objective.direction
    scored = [r for r in records if r.best(metric, mode)[0] is not None]
    if not scored or c.final.recheck.top_k == 0:
        return None
    scored.sort(key=lambda r: r.best(metric, mode)[0] or 0.0, reverse=(mode == "max"))  # all have a value
    candidates = [Candidate(r) for r in scored[: c.final.recheck.top_k]]
    seeds = [c.seed + 1000 + i for i in range(c.final.recheck.seeds)]

    task = ray.remote(num_cpus=c.resources.cpus_per_trial, num_gpus=c.resources.gpus_per_trial)(_train_task)
    data_ref = ray.put(data)
    threads = max(1, math.floor(c.resources.cpus_per_trial))
    pending = {
        task.remote(
            cand.record.config.model_dump(mode="json"), data_ref, c.budget.max_epochs, seed, threads, c.resources
        ): (cand, seed)
        for cand in candidates
        for seed in seeds
    }
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        cand, seed = pending.pop(done[0])
        rows = ray.get(done[0])
        cand.histories[seed] = rows
        run_id = tracker.start_run(
            f"recheck-trial-{cand.record.number:03d}-seed-{seed}",
            parent=parent_run,
            tags={Tag.KIND: RunKind.RECHECK, Tag.TRIAL_ID: cand.record.trial_id},
        )
        with tracker.finishing(run_id):
            tracker.log_params(run_id, {**flatten(cand.record.config.model_dump(mode="json")), "seed": seed})
            for row in rows:
                tracker.log_metrics(run_id, {k: v for k, v in row.items() if k != "epoch"}, step=row["epoch"])

    def mean_best(cand: Candidate) -> float:
        return float(np.mean(cand.bests(metric, mode)))

    best = max(candidates, key=mean_best) if mode == "max" else min(candidates, key=mean_best)
    curve = best.mean_curve(metric)
    best_epoch = int(np.argmax(curve) if mode == "max" else np.argmin(curve)) + 1
    bests = best.bests(metric, mode)
    result = RecheckResult(best.record, best_epoch, float(np.mean(bests)), float(np.std(bests)), candidates)
    _log_table(tracker, parent_run, result, metric, mode)
    return result


def _log_table(tracker: Tracker, parent_run: str, result: RecheckResult, metric: str, mode: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "recheck.csv"
        with path.open("w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["trial", f"search_best_{metric}", f"mean_best_{metric}", "std", "seeds", "chosen"])
            for cand in result.candidates:
                bests = cand.bests(metric, mode)
                writer.writerow(
                    [
                        cand.record.number,
                        f"{cand.record.best(metric, mode)[0]:.4f}",
                        f"{np.mean(bests):.4f}",
                        f"{np.std(bests):.4f}",
                        len(bests),
                        cand.record is result.winner,
                    ]
                )
        tracker.log_artifact(parent_run, path)
    tracker.log_metrics(parent_run, {f"recheck_mean_{metric}": result.mean, f"recheck_std_{metric}": result.std})
