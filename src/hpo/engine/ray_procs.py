"""The processes of the Ray instance a driver starts: none outlives the driver for long, however it ends.

Ray binds the processes the driver starts itself (GCS, raylet, monitor, dashboard, log monitor) to the
driver with a parent-death signal; the raylet's own children (``ray::DashboardAgent``,
``ray::RuntimeEnvAgent``) have none and outlive a killed driver by minutes. So ``hpo run`` starts a
watchdog beside Ray (``python -m hpo.engine.ray_procs RECORD``): it keeps a record of Ray's processes
(pid and start time, in the run folder's ``ray_procs.json``) while the driver lives and, the moment the
driver is gone (its pipe closes: an exit, a crash or SIGKILL alike), ends those still running and removes
the record. If the watchdog was killed with the driver, the record stays: the next ``hpo run`` or
``hpo status`` of the study ends exactly the processes it names (see :func:`end_leftovers`).

Standard library only (``hpo status`` stays fast); Linux's ``/proc``. Elsewhere nothing is recorded.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

__all__ = ["RECORD", "Proc", "RayWatch", "child_pids", "end_leftovers", "this_machine", "watch_ray"]

RECORD = "ray_procs.json"  # in the run folder
SCAN_SECONDS = 1.0  # how often the watchdog looks for new Ray processes (workers come and go)
GRACE_SECONDS = 1.0  # SIGTERM, then SIGKILL for what is still running after this (agents ignore it)


@dataclass(frozen=True)
class Proc:
    """One process for good: a pid is reused, a pid with its start time (clock ticks since boot) is not."""

    pid: int
    start: int
    name: str = ""

    def alive(self) -> bool:
        stat = _stat(self.pid, with_name=False)
        return stat is not None and stat[1] == self.start and stat[2] not in "ZX"

    def signal(self, signum: int) -> bool:
        """Send ``signum`` if this very process still runs (a pidfd pins it between the check and the kill)."""
        try:
            fd = os.pidfd_open(self.pid)
        except (OSError, AttributeError) as exc:  # no such process, or no pidfds (Linux < 5.3)
            if isinstance(exc, ProcessLookupError) or not self.alive():
                return False
            try:
                os.kill(self.pid, signum)
            except ProcessLookupError:
                return False
            return True
        try:
            if not self.alive():
                return False
            signal.pidfd_send_signal(fd, signum)
            return True
        except OSError:
            return False
        finally:
            os.close(fd)


def _stat(pid: int, *, with_name: bool = True) -> tuple[int, int, str, str] | None:
    """(parent pid, start time, state, name) from /proc/<pid>/stat; None if there is no such process. The
    name of a Ray worker is its title (``ray::DashboardAgent``), not the executable's."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    name_end = text.rfind(")")  # the name is in parentheses and may hold spaces or parentheses itself
    fields = text[name_end + 2 :].split()
    if not with_name:
        return int(fields[1]), int(fields[19]), fields[0], ""
    try:
        name = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace").strip()
    except OSError:
        name = ""
    name = name if name.startswith("ray::") else text[text.find("(") + 1 : name_end]
    return int(fields[1]), int(fields[19]), fields[0], name


def proc(pid: int) -> Proc | None:
    stat = _stat(pid)
    return Proc(pid, stat[1], stat[3]) if stat is not None else None


def _parents() -> dict[int, int]:
    """Every process's parent pid, from one pass over /proc."""
    parents: dict[int, int] = {}
    if not os.path.isdir("/proc"):
        return parents
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            stat = _stat(int(entry.name), with_name=False)
            if stat is not None:
                parents[int(entry.name)] = stat[0]
    return parents


def child_pids(pid: int | None = None) -> set[int]:
    """The pids of the direct children of ``pid`` (default: this process)."""
    pid = os.getpid() if pid is None else pid
    return {child for child, parent in _parents().items() if parent == pid}


def descendants(roots: Iterable[int]) -> dict[int, Proc]:
    """Every live process below (and including) ``roots``."""
    children: dict[int, list[int]] = {}
    for child, parent in _parents().items():
        children.setdefault(parent, []).append(child)
    found: dict[int, Proc] = {}
    todo = list(roots)
    while todo:
        pid = todo.pop()
        p = proc(pid)
        if p is None or pid in found:
            continue
        found[pid] = p
        todo.extend(children.get(pid, []))
    return found


