"""Exceptions that cross process boundaries (Ray workers) and carry where the problem is."""

from __future__ import annotations

from pathlib import Path


class HpoError(Exception):
    """Base class of hpo's own errors; the CLI prints these without a traceback."""


class StudyError(HpoError):
    """A study or search space is invalid: names the file, the line and the field path.

    Rendered as ``studies/x.yaml:12: budget.trials: must be >= 1 (got 0)``. Picklable, so it survives
    the trip from a Ray worker back to the driver.
    """

    def __init__(
        self, message: str, *, file: str | Path | None = None, line: int | None = None, path: str | None = None
    ) -> None:
        self.message = message
        self.file = str(file) if file is not None else None
        self.line = line
        self.path = path
        super().__init__(str(self))

    def __str__(self) -> str:
        where = ""
        if self.file:
            where = f"{self.file}:{self.line}: " if self.line else f"{self.file}: "
        field = f"{self.path}: " if self.path else ""
        return f"{where}{field}{self.message}"

    def __reduce__(self):
        return _rebuild_study_error, (self.message, self.file, self.line, self.path)


def _rebuild_study_error(message, file, line, path) -> StudyError:
    return StudyError(message, file=file, line=line, path=path)


class StudyErrors(HpoError):
    """Several independent problems found in one pass, so the user fixes them all at once."""

    def __init__(self, errors: list[StudyError]) -> None:
        self.errors = errors
        super().__init__("\n".join(str(e) for e in errors))

    def __reduce__(self):
        return StudyErrors, (self.errors,)


class RunRefused(HpoError):
    """The run cannot start as asked, though the study file is valid (e.g. its deadline has passed):
    like a bad study, nothing runs and the CLI exits 2."""


class DataError(HpoError):
    """A dataset cannot be found or read; the message says what to do."""


class Interrupted(HpoError):
    """SIGINT or SIGTERM stopped the run: cut-off work is discarded, Ray is shut down, the run folder holds
    what the next ``hpo run`` continues. The CLI exits 128 + the signal's number (130, 143), as a shell does."""

    def __init__(self, stage: str, signum: int) -> None:
        self.stage = stage
        self.signum = signum
        super().__init__(f"interrupted in {stage}: hpo run continues it")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum

    def __reduce__(self):
        return Interrupted, (self.stage, self.signum)
