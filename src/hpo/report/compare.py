"""Side by side, from what MLflow holds. Backends: the latest finished parent run of each backend in a
study's experiment, their headline numbers, and the best validation accuracy each had reached over time.
``hpo compare``: two runs or two studies, their parameters (the differing ones first), metrics and the
per-epoch curves of their best trials and final retrains."""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hpo.errors import HpoError
from hpo.names import EPOCH_METRICS, Metric, RunKind, RunStatus, Tag
from hpo.report.plots import pyplot
from hpo.tracking.base import PARENT_RUN_TAG

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


# ------------------------------------------------------------------------------------------ hpo compare
# Two runs or two studies side by side: what each was run with, what it scored, how its best trial and its
# final retrain learned, epoch by epoch.
RUN_ID = re.compile(r"[0-9a-f]{32}")
TRIAL_CURVES = (Metric.VAL_ACCURACY, Metric.VAL_LOSS)  # the winning trial's, per epoch
FINAL_CURVES = (Metric.TRAIN_ACCURACY, Metric.TRAIN_LOSS)  # the final retrain's (it holds no validation split)


@dataclass
class CompareSide:
    """One side of ``hpo compare``: a study's run (search or baseline), its final run and its best trial."""

    asked: str  # what the user named: a study or a run id
    study: str
    study_run: Any | None  # MLflow Runs
    final_run: Any | None
    winner_run: Any | None
    params: dict[str, str]
    metrics: dict[str, float]
    curves: dict[str, list[tuple[int, float]]]  # "trial val_accuracy" -> [(epoch, value), ...]

    @property
    def label(self) -> str:
        run = self.study_run or self.final_run
        return self.study if run is None or self.asked == self.study else f"{self.study} {run.info.run_id[:8]}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "asked": self.asked,
            "study": self.study,
            "study_run": self.study_run.info.run_id if self.study_run else None,
            "final_run": self.final_run.info.run_id if self.final_run else None,
            "winner_run": self.winner_run.info.run_id if self.winner_run else None,
            "params": self.params,
            "metrics": self.metrics,
            "curves": {k: [list(p) for p in v] for k, v in self.curves.items()},
        }


@dataclass
class Comparison:
    a: CompareSide
    b: CompareSide

    def param_rows(self) -> list[tuple[str, str | None, str | None, bool]]:
        """(param, A's value, B's value, whether they differ), the differing ones first."""
        names = sorted(set(self.a.params) | set(self.b.params))
        rows = [(n, self.a.params.get(n), self.b.params.get(n)) for n in names]
        return sorted(((n, x, y, x != y) for n, x, y in rows), key=lambda r: not r[3])

    def metric_rows(self) -> list[tuple[str, float | None, float | None]]:
        names = sorted(set(self.a.metrics) | set(self.b.metrics))
        return [(n, self.a.metrics.get(n), self.b.metrics.get(n)) for n in names]

    def curve_rows(self, *, accuracy_only: bool = False) -> tuple[list[str], list[list[float | None]]]:
        """A table of the curves by epoch: header (epoch, then ``A: trial val_accuracy``, ...), rows."""
        names = sorted(
            (n for n in {*self.a.curves, *self.b.curves} if not accuracy_only or n.endswith("accuracy")),
            key=lambda n: (not n.startswith("trial"), n),  # the trial's curves first, then the retrain's
        )
        columns = [(side, name) for name in names for side in (self.a, self.b)]
        header = ["epoch", *(f"{side.label}: {name}" for side, name in columns)]
        epochs = sorted({e for side in (self.a, self.b) for curve in side.curves.values() for e, _ in curve})
        values = [{name: dict(curve) for name, curve in side.curves.items()} for side in (self.a, self.b)]
        rows = []
        for epoch in epochs:
            row: list[float | None] = [float(epoch)]
            for side, name in columns:
                row.append(values[0 if side is self.a else 1].get(name, {}).get(epoch))
            rows.append(row)
        return header, rows

    def as_dict(self) -> dict[str, Any]:
        return {
            "a": self.a.as_dict(),
            "b": self.b.as_dict(),
            "params_differ": [n for n, _, _, differs in self.param_rows() if differs],
        }


