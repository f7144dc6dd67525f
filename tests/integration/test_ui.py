"""`hpo ui` in a real browser lands on the training runs with the trials listed (not MLflow's GenAI
overview); `hpo dashboard` serves the run's Optuna storage (its API answers with the trials)."""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import re
import select
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from hpo.testing import REPO_ROOT, hpo_env, run_hpo

pytestmark = pytest.mark.integration

SMOKE = REPO_ROOT / "studies" / "smoke.yaml"


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed; .ci/run installs it")
        pytest.skip("no chromium here (apt-get install chromium)")
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(process: subprocess.Popen) -> None:
    """End the process group this test started (the process and what it spawned, nothing else)."""
    for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 10)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        try:
            process.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


@contextlib.contextmanager
def serving(args: list[str], cwd: Path, log: Path, ready: str, timeout: float = 120) -> Iterator[tuple[str, str]]:
    """Run ``hpo ARGS`` (a server) in a process group of its own; once ``ready`` (a path) answers, yield the
    server's root and the address the command told the user to open; stop the group afterwards, whatever
    happened."""
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "hpo.cli", *args],
            cwd=cwd,
            env=hpo_env(),
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + timeout
        found = None
        while True:
            assert process.poll() is None, f"hpo {args[0]} exited {process.returncode}:\n{log.read_text()}"
            assert time.monotonic() < deadline, f"hpo {args[0]} did not answer in {timeout} s:\n{log.read_text()}"
            found = found or re.search(r" on (http://127\.0\.0\.1:\d+)(\S*)", log.read_text(errors="replace"))
            if found:
                try:
                    with urllib.request.urlopen(found.group(1) + ready, timeout=5):
                        break
                except (urllib.error.URLError, OSError):
                    pass
            time.sleep(0.5)
        yield found.group(1), found.group(0).removeprefix(" on ")
    finally:
        _stop(process)


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.load(response)


def _above_4(fd: int) -> int:
    """The same pipe end on a descriptor above 4, so that wiring the browser's 3 and 4 never overwrites it."""
    high = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 5)
    os.close(fd)
    return high


