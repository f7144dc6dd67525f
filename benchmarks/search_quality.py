"""Does the search earn its keep? Four ways to spend the same wall budget on real Fashion-MNIST.

    python benchmarks/search_quality.py [--minutes 8] [--train 20000] [--seeds 2] [--arms abcd] [--no-record]

Each arm gets ``--minutes`` of search on a stratified ``--train``-image subset of the real training set
(20 % of it held out for validation), on the CNN space (search_spaces/fashion_mnist_cnn.yaml: the shipped
study's space less its ResNet-18 branch, whose epochs a 2-core budget of minutes cannot afford), with the
shipped study's objective, trial count, epochs and scheduler (studies/fashion_mnist.yaml):

(a) the new default search: the study's default ``sampler:`` (whatever it is at run time) with its ASHA;
(b) random search: ``sampler: random``, the same ASHA;
(c) the shipped study's ``start_with`` configuration alone: one trial on every core, trained for as many
    epochs as fit in the same minutes (the epoch time is measured first, outside the budget, so that its
    learning-rate schedule is sized to the budget and is not cut off half-way), no scheduler;
(d) the previous default: univariate TPE without constant_liar, ``n_startup_trials = min(10, max(2,
    trials // 3))``, told through Ray's ``OptunaSearch`` (ASHA-stopped trials reach Optuna as COMPLETE with
    their last value).

Every arm's winner goes through hpo's own final stage the same way: retrained on train+val for its best
epoch count (``final.epochs: best``), tested once on the full 10,000-image test set. Each arm and seed runs
in its own process (``--arm`` / ``--seed``, started by this one), so the previous default's patches of the
engine never reach another arm. The search arms (a, b, d) search from scratch; ``--start-with`` has them
evaluate the ``start_with`` configuration first, as the shipped study does.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import ROOT, markdown_table, record

SHIPPED_STUDY = ROOT / "studies" / "fashion_mnist.yaml"
SPACE = ROOT / "search_spaces" / "fashion_mnist_cnn.yaml"
VALIDATION_SPLIT = 0.2  # 4,000 of 20,000 images: the arms' rankings are not lost in validation noise
ARMS = {
    "a": "new default search",
    "b": "random search",
    "c": "start_with alone",
    "d": "previous default",
}
# For the printed estimate only: a small CNN's epoch on this kind of CPU (45 s for 54,000 images on one
# core, docs/BENCHMARKS.md) costs ~0.8 ms per image on one core, ~0.5 ms on two; Ray's start, the data and
# the final run's logging add about a minute per run.
IMAGE_SECONDS_2_CORES = 0.5e-3
RUN_OVERHEAD = 60.0
TRIAL_START = 5.0  # seconds from the search clock's start to a trial's first batch (worker, torch, data)
SEARCHERS_BUILT: list[str] = []  # arm (d): the searchers its patch built, to show that the patch took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=8.0, help="search wall budget per arm and seed")
    parser.add_argument("--train", type=int, default=20000, help="training-subset size (images, before validation)")
    parser.add_argument("--seeds", type=int, default=2, help="seeds per arm (0, 1, ...)")
    parser.add_argument("--arms", default="abcd", help="which arms to run, e.g. ab")
    parser.add_argument("--start-with", action="store_true", help="the search arms evaluate start_with first")
    parser.add_argument("--no-record", action="store_true", help="print only; do not append to docs/BENCHMARKS.md")
    # one arm and seed, in its own process (started by main)
    parser.add_argument("--arm", choices=sorted(ARMS), help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.minutes * 60 < 10:
        parser.error(f"--minutes must give at least 10 s of search (got {args.minutes:g})")
    arms = [a for a in ARMS if a in args.arms]
    if not arms or set(args.arms) - set(ARMS):
        parser.error(f"--arms takes letters of {''.join(ARMS)} (got {args.arms!r})")

    from hpo.testing import find_fashion_mnist

    os.environ.setdefault("HPO_DATA_DIR", str(find_fashion_mnist()))
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if args.arm is not None:
        result = run_arm(args.arm, args.seed, args.minutes, args.train, args.work, args.start_with)
        (args.work / "result.json").write_text(json.dumps(result, indent=1))
        return
    compare(arms, args)


# --- the main process: every arm and seed in turn, then the tables ----------------------------------


def compare(arms: list[str], args: argparse.Namespace) -> None:
    work = Path(tempfile.mkdtemp(prefix="hpo-search-quality-"))
    estimate = sum(expected_seconds(a, args.minutes, args.train) for a in arms) * args.seeds
    print(
        f"search quality: arms {', '.join(f'({a}) {ARMS[a]}' for a in arms)}; {args.seeds} seed(s) each, "
        f"{args.minutes:g} min of search each, {args.train:,} training images; expected total "
        f"~{estimate / 60:.0f} min (logs in {work})",
        flush=True,
    )
    results: dict[str, list[dict[str, Any]]] = {a: [] for a in arms}
    failures: list[str] = []
    begin = time.time()
    for seed in range(args.seeds):  # seed by seed: an interrupted run still has every arm of the first seeds
        for arm in arms:
            folder = work / f"{arm}-seed{seed}"
            folder.mkdir()
            command = [
                sys.executable,
                str(Path(__file__).resolve()),
                *("--arm", arm, "--seed", str(seed), "--work", str(folder)),
                *("--minutes", str(args.minutes), "--train", str(args.train)),
                *(["--start-with"] if args.start_with else []),
            ]
            started = time.time()
            log = folder / "log.txt"
            with log.open("w") as out:
                done = subprocess.run(command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
            so_far = f"{(time.time() - started) / 60:.1f} min (all so far: {(time.time() - begin) / 60:.1f} min)"
            if done.returncode != 0:  # the other arms still run: hours of results are not thrown away
                last = next((line for line in reversed(log.read_text().splitlines()) if line.strip()), "")
                failures.append(f"({arm}) seed {seed} failed (exit {done.returncode}): {last.strip()} (log: {log})")
                print(f"{failures[-1]}; {so_far}", flush=True)
                continue
            result = json.loads((folder / "result.json").read_text())
            results[arm].append(result)
            print(
                f"({arm}) seed {seed}: test accuracy {result['test_accuracy']:.4f}, {result['trials']} trials, "
                f"{result['epochs']} epochs, winner #{result['winner']['number']}; {so_far}",
                flush=True,
            )
    table, notes = report({a: r for a, r in results.items() if r}, failures, args, time.time() - begin)
    # a benchmark with a failed run is printed, not recorded: its means would not be over the seeds it says
    record("Search quality at an equal wall budget", table, notes, dry_run=args.no_record or bool(failures))
    if failures:
        sys.exit(f"{len(failures)} run(s) failed: not recorded in docs/BENCHMARKS.md")


def expected_seconds(arm: str, minutes: float, train: int) -> float:
    """A rough wall time of one arm and seed: the search, the final retrain on train+val, the overheads."""
    from hpo.study import load_study

    budget = minutes * 60
    if arm == "c":  # the final run trains as many epochs as the search did, on train+val; plus the probe
        return budget + budget / (1 - VALIDATION_SPLIT) + 2 * RUN_OVERHEAD
    epochs = load_study(SHIPPED_STUDY).config.budget.max_epochs
    return budget + epochs * train * IMAGE_SECONDS_2_CORES + RUN_OVERHEAD


def mean_sd(values: list[float], scale: float = 1.0, digits: int = 2) -> str:
    m = statistics.fmean(values) * scale
    if len(values) < 2:
        return f"{m:.{digits}f}"
    return f"{m:.{digits}f} ± {statistics.stdev(values) * scale:.{digits}f}"


def report(
    results: dict[str, list[dict[str, Any]]], failures: list[str], args: argparse.Namespace, seconds: float
) -> tuple[str, str]:
    """The per-arm table, the pairwise differences (paired by seed) and the notes that say how."""
    if not results:
        return "No run finished.", "\n".join(f"- {f}" for f in failures)
    rows = []
    for arm, runs in results.items():
        accuracies = [r["test_accuracy"] for r in runs]
        rows.append(
            [
                f"({arm}) {ARMS[arm]}",
                f"**{mean_sd(accuracies, 100)} %**",
                " / ".join(f"{a:.2%}" for a in accuracies),
                mean_sd([r["trials"] / (r["search_seconds"] / 60) for r in runs]),
                mean_sd([r["epochs"] for r in runs], digits=1),
                mean_sd([r["image_passes"] for r in runs], digits=1),
                mean_sd([r["final_epochs"] for r in runs], digits=1),
            ]
        )
    header = ["arm", "test accuracy, mean ± sd", "per seed", "trials screened / min", "epochs", "image-passes"]
    table = markdown_table([*header, "final epochs"], rows)
    differences = {}
    for a, b in (("a", "b"), ("a", "c"), ("a", "d")):
        if a in results and b in results:  # paired by seed: a seed draws the same subset and split in every arm
            other = {r["seed"]: r["test_accuracy"] for r in results[b]}
            diffs = [(r["test_accuracy"] - other[r["seed"]]) * 100 for r in results[a] if r["seed"] in other]
            if diffs:
                differences[(a, b)] = diffs
    if differences:
        diff_rows = [
            [f"({a}) − ({b})", f"**{mean_sd(d)} pp**", " / ".join(f"{x:+.2f}" for x in d)]
            for (a, b), d in differences.items()
        ]
        table += "\n\n" + markdown_table(["difference", "test accuracy, mean ± sd", "per seed"], diff_rows)

    first = next(iter(results.values()))[0]
    lines = [
        f"{args.seeds} seed(s) per arm ({', '.join(str(s) for s in range(args.seeds))}: a seed draws the subset, "
        f"the split and the sampler's seed, the same in every arm); {args.minutes:g} min of search per arm and "
        f"seed; a stratified {args.train:,}-image subset of the real training set, {VALIDATION_SPLIT:.0%} of it "
        f"held out for validation; the CNN space (search_spaces/fashion_mnist_cnn.yaml) with the shipped "
        f"study's objective, at most {first['budget_trials']} trials of at most {first['max_epochs']} epochs "
        f"and its scheduler ({first['scheduler']}); search arms {'with' if args.start_with else 'without'} "
        f"the study's start_with; every winner retrained on train+val for its best epoch count and tested "
        f"once on the 10,000 test images. Epochs and image-passes (training-split sizes trained on) are "
        f"the search's, summed over its trials. The whole benchmark took {seconds / 60:.0f} min.",
        "",
    ]
    goal = [
        f"({a}) − ({b}) ≥ 0.2 pp: {'yes' if statistics.fmean(d) >= 0.2 else 'no'} ({statistics.fmean(d):+.2f})"
        for (a, b), d in differences.items()
        if b in "bc"
    ]
    if goal:
        lines += ["Goal (issue #15): " + "; ".join(goal) + ".", ""]
    for arm, runs in results.items():
        if arm == "c":
            said = "; ".join(
                f"seed {r['seed']}: {r['epoch_seconds']:.1f} s per epoch measured, {r['planned_epochs']} epochs "
                f"planned, {r['epochs']} run"
                for r in runs
            )
            lines.append(f"- (c) the start_with CNN alone, on all {runs[0]['cores']} cores: {said}.")
            continue
        statuses = "; ".join(
            f"seed {r['seed']}: " + ", ".join(f"{n} {st}" for st, n in r["statuses"].items()) for r in runs
        )
        patched = f" Patched in its process: {'; '.join(runs[0]['patched'])}." if runs[0].get("patched") else ""
        lines.append(f"- ({arm}) sampler {runs[0]['sampler']}; trials {statuses}.{patched}")
    lines += ["", "Winners (trial, best validation accuracy at its epoch, configuration):", ""]
    for arm, runs in results.items():
        for r in runs:
            w = r["winner"]
            lines.append(
                f"- ({arm}) seed {r['seed']}: #{w['number']}, {w['value']:.4f} at epoch {w['epoch']}: `{w['short']}`"
            )
    if failures:
        lines += ["", "Failed:", "", *(f"- {f}" for f in failures)]
    return table, "\n".join(lines)


# --- one arm and seed, in its own process ------------------------------------------------------------


def run_arm(arm: str, seed: int, minutes: float, train: int, work: Path, start_with: bool) -> dict[str, Any]:
    from hpo.backends.search import SearchOutcome
    from hpo.engine.live import short_params
    from hpo.names import Metric
    from hpo.runner import run_study
    from hpo.study import load_study

    shipped = load_study(SHIPPED_STUDY).config
    budget = minutes * 60
    c = shipped.model_dump(mode="json", exclude_unset=True)
    study: dict[str, Any] = {
        "name": f"bench-search-quality-{arm}",
        "seed": seed,
        "dataset": {"name": "fashion_mnist", "validation_split": VALIDATION_SPLIT, "subset": {"train": train}},
        "search_space": str(SPACE),
        "objective": c.get("objective", {"metric": "val_accuracy"}),
        "budget": {"trials": shipped.budget.trials, "time": budget, "max_epochs": shipped.budget.max_epochs},
        "scheduler": c.get("scheduler", {}),
        "resources": {"cpus_per_trial": 1},
        "start_with": shipped.start_with if start_with else [],
        # the same final stage for every arm: no exports; the registry is this run's own, and left alone
        "final": {"enabled": True, "retrain_on": "train+val", "epochs": "best", "export": [], "promote": "never"},
        "output_dir": str(work / "runs"),
    }
    extra: dict[str, Any] = {}
    if arm == "b":
        study["sampler"] = {"type": "random"}
    elif arm == "c":
        if not shipped.start_with:
            raise SystemExit(f"{SHIPPED_STUDY} has no start_with configuration for arm (c)")
        cores = len(os.sched_getaffinity(0))
        study.update(
            start_with=shipped.start_with[:1],
            scheduler={"type": "none"},
            resources={"cpus_per_trial": cores},
        )
        epoch, startup = measure_epoch(load(study, work), cores)
        planned = max(1, math.floor((budget - TRIAL_START - startup) / epoch))
        study["budget"] = {"trials": 1, "time": budget, "max_epochs": planned}
        extra = {"epoch_seconds": epoch, "planned_epochs": planned, "cores": cores}
    elif arm == "d":
        extra["patched"] = use_previous_default()
    built = watch_sampler()

    start = time.time()
    outcome = run_study(load(study, work), tracking_uri=f"sqlite:///{work / 'mlflow.db'}", live=False, fresh=True)
    wall = time.time() - start
    s = outcome.result(SearchOutcome)
    if s.final is None:
        raise SystemExit("the final stage did not run")
    if arm == "d" and extra["patched"][1].startswith("build_searcher") and not SEARCHERS_BUILT:
        raise SystemExit("arm (d): the engine did not build its searcher through build_searcher: patch missed")
    if arm == "b" and not (built and built[0].startswith("RandomSampler")):
        raise SystemExit(f"arm (b) asked for sampler: random but the engine built {built or 'none'}")
    value, epoch_at = s.winner.best(s.metric, s.mode)
    return {
        "arm": arm,
        "seed": seed,
        "test_accuracy": s.final.test_accuracy,
        "test_loss": s.final.test_loss,
        "final_epochs": s.final.epochs,
        "search_seconds": s.search_seconds,
        "wall_seconds": wall,
        "trials": len(s.records),
        "statuses": {st: sum(r.status == st for r in s.records) for st in sorted({r.status for r in s.records})},
        "epochs": sum(r.epochs for r in s.records),
        # a data-fidelity epoch trains on a fraction of the split; every other epoch on all of it
        "image_passes": sum(row.get(Metric.DATA_FRACTION, 1.0) for r in s.records for row in r.history),
        "winner": {
            "number": s.winner.number,
            "value": value,
            "epoch": epoch_at,
            "params": s.winner.params,
            "short": short_params(s.winner.params),
        },
        "sampler": built[0] if built else "none built",
        "budget_trials": study["budget"]["trials"],
        "max_epochs": shipped.budget.max_epochs,
        "scheduler": ", ".join(f"{k} {v}" for k, v in study["scheduler"].items()) if arm != "c" else "none",
        **extra,
    }


def load(study: dict[str, Any], work: Path):
    """The arm's study, through the same loading and checks as a study file (written beside its log)."""
    import yaml

    from hpo.study import load_study

    path = work / "study.yaml"
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    return load_study(path)