def compare(client, a: str, b: str) -> Comparison:
    """``a`` and ``b``: MLflow run ids (a study, baseline, final or trial run) or study names (each one's
    latest finished run, else its latest)."""
    return Comparison(_side(client, a), _side(client, b))


def _side(client, asked: str) -> CompareSide:
    from mlflow.exceptions import MlflowException

    study_run = final = winner = None
    if RUN_ID.fullmatch(asked):
        try:
            run = client.get_run(asked)
        except MlflowException:
            raise HpoError(f"no run {asked} in this store") from None
        kind = run.data.tags.get(Tag.KIND)
        if kind in (RunKind.FINAL, RunKind.TRIAL, RunKind.RECHECK):
            parent = run.data.tags.get(PARENT_RUN_TAG)
            study_run = client.get_run(parent) if parent else None
            final, winner = (run, None) if kind == RunKind.FINAL else (None, run)
        elif kind in PARENT_KINDS:
            study_run = run
        else:
            raise HpoError(f"run {asked} is not one of hpo's runs (its {Tag.KIND} tag is {kind!r})")
    else:
        study_run = _latest_study_run(client, asked)
    if study_run is not None and final is None and winner is None:
        final = latest_final_run(client, study_run)
    if winner is None:
        winner_id = (final.data.tags.get(Tag.WINNER_RUN) if final else None) or (
            study_run.data.tags.get(Tag.WINNER_RUN) if study_run else None
        )
        if winner_id:
            with contextlib.suppress(MlflowException):
                winner = client.get_run(winner_id)
    params: dict[str, str] = {}
    metrics: dict[str, float] = {}
    for run in (study_run, winner if final is None else None, final):
        if run is not None:
            params.update(run.data.params)
            metrics.update({k: v for k, v in run.data.metrics.items() if k not in EPOCH_METRICS})
    curves: dict[str, list[tuple[int, float]]] = {}
    for prefix, run, names in (("trial", winner, TRIAL_CURVES), ("final", final, FINAL_CURVES)):
        if run is None:
            continue
        for name in names:
            history = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, name))
            if history:
                curves[f"{prefix} {name}"] = history
    some = study_run or final or winner
    study = some.data.tags.get(Tag.STUDY) if some is not None else None
    return CompareSide(asked, study or asked, study_run, final, winner, params, metrics, curves)


def latest_final_run(client, study_run):
    """The latest final run under ``study_run`` (an MLflow run), or None."""
    finals = client.search_runs(
        [study_run.info.experiment_id],
        f"tags.`{PARENT_RUN_TAG}` = '{study_run.info.run_id}' and tags.`{Tag.KIND}` = '{RunKind.FINAL}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return finals[0] if finals else None


def _latest_study_run(client, study: str):
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = (
        [
            run
            for kind in PARENT_KINDS
            for run in client.search_runs(
                experiments,
                f"tags.`{Tag.STUDY}` = '{study}' and tags.`{Tag.KIND}` = '{kind}'",
                order_by=["attributes.start_time DESC"],
                max_results=50,
            )
        ]
        if experiments
        else []
    )
    if not runs:
        raise HpoError(f"no study {study!r} in this store (`hpo list` shows its studies), and it is not a run id")
    finished = [r for r in runs if r.info.status == RunStatus.FINISHED]
    return max(finished or runs, key=lambda r: r.info.start_time)


def compare_png(comparison: Comparison, path: Path) -> Path:
    """The two sides' curves by epoch: accuracy on the left, loss on the right; one colour per side, the
    winning trial's validation solid, the final retrain's training dashed."""
    plt = pyplot()
    from matplotlib.ticker import MaxNLocator

    fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(10, 4), dpi=110)
    for colour, side in (("tab:blue", comparison.a), ("tab:orange", comparison.b)):
        for name, curve in side.curves.items():
            ax = ax_loss if name.endswith("loss") else ax_acc
            xs, ys = zip(*curve, strict=True)
            ax.plot(
                xs,
                ys,
                "-" if name.startswith("trial") else "--",
                color=colour,
                marker=".",
                label=f"{side.label}: {name}",
            )
    for ax, name in ((ax_acc, "accuracy"), (ax_loss, "loss")):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set(xlabel="epoch", ylabel=name)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    fig.suptitle(f"{comparison.a.label} vs {comparison.b.label}")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
