"""Warm start: begin a run with the best configurations of a study's earlier runs.

Earlier runs are found where their sampler history lives: in the shared Optuna storage
(``tracking.optuna_storage``, one Optuna study per run, named ``<study>/<folder>``), else in the run
folders on this machine (``runs/<study>/*/optuna.db``). Their told trials are ranked by the objective, and
the top-k configurations that are still points of the current search space are enqueued; the others are
skipped with the reason (a parameter that left the space, a value now out of range, ...).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hpo.engine.recovery import CUT_OFF
from hpo.engine.run_dir import StudyDir
from hpo.study import Study


@dataclass
class WarmStart:
    points: list[dict[str, Any]]  # flat Optuna parameters, best first
    runs: int = 0  # earlier runs looked at
    told: int = 0  # finished trials found in them
    skipped: list[str] = field(default_factory=list)  # why good configurations did not fit

    def describe(self, source: str) -> str:
        if not self.runs:
            return f"warm start: no earlier runs of '{source}' found; starting cold"
        text = (
            f"warm start: {len(self.points)} configuration{'s' * (len(self.points) != 1)} from "
            f"{self.told} trials of {self.runs} earlier run{'s' * (self.runs != 1)} of '{source}' enqueued"
        )
        if self.skipped:
            text += f"; {len(self.skipped)} skipped (e.g. {self.skipped[0]})"
        return text


def _earlier_studies(source: str, output_dir: Path, shared_storage: str | None, exclude: str) -> list[tuple[str, str]]:
    """(storage URL, Optuna study name) of each earlier run of ``source``."""
    import optuna

    found = []
    if shared_storage:
        names = optuna.get_all_study_names(storage=shared_storage)
        found += [(shared_storage, n) for n in names if n.startswith(f"{source}/") and n != exclude]
    for db in sorted((output_dir / source).glob("*/optuna.db")):
        url = f"sqlite:///{db.resolve()}"
        found += [(url, n) for n in optuna.get_all_study_names(storage=url) if n != exclude]
    return found


def warm_start_points(study: Study, run_dir: StudyDir, source: str, top_k: int) -> WarmStart:
    import optuna
    from optuna.trial import TrialState

    c = study.config
    studies = _earlier_studies(source, Path(c.output_dir), run_dir.shared_storage, run_dir.optuna_study)
    want = (
        optuna.study.StudyDirection.MAXIMIZE if c.objective.direction == "max" else optuna.study.StudyDirection.MINIMIZE
    )
    told = []
    result = WarmStart(points=[], runs=len(studies))
    for url, name in studies:
        earlier = optuna.load_study(study_name=name, storage=url)
        if earlier.direction != want:  # another objective: its ranking means nothing here
            result.skipped.append(f"{name} optimised in the other direction")
            continue
        for trial in earlier.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            if trial.value is not None and not trial.system_attrs.get(CUT_OFF):
                told.append(trial)
    told.sort(key=lambda t: t.value or 0.0, reverse=c.objective.direction == "max")  # all have a value
    result.told = len(told)
    seen: set[tuple] = set()
    for trial in told:
        key = tuple(sorted((k, repr(v)) for k, v in trial.params.items()))
        if key in seen:
            continue
        seen.add(key)
        problem = study.space.mismatch(trial.params)
        if problem:
            result.skipped.append(problem)
            continue
        result.points.append(dict(trial.params))
        if len(result.points) == top_k:
            break
    return result
