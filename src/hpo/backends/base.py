"""What a backend is: one way of finding a model for a study, run on the study's splits and budget.

``hpo run`` loads the data once, opens the run folder and the MLflow experiment, then runs each backend
the study names (``backends: [search, autokeras]``), in that order. A backend owns some stages of the
run's state (:mod:`hpo.engine.run_dir`) and one parent run in the experiment, and returns a result whose
:class:`BackendSummary` goes into the side-by-side table. The shared budget vocabulary is the study's:
``budget.trials`` (models tried), ``budget.max_epochs`` (epochs per model), ``budget.time`` (wall time of
the search part), and ``final`` (how the winner is retrained and tested).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Protocol

from rich.console import Console

from hpo.data import ImageData
from hpo.engine.run_dir import StudyDir
from hpo.study import Study


@dataclass
class RunContext:
    """What every backend of one ``hpo run`` shares."""

    study: Study
    data: ImageData
    tracker: object
    run_dir: StudyDir
    resumed: bool
    console: Console
    live: bool = True
    points: list[dict] | None = None  # configurations to evaluate first (the search)
    warm_from: str | None = None  # a study whose best configurations to evaluate first
    deadline: float | None = None  # budget.until, epoch seconds
    start: float = 0.0
    data_seconds: float = 0.0
    ray_seconds: float = 0.0


@dataclass
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


class Backend(Protocol):
    name: ClassVar[str]  # as the study's ``backends`` list spells it
    stages: ClassVar[tuple[str, ...]]  # the run-state stages it owns, in order

    def __init__(self, run: RunContext) -> None: ...

    def run(self):
        """Run (or continue) this backend's stages; return its result, which has ``summary()``."""
