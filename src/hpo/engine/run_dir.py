"""Crash-safe study state, so that running a killed study again continues it.

Each run of a study owns a folder, ``runs/<study>/<timestamp>/``, holding what a restart needs:

- ``state.json``: the run's stages (each backend the study names declares its own, see
  :mod:`hpo.config.backends`; recorded when the run starts) and the one reached, the MLflow study run, the
  study's fingerprint, the time budget already spent, the re-check's verdict, each stage's own state;
- ``trials.json``: every trial the driver has seen, rewritten (atomically) on each event;
- ``optuna.db``: the sampler's history (Optuna's own storage), unless the study names a shared one
  (``tracking.optuna_storage``): there every run of a study adds to one Optuna study, named after the
  study, each trial marked with its run (the system attribute ``hpo:run``);
- ``ray_procs.json``: while the run's driver lives, the processes of the Ray instance it started (see
  :mod:`hpo.engine.ray_procs`); left behind only if the driver and its watchdog were both killed.

``hpo run`` picks up the newest unfinished folder of the same study (same fingerprint). Work that is
finished is kept; work that was cut off is discarded and redone: a trial that was running restarts from
scratch with the same parameters and number, its partial MLflow run is deleted, and so are partial
re-check and final runs. Reading the folder needs only the standard library (``hpo status`` is fast).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from hpo._locks import exclusive
from hpo.engine.ray_procs import describe_ended, end_leftovers
from hpo.errors import RunRefused
from hpo.names import FINISHED_ORDER, RunOutcome, Stage

TERMINAL = FINISHED_ORDER  # a trial in trials.json with one of these statuses is finished (hpo.names)

# System attributes hpo sets on Optuna trials (hpo.engine.searcher): the run (its folder's name) that asked
# for the trial, and, on a trial stopped before its budget, who stopped it.
RUN = "hpo:run"
STOPPED_BY = "hpo:stopped_by"
SCHEDULER, BUDGET, DEADLINE = "scheduler", "budget", "deadline"  # the values of STOPPED_BY


class ResumeConflict(RunRefused):
    """An unfinished run exists that this invocation must not continue (changed study, or running now)."""


@dataclass(kw_only=True)
class RunState:
    study: str
    fingerprint: str
    stage: str  # the stage reached (hpo.names.Stage)
    stages: list[str] | None = None  # the run's stages in order, ending with done (None: from an older hpo)
    created: float = field(default_factory=time.time)
    study_run_id: str | None = None
    attempts: int = 1
    search_elapsed: float = 0.0  # search seconds spent by earlier attempts (the time budget)
    recheck: dict[str, Any] | None = None  # {"winner": number, "best_epoch", "mean", "std"}
    abandoned: bool = False  # superseded by `hpo run --fresh`
    outcome: str | None = None  # at stage done: a RunOutcome
    deadline: float | None = None  # budget.until, fixed when the run starts (epoch seconds)
    champion_before: str | None = None  # the registry's champion version when the final stage began
    final: dict[str, Any] | None = None  # the final stage's result, once it has registered the model
    # what a backend keeps between attempts, by stage: its MLflow run, the seconds spent, its result, ...
    stage_state: dict[str, dict[str, Any]] = field(default_factory=dict)
    # The run's study in Optuna's storage (None: begun by an older hpo, which named it <study>/<folder>)
    optuna_study: str | None = None
    sampler_seed: int | None = None  # fixed when the search first starts, so that a resumed run keeps it


def write_json(path: Path, data: Any) -> None:
    """Write ``data`` so that a kill (or a power cut) at any instant leaves either the old file or the new
    one: write a temporary file, flush it to disk, rename it over the old one, flush the folder."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("w") as fh:
        fh.write(json.dumps(data, indent=1, default=str))
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


