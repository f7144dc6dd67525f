"""Study-level views: Optuna's plots as one self-contained HTML page, and the best trial per family."""

from __future__ import annotations

import csv
import html
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hpo.engine.live import short_params
from hpo.engine.records import TrialRecord


def optuna_plots_html(storage_url: str, study_name: str, path: Path, first_objective: str | None = None) -> Path:
    """Optimisation history, parameter importances and parallel coordinates in one HTML file (plotly.js
    embedded once, so it opens offline); for several objectives, of the first (``first_objective``), and
    Optuna's Pareto front; for one, every trial's learning curve (pruned and stopped trials too).

    Optuna draws the first three from COMPLETE trials alone: where none ran its budget (ASHA, the time
    budget or a deadline cut every one), the page says so instead of showing empty plots."""
    import optuna
    import plotly.io as pio
    from optuna.trial import TrialState

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=study_name, storage=storage_url)
    multi = len(study.directions) > 1
    figures: list[tuple[str, Callable[[Any], Any]]] = [
        ("Optimisation history", optuna.visualization.plot_optimization_history),
        ("Parameter importances", optuna.visualization.plot_param_importances),
        ("Parallel coordinates", optuna.visualization.plot_parallel_coordinate),
    ]
    if multi:  # several objectives: the plots follow the first, and the front is added
        name = first_objective or "objective 0"
        figures = [(title, _of_first(plot, name)) for title, plot in figures]
        figures.append(("Pareto front", optuna.visualization.plot_pareto_front))
    complete = bool(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    if not complete:
        figures = []
    if not multi:  # Optuna holds each epoch of a single-objective study's trials
        figures.append(("Learning curves", optuna.visualization.plot_intermediate_values))
    parts = []
    if not complete:
        parts.append(
            "<p><em>No trial ran its full budget (each was pruned, stopped by the time budget or the deadline, "
            "or failed), and Optuna's optimisation history, parameter importances and parallel coordinates "
            "are drawn from those that did.</em></p>"
        )
    for i, (title, plot) in enumerate(figures):
        try:
            with warnings.catch_warnings():  # a small study's importances warn of regimes with few trials
                warnings.simplefilter("ignore", UserWarning)
                fig = plot(study)
            body = pio.to_html(fig, full_html=False, include_plotlyjs=(i == 0))
        except Exception as exc:
            body = f"<p><em>not available: {html.escape(str(exc))}</em></p>"
        parts.append(f"<h2>{html.escape(title)}</h2>\n{body}")
    path.write_text(
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(study_name)}: "
        f"Optuna plots</title></head><body><h1>{html.escape(study_name)}</h1>\n" + "\n".join(parts) + "</body></html>"
    )
    return path


def _of_first(plot: Callable[..., Any], name: str) -> Callable[[Any], Any]:
    """``plot`` of a multi-objective study's first objective (Optuna asks for a target there)."""

    def first(trial: Any) -> float:
        return trial.values[0]

    return lambda study: plot(study, target=first, target_name=name)


def family_table(
    records: list[TrialRecord], metric: str, mode: str, winner: TrialRecord, test_accuracy: float | None, path: Path
) -> list[dict]:
    """The best trial of each model family: what a hand-made results table would hold."""
    best: dict[str, tuple[float, TrialRecord]] = {}  # family -> its best value, and the trial with it
    for r in records:
        value = r.best(metric, mode)[0]
        if value is None:
            continue
        held = best.get(r.config.model.name)
        if held is None or (value > held[0] if mode == "max" else value < held[0]):
            best[r.config.model.name] = (value, r)
    rows = []
    for family, (value, r) in sorted(best.items()):
        epoch = r.best(metric, mode)[1]
        rows.append(
            {
                "family": family,
                "trial": r.number,
                f"best_{metric}": round(value, 4),
                "best_epoch": epoch,
                "epochs_run": r.epochs,
                "trials_of_family": sum(x.config.model.name == family for x in records),
                "compute_seconds": round(r.compute_seconds, 1),
                "test_accuracy": round(test_accuracy, 4) if r is winner and test_accuracy is not None else "",
                "params": short_params(r.params),
            }
        )
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]) if rows else ["family"])
        writer.writeheader()
        writer.writerows(rows)
    return rows
