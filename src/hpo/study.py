"""Load a study file and the search space it references; two stages, like Ludwig: the schema, then
cross-field checks. Every problem becomes a StudyError naming file, line and field path."""

from __future__ import annotations

import difflib
import hashlib
import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from hpo.config.backends import backend_checks
from hpo.config.messages import to_study_errors
from hpo.config.study import FILE_DATASETS, MULTILABEL_DATASETS, StudyConfig
from hpo.config.trial import boolean_numbers
from hpo.config.yaml_loader import YamlDoc, load_yaml
from hpo.errors import StudyError, StudyErrors
from hpo.space import Branches, Categorical, Int, SearchSpace, load_space, parse_space


@dataclass(kw_only=True)
class Study:
    """A validated study: its config, its compiled search space and where both came from."""

    config: StudyConfig
    space: SearchSpace
    space_data: dict[str, Any]  # the search space as written, for logging beside the study
    file: Path
    space_file: Path | None
    doc: YamlDoc | None = None  # the study file, for errors found after loading (hpo plan)
    space_doc: YamlDoc | None = None  # the document the space came from (the study's when inline)
    space_base: tuple[str | int, ...] = ()  # where the space starts in space_doc

    @property
    def name(self) -> str:
        return self.config.name

    def resolved(self) -> dict[str, Any]:
        """The study with defaults filled in and the search space inlined (what gets logged)."""
        data = self.config.model_dump(mode="json")
        data["search_space"] = self.space_data
        return data

    def fingerprint(self) -> str:
        """A short hash of the resolved study: the same study gives the same resume identity."""
        blob = json.dumps(self.resolved(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]


def load_study(file: str | Path) -> Study:
    """Load and validate ``file``. Raises StudyErrors (every problem found) or StudyError."""
    file = Path(file)
    doc = load_yaml(file)
    if not isinstance(doc.data, dict):
        raise StudyError("a study must be a mapping of keys (name:, dataset:, ...)", file=file, line=1)

    booleans = [
        doc.error(path, f"must be a number, not a YAML boolean (got {str(value).lower()})")
        for path, value in boolean_numbers(StudyConfig, doc.data)
    ]
    if booleans:
        raise StudyErrors(booleans)
    try:
        config = StudyConfig.model_validate(doc.data)
    except ValidationError as exc:
        raise StudyErrors(to_study_errors(exc, doc, StudyConfig)) from None
    _resolve_paths(config, file)
    errors = study_errors(config, doc)
    if errors:
        raise StudyErrors(errors)

    if isinstance(config.search_space, str):
        space_path = Path(os.path.normpath(file.parent / config.search_space))
        if not space_path.exists():
            raise doc.error(
                ("search_space",),
                f"search-space file not found: {config.search_space} (looked for {space_path.resolve()})",
            )
        if not space_path.is_file():
            raise doc.error(
                ("search_space",),
                f"{config.search_space} is a directory, not a search-space file ({space_path.resolve()})",
            )
        space_doc = load_space(space_path, display=_display)
        space = parse_space(space_doc)
        space_data = space_doc.data
    else:
        space_path = None
        space = parse_space(doc, doc.data["search_space"], base=("search_space",))
        space_data = doc.data["search_space"]

    problems = _timm_models(space) or _pretrained_weights(space)
    if problems:
        where = ("search_space",) if space_path is None else ()
        at = doc if space_path is None else space_doc
        raise StudyErrors([at.error((*where, *path), message) for path, message in problems])
    outside = [
        doc.error(("start_with", i), f"not a point of the search space: {problem}")
        for i, point in enumerate(config.start_with)
        if (problem := space.mismatch(point))
    ]
    if outside:
        raise StudyErrors(outside)
    misfits = [e for check in SPACE_CHECKS if (e := check(config, space, doc)) is not None]
    if misfits:
        raise StudyErrors(misfits)
    return Study(
        config=config,
        space=space,
        space_data=space_data,
        file=file,
        space_file=space_path,
        doc=doc,
        space_doc=space_doc if space_path is not None else doc,
        space_base=() if space_path is not None else ("search_space",),
    )


def _resolve_paths(config: StudyConfig, file: Path) -> None:
    """One rule for paths in a study: relative to the study file (``search_space``, ``dataset.data_dir``).
    ``output_dir`` and the default tracking store are the exception: they are where you run ``hpo``."""
    d = config.dataset
    if d.data_dir:
        path = Path(d.data_dir).expanduser()
        d.data_dir = str(path if path.is_absolute() else Path(os.path.normpath(file.parent.resolve() / path)))


def _timm_models(space) -> list[tuple[tuple[str, ...], str]]:
    """(where, why) for each timm model the space names that timm does not know."""
    names = space.family_values("timm", "model")
    if not names:
        return []
    from hpo._torchvision import import_torchvision

    import_torchvision()  # timm imports torchvision, which needs its operators defined first here
    import timm

    known = set(timm.list_models())
    problems = []
    for name, where in names:
        if name not in known:
            close = difflib.get_close_matches(str(name), known, n=3)
            hint = (
                f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else " (timm.list_models() has them)"
            )
            problems.append((where, f"timm has no model {name!r}{hint}"))
    return problems


def _pretrained_weights(space) -> list[tuple[tuple[str, ...], str]]:
    """(where in the space, what to do) for each pretrained model whose weights are neither cached nor reachable."""
    wanted = space.pretrained_models()
    if not wanted:
        return []
    from hpo.models.weights import missing_weights

    return [(path, message) for model, path in dict.fromkeys(wanted) if (message := missing_weights(model))]


def _display(path: Path) -> Path:
    try:
        return path.resolve().relative_to(Path.cwd().resolve())
    except ValueError:
        return path


# ------------------------------------------------------------------------------- cross-field checks
Check = Callable[[StudyConfig, YamlDoc], StudyError | None]


def _grace_within_epochs(config: StudyConfig, doc: YamlDoc) -> StudyError | None:
    s, b = config.scheduler, config.budget
    if s.type != "none" and s.grace_period > b.max_epochs:
        return doc.error(
            ("scheduler", "grace_period"), f"must be <= budget.max_epochs ({b.max_epochs}) (got {s.grace_period})"
        )
    return None


def _mode_follows_metric(config: StudyConfig, doc: YamlDoc) -> StudyError | None:
    several = config.objective.multi
    for i, o in enumerate(config.objective):
        natural = "max" if o.metric == "val_accuracy" else "min"
        if o.mode is not None and o.mode != natural:
            return doc.error(
                ("objective", i, "mode") if several else ("objective", "mode"),
                f"{o.metric} is {'maximised' if natural == 'max' else 'minimised'}; "
                f"mode must be {natural!r} (got {o.mode!r})",
            )
    return None


def _final_epochs_positive(config: StudyConfig, doc: YamlDoc) -> StudyError | None:
    if isinstance(config.final.epochs, int) and config.final.epochs < 1:
        return doc.error(("final", "epochs"), f"must be >= 1 or 'best' (got {config.final.epochs})")
    return None


def _task_fits_dataset(config: StudyConfig, doc: YamlDoc) -> StudyError | None:
    multilabel = config.dataset.multilabel
    if multilabel and config.task != "multilabel":
        return doc.error(("task",), f"dataset {config.dataset.name} has several labels per image: set task: multilabel")
    if config.task == "multilabel" and not multilabel:
        return doc.error(
            ("task",),
            f"dataset {config.dataset.name} has one class per image; task: multilabel "
            f"needs one of: {', '.join(MULTILABEL_DATASETS)}",
        )
    return None


def _stream_needs_files(config: StudyConfig, doc: YamlDoc) -> StudyError | None:
    d = config.dataset
    if not d.stream:
        return None
    if not d.from_files:
        return doc.error(
            ("dataset", "stream"),
            f"dataset {d.name} is read into memory whole; streaming is for image files: {', '.join(FILE_DATASETS)}",
        )
    if d.image_size is None:
        return doc.error(
            ("dataset", "stream"), "streamed images need dataset.image_size (every batch is decoded to that size)"
        )
    return None


def _data_dir_exists(config: StudyConfig, doc: YamlDoc) -> StudyError | None:
    """A named data folder must be there (relative paths resolve from the study file); datasets of image
    files have nothing to download, so they need one."""
    d = config.dataset
    where = d.data_dir or os.environ.get("HPO_DATA_DIR")
    if d.data_dir and not Path(d.data_dir).is_dir():
        what = "not a folder" if Path(d.data_dir).exists() else "no such folder"
        return doc.error(
            ("dataset", "data_dir"), f"{what}: {d.data_dir} (a relative data_dir is taken from the study file's folder)"
        )
    if d.name in FILE_DATASETS and not where:
        return doc.error(
            ("dataset", "name"),
            f"dataset {d.name} reads image files and downloads nothing: set "
            "dataset.data_dir (or $HPO_DATA_DIR) to their folder",
        )
    if d.name == "multilabel_csv" and d.data_dir and not (Path(d.data_dir) / d.csv).is_file():
        return doc.error(
            ("dataset", "csv"), f"no such file: {Path(d.data_dir) / d.csv} (dataset.csv is taken from dataset.data_dir)"
        )
    return None


def _dataset_keys_apply(config: StudyConfig, doc: YamlDoc) -> StudyError | None:
    """Keys that only image-file datasets read are an error elsewhere, not silently ignored."""
    d = config.dataset
    if d.name not in FILE_DATASETS:
        for key in ("image_size", "channels", "test_split"):
            if key in d.model_fields_set:
                return doc.error(
                    ("dataset", key),
                    f"applies to datasets of image files ({', '.join(FILE_DATASETS)}); "
                    f"{d.name} comes in one size and format",
                )
    if d.name != "multilabel_csv":
        for key in ("csv", "path_column", "label_columns"):
            if key in d.model_fields_set:
                return doc.error(("dataset", key), f"applies to the multilabel_csv dataset only (got dataset {d.name})")
    return None


def _recheck_within_trials(config: StudyConfig, doc: YamlDoc) -> StudyError | None:
    r = config.final.recheck
    if r.top_k > config.budget.trials:
        return doc.error(
            ("final", "recheck", "top_k"),
            f"must be <= budget.trials ({config.budget.trials}): it "
            f"re-checks the best of the trials run (got {r.top_k})",
        )
    return None


def _data_fidelity_fits(config: StudyConfig, doc: YamlDoc) -> StudyError | None:
    """``fidelity: data`` shrinks the epochs before ASHA's rungs, so it needs rungs; the fractions grow
    rung by rung (or stay: a rung may train longer on the same images) and stay below 1 (after the last,
    every rung trains on all images)."""
    s = config.scheduler
    if s.fidelity == "data" and s.type not in ("asha", "hyperband"):
        return doc.error(
            ("scheduler", "fidelity"),
            f"data needs scheduler.type asha or hyperband, whose rungs it follows (got {s.type})",
        )
    if s.data_fractions is None:
        return None
    if s.fidelity != "data":
        return doc.error(("scheduler", "data_fractions"), "applies with scheduler.fidelity: data only")
    for i, f in enumerate(s.data_fractions):
        if f >= 1.0:
            return doc.error(
                ("scheduler", "data_fractions", i),
                f"must be < 1: the epochs after the listed fractions train on all images (got {f:g})",
            )
        if i and f < s.data_fractions[i - 1]:
            return doc.error(
                ("scheduler", "data_fractions", i),
                f"must be >= the fraction before it ({s.data_fractions[i - 1]:g}): a promoted trial trains "
                f"on the images it trained on and more (got {f:g})",
            )
    return None


# ------------------------------------------------------------------- sampler and scheduler fit
# Optuna's samplers other than TPE (grouped) and random model only the parameters every trial has, and
# CMA-ES only numeric ones: the rest they hand to a random sampler, with a log warning in the middle of a
# run. A study they would quietly degrade like that is refused here, with the sampler that fits.
MODEL_SAMPLERS = ("tpe", "gp", "cmaes", "nsga2")  # those with random start-up trials (sampler.startup_trials)
GRID_LIMIT = 100_000  # grid points: Optuna's GridSampler lists and shuffles them all up front


def grid_values(space: SearchSpace) -> dict[str, list[Any]] | str:
    """Every value of every parameter, for a grid over ``space``; or why the space has no finite grid."""
    grid: dict[str, list[Any]] = {}
    for info in space.params:
        p = info.param
        if isinstance(p, Categorical):
            grid[info.name] = list(p.choices)
        elif isinstance(p, Int):
            grid[info.name] = list(range(p.low, p.high + 1, p.step))
        elif p.step is not None:
            count = math.floor((p.high - p.low) / p.step + 1e-9) + 1
            grid[info.name] = [round(p.low + k * p.step, 12) for k in range(count)]
        elif p.low == p.high:
            grid[info.name] = [p.low]
        else:
            return f"{info.name} is a continuous range ({p.describe()}): give it a step, or use categorical values"
    size = math.prod(len(values) for values in grid.values())
    if size > GRID_LIMIT:
        return f"the grid has {size:,} points, more than {GRID_LIMIT:,}: give the ranges coarser steps"
    return grid


def sampler_misfit(config: StudyConfig, space: SearchSpace) -> tuple[tuple[str, ...], str] | None:
    """(field path, why) when ``config.sampler`` cannot search ``space`` for ``config.objective`` as
    itself, or None when it can. Pure: no Optuna import (a refusal stays fast)."""
    s = config.sampler
    kind = ("sampler", "type")
    conditional = conditional_params(space)
    if s.type == "cmaes":
        if config.objective.multi:
            return kind, "cmaes optimises one objective, not several: use nsga2, tpe or gp"
        others = [
            p.name
            for p in space.params
            if p.name in conditional or (isinstance(p.param, Categorical) and len(p.param.choices) > 1)
        ]
        if others:
            return kind, (
                f"cmaes models float and int ranges every trial has; {_names(others)} would be sampled at "
                "random: use tpe (conditional and categorical parameters) or gp"
            )
        if not space.params:
            return kind, "cmaes needs at least one float or int range in the search space"
    if s.type in ("gp", "qmc", "nsga2") and conditional:
        return kind, (
            f"{s.type} models the parameters every trial has; {_names(conditional)} (inside one_of branches) "
            "would be sampled at random: use tpe, which models each branch, or random"
        )
    if s.type == "grid":
        if conditional:
            return kind, (
                f"a grid crosses every parameter; {_names(conditional)} (inside one_of branches) would repeat "
                "points of the other branches: use tpe or random, or a study per branch"
            )
        grid = grid_values(space)
        if isinstance(grid, str):
            return kind, f"grid needs a finite grid: {grid}"
        size = math.prod(len(values) for values in grid.values())
        if config.budget.trials > size:
            return ("budget", "trials"), (
                f"must be <= {size}, the points of the grid (got {config.budget.trials}): "
                "more trials would repeat points"
            )
    if s.startup_trials is not None:
        if s.type not in MODEL_SAMPLERS:
            return ("sampler", "startup_trials"), (
                f"applies to the samplers that model past trials ({', '.join(MODEL_SAMPLERS)}), not {s.type}"
            )
        if s.startup_trials >= config.budget.trials:
            return ("sampler", "startup_trials"), (
                f"must be < budget.trials ({config.budget.trials}), or every trial is a random start-up one "
                f"(got {s.startup_trials})"
            )
    return None


def conditional_params(space: SearchSpace) -> list[str]:
    """The parameters not every trial has: those inside a one_of of several branches."""
    prefixes: list[str] = []

    def walk(node: dict, names: tuple[str, ...]) -> None:
        for key, child in node.items():
            if isinstance(child, dict):
                walk(child, (*names, key))
            elif isinstance(child, Branches):
                for branch, sub in child.options.items():
                    if len(child.options) > 1:
                        prefixes.append(".".join((*names, key, branch)) + ".")
                    else:
                        walk(sub, (*names, key, branch))

    walk(space.root, ())
    return [p.name for p in space.params if p.name.startswith(tuple(prefixes))]


def _names(names: list[str], shown: int = 3) -> str:
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


def _sampler_fits_space(config: StudyConfig, space: SearchSpace, doc: YamlDoc) -> StudyError | None:
    misfit = sampler_misfit(config, space)
    return None if misfit is None else doc.error(*misfit)


def _scheduler_keys_apply(config: StudyConfig, doc: YamlDoc) -> StudyError | None:
    """Scheduler keys the chosen scheduler does not read are an error, not silently ignored."""
    s = config.scheduler
    given = s.model_fields_set
    if "brackets" in given and s.type != "hyperband":
        return doc.error(("scheduler", "brackets"), f"applies to scheduler hyperband only (got {s.type})")
    if "reduction_factor" in given and s.type in ("median", "none"):
        return doc.error(("scheduler", "reduction_factor"), f"applies to schedulers asha and hyperband, not {s.type}")
    if "grace_period" in given and s.type == "none":
        return doc.error(("scheduler", "grace_period"), "scheduler none stops no trial early: it has no grace period")
    return None


def hyperband_brackets(config: StudyConfig) -> int:
    """How many of ``scheduler.brackets`` have a rung. Bracket s of Ray's asynchronous Hyperband starts its
    rungs at grace_period * reduction_factor**s; one whose first rung is not below budget.max_epochs has
    none and never stops a trial. The default (3) is cut to this; brackets given beyond it are refused."""
    s, epochs = config.scheduler, config.budget.max_epochs
    return sum(1 for b in range(s.brackets) if s.grace_period * s.reduction_factor**b < epochs)


def _hyperband_brackets_fit(config: StudyConfig, doc: YamlDoc) -> StudyError | None:
    s, epochs = config.scheduler, config.budget.max_epochs
    if s.type != "hyperband" or s.grace_period > epochs or "brackets" not in s.model_fields_set:
        return None
    most = hyperband_brackets(config)
    if s.brackets > most:
        return doc.error(
            ("scheduler", "brackets"),
            f"must be <= {most} (got {s.brackets}): with grace_period {s.grace_period}, reduction_factor "
            f"{s.reduction_factor:g} and budget.max_epochs {epochs}, later brackets have no rung and stop no trial",
        )
    return None


SpaceCheck = Callable[[StudyConfig, SearchSpace, YamlDoc], StudyError | None]
# Checks that need the parsed search space; they run once it is loaded.
SPACE_CHECKS: list[SpaceCheck] = [_sampler_fits_space]


def _objective_limits_apply(config: StudyConfig, doc: YamlDoc) -> StudyError | None:
    """A ``limit`` bounds the winner of a study with several objectives (hpo.engine.pareto), the first
    objective's included (a floor on accuracy, a ceiling on loss); with one objective the best trial wins
    and a limit would rank nothing. A limit no trial can meet is refused here, not after the search."""
    objectives = config.objective
    if not objectives.multi:
        if objectives.primary.limit is not None:
            return doc.error(
                ("objective", "limit"),
                "applies with several objectives (objective: a list), where it bounds the winner; "
                "with one, the best trial wins: drop it, or add the cost it should bound",
            )
        return None
    for i, o in enumerate(objectives):
        if o.limit is None:
            continue
        if o.metric == "val_accuracy" and not 0.0 < o.limit <= 1.0:
            return doc.error(("objective", i, "limit"), f"val_accuracy is a share: must be in (0, 1] (got {o.limit:g})")
        if o.metric != "val_accuracy" and o.limit <= 0:
            return doc.error(("objective", i, "limit"), f"{o.metric} is positive: must be > 0 (got {o.limit:g})")
    return None


def _choose_fits_objectives(config: StudyConfig, doc: YamlDoc) -> StudyError | None:
    """``final.choose: knee`` needs a front to take the knee of, and the re-check would overrule it: it
    ranks its top-k by the first objective alone."""
    if config.final.choose != "knee":
        return None
    if not config.objective.multi:
        return doc.error(("final", "choose"), "knee needs several objectives (objective: a list) to trade off")
    if config.final.recheck.top_k:
        return doc.error(
            ("final", "choose"),
            "knee cannot be combined with final.recheck, which ranks by the first objective alone: "
            "set final.recheck.top_k: 0 or final.choose: best",
        )
    return None


def _several_objectives_search_only(config: StudyConfig, doc: YamlDoc) -> StudyError | None:
    """The AutoKeras baseline tunes by validation accuracy alone (its oracle takes one objective), so a
    study with several objectives would compare it on a rule it never followed."""
    if config.objective.multi and "autokeras" in config.backends:
        return doc.error(
            ("backends",),
            "the autokeras baseline optimises one objective: a study with several objectives runs "
            "the search backend only",
        )
    return None


# The study's own checks; each backend's (hpo.config.backends) run between the two lists, for the backends
# the study names.
CHECKS: list[Check] = [
    _data_dir_exists,
    _dataset_keys_apply,
    _recheck_within_trials,
    _scheduler_keys_apply,
    _hyperband_brackets_fit,
    _grace_within_epochs,
    _mode_follows_metric,
    _final_epochs_positive,
    _data_fidelity_fits,
    _objective_limits_apply,
    _choose_fits_objectives,
    _several_objectives_search_only,
]
DATA_CHECKS: list[Check] = [_task_fits_dataset, _stream_needs_files]


def study_errors(config: StudyConfig, doc: YamlDoc) -> list[StudyError]:
    """Every cross-field problem of ``config``: the study's checks, then its backends', then the data's."""
    checks: list[Callable[[StudyConfig, YamlDoc], StudyError | None]] = [
        *CHECKS,
        *backend_checks(config.backends),
        *DATA_CHECKS,
    ]
    return [e for check in checks if (e := check(config, doc)) is not None]
