"""The search against the AutoKeras baseline on the full Fashion-MNIST, at equal wall-clock budget.

    python benchmarks/autokeras_vs_search.py [--study benchmarks/studies/autokeras.yaml] [--no-record]

Runs ``hpo run`` on a study naming both backends (each gets the same ``budget.time`` for its search and
the same final stage: retrain on train+val for the best epoch count, test once on the same images), then
reads both parent runs from MLflow and records test accuracy, wall time, trials and epochs side by side,
with the plot of best validation accuracy over time (``docs/img/autokeras_vs_search.png``).
Needs the autokeras extra (``pip install -e ".[autokeras]"``).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import ROOT, markdown_table, record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", type=Path, default=ROOT / "benchmarks" / "studies" / "autokeras.yaml")
    parser.add_argument("--no-record", action="store_true", help="print only; do not append to docs/BENCHMARKS.md")
    parser.add_argument(
        "--work",
        type=Path,
        help="the working folder of an interrupted run to continue "
        "(hpo run resumes it); default: a new temporary folder",
    )
    args = parser.parse_args()

    import mlflow
    from hpo.report.compare import comparison_rows, latest_backend_runs, progress, progress_png
    from hpo.study import load_study

    study = load_study(args.study)
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-autokeras-"))
    start = time.time()
    result = subprocess.run([sys.executable, "-m", "hpo.cli", "run", str(args.study.resolve())], cwd=work)
    wall = time.time() - start
    if result.returncode != 0:
        sys.exit(f"hpo run failed (exit {result.returncode}); its folder: {work}")

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{work / 'mlflow' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(study.name)
    runs = latest_backend_runs(client, experiment.experiment_id)
    rows = comparison_rows(runs)
    header, body = rows[0][:-1], [r[:-1] for r in rows[1:]]
    for row in body:
        row[1] = f"**{row[1]:.2%}**" if isinstance(row[1], float) else row[1]
    b = study.config.budget
    curves = {name: progress(client, experiment.experiment_id, r.run) for name, r in runs.items()}
    finals = {name: r.metrics.get("test_accuracy") for name, r in runs.items()}
    image = ROOT / "docs" / "img" / "autokeras_vs_search.png"
    image.parent.mkdir(exist_ok=True)
    progress_png(curves, finals, image, f"{study.name}: best validation accuracy over wall time")
    search, baseline = runs["search"].metrics, runs["autokeras"].metrics
    gap = (search["test_accuracy"] - baseline["test_accuracy"]) * 100
    notes = (
        f"Both backends: {b.time / 60:.0f} min of search, at most {b.trials} models of at most "
        f"{b.max_epochs} epochs, the winner retrained on train+val and tested once on the same 10,000 "
        f"images; `hpo run` took {wall / 60:.1f} min for both. Search minus AutoKeras: **{gap:+.2f} "
        f"percentage points** of test accuracy (goal: ≥ +1.0). Accuracy over time: "
        f"![best validation accuracy over time](img/{image.name})"
    )
    record(
        "Search vs AutoKeras on Fashion-MNIST, equal wall time",
        markdown_table(header, body),
        notes,
        dry_run=args.no_record,
    )
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
