"""ASHA vs full-budget random search over the same sampled configurations, on real Fashion-MNIST.

    python benchmarks/asha_efficiency.py [--study benchmarks/studies/asha.yaml] [--no-record]
        [--train N] [--trials N] [--max-epochs N] [--grace N] [--reduction RF] [--fractions F F ...]

Samples the study's ``budget.trials`` configurations once (Optuna's RandomSampler, seeded), then runs the
search three times over exactly those configurations, in the same order: every trial to ``max_epochs``
(no scheduler), with the study's ASHA scheduler (epoch fidelity), and with ASHA on data-size fidelity
(``fidelity: data``: the epochs up to each rung train on a stratified fraction of the training images).
Reports each arm's best validation accuracy, the epochs it spent and its image-passes: the images its
epochs trained on, summed over trials, in units of the training split; and what its pick is worth: the
full-budget arm's best for the configuration the arm chose (the final stage retrains the winner on all
the data, so the choice, not the winner's partly-screened training, is what the study keeps). The options
shrink the study to fit a time budget (the training subset, configurations, epochs, rungs).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from _common import markdown_table, record


def sample_points(study, n: int, seed: int) -> list[dict]:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler_study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    points = []
    for _ in range(n):
        trial = sampler_study.ask()
        study.space.suggest_with(trial)
        points.append(dict(trial.params))
        sampler_study.tell(trial, 0.0)
    return points


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--study", default=str(Path(__file__).parent / "studies" / "asha.yaml"))
    parser.add_argument("--no-record", action="store_true")
    parser.add_argument("--train", type=int, help="training images (train+val subset of Fashion-MNIST)")
    parser.add_argument("--trials", type=int, help="configurations sampled")
    parser.add_argument("--max-epochs", type=int)
    parser.add_argument("--grace", type=int, help="ASHA grace period")
    parser.add_argument("--reduction", type=float, help="ASHA reduction factor")
    parser.add_argument("--fractions", type=float, nargs="+", help="data fractions per rung (default 1/rf^2, 1/rf)")
    args = parser.parse_args()
    from hpo.backends.search import SearchOutcome
    from hpo.names import Metric
    from hpo.runner import run_study
    from hpo.study import load_study
    from hpo.testing import find_fashion_mnist

    os.environ.setdefault("HPO_DATA_DIR", str(find_fashion_mnist()))
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    base = load_study(args.study)
    c = _shrunk(base.config, args)
    points = sample_points(base, c.budget.trials, c.seed)
    work = Path(tempfile.mkdtemp(prefix="hpo-asha-"))
    data_fidelity = c.scheduler.model_copy(update={"fidelity": "data", "data_fractions": args.fractions})
    uri = f"sqlite:///{work / 'mlflow.db'}"
    arms = {
        "full budget (no early stopping)": c.model_copy(
            update={
                "name": c.name + "-full",
                "scheduler": c.scheduler.model_copy(update={"type": "none"}),
                "output_dir": str(work / "runs"),
            }
        ),
        f"ASHA (grace {c.scheduler.grace_period}, reduction {c.scheduler.reduction_factor:g})": c.model_copy(
            update={"name": c.name + "-asha", "output_dir": str(work / "runs")}
        ),
        f"ASHA on data fractions {_fractions(data_fidelity.fractions)}": c.model_copy(
            update={"name": c.name + "-data", "output_dir": str(work / "runs"), "scheduler": data_fidelity}
        ),
    }
    results = {}
    partial = work / "results.json"  # each arm's figures as it ends, should a later arm not finish
    for label, config in arms.items():
        study = type(base)(
            config=config, space=base.space, space_data=base.space_data, file=base.file, space_file=base.space_file
        )
        start = time.time()
        outcome = run_study(study, tracking_uri=uri, live=False, points=points, fresh=True)
        metric, mode = c.objective.metric, c.objective.direction
        search = outcome.result(SearchOutcome)
        best = search.winner.best(metric, mode)
        rows = [row for r in search.records for row in r.history]
        # each configuration's best, by its parameters (every arm evaluates the same points)
        by_params = {json.dumps(r.params, sort_keys=True): r.best(metric, mode)[0] for r in search.records}
        results[label] = {
            "params": json.dumps(search.winner.params, sort_keys=True),
            "by_params": by_params,
            "best": best[0],
            "trial": search.winner.number,
            "epoch": best[1],
            "epochs": sum(r.epochs for r in search.records),
            "images": sum(row[Metric.TRAIN_IMAGES] for row in rows),
            "full_epoch": max(
                (row[Metric.TRAIN_IMAGES] for row in rows if row[Metric.DATA_FRACTION] == 1.0), default=0
            ),
            "seconds": time.time() - start,
        }
        partial.write_text(json.dumps(results, indent=1))
        print(label, results[label], flush=True)
    full, asha, data = list(results.values())
    split = full["full_epoch"]  # the training split's images: what one full epoch trains on
    for r in results.values():
        r["passes"] = r["images"] / split
        r["pick"] = full["by_params"].get(r["params"])
    rows = [
        [
            label,
            f"{r['best']:.4f}",
            f"#{r['trial']} (epoch {r['epoch']})",
            r["epochs"],
            f"{r['epochs'] / full['epochs']:.0%}",
            f"{r['passes']:.1f}",
            f"{r['passes'] / full['passes']:.1%}",
            "-" if r["pick"] is None else f"{r['pick']:.4f}",
            f"{r['seconds'] / 60:.1f} min",
        ]
        for label, r in results.items()
    ]
    header = ["arm", "best val accuracy", "best trial", "epochs spent", "epochs vs full", "image-passes"]
    table = markdown_table([*header, "passes vs full", "its pick at full budget", "wall"], rows)
    gap = (full["best"] - asha["best"]) * 100
    data_gap = (full["best"] - data["best"]) * 100
    ratio = data["passes"] / full["passes"]
    notes = (
        f"{c.budget.trials} configurations sampled once (RandomSampler, seed {c.seed}) and evaluated in the "
        f"same order by every arm; max {c.budget.max_epochs} epochs; {c.dataset.subset.train:,}-image "
        f"stratified subset of the real training set ({c.dataset.validation_split:.0%} held out for "
        f"validation). ASHA's best is {gap:+.2f} percentage points below full budget's "
        f"(within 0.3 pp: {'yes' if gap <= 0.3 else 'no'}), using "
        f"{asha['epochs'] / full['epochs']:.0%} of its epochs. Data fidelity's best is {data_gap:+.2f} pp below "
        f"full budget's at {ratio:.1%} of its image-passes (target: within 0.3 pp at <= 1/10: "
        f'{"met" if data_gap <= 0.3 and ratio <= 0.1 else "missed"}). "Its pick at full budget": the '
        f"full-budget arm's best validation accuracy for the configuration the arm chose."
    )
    record("ASHA efficiency vs full-budget search", table, notes, dry_run=args.no_record)


def _fractions(fractions: list[float]) -> str:
    from fractions import Fraction

    return ", ".join(str(Fraction(f).limit_denominator(100)) for f in fractions) + ", all"


def _shrunk(c, args):
    """The study with the command line's sizes."""
    dataset = c.dataset
    if args.train:
        dataset = dataset.model_copy(update={"subset": dataset.subset.model_copy(update={"train": args.train})})
    budget = c.budget.model_copy(
        update={k: v for k, v in {"trials": args.trials, "max_epochs": args.max_epochs}.items() if v}
    )
    scheduler = c.scheduler.model_copy(
        update={
            k: v
            for k, v in {
                "grace_period": args.grace,
                "reduction_factor": args.reduction,
            }.items()
            if v
        }
    )
    return c.model_copy(update={"dataset": dataset, "budget": budget, "scheduler": scheduler})


if __name__ == "__main__":
    main()