def measure_epoch(study, threads: int) -> tuple[float, float]:
    """(seconds of one epoch, seconds before the first) of the start_with configuration on this study's
    data with ``threads`` threads: two epochs in this process, the second timed (the first includes the
    execution plan's measurement and warm-up)."""
    from hpo.data import load_data
    from hpo.train import Preferences, TrainData, train

    c = study.config
    data = TrainData.from_image_data(load_data(c.dataset, c.seed))
    marks = [time.perf_counter()]
    train(
        study.space.resolve(c.start_with[0]),
        data,
        epochs=2,
        seed=c.seed,
        threads=threads,
        prefs=Preferences.from_resources(c.resources),
        report=lambda _epoch, _model: marks.append(time.perf_counter()),
    )
    epoch = marks[2] - marks[1]
    return epoch, max(0.0, marks[1] - marks[0] - epoch)


def watch_sampler() -> list[str]:
    """The samplers the engine builds in this process, described as they are, in a list that fills as
    ``make_sampler`` is called (after any patch: it wraps whatever is there)."""
    from hpo.engine import strategies

    built: list[str] = []
    make = strategies.make_sampler

    def watched(study, seed):
        sampler = make(study, seed)
        built.append(describe_sampler(sampler))
        return sampler

    replace("hpo.engine.strategies", "make_sampler", watched)
    return built