class StudyDir:
    """One run of a study on disk. Holding it means holding its lock (released when the process ends)."""

    def __init__(self, path: Path, state: RunState) -> None:
        self.path = path
        self.state = state
        self.shared_storage: str | None = None  # tracking.optuna_storage, if the study names one
        self._lock_fd: int | None = None

    # ------------------------------------------------------------------ finding and creating
    @classmethod
    def open(
        cls, output_dir: Path, study: str, fingerprint: str, *, stages: Sequence[str], fresh: bool = False
    ) -> tuple[StudyDir, bool]:
        """The study's unfinished run to continue (resumed=True), else a new one that starts at the first
        of ``stages`` (the run's stages in order, ending with done). Processes opening the same study take
        turns (``runs/<study>/.open.lock``), so two never pick the same run."""
        root = output_dir / study
        with exclusive(root / ".open.lock"):
            latest = cls.latest_unfinished(root)
            if latest is not None and not fresh:
                latest.lock(wait=False)
                latest = cls.load(latest.path)._adopt_lock(latest)  # as it is now, under the lock
                if latest.state.fingerprint != fingerprint:
                    latest.unlock()
                    raise ResumeConflict(
                        f"{latest.path} holds an unfinished run of a different version of study '{study}' "
                        f"(fingerprint {latest.state.fingerprint}, now {fingerprint}). Restore the study as it "
                        "was to continue that run, or pass --fresh to start over (the unfinished run is kept "
                        "on disk)."
                    )
                latest.state.attempts += 1
                if latest.state.stages is None:  # begun by an older hpo: the same study, so the same stages
                    latest.state.stages = list(stages)
                latest.save_state()
                return latest, True
            if latest is not None and not latest.is_locked():  # --fresh: an interrupted run is set aside
                latest.state.abandoned = True
                latest.save_state()
            path = root / time.strftime("%Y%m%d-%H%M%S")
            for n in range(2, 1000):
                try:
                    path.mkdir(parents=True)
                    break
                except FileExistsError:
                    path = root / f"{time.strftime('%Y%m%d-%H%M%S')}-{n}"
            state = RunState(
                study=study, fingerprint=fingerprint, stage=stages[0], stages=list(stages), optuna_study=study
            )
            created = cls(path, state)
            created.lock(wait=False)
            created.save_state()
            return created, False

    def _adopt_lock(self, holder: StudyDir) -> StudyDir:
        self._lock_fd, holder._lock_fd = holder._lock_fd, None
        return self

    @classmethod
    def load(cls, path: Path) -> StudyDir:
        """Read a run's folder; a state file from another version of hpo loses the keys it does not know."""
        data = json.loads((path / "state.json").read_text())
        known = {f.name for f in fields(RunState)}
        # older state files kept a stage's own state under the stage's name (``"baseline": {...}``)
        legacy = {k: v for k, v in data.items() if k not in known and k in set(Stage) and isinstance(v, dict)}
        state = RunState(**{k: v for k, v in data.items() if k in known})
        state.stage_state = {**legacy, **state.stage_state}
        return cls(path, state)

    @classmethod
    def all(cls, root: Path, problems: list[str] | None = None) -> list[StudyDir]:
        """The study's runs, oldest first (folder names sort by time). A folder whose state cannot be read
        is skipped (and reported in ``problems``) rather than blocking every run of the study."""
        if not root.is_dir():
            return []
        runs = []
        for p in sorted(root.iterdir()):
            if not (p / "state.json").is_file():
                continue
            try:
                runs.append(cls.load(p))
            except (OSError, ValueError, TypeError) as exc:
                if problems is not None:
                    problems.append(f"{p}: unreadable state.json ({type(exc).__name__}: {exc}); skipped")
        return runs

    @classmethod
    def latest_unfinished(cls, root: Path) -> StudyDir | None:
        runs = [r for r in cls.all(root) if r.state.stage != Stage.DONE and not r.state.abandoned]
        return runs[-1] if runs else None

    # ------------------------------------------------------------------ locking
    def lock(self, *, wait: bool) -> None:
        fd = os.open(self.path / "lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise ResumeConflict(
                f"study '{self.state.study}' is running now (pid {holder}, {self.path}); wait for it to end, "
                "or pass --fresh to start a separate run"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._lock_fd = fd

    def unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing releases the flock
            self._lock_fd = None

    def discard(self) -> None:
        """Remove a run that never started (e.g. its data could not be read), and the study's folder if
        that leaves it empty."""
        self.unlock()
        shutil.rmtree(self.path, ignore_errors=True)
        leftovers = [p for p in self.path.parent.iterdir() if p.name != ".open.lock"]
        if not leftovers:
            shutil.rmtree(self.path.parent, ignore_errors=True)
            with contextlib.suppress(OSError):  # the output folder too, if nothing else is in it
                self.path.parent.parent.rmdir()

    def is_locked(self) -> bool:
        """Whether some process (this one included) is running this study now."""
        try:
            fd = os.open(self.path / "lock", os.O_RDONLY)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return False
        except BlockingIOError:
            return True
        finally:
            os.close(fd)

    def end_leftovers(self) -> str | None:
        """End the Ray processes a dead driver of this run left behind (recorded in ``ray_procs.json``, see
        :mod:`hpo.engine.ray_procs`); one line saying which, or None if there were none."""
        if self.is_locked():  # its driver runs: they are its own
            return None
        ended = end_leftovers(self.path)
        return describe_ended(self.path, ended) if ended else None

    # ------------------------------------------------------------------ state and trials
    def save_state(self) -> None:
        write_json(self.path / "state.json", asdict(self.state))

    def advance(self, stage: str, **changes: Any) -> None:
        for key, value in changes.items():
            setattr(self.state, key, value)
        self.state.stage = stage
        self.save_state()

    def save_stage_state(self, stage: str, state: dict[str, Any]) -> None:
        """Keep ``state`` as what ``stage`` carries over to the next attempt (the run stays where it is)."""
        self.state.stage_state = {**self.state.stage_state, stage: state}
        self.save_state()

    def advance_past(self, owned: Sequence[str]) -> None:
        """The backend owning the stages ``owned`` is done: on to the run's next stage (the next backend's
        first, or done)."""
        sequence = self.state.stages or [*owned, Stage.DONE]
        following = sequence[sequence.index(owned[-1]) + 1]
        if following == Stage.DONE:
            self.advance(Stage.DONE, outcome=RunOutcome.COMPLETED)
        else:
            self.advance(following)

    @property
    def trials_file(self) -> Path:
        return self.path / "trials.json"

    def save_trials(self, records: list, search_elapsed: float) -> None:
        write_json(self.trials_file, {"search_elapsed": search_elapsed, "trials": [r.to_json() for r in records]})

    def load_trials(self) -> tuple[list[dict[str, Any]], float]:
        """The journal of trials (raw dicts) and the search seconds spent so far."""
        if not self.trials_file.is_file():
            return [], self.state.search_elapsed
        try:
            data = json.loads(self.trials_file.read_text())
        except ValueError as exc:
            raise ResumeConflict(
                f"{self.trials_file} cannot be read ({exc}); pass --fresh to start over "
                "(the damaged run is kept on disk)"
            ) from None
        return data["trials"], max(data.get("search_elapsed", 0.0), self.state.search_elapsed)

    @property
    def plans_file(self) -> Path:
        return self.path / "plans.json"

    def load_plans(self) -> dict[str, dict[str, Any]]:
        """The execution plans this run's trials measured, by plan key (hpo.train.plan.plan_key)."""
        try:
            data = json.loads(self.plans_file.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def save_plan(self, key: str, plan: dict[str, Any]) -> None:
        write_json(self.plans_file, {**self.load_plans(), key: plan})

    @property
    def optuna_storage(self) -> str:
        """The sampler's storage: the study's shared one, else a SQLite file in this folder."""
        return self.shared_storage or f"sqlite:///{(self.path / 'optuna.db').resolve()}"

    @property
    def optuna_study(self) -> str:
        """This run's study in Optuna's storage: the study's name. In a shared storage, every run of the
        study adds its trials to it (marked with ``hpo:run``), so the sampler learns from earlier nights.
        A run begun by an older hpo keeps its own, ``<study>/<folder>``."""
        return self.state.optuna_study or f"{self.state.study}/{self.path.name}"

    @property
    def run_name(self) -> str:
        """What names this run on its Optuna trials (``hpo:run``): its folder's name."""
        return self.path.name

    def sampler_seed(self, configured: int | None, study_seed: int) -> int:
        """The sampler's seed for this run, fixed (in ``state.json``) the first time it is asked: the
        ``configured`` one (``sampler.seed``); else the study's seed for a run with its own storage; else,
        with a shared storage, one derived from the study's seed and this run's folder, so that no night
        replays another's random start-up."""
        if self.state.sampler_seed is None:
            if configured is not None:
                seed = configured
            elif not self.shared_storage:
                seed = study_seed
            else:
                digest = hashlib.sha256(f"{study_seed}/{self.state.study}/{self.path.name}".encode()).digest()
                seed = int.from_bytes(digest[:4], "big") % 2**31
            self.state.sampler_seed = seed
            self.save_state()
        return self.state.sampler_seed


def describe(run: StudyDir, metric: str = "val_accuracy", mode: str = "max") -> dict[str, Any]:
    """What ``hpo status`` shows for one run (no heavy imports)."""
    trials, elapsed = run.load_trials()
    counts: dict[str, int] = {}
    for t in trials:
        counts[t["status"]] = counts.get(t["status"], 0) + 1
    best = None
    for t in trials:
        for row in t["history"]:
            value = row.get(metric)
            if value is not None and (best is None or (value > best[0] if mode == "max" else value < best[0])):
                best = (value, t["number"])
    running = run.is_locked()
    stage, stages = run.state.stage, run.state.stages
    # "search (stage 1 of 3)": how far the run is, where the state file records its stages
    at = f"{stage} (stage {stages.index(stage) + 1} of {len(stages) - 1})" if stages and stage in stages else stage
    if run.state.abandoned:
        where = "abandoned (--fresh)"
    elif stage == Stage.DONE:
        where = "finished" if run.state.outcome != RunOutcome.FAILED else "failed: no trial produced a result"
    elif running:
        where = f"running: {at}"
    else:
        where = f"interrupted in {at}: `hpo run` continues it"
    return {
        "folder": str(run.path),
        "state": where,
        "stage": stage,
        "stages": stages,
        "attempts": run.state.attempts,
        "trials": counts,
        "search_seconds": elapsed,
        f"best_{metric}": best,
        "study_run_id": run.state.study_run_id,
    }
