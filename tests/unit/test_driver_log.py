"""The driver's log (``hpo.engine.driver_log``): what the run's console prints, in the run folder's
``driver.log`` as plain text stamped with the time, and on the study runs at the end, however it ends."""

from __future__ import annotations

import io
import re

from rich.console import Console
from rich.live import Live
from rich.table import Table

from hpo.engine.driver_log import DriverLog
from hpo.names import Artifact, RunKind, Tag
from hpo.tracking import InMemoryTracker

STAMP = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d ")


def test_the_console_is_teed_as_plain_text_and_logged_on_the_study_runs_when_the_run_fails(tmp_path):
    screen = io.StringIO()
    console = Console(file=screen, force_terminal=True, color_system="truecolor", width=60)
    tracker = InMemoryTracker()
    study_run = tracker.start_run("study", tags={Tag.KIND: RunKind.STUDY})
    tracker.reopen(study_run, {})  # opened by this run, as a resumed run reopens its study run
    log = DriverLog.start(console, tmp_path)
    console.print("[bold]data[/] fashion_mnist: [red]1000 images[/]")
    with console.status("loading data"):  # a spinner: its frames are not logged, what is printed is
        console.print("inside the spinner")
    table = Table(title="search")
    table.add_column("trials")
    table.add_row("6")
    with Live(table, console=console, refresh_per_second=20):
        console.print("above the live table")
    try:
        raise ValueError("boom")
    except ValueError as exc:
        log.finish(tracker, exc)
    log.finish(tracker)  # a second call (the runner's success path never follows a failure): nothing
    console.print("after the end")

    text = (tmp_path / Artifact.DRIVER_LOG).read_text()
    assert "\x1b" in screen.getvalue() and "\x1b" not in text  # colours and cursor moves on the screen only
    assert all(STAMP.match(line) for line in text.splitlines() if line)
    lines = [STAMP.sub("", line) for line in text.splitlines()]
    assert lines[0].startswith("hpo ") and f"run in {tmp_path}" in lines[0]
    assert lines[1:3] == ["data fashion_mnist: 1000 images", "inside the spinner"]
    assert "above the live table" in lines
    assert "trials" not in text and "loading data" not in text  # the live table's and spinner's frames
    assert "run ended with ValueError: boom" in lines and 'raise ValueError("boom")' in text  # the traceback
    assert "after the end" not in text and text.count("run ended") == 1
    assert tracker.runs[study_run].artifacts == {Artifact.DRIVER_LOG: tmp_path / Artifact.DRIVER_LOG}

    DriverLog.start(console, tmp_path).finish()  # a resumed run appends
    again = (tmp_path / Artifact.DRIVER_LOG).read_text()
    assert again.startswith(text) and again.count("run ended") == 2
