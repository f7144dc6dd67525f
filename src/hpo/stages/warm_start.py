"""Warm start: begin a run with the best configurations of a study's earlier runs.

Earlier runs are found where their sampler history lives: in the shared Optuna storage
(``tracking.optuna_storage``: one Optuna study per study, named after it, each trial marked with its run;
older hpo made one per run, named ``<study>/<folder>``), else in the run folders on this machine
(``runs/<study>/*/optuna.db``). Their told trials are ranked by the objective, and the top-k
configurations that are still points of the current search space are enqueued; the others are skipped
with the reason (a parameter that left the space, a value now out of range, ...). Warm-starting from the
study's own shared Optuna study adds nothing: the sampler sees those trials already, and points another
run evaluated are not enqueued again (``hpo.engine.searcher.OptunaSearcher.enqueue``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hpo.engine.recovery import CUT_OFF
from hpo.engine.run_dir import RUN, StudyDir
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


def _earlier_studies(source: str, output_dir: Path, run_dir: StudyDir) -> list[tuple[str, str]]:
    """(storage URL, Optuna study name) of each Optuna study holding earlier runs of ``source``; this run's
    own trials in them are left out by the caller."""
    import optuna

    found = []
    shared = run_dir.shared_storage
    if shared:
        names = optuna.get_all_study_names(storage=shared)
        found += [(shared, n) for n in names if (n == source or n.startswith(f"{source}/")) and n != _legacy(run_dir)]
    own = (run_dir.path / "optuna.db").resolve()
    for db in sorted((output_dir / source).glob("*/optuna.db")):
        if db.resolve() == own:
            continue
        url = f"sqlite:///{db.resolve()}"
        found += [(url, n) for n in optuna.get_all_study_names(storage=url)]
    return found


def _legacy(run_dir: StudyDir) -> str:
    return f"{run_dir.state.study}/{run_dir.path.name}"


def warm_start_points(study: Study, run_dir: StudyDir, source: str, top_k: int) -> WarmStart:
    import optuna
    from optuna.trial import TrialState

    c = study.config
    studies = _earlier_studies(source, Path(c.output_dir), run_dir)
    want = (
        optuna.study.StudyDirection.MAXIMIZE if c.objective.direction == "max" else optuna.study.StudyDirection.MINIMIZE
    )
    told: list[tuple[float, dict[str, Any]]] = []  # (first objective's value, parameters)
    result = WarmStart(points=[])
    runs: set[tuple[str, str, str]] = set()
    for url, name in studies:
        earlier = optuna.load_study(study_name=name, storage=url)
        if earlier.directions[0] != want:  # another objective: its ranking means nothing here
            result.skipped.append(f"{name} optimised in the other direction")
            continue
        for trial in earlier.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            run = str(trial.system_attrs.get(RUN, ""))
            if url == run_dir.shared_storage and run == run_dir.run_name:
                continue  # this run's own (a resumed run)
            runs.add((url, name, run))
            if trial.values and not trial.system_attrs.get(CUT_OFF):
                told.append((trial.values[0], dict(trial.params)))
    result.runs = len(runs) or len(studies)
    told.sort(key=lambda t: t[0], reverse=c.objective.direction == "max")
    result.told = len(told)
    seen: set[tuple] = set()
    for _, params in told:
        key = tuple(sorted((k, repr(v)) for k, v in params.items()))
        if key in seen:
            continue
        seen.add(key)
        problem = study.space.mismatch(params)
        if problem:
            result.skipped.append(problem)
            continue
        result.points.append(params)
        if len(result.points) == top_k:
            break
    return result
