"""Ray Tune's side of the driver's bookkeeping: a ``Callback`` that forwards trial events to a
``TrialBook``, and the deadline ``Stopper``. This module imports Ray; ``hpo.engine.ray_tune`` imports it
only when a search runs."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ray import tune

from hpo.engine.records import TrialRecord
from hpo.engine.trial_book import TrialBook, error_text


class TrialTracker(tune.Callback):
    """Runs in the driver; every trial event goes to ``book`` (see ``TrialBook``)."""

    def __init__(self, book: TrialBook) -> None:
        self.book = book

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.book.started(trial.trial_id, trial.config)

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        self.book.reported(trial.trial_id, result)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.book.completed(trial.trial_id)

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        if trial.trial_id in self.book.by_id:
            self.book.retried(trial.trial_id, trial_error(trial))

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        if trial.trial_id in self.book.by_id:
            self.book.errored(trial.trial_id, trial_error(trial))


class DeadlineStopper(tune.Stopper):
    """Ends the search when what must follow it (re-check, final stage) would no longer finish before
    the deadline, as estimated from the epochs seen so far."""

    def __init__(
        self,
        deadline: float,
        after_search: Callable[[list[TrialRecord]], float | None] | None,
        records: list[TrialRecord],
        book: TrialBook,
    ) -> None:
        self.deadline, self.after_search, self.records, self.book = deadline, after_search, records, book

    def __getstate__(self) -> dict:
        return {"deadline": self.deadline}  # Ray pickles stoppers into its state; the estimate stays here

    def __call__(self, trial_id: str, result: dict) -> bool:
        return False

    def stop_all(self) -> bool:
        need = self.after_search(self.records) if self.after_search else None
        if need is None or time.time() + need < self.deadline:
            return False
        self.book.stop_reason = (
            f"the deadline is {time.strftime('%H:%M', time.localtime(self.deadline))} "
            f"and the final stage needs about {need / 60:.1f} min"
        )
        return True


def trial_error(trial: Any) -> str:
    """``"TypeName: message"`` (first line, module path dropped) of the error that ended ``trial``."""
    return error_text(_raw_error_text(trial))


def _raw_error_text(trial: Any) -> str:
    try:
        error = trial.get_pickled_error() or trial.get_error()
    except Exception:
        error = None
    if error is not None:
        cause = getattr(error, "cause", None) or error
        return f"{type(cause).__name__}: {cause}".splitlines()[0][:500]
    if trial.error_file and Path(trial.error_file).is_file():
        lines = Path(trial.error_file).read_text().strip().splitlines()
        return (lines[-1] if lines else "unknown error")[:500]
    return "unknown error"
