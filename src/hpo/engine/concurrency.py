"""How many trials run at once: as many as the cluster's alive nodes hold, recounted as nodes join and leave.

Ray Tune starts a trial only once some node has its resources free, so the limit decides how many trials
the sampler proposes ahead of a free slot, not where they run. A limit fixed at the start (the cluster as it
was then) leaves a night at one trial at a time when the GPU workers register a minute after the driver;
no limit at all lets Optuna propose trials that then wait, sampled without the results that would have come
in meanwhile. So the limit is recounted from the nodes Ray reports, before a suggestion, at most every few
seconds, and capped by ``resources.max_concurrent`` and the trials left in the budget.

Imported by the Ray Tune backend only (it subclasses Ray Tune's ``ConcurrencyLimiter``)."""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ray.tune.search import ConcurrencyLimiter, Searcher

__all__ = ["ElasticLimiter", "TrialDemand", "trial_slots"]

# Ray keeps resources in fixed point (1e-4 units): 0.7 GPUs / 0.1 per trial must count 7, not 6.999...
_TOLERANCE = 1e-6


@dataclass(frozen=True)
class TrialDemand:
    """What one trial asks Ray for, in Ray's units: CPUs, GPUs (a fraction shares a card), memory bytes."""

    cpu: float
    gpu: float = 0.0
    memory: float = 0.0

    @classmethod
    def from_tune(cls, resources: Mapping[str, float]) -> TrialDemand:
        """From the dict given to ``tune.with_resources`` (keys ``cpu``, ``gpu``, ``memory``)."""
        return cls(
            float(resources.get("cpu", 0.0)), float(resources.get("gpu", 0.0)), float(resources.get("memory", 0))
        )

    def fits(self, node: Mapping[str, float]) -> int:
        """How many such trials one node's resources (Ray's names: CPU, GPU, memory) hold side by side."""
        counts = [
            math.floor(node.get(name, 0.0) / need + _TOLERANCE)
            for name, need in (("CPU", self.cpu), ("GPU", self.gpu), ("memory", self.memory))
            if need > 0
        ]
        return min(counts) if counts else 0


def trial_slots(nodes: Iterable[Mapping[str, Any]], demand: TrialDemand, cap: int | None = None) -> int:
    """Trials that run at once on the alive ``nodes`` (as ``ray.nodes()`` lists them; a trial runs on one
    node, so each node holds whole trials), at most ``cap``. At least 1: a trial that fits nowhere yet stays
    pending, which is also what tells an autoscaler to add a node."""
    total = sum(demand.fits(node.get("Resources", {})) for node in nodes if node.get("Alive"))
    if cap is not None:
        total = min(total, cap)
    return max(1, total)


def _ray_nodes() -> list[dict[str, Any]]:
    import ray

    return ray.nodes()


class ElasticLimiter(ConcurrencyLimiter):
    """Ray Tune's ``ConcurrencyLimiter`` whose ``max_concurrent`` follows the cluster: recounted with
    ``trial_slots`` before a suggestion, at most every ``refresh`` seconds. Running trials are never stopped
    when the limit drops (a node left): fewer new ones start until the count is under it again.

    ``history`` keeps (wall time, limit) at the start and at every change; ``on_change(old, new)`` is called
    on a change (the live view notes it). Both callables stay in this process: they are left out of the
    state Tune saves with the searcher."""

    _LOCAL = ("_nodes", "_on_change")

    def __init__(
        self,
        searcher: Searcher,
        demand: TrialDemand,
        *,
        cap: int | None = None,
        refresh: float = 2.0,
        nodes: Callable[[], Iterable[Mapping[str, Any]]] | None = None,
        on_change: Callable[[int, int], None] | None = None,
    ) -> None:
        self.demand, self.cap, self.refresh = demand, cap, refresh
        self._nodes = nodes or _ray_nodes
        self._on_change = on_change
        limit = trial_slots(self._nodes(), demand, cap)
        self._counted_at = time.monotonic()
        self.history: list[tuple[float, int]] = [(time.time(), limit)]
        super().__init__(searcher, max_concurrent=limit)

    @property
    def peak(self) -> int:
        """The most trials this search allowed at once."""
        return max(limit for _, limit in self.history)

    def recount(self) -> int:
        """Count the slots now (whatever the time since the last count) and adopt the result."""
        self._counted_at = time.monotonic()
        limit = trial_slots(self._nodes(), self.demand, self.cap)
        if limit != self.max_concurrent:
            old, self.max_concurrent = self.max_concurrent, limit
            self.history.append((time.time(), limit))
            if self._on_change is not None:
                self._on_change(old, limit)
        return limit

    def suggest(self, trial_id: str) -> dict | None:
        if time.monotonic() - self._counted_at >= self.refresh:
            self.recount()
        return super().suggest(trial_id)

    # Tune saves the searcher's state (get_state, deep-copied) and pickles the searcher with its tuner
    # state: the process-local callables (a closure over the live view holds locks) stay out of both.
    def get_state(self) -> dict:
        skip = {"searcher", *self._LOCAL}
        return copy.deepcopy({k: v for k, v in self.__dict__.items() if k not in skip})

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k not in self._LOCAL}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._nodes, self._on_change = _ray_nodes, None