def end(procs: Iterable[Proc], grace: float = GRACE_SECONDS) -> list[Proc]:
    """SIGTERM those of ``procs`` still running, SIGKILL whatever is left after ``grace`` s; return those
    that were running."""
    ended = [p for p in procs if p.signal(signal.SIGTERM)]
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(p.alive() for p in ended):
        time.sleep(0.1)
    for p in ended:
        p.signal(signal.SIGKILL)
    return ended


def _write(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def this_machine() -> str:
    """This machine as its processes see it: a pid names a process only within one PID namespace of one
    boot of one host (a run folder on a shared volume is read from other pods and hosts)."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        namespace = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        boot, namespace = "?", 0
    return f"{socket.gethostname()}/{boot}/{namespace}"


def _read(path: Path) -> tuple[list[Proc], list[Proc]]:
    """(the driver and the watchdog, Ray's processes) as recorded in ``path``; nothing if another machine
    wrote it."""
    data = json.loads(path.read_text())
    if data.get("machine") != this_machine():
        return [], []
    keepers = [Proc(*data[k]) for k in ("driver", "watchdog") if data.get(k)]
    return keepers, [Proc(*p) for p in data.get("processes", [])]


class RayWatch:
    """The driver's end of the watchdog: closing it (or the driver's death) ends what is left of Ray."""

    def __init__(self, process: subprocess.Popen) -> None:
        self.process = process

    def close(self, timeout: float = GRACE_SECONDS + 2) -> None:
        """After ``ray.shutdown()``: the watchdog ends any straggler, removes the record and exits."""
        if self.process.stdin is not None:
            with contextlib.suppress(OSError):
                self.process.stdin.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout)


def watch_ray(run_folder: Path, roots: Iterable[int]) -> RayWatch | None:
    """Start the watchdog over the processes ``roots`` (the driver's children that starting Ray added) and
    everything below them; None where there is nothing to watch or no /proc."""
    roots = sorted(roots)
    if not roots or not Path("/proc/self/stat").exists():
        return None
    process = subprocess.Popen(
        [sys.executable, "-m", "hpo.engine.ray_procs", str(run_folder / RECORD), *map(str, roots)],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return RayWatch(process)


def end_leftovers(run_folder: Path) -> list[Proc]:
    """The Ray processes a dead driver of this run left (its watchdog dead too), ended; [] if none. A record
    whose driver or watchdog still runs is left alone: they look after it."""
    record = run_folder / RECORD
    try:
        keepers, procs = _read(record)
    except (OSError, ValueError, TypeError):
        return []
    if not keepers:  # another machine's record: its processes are not ours to end
        return []
    if any(p.alive() for p in keepers):
        return []
    ended = end(procs)
    record.unlink(missing_ok=True)
    return ended


def describe_ended(run_folder: Path, ended: list[Proc]) -> str:
    """One line on what :func:`end_leftovers` ended."""
    names = ", ".join(f"{p.pid} {p.name}" for p in ended)
    return (
        f"ended {len(ended)} leftover Ray process{'es' * (len(ended) != 1)} of the dead run {run_folder.name} ({names})"
    )


def _watch(record: Path, roots: list[int]) -> None:
    """The watchdog: record Ray's processes while the driver lives, end them once it is gone."""
    # A terminal's Ctrl-C and a group's SIGTERM are for the driver, which ends Ray in order; the watchdog
    # stays until the driver's end closes its pipe.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    driver, me, machine = proc(os.getppid()), proc(os.getpid()), this_machine()
    seen: dict[int, Proc] = {}
    while driver is not None and driver.alive():
        current = descendants(roots + [p.pid for p in seen.values() if p.alive()])
        fresh = {pid: p for pid, p in current.items() if seen.get(pid) != p}
        if fresh:
            seen.update(fresh)
            seen = {pid: p for pid, p in seen.items() if p.alive()}
            _write(
                record,
                {
                    "machine": machine,
                    "driver": [driver.pid, driver.start, driver.name],
                    "watchdog": [me.pid, me.start, me.name] if me else None,
                    "processes": [[p.pid, p.start, p.name] for p in seen.values()],
                },
            )
        readable, _, _ = select.select([sys.stdin], [], [], SCAN_SECONDS)
        if readable and not os.read(sys.stdin.fileno(), 4096):
            break  # the driver closed its end, or died
    # the roots' children that were reparented when their parents died are in ``seen``
    end(p for p in seen.values() if p.alive())
    record.unlink(missing_ok=True)


if __name__ == "__main__":
    _watch(Path(sys.argv[1]), [int(a) for a in sys.argv[2:]])
