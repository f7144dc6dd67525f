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

from ray import tune

from hpo.engine.records import TrialRecord
from hpo.engine.trial_book import TrialBook, error_text
from hpo.engine.trial_output import split_output


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
    traceback, _ = trial_failure(trial)
    if traceback:
        return _exception_line(traceback)[:500]
    try:  # no error file here: Ray's copy in the experiment's storage
        error = trial.get_pickled_error()
    except Exception:
        error = None
    if error is not None:
        cause = getattr(error, "cause", None) or error
        return f"{type(cause).__name__}: {cause}".splitlines()[0][:500]
    return "unknown error"


def _exception_line(traceback: str) -> str:
    """The first line of the exception a formatted traceback ends with: the first line at the margin after
    the last frame (a message may span lines, indented ones too); a lost process's error has no frames:
    its last line says why."""
    lines = [line for line in traceback.splitlines() if line.strip()]
    frames = [i for i, line in enumerate(lines) if line.startswith('  File "')]
    if frames:
        for line in lines[frames[-1] + 1 :]:
            if line[:1] not in (" ", "\t"):
                return line
    return lines[-1] if lines else "unknown error"


_FAILURE_HEADER = re.compile(r"^Failure # \d+ \(occurred at [^)]*\)\n", re.MULTILINE)  # Trial.handle_error's
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def trial_failure(trial: Any) -> tuple[str, str]:
    """(the whole traceback, the output the error carried) of the failure that just ended an attempt of
    ``trial``. Ray's ``Trial.handle_error`` appended the error's text to the trial's error file in the
    driver before calling any callback, whichever node the trial ran on: for an exception, the traceback
    formatted in the trial's process (innermost frame included) with the output noted after it
    (``hpo.engine.trial_output.attach_output``); for a lost process, what Ray knows of its end.
    ``Trial.get_error`` would read it from the experiment's storage, where it arrives later."""
    if not trial.error_file or not Path(trial.error_file).is_file():
        return "", ""
    text = Path(trial.error_file).read_text(errors="replace")
    headers = list(_FAILURE_HEADER.finditer(text))
    last = _ANSI.sub("", text[headers[-1].end() :] if headers else text).strip()
    return split_output(last)
