"""What the driver knows about each trial; shared by tracking, the live view and finalize."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from hpo.config.trial import TrialConfig
from hpo.names import Metric, TrialStatus

ACTIVE = frozenset({TrialStatus.RUNNING, TrialStatus.RETRYING})  # a trial with these has not finished


@dataclass
class TrialRecord:
    trial_id: str
    number: int
    params: dict[str, Any]  # Optuna's flat parameters, as sampled
    config: TrialConfig
    run_id: str | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    status: str = TrialStatus.RUNNING  # a TrialStatus (read back from the journal as its plain string)
    error: str | None = None
    optuna_number: int | None = None  # the sampler's trial, to reconcile the two after a crash
    attempts: int = 1  # > 1 when the retry policy restarted it
    retry_errors: list[str] = field(default_factory=list)  # why earlier attempts failed
    worker_pid: int | None = None
    node: str | None = None  # the Ray node it ran on
    started: float = field(default_factory=time.time)
    ended: float | None = None
    worker_started: float | None = None  # wall clock in the trial's process: when it began
    worker_last: float | None = None  # ... and when it last reported
    plan: dict[str, Any] | None = None  # its execution plan (hpo.train.plan.ExecutionPlan.to_dict())

    @property
    def epochs(self) -> int:
        return len(self.history)

    def best(self, metric: str, mode: str) -> tuple[float | None, int | None]:
        """(best value of ``metric``, the epoch it was reached) over this trial's epochs."""
        rows = [r for r in self.history if r.get(metric) is not None]
        if not rows:
            return None, None
        pick = max if mode == "max" else min
        row = pick(rows, key=lambda r: r[metric])
        return row[metric], row["epoch"]

    def to_json(self) -> dict[str, Any]:
        """The journal entry (``trials.json``); the config is re-derived from ``params`` on load."""
        return {k: v for k, v in self.__dict__.items() if k != "config"}

    @classmethod
    def from_json(cls, data: dict[str, Any], config: TrialConfig) -> TrialRecord:
        return cls(**{**data, "config": config})

    @property
    def compute_seconds(self) -> float:
        return sum(r.get(Metric.SECONDS, 0.0) for r in self.history)


def best_trial(records: list[TrialRecord], metric: str, mode: str) -> TrialRecord | None:
    scored = [(value, r) for r in records if (value := r.best(metric, mode)[0]) is not None]
    if not scored:
        return None
    pick = max if mode == "max" else min
    return pick(scored, key=lambda s: s[0])[1]
