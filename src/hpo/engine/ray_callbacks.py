"""Ray Tune's side of the driver's bookkeeping: a ``Callback`` that forwards trial events to a
``TrialBook``, and the deadline ``Stopper``. This module imports Ray; ``hpo.engine.ray_tune`` imports it
only when a search runs."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ray import cloudpickle, tune

from hpo.engine.records import TrialRecord
from hpo.engine.trial_book import TrialBook, error_text
from hpo.engine.trial_output import attached_output


class TrialTracker(tune.Callback):
    """Runs in the driver; every trial event goes to ``book`` (see ``TrialBook``)."""

    def __init__(self, book: TrialBook) -> None:
        self.book = book

    def setup(self, stop: Any = None, num_samples: Any = None, total_num_samples: Any = None, **info: Any) -> None:
        for name in _FAILURE_LOGGERS:
            logger = logging.getLogger(name)
            if not any(isinstance(f, _QuietFailures) for f in logger.filters):
                logger.addFilter(_QuietFailures())

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.book.started(trial.trial_id, trial.config)

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        self.book.reported(trial.trial_id, result)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.book.completed(trial.trial_id)

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        if trial.trial_id in self.book.by_id:
            self.book.retried(trial.trial_id, trial_error(trial), *trial_failure(trial))

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        if trial.trial_id in self.book.by_id:
            self.book.errored(trial.trial_id, trial_error(trial), *trial_failure(trial))


_FAILURE_LOGGERS = ("ray.tune.execution.tune_controller", "ray.tune.tune")


class _QuietFailures(logging.Filter):
    """Drops Ray Tune's console records of a trial's failure (its whole traceback, each time): the trial's
    run holds the traceback (``traceback.txt``) and the view prints the reason in a line."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(("Trial task failed for trial", "Trials did not complete"))


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


_FAILURE_HEADER = re.compile(r"^Failure # \d+ \(occurred at [^)]*\)\n", re.MULTILINE)  # Trial.handle_error's
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def trial_failure(trial: Any) -> tuple[str, str]:
    """(the whole traceback, the output the error carried) of the failure that just ended an attempt of
    ``trial``. Ray's ``Trial.handle_error`` wrote both in the driver before calling any callback, on
    whichever node the trial ran: the error's text (a task's error holds the traceback formatted in the
    trial's process, innermost frame included) appended to the trial's error file, and the error itself
    pickled beside it (a task's error or a lost process only). ``Trial.get_pickled_error`` would read
    them from the experiment's storage, where they arrive later."""
    traceback = _last_failure(trial.error_file)
    error = _pickled_error(trial)
    if error is not None and traceback and _ANSI.sub("", str(error)).strip() != traceback:
        error = None  # the pickle is an earlier attempt's: this failure was not a task's
    if not traceback and error is not None:
        traceback = _ANSI.sub("", str(error)).strip()
    return traceback, attached_output(getattr(error, "cause", None))


def _last_failure(error_file: str | None) -> str:
    if not error_file or not Path(error_file).is_file():
        return ""
    text = Path(error_file).read_text(errors="replace")
    headers = list(_FAILURE_HEADER.finditer(text))
    return _ANSI.sub("", text[headers[-1].end() :] if headers else text).strip()


def _pickled_error(trial: Any) -> BaseException | None:
    path = trial.pickled_error_file
    if not path or not Path(path).is_file():
        return None
    try:
        with open(path, "rb") as f:
            error = cloudpickle.load(f)
    except Exception:  # an exception type this process cannot import: the traceback's text will do
        return None
    return error if isinstance(error, BaseException) else None
