"""The Pareto front of a study with several objectives, as a table and a plot: every trial with its
objectives, whether it is on the front and within the limits, and the one chosen (hpo.engine.pareto)."""

from __future__ import annotations

import csv
from pathlib import Path

from hpo.engine.live import short_params
from hpo.engine.pareto import ParetoChoice, ParetoPoint, pareto_front
from hpo.report.plots import pyplot

__all__ = ["PARETO_CSV", "PARETO_PNG", "pareto_png", "pareto_rows", "write_pareto"]

PARETO_CSV = "pareto.csv"
PARETO_PNG = "pareto.png"
_COSTS_ON_LOG_AXES = ("params", "flops")  # they span orders of magnitude across a space


def _fmt(value: float) -> str:
    return f"{value:.4f}" if not float(value).is_integer() else str(int(value))


def pareto_rows(choice: ParetoChoice) -> list[list[str]]:
    """A header, then one row per trial with all its values: the front first, each part by the first
    objective, best first."""
    first = choice.objectives[0]
    header = ["trial", *(o.metric for o in choice.objectives), "on_front", "within_limits", "chosen", "params_sampled"]

    def order(p: ParetoPoint) -> tuple:
        return (not p.on_front, -p.values[0] if first.direction == "max" else p.values[0], p.record.number)

    rows = [header]
    for p in sorted(choice.points, key=order):
        rows.append(
            [
                str(p.record.number),
                *(_fmt(v) for v in p.values),
                str(p.on_front).lower(),
                str(p.feasible).lower(),
                str(p.record is choice.chosen).lower(),
                short_params(p.record.params),
            ]
        )
    return rows


def pareto_png(choice: ParetoChoice, path: Path, title: str) -> Path:
    """The first objective against each other one: every trial, the front joined and highlighted, the
    limits as dashed lines (the side they rule out shaded), the chosen trial starred."""
    plt = pyplot()
    first, others = choice.objectives[0], choice.objectives[1:]
    fig, axes = plt.subplots(1, len(others), figsize=(6 * len(others), 4.6), dpi=110, squeeze=False)
    for i, (ax, o) in enumerate(zip(axes[0], others, strict=True), start=1):
        points = choice.points
        x = [p.values[i] for p in points]
        y = [p.values[0] for p in points]
        ax.scatter(x, y, s=28, color="0.65", label="trial", zorder=2)
        # the front of this pair of objectives, joined as a staircase (the front over all of them is coloured)
        pair = pareto_front([(p.values[i], p.values[0]) for p in points], [o.direction, first.direction])
        stairs = sorted((x[j], y[j]) for j in pair)
        if len(stairs) > 1:
            ax.plot(*zip(*stairs, strict=True), color="tab:blue", alpha=0.5, drawstyle="steps-post", zorder=1)
        front = [p for p in points if p.on_front]
        ax.scatter(
            [p.values[i] for p in front],
            [p.values[0] for p in front],
            s=46,
            color="tab:blue",
            label="Pareto front",
            zorder=3,
        )
        for p in points:
            ax.annotate(f"#{p.record.number}", (p.values[i], p.values[0]), fontsize=7, xytext=(3, 3), zorder=4,
                        textcoords="offset points")  # fmt: skip
        chosen = [p for p in points if p.record is choice.chosen]
        if chosen:
            c = chosen[0]
            ax.scatter([c.values[i]], [c.values[0]], s=220, marker="*", color="tab:red", label="chosen", zorder=5)
        if o.metric in _COSTS_ON_LOG_AXES and x and min(x) > 0 and max(x) / min(x) > 20:
            ax.set_xscale("log")
        for limit, vertical in ((o.limit, True), (first.limit, False)):
            if limit is None:
                continue
            line = ax.axvline if vertical else ax.axhline
            line(limit, color="tab:red", linestyle="--", linewidth=1, label="limit")
            direction = o.direction if vertical else first.direction
            span = ax.axvspan if vertical else ax.axhspan
            lo, hi = ax.get_xlim() if vertical else ax.get_ylim()
            if direction == "min":  # values above a ceiling are ruled out
                span(limit, max(hi, limit), color="tab:red", alpha=0.06)
            else:
                span(min(lo, limit), limit, color="tab:red", alpha=0.06)
            (ax.set_xlim if vertical else ax.set_ylim)(lo, hi)
        ax.set_xlabel(f"{o.metric} ({o.direction})")
        ax.set_ylabel(f"{first.metric} ({first.direction}; best epoch)")
        ax.grid(alpha=0.3)
        handles, labels = ax.get_legend_handles_labels()
        unique = dict(zip(labels, handles, strict=True))
        ax.legend(unique.values(), unique.keys(), fontsize=8)
    fig.suptitle(f"{title}\nchosen: {choice.describe()}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def write_pareto(choice: ParetoChoice, out_dir: Path, title: str) -> list[Path]:
    """``pareto.csv`` and ``pareto.png`` in ``out_dir``."""
    table = out_dir / PARETO_CSV
    with table.open("w", newline="") as fh:
        csv.writer(fh).writerows(pareto_rows(choice))
    return [table, pareto_png(choice, out_dir / PARETO_PNG, title)]
