"""What a backend is: one way of finding a model for a study, run on the study's splits and budget.

``hpo run`` loads the data once, opens the run folder and the MLflow experiment, then runs each backend
the study names (``backends: [search, autokeras]``), in that order. A backend is declared in
:mod:`hpo.config.backends` (its name, its stages, its checks) and implemented here, in :mod:`hpo.backends`.
It owns its stages of the run's state (:mod:`hpo.engine.run_dir`) and one parent run in the experiment,
and returns a :class:`BackendResult`: its :class:`BackendSummary` goes into the side-by-side table, and it
prints its own summary at the end of the run. The shared budget vocabulary is the study's:
``budget.trials`` (models tried), ``budget.max_epochs`` (epochs per model), ``budget.time`` (wall time of
the search part), and ``final`` (how the winner is retrained and tested).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

from rich.console import Console

from hpo.data import ImageData
from hpo.engine.run_dir import StudyDir
from hpo.names import Stage
from hpo.study import Study


@dataclass(kw_only=True)
class RunContext:
    """What every backend of one ``hpo run`` shares."""

    study: Study
    data: ImageData
    tracker: Any  # hpo.tracking's tracker of the study's experiment
    run_dir: StudyDir
    resumed: bool
    console: Console
    tracking_uri: str = ""  # where the runs are tracked, credentials masked (for the summaries)
    live: bool = True
    points: list[dict[str, Any]] | None = None  # configurations to evaluate first (the search)
    warm_from: str | None = None  # a study whose best configurations to evaluate first
    deadline: float | None = None  # budget.until, epoch seconds
    start: float = 0.0
    data_seconds: float = 0.0
    ray_seconds: float = 0.0


@dataclass(kw_only=True)
class BackendSummary:
    """One row of the side-by-side comparison; the same names as the parent runs' metrics."""

    backend: str
    run_id: str
    test_accuracy: float | None
    test_loss: float | None
    trials: int
    trial_epochs: int
    best_value: float | None  # best validation objective over the trials
    search_seconds: float
    wall_seconds: float


class BackendResult(Protocol):
    """What a backend's ``run()`` returns."""

    def summary(self) -> BackendSummary:
        """Its row of the side-by-side table."""
        ...

    def print_summary(self, console: Console, run: RunContext) -> None:
        """How ``hpo run`` ends for this backend: what it found, on the terminal."""
        ...


class Backend(Protocol):
    name: ClassVar[str]  # as the study's ``backends`` list spells it (hpo.config.backends)
    stages: ClassVar[tuple[Stage, ...]]  # the run-state stages it owns, in order (its declaration's)

    def __init__(self, run: RunContext) -> None: ...

    def run(self) -> BackendResult:
        """Run (or continue) this backend's stages; return its result."""
        ...
