"""Backends side by side, from what MLflow holds: the latest finished parent run of each backend in a
study's experiment, their headline numbers, and the best validation accuracy each had reached over time."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hpo.names import Metric, RunKind, RunStatus, Tag
from hpo.report.plots import pyplot

# hpo.kind -> backend (a baseline's is its hpo.backend tag)
PARENT_KINDS: dict[str, str | None] = {RunKind.STUDY: "search", RunKind.BASELINE: None}


@dataclass
class BackendRun:
    backend: str
    run: Any  # an MLflow Run

    @property
    def metrics(self) -> dict[str, float]:
        return self.run.data.metrics


def latest_backend_runs(client, experiment_id: str) -> dict[str, BackendRun]:
    """The newest finished parent run of each backend, keyed by backend name."""
    runs = [
        run
        for kind in PARENT_KINDS
        for run in client.search_runs(
            [experiment_id],
            f"tags.`{Tag.KIND}` = '{kind}' and attributes.status = '{RunStatus.FINISHED}'",
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
    ]
    found: dict[str, BackendRun] = {}
    for run in sorted(runs, key=lambda r: r.data.tags.get(Tag.BACKEND) != "search"):
        tags = run.data.tags
        backend = tags.get(Tag.BACKEND) or PARENT_KINDS.get(tags.get(Tag.KIND, ""), "search") or RunKind.BASELINE
        found.setdefault(backend, BackendRun(backend, run))
    return found


def progress(
    client, experiment_id: str, parent, metric: str = Metric.VAL_ACCURACY, mode: str = "max"
) -> list[tuple[float, float]]:
    """(minutes since the parent run started, best ``metric`` of any trial so far), one point per epoch."""
    trials = client.search_runs(
        [experiment_id],
        f"tags.`mlflow.parentRunId` = '{parent.info.run_id}' and tags.`{Tag.KIND}` = '{RunKind.TRIAL}'",
        max_results=5000,
    )
    points = sorted((m.timestamp, m.value) for t in trials for m in client.get_metric_history(t.info.run_id, metric))
    start = parent.info.start_time
    curve, best = [], None
    for stamp, value in points:
        if best is None or (value > best if mode == "max" else value < best):
            best = value
        curve.append(((stamp - start) / 60000.0, best))
    searched = parent.data.metrics.get("search_seconds")
    if curve and searched and searched / 60 > curve[-1][0]:
        curve.append((searched / 60, curve[-1][1]))  # the level held until the search ended
    return curve


def comparison_rows(runs: dict[str, BackendRun], metric: str = Metric.VAL_ACCURACY) -> list[list]:
    """A table (header first): test accuracy, best validation metric, wall time, trials and epochs."""
    rows: list[list[Any]] = [
        [
            "backend",
            "test accuracy",
            f"best {metric}",
            "trials",
            "trial epochs",
            "search (min)",
            "wall time (min)",
            "run",
        ]
    ]
    for name, r in runs.items():
        m = r.metrics
        trials = sum(v for k, v in m.items() if k.startswith("trials_"))
        rows.append(
            [
                name,
                _fmt(m.get("test_accuracy")),
                _fmt(m.get(f"best_{metric}")),
                int(trials),
                int(m.get("trial_epochs", 0)),
                _fmt(m.get("search_seconds", 0) / 60, 1),
                _fmt(m.get("wall_seconds", 0) / 60, 1),
                r.run.info.run_id,
            ]
        )
    return rows


def _fmt(value, digits: int = 4):
    return "-" if value is None else round(float(value), digits)


def progress_png(
    curves: dict[str, list[tuple[float, float]]],
    finals: dict[str, float | None],
    path: Path,
    title: str,
    metric: str = Metric.VAL_ACCURACY,
) -> Path:
    """Best ``metric`` reached over wall time, one step line per backend; the test accuracy each ended
    with as a dashed level."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.5), dpi=110)
    for i, (name, curve) in enumerate(curves.items()):
        colour = f"C{i}"
        if curve:
            xs, ys = zip(*curve, strict=False)
            ax.step(xs, ys, where="post", color=colour, lw=1.8, label=f"{name}: best {metric}")
            ax.plot(xs, ys, ".", color=colour, ms=3)
        if finals.get(name) is not None:
            ax.axhline(finals[name], color=colour, ls="--", lw=1, label=f"{name}: test accuracy {finals[name]:.4f}")
    ax.set(xlabel="minutes since the backend started", ylabel=metric, title=title)
    ax.set_xlim(left=0)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
