"""``nightly_summary.md``: what changed since the study's previous finished run (last night's, for a
nightly job), logged to the study run. Read from MLflow, so it works wherever the runs were tracked."""

from __future__ import annotations

import time
from typing import Any

from hpo.names import RunKind, RunStatus
from hpo.tracking import Run, Tracker

ROWS = (
    ("best_val_accuracy", "best validation accuracy"),
    ("test_accuracy", "test accuracy"),
    ("test_loss", "test loss"),
    ("trials_completed", "trials completed"),
    ("trials_pruned", "trials pruned"),
    ("trials_failed", "trials failed"),
    ("wall_seconds", "wall time (min)"),
)


def _final_params(tracker: Tracker, study_run: str) -> dict[str, str]:
    finals = tracker.child_runs(study_run, RunKind.FINAL)
    return dict(finals[0].data.params) if finals else {}


def _previous(tracker: Tracker, study: str, current: str) -> Run | None:
    runs = tracker.study_runs(study, status=RunStatus.FINISHED, max_results=20)
    return next((r for r in runs if r.info.run_id != current), None)


def _fmt(key: str, value: float | None, sign: bool = False) -> str:
    if value is None:
        return "-"
    plus = "+" if sign else ""
    if key == "wall_seconds":
        return f"{value / 60:{plus}.1f}"
    return f"{value:{plus}.0f}" if key.startswith("trials_") else f"{value:{plus}.4f}"


def nightly_summary(
    tracker: Tracker, study: str, study_run: str, promotion: str | None, notes: list[str] | None = None
) -> str:
    """The summary as Markdown; also logged as ``nightly_summary.md`` on ``study_run``."""
    now = tracker.get_run(study_run)
    before = _previous(tracker, study, study_run)
    lines = [f"# {study}: run of {time.strftime('%Y-%m-%d %H:%M')}", ""]
    if before is None:
        lines += ["First finished run of this study: nothing to compare with.", ""]
    else:
        started = time.strftime("%Y-%m-%d %H:%M", time.localtime(before.info.start_time / 1000))
        lines += [
            f"Compared with the previous run `{before.info.run_id}` ({started}).",
            "",
            "| | previous | this run | change |",
            "|---|---|---|---|",
        ]
        for key, label in ROWS:
            old, new = before.data.metrics.get(key), now.data.metrics.get(key)
            change = "" if old is None or new is None else _fmt(key, new - old, sign=True)
            lines.append(f"| {label} | {_fmt(key, old)} | {_fmt(key, new)} | {change} |")
        lines.append("")
    lines += [f"**Champion:** {promotion or 'no model was registered'}", ""]
    if before is not None:
        old_params, new_params = _final_params(tracker, before.info.run_id), _final_params(tracker, study_run)
        changed = _diff(old_params, new_params)
        lines += ["**Winner's configuration:** " + ("unchanged" if not changed else "changed"), ""]
        lines += [f"- `{k}`: {a} → {b}" for k, a, b in changed]
        lines.append("")
    lines += [f"- {note}" for note in notes or []]
    text = "\n".join(lines).rstrip() + "\n"
    tracker.log_text(study_run, text, "nightly_summary.md")
    return text


def _diff(old: dict[str, Any], new: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    keys = sorted(set(old) | set(new))
    return [(k, old.get(k, "-"), new.get(k, "-")) for k in keys if old.get(k) != new.get(k)]