class Chromium:
    """Headless Chromium driven over the DevTools protocol on a pipe (--remote-debugging-pipe: JSON messages
    ended by NUL, commands on the browser's descriptor 3, answers on 4): the standard library suffices, and
    the test can wait for the React app to render and read where it landed."""

    FLAGS = (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-extensions",
        "--remote-debugging-pipe",
        "--window-size=1400,1000",
    )

    def __init__(self, executable: str, profile: Path) -> None:
        commands_read, self._commands = map(_above_4, os.pipe())
        self._answers, answers_write = map(_above_4, os.pipe())
        self._buffer = b""
        self._id = 0
        wire = f'exec "$@" 3<&{commands_read} 4>&{answers_write} {commands_read}<&- {answers_write}>&-'
        # bash, not sh: dash cannot name descriptors above 9
        self.process = subprocess.Popen(
            ["bash", "-c", wire, "bash", executable, *self.FLAGS, f"--user-data-dir={profile}", "about:blank"],
            pass_fds=(commands_read, answers_write),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        os.close(commands_read)
        os.close(answers_write)
        try:
            page = next(t for t in self.send("Target.getTargets")["targetInfos"] if t["type"] == "page")
            self._session = self.send(
                "Target.attachToTarget", {"targetId": page["targetId"], "flatten": True}, session=False
            )["sessionId"]
        except BaseException:
            self.close()
            raise

    def _message(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._answers], [], [], left)[0]:
                raise TimeoutError("chromium did not answer")
            chunk = os.read(self._answers, 1 << 20)
            if not chunk:
                raise RuntimeError(f"chromium closed its DevTools pipe (exit {self.process.poll()})")
            self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(raw)

    def send(
        self, method: str, params: dict[str, Any] | None = None, *, session: bool = True, timeout: float = 60
    ) -> dict[str, Any]:
        self._id += 1
        message: dict[str, Any] = {"id": self._id, "method": method, "params": params or {}}
        if session and hasattr(self, "_session"):
            message["sessionId"] = self._session
        os.write(self._commands, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:  # events arrive in between; they are not needed here
            answer = self._message(deadline)
            if answer.get("id") == self._id:
                if "error" in answer:
                    raise RuntimeError(f"{method}: {answer['error']}")
                return answer["result"]

    def page(self) -> dict[str, str]:
        """Where the page is (its address) and what it shows (its visible text)."""
        script = "JSON.stringify({url: location.href, text: document.body ? document.body.innerText : ''})"
        result = self.send("Runtime.evaluate", {"expression": script, "returnByValue": True})
        return json.loads(result["result"]["value"])

    def open(self, url: str, until: Callable[[dict[str, str]], bool], timeout: float = 90) -> dict[str, str]:
        """Navigate as a user would, then wait until the page satisfies ``until`` (or ``timeout`` passes, then
        the page as it is: the caller's assertions say what is missing)."""
        self.send("Page.navigate", {"url": "about:blank"})  # a fresh load, not a hash change in the same app
        self.send("Page.navigate", {"url": url})
        deadline = time.monotonic() + timeout
        state = {"url": url, "text": ""}
        while time.monotonic() < deadline:
            with contextlib.suppress(RuntimeError):  # between two documents: no context to evaluate in yet
                state = self.page()
            if until(state):
                break
            time.sleep(0.5)
        return state

    def screenshot(self, path: Path) -> Path:
        path.write_bytes(base64.b64decode(self.send("Page.captureScreenshot", {"format": "png"})["data"]))
        return path

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.send("Browser.close", session=False, timeout=10)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=10)
        if self.process.poll() is None:
            _stop(self.process)
        os.close(self._commands)
        os.close(self._answers)

    def __enter__(self) -> Chromium:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _copy_store(source: Path, target: Path) -> None:
    """A consistent copy of a SQLite store (SQLite's backup, not a file copy that could miss a journal)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.closing(sqlite3.connect(source)) as src, contextlib.closing(sqlite3.connect(target)) as dst:
        src.backup(dst)


def test_ui_lands_on_the_training_runs_with_the_trials_listed(smoke_run, smoke_runs, tmp_path):
    browser = chromium()
    client, by_kind = smoke_runs
    experiment = client.get_experiment_by_name("smoke").experiment_id
    trials = sorted(r.info.run_name for r in by_kind["trial"])
    assert len(trials) == 4
    work = tmp_path / "work"  # the UI reads a copy of the store: whatever it writes stays out of the session's
    _copy_store(smoke_run.work / "mlflow" / "mlflow.db", work / "mlflow" / "mlflow.db")

    def overview(page: dict[str, str]) -> bool:
        return "/overview" in page["url"] or "Token Usage" in page["text"]

    ui = ["ui", str(SMOKE), "--port", str(free_port())]
    with (
        serving(ui, work, tmp_path / "ui.log", "/health") as (base, told),
        Chromium(browser, tmp_path / "profile") as page,
    ):
        # The control, in the same fresh browser: the experiment's plain address (where the UI's list of
        # experiments links) opens on MLflow's GenAI overview, whatever the experiment's tags say.
        plain = page.open(f"{base}/#/experiments/{experiment}", until=overview)
        shot = page.screenshot(tmp_path / "plain.png")
        assert re.search(rf"#/experiments/{experiment}/overview\b", plain["url"]), (plain["url"], shot)

        # What `hpo ui STUDY` tells the user to open lands on the study's training runs, the trials listed.
        def missing(page: dict[str, str]) -> list[str]:  # a run's name is a cell of its own: recheck-trial-001-...
            return [name for name in trials if not re.search(rf"(^|\s){name}(\s|$)", page["text"])]

        landed = page.open(
            told if "#/experiments/" in told else f"{base}/#/experiments/{experiment}", until=lambda p: not missing(p)
        )
        shot = page.screenshot(tmp_path / "told.png")
        assert re.search(rf"#/experiments/{experiment}/runs\b", landed["url"]), (told, landed["url"], shot)
        assert not overview(landed) and "workflowType=genai" not in landed["url"], (landed["url"], shot)
        assert not missing(landed), f"trial runs not listed: {missing(landed)} ({told} -> {landed['url']}, {shot})"


def test_the_ui_address_of_a_study(smoke_run, smoke_runs, tmp_path):
    from hpo.tracking.ui_links import study_address

    client, _ = smoke_runs
    experiment = client.get_experiment_by_name("smoke").experiment_id
    assert study_address("http://127.0.0.1:5000", smoke_run.uri, "smoke", "val_loss", "min") == (
        f"http://127.0.0.1:5000/#/experiments/{experiment}/runs?workflowType=machine_learning"
        "&orderByKey=metrics.%60val_loss%60&orderByAsc=true"
    )
    # a study not in the store, or no store yet (not created by looking): the server's root
    assert study_address("http://h:1", smoke_run.uri, "never-ran", "val_accuracy", "max") == "http://h:1"
    missing = tmp_path / "mlflow" / "mlflow.db"
    assert study_address("http://h:1", f"sqlite:///{missing}", "smoke", "val_accuracy", "max") == "http://h:1"
    assert not missing.parent.exists()


def _optuna_dashboard() -> None:
    try:
        import optuna_dashboard  # noqa: F401
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail('optuna-dashboard is not installed; pip install -e ".[test]" installs it')
        pytest.skip('optuna-dashboard is not installed (pip install -e ".[dashboard]")')


def test_dashboard_serves_the_latest_run_with_its_trials(smoke_run, tmp_path):
    _optuna_dashboard()
    folders = sorted(p.name for p in (smoke_run.work / "runs" / "smoke").iterdir() if (p / "state.json").is_file())
    # the latest run's own Optuna study, as its state names it (one study per study name: "smoke")
    name = json.loads((smoke_run.work / "runs" / "smoke" / folders[-1] / "state.json").read_text())["optuna_study"]
    with serving(
        ["dashboard", str(SMOKE), "--port", str(free_port())], smoke_run.work, tmp_path / "dashboard.log", "/api/meta"
    ) as (base, _):
        summaries = get_json(f"{base}/api/studies")["study_summaries"]
        (study,) = [s for s in summaries if s["study_name"] == name]
        assert study["directions"] == ["maximize"]
        detail = get_json(f"{base}/api/studies/{study['study_id']}")
    assert detail["name"] == name == "smoke"
    assert sorted(t["number"] for t in detail["trials"]) == [0, 1, 2, 3]  # the smoke study's 4 trials
    assert all(t["params"] for t in detail["trials"])
    assert detail["best_trials"] and all(t["state"] == "Complete" for t in detail["best_trials"])


def test_dashboard_refuses_clearly(tmp_path):
    # without the extra: a stand-in package that fails to import, ahead of the real one on the path
    shadow = tmp_path / "shadow" / "optuna_dashboard"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('optuna-dashboard is not installed (a test stand-in)')\n")
    path = os.pathsep.join(filter(None, [str(shadow.parent), os.environ.get("PYTHONPATH")]))
    result = run_hpo(["dashboard", str(SMOKE)], tmp_path, env={"PYTHONPATH": path})
    assert result.returncode == 2, result.stdout + result.stderr
    assert 'pip install -e ".[dashboard]"' in result.stderr

    _optuna_dashboard()
    result = run_hpo(["dashboard", str(SMOKE)], tmp_path)  # nothing has run here
    assert result.returncode == 2 and "has no Optuna storage yet" in result.stderr and "hpo run" in result.stderr
    run = tmp_path / "runs" / "smoke" / "20260101-000000"
    run.mkdir(parents=True)
    (run / "state.json").write_text(json.dumps({"study": "smoke", "fingerprint": "x"}))
    result = run_hpo(["dashboard", str(SMOKE), "--run", "19990101-000000"], tmp_path)
    assert result.returncode == 2 and "has no run 19990101-000000" in result.stderr and "hpo status" in result.stderr
