"""The driver's log: what the run's console prints, also written to the run folder's ``driver.log``.

A render hook on the console (rich's ``RenderHook``: it sees each ``print`` before the live view adds
its table and cursor moves) prints the same renderables to a second console on the file: plain text,
no colours, no spinner frames, each line stamped with the time, flushed line by line so a crash loses
nothing. A resumed run appends to the same file. At the end — success, failure or interruption — the
way the run ended goes into the file (a failure with its whole traceback, which the console shows only
with ``--debug``) and the file is logged on every study run the tracker opened."""

from __future__ import annotations

import contextlib
import io
import os
import time
import traceback
from pathlib import Path
from typing import IO
from weakref import WeakKeyDictionary

from rich.console import Console, ConsoleRenderable, Group, RenderableType, RenderHook
from rich.control import Control

from hpo import __version__
from hpo.names import Artifact
from hpo.tracking import Tracker

LOG_WIDTH = 160  # columns tables are laid out in; text lines are never wrapped
_TEEING: WeakKeyDictionary[Console, DriverLog] = WeakKeyDictionary()  # the log each console tees into


def log_only(console: Console, text: str) -> None:
    """Write ``text`` to the driver log ``console`` tees into, not to the console: what a terminal shows
    in place (the live table's rows) still reaches the log as lines. Nothing if it tees into none."""
    log = _TEEING.get(console)
    if log is not None:
        with contextlib.suppress(OSError):
            log._print(text)


class DriverLog(RenderHook):
    """Tees ``console`` into ``path`` from ``start`` until ``finish``."""

    def __init__(self, console: Console, path: Path) -> None:
        self.console, self.path = console, path
        self._file: IO[str] | None = path.open("a", encoding="utf-8")
        self._line_start = True
        self._plain = Console(
            file=io.StringIO(),  # captured, then stamped line by line (see ``_print``)
            color_system=None,
            force_terminal=False,
            force_interactive=False,
            width=LOG_WIDTH,
            soft_wrap=True,
            no_color=True,
            emoji=False,
            highlight=False,
        )

    @classmethod
    def start(cls, console: Console, folder: Path) -> DriverLog:
        log = cls(console, folder / Artifact.DRIVER_LOG)
        log._print(f"hpo {__version__}: run in {folder} (pid {os.getpid()})")
        console.push_render_hook(log)
        _TEEING[console] = log
        return log

    def process_renderables(self, renderables: list[ConsoleRenderable]) -> list[ConsoleRenderable]:
        shown = [r for r in renderables if not isinstance(r, Control)]  # a spinner's or live view's refresh
        if shown:
            with contextlib.suppress(OSError):  # a full disk must not end the run
                self._print(Group(*shown))
        return renderables

    def finish(self, tracker: Tracker | None = None, error: BaseException | None = None) -> None:
        """Stop teeing, write how the run ended, and log the file on the study runs ``tracker`` opened
        (a failure to log it is written in the file, never raised over the run's own error). Only the
        first call does anything."""
        if self._file is None:
            return
        self.console.pop_render_hook()  # the last pushed: the live views inside the run have ended
        _TEEING.pop(self.console, None)
        self._print(_ending(error))
        if tracker is not None:
            for run_id in tracker.opened_study_runs():
                try:
                    tracker.log_artifact(run_id, self.path)
                except Exception as exc:
                    self._print(f"could not log {self.path.name} on run {run_id}: {exc}")
        self._file.close()
        self._file = None

    def _print(self, renderable: RenderableType) -> None:
        """``renderable`` as plain text, each line stamped with the local time, flushed at once."""
        if self._file is None:
            return
        with self._plain.capture() as captured:
            self._plain.print(renderable, markup=False)
        stamp = time.strftime("%Y-%m-%d %H:%M:%S ")
        out = []
        for line in captured.get().splitlines(keepends=True):
            if self._line_start:
                out.append(stamp)
            out.append(line)
            self._line_start = line.endswith("\n")
        self._file.write("".join(out))
        self._file.flush()


def _ending(error: BaseException | None) -> str:
    """How the run ended: well, or with ``error`` (a failure, or an interruption), and where it was raised."""
    if error is None:
        return "run ended"
    message = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
    return f"run ended with {message}\n" + "".join(traceback.format_exception(error)).rstrip()