def replace(home: str, name: str, new: Any) -> list[str]:
    """Put ``new`` in place of ``<home>.<name>`` wherever hpo's modules hold it (a module that imported it
    by name at its top keeps a reference of its own). Returns the modules patched."""
    import importlib
    import pkgutil

    import hpo.engine

    for info in pkgutil.iter_modules(hpo.engine.__path__, "hpo.engine."):
        importlib.import_module(info.name)  # the engine's modules, as run_search will find them
    old = getattr(importlib.import_module(home), name)
    patched = []
    for module_name, module in list(sys.modules.items()):
        if module_name.startswith("hpo.") and getattr(module, name, None) is old:
            setattr(module, name, new)
            patched.append(module_name)
    return patched


def describe_sampler(sampler) -> str:
    name = type(sampler).__name__
    if name != "TPESampler":
        return name
    flags = {
        "multivariate": sampler._multivariate,
        "group": sampler._group,
        "constant_liar": sampler._constant_liar,
        "n_startup_trials": sampler._n_startup_trials,
    }
    return f"{name}({', '.join(f'{k}={v}' for k, v in flags.items())})"


def use_previous_default() -> list[str]:
    """Patch this process's engine back to the search as it was before #15: the sampler and, where the
    engine has its own searcher now, Ray's ``OptunaSearch`` in its place. Returns what was patched."""
    import optuna

    def previous_sampler(study, seed):
        # As run_search built it. Optuna 5 made TPE multivariate with constant_liar by default: the flags
        # are spelled out so that this stays the univariate TPE without liar that the old default was.
        trials = study.config.budget.trials
        return optuna.samplers.TPESampler(
            seed=seed,
            n_startup_trials=min(10, max(2, trials // 3)),
            multivariate=False,
            group=False,
            constant_liar=False,
        )

    where = replace("hpo.engine.strategies", "make_sampler", previous_sampler)
    return [f"make_sampler in {', '.join(where)}: univariate TPE, no constant_liar", use_ray_optuna_search()]


def use_ray_optuna_search() -> str:
    """Ray's ``OptunaSearch`` as the searcher, as run_search built it before #15: through the engine's seam
    (``build_searcher``) where it has one, else the engine still builds it. Fails loudly where neither
    holds: the engine changed, and this arm must follow."""
    import functools
    import importlib.util
    import inspect

    from hpo.engine import ray_tune

    def previous_searcher(study, *, sampler, storage, study_name, points=None, **_ignored):
        import optuna
        from ray.tune.search.optuna import OptunaSearch

        from hpo.space import define_by_run

        c = study.config
        SEARCHERS_BUILT.append(OptunaSearch.__name__)
        return OptunaSearch(
            functools.partial(define_by_run, space=study.space),
            metric=c.objective.metric,
            mode=c.objective.direction,
            sampler=sampler,
            storage=optuna.storages.RDBStorage(storage) if isinstance(storage, str) else storage,
            study_name=study_name,
            points_to_evaluate=list(points or []) or None,
        )

    for home in ("hpo.engine.searcher", "hpo.engine.ray_tune"):
        if importlib.util.find_spec(home) and hasattr(importlib.import_module(home), "build_searcher"):
            where = replace(home, "build_searcher", previous_searcher)
            return f"build_searcher in {', '.join(where)}: Ray's OptunaSearch"
    if "OptunaSearch(" in inspect.getsource(ray_tune.run_search):
        return "none needed for the searcher: run_search builds Ray's OptunaSearch itself"
    raise SystemExit(
        "arm (d): run_search no longer builds Ray's OptunaSearch and no searcher seam (build_searcher) was "
        "found to put it back: update use_ray_optuna_search() in benchmarks/search_quality.py"
    )


if __name__ == "__main__":
    main()
