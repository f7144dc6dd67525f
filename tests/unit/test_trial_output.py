"""A trial's output caught at the file descriptors (``hpo.engine.trial_output``): print, warnings, raw
writes, C's stdio and child processes alike; handed over in pieces, bounded, and carried by an error's
traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import traceback

import pytest

from hpo.engine.trial_output import OutputCapture, OutputTail, split_output

SCRIPT = """\
import ctypes, json, os, subprocess, sys, warnings
from hpo.engine.trial_output import OutputCapture

with OutputCapture() as output:
    print("from print")
    print("from stderr", file=sys.stderr)
    os.write(2, b"raw write to 2\\n")
    ctypes.CDLL(None).puts(b"from C's stdio")  # buffered in libc: flushed before each hand-over
    warnings.warn("a warning", stacklevel=1)
    subprocess.run(["echo", "from a child process"], check=True)
    first = output.take()
    print("after the first take")
    rest = output.stop()
print("after stop")
with open(sys.argv[1], "w") as f:
    json.dump([first, rest], f)
"""


def test_everything_the_process_writes_is_caught_and_handed_over_once(tmp_path):
    # In a process of its own: pytest replaces sys.stdout and catches warnings; a Ray worker does neither.
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path / "caught.json")], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    first, rest = json.loads((tmp_path / "caught.json").read_text())
    lines = first.splitlines()
    for line in ("from print", "from stderr", "raw write to 2", "from C's stdio", "from a child process"):
        assert line in lines
    assert any("UserWarning: a warning" in line for line in lines)
    assert rest == "after the first take\n"
    # the descriptors are back, and what was caught went on to stdout as well (Ray's worker log)
    assert "from stderr" in done.stdout and "after the first take" in done.stdout and "after stop" in done.stdout


def test_the_output_is_bounded_to_its_last_characters():
    with OutputCapture(limit=1000) as output:
        os.write(1, b"a" * 5000 + b"b" * 1000)
        taken = output.take()
    assert taken.endswith("b" * 1000) and "a" not in taken.splitlines()[-1]
    assert taken.startswith("[... 5000 earlier bytes dropped")

    tail = OutputTail(limit=10)
    for piece in ("0123", "4567", "89ab", "cdef"):
        tail.write(piece)
    assert tail.text() == "[... 6 earlier characters dropped: the last 10 are kept ...]\n6789abcdef"
    for _ in range(10_000):
        tail.write("y" * 100)
    assert tail.text().endswith("y" * 10) and tail._size < 110  # old pieces are let go as new ones come


def test_an_error_carries_what_was_written_since_the_last_hand_over_in_its_traceback():
    with pytest.raises(ValueError) as raised, OutputCapture() as output:
        os.write(1, b"before the report\n")  # (print would go to pytest's capture, not the descriptor)
        output.take()
        os.write(2, b"its last words\n")
        raise ValueError("boom")
    text = "".join(traceback.format_exception(raised.value))  # as Ray formats it in the trial's process
    head, carried = split_output(text)
    assert carried == "its last words\n" and head.rstrip().endswith("ValueError: boom")
    assert "before the report" not in text  # handed over already, with a report
    assert split_output(head) == (head, "")
