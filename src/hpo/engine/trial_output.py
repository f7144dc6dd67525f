"""A trial's stdout and stderr, caught in its own process and carried to the driver with its reports.

The trial may run on another node of the cluster and no filesystem is shared, so the output travels the
way the metrics do: ``OutputCapture`` points the process's file descriptors 1 and 2 at a file of its own
(so C and C++ code, ``warnings`` and child processes are caught, not only ``print``), and each ``take()``
hands over what was written since the last one — the trial adds it to its epoch's report, and an error
carries the rest as a note (``attach_output``: PEP 678, so it travels inside the traceback text Ray
records in the driver, and nothing has to be unpickled to read it; ``split_output`` takes it back out).
The driver keeps the last ``LIMIT`` characters of each trial (``OutputTail``) and logs them as the trial
run's ``trial.log``.

No thread reads a pipe: writers never block, whatever holds the GIL. ``take()`` switches descriptors 1
and 2 to a fresh file, reads the previous one (its last ``LIMIT`` bytes at most) and deletes it, so a
file holds one epoch's output and memory stays bounded. What is read is also written to the descriptors
the process had before (Ray's worker log on that node), so ``ray logs`` keeps working.

Lost: what a process that dies (SIGKILL, the OOM killer, a segfault) wrote after its last report, and
what a successful trial writes after its last report (no report carries it; it stays in the worker log).
Standard library only: the trial's process imports it before torch."""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import sys
import tempfile
from collections import deque
from types import TracebackType

LIMIT = 1 << 20  # characters (bytes, in the trial) kept of a trial's output: the last MiB
OUTPUT_NOTE = "--- hpo: what the trial wrote after its last report (in its trial.log) ---"  # heads the note


class OutputTail:
    """The last ``limit`` characters of a text written in pieces; says how much it dropped before them."""

    def __init__(self, limit: int = LIMIT) -> None:
        self.limit = limit
        self.dropped = 0
        self._parts: deque[str] = deque()
        self._size = 0

    def write(self, text: str) -> None:
        if not text:
            return
        self._parts.append(text)
        self._size += len(text)
        while self._size - len(self._parts[0]) >= self.limit:  # the oldest pieces no longer needed
            gone = self._parts.popleft()
            self._size -= len(gone)
            self.dropped += len(gone)

    def text(self) -> str:
        joined = "".join(self._parts)
        cut = max(0, len(joined) - self.limit)
        dropped = self.dropped + cut
        note = f"[... {dropped} earlier characters dropped: the last {self.limit} are kept ...]\n" if dropped else ""
        return note + joined[cut:]


class OutputCapture:
    """Descriptors 1 and 2 of this process into a file of its own until ``stop()``; see the module."""

    def __init__(self, limit: int = LIMIT) -> None:
        self.limit = limit
        self._saved: tuple[int, int] | None = None
        self._file: int | None = None

    @property
    def active(self) -> bool:
        return self._saved is not None

    def start(self) -> OutputCapture:
        _flush()
        self._saved = (os.dup(1), os.dup(2))
        self._file = self._switch(_new_file())
        return self

    def take(self) -> str:
        """What was written since the last ``take`` (or ``start``): its last ``limit`` characters."""
        if self._saved is None or self._file is None:
            return ""
        _flush()
        old, self._file = self._file, self._switch(_new_file())
        return self._drain(old)

    def stop(self) -> str:
        """Put descriptors 1 and 2 back as they were; returns what was written since the last ``take``."""
        if self._saved is None or self._file is None:
            return ""
        _flush()
        saved, old = self._saved, self._file
        self._switch(saved[0], saved[1])
        self._saved = self._file = None
        try:
            return self._drain(old)
        finally:
            for fd in saved:
                os.close(fd)

    def __enter__(self) -> OutputCapture:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        rest = self.stop()
        if exc is not None:
            attach_output(exc, rest)

    @staticmethod
    def _switch(fd_out: int, fd_err: int | None = None) -> int:
        os.dup2(fd_out, 1)
        os.dup2(fd_out if fd_err is None else fd_err, 2)
        return fd_out

    def _drain(self, fd: int) -> str:
        """The last ``limit`` bytes of the file ``fd`` (closed after), echoed to the original descriptor."""
        try:
            size = os.fstat(fd).st_size
            start = max(0, size - self.limit)
            data = _read_all(fd, start, size - start)
        finally:
            os.close(fd)
        if data and self._saved is not None:
            echo = self._saved[0]
        elif data:
            echo = 1  # already put back: descriptor 1 is the original again
        else:
            return ""
        with contextlib.suppress(OSError):  # the worker log is a courtesy; the driver gets the text anyway
            _write_all(echo, data)
        note = f"[... {start} earlier bytes dropped: the last {self.limit} are kept ...]\n" if start else ""
        return note + data.decode("utf-8", errors="replace")


def attach_output(exc: BaseException, output: str) -> None:
    """Let ``exc`` carry ``output`` to the driver: a note after its message, so in its formatted traceback
    (the text Ray ships and records), under ``OUTPUT_NOTE``."""
    if output.strip():
        exc.add_note(f"{OUTPUT_NOTE}\n{output.removesuffix(chr(10))}")


def split_output(traceback: str) -> tuple[str, str]:
    """(the traceback, the output ``attach_output`` noted in it) of a formatted traceback."""
    head, marker, output = traceback.partition(f"\n{OUTPUT_NOTE}\n")
    return head, f"{output.rstrip(chr(10))}\n" if marker else ""


def _new_file() -> int:
    fd, path = tempfile.mkstemp(prefix="hpo-trial-output-")
    os.unlink(path)  # gone with its last descriptor: nothing is left behind if the process dies
    return fd


def _flush() -> None:
    """Python's and C's buffers out to the current descriptors, before they are switched."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    with contextlib.suppress(Exception):
        _libc().fflush(None)


@functools.cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None)


def _read_all(fd: int, offset: int, size: int) -> bytes:
    chunks = []
    while size > 0:
        chunk = os.pread(fd, min(size, 1 << 20), offset)
        if not chunk:
            break
        chunks.append(chunk)
        offset += len(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
