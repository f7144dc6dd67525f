"""The study file's schema: what to search, on which data, for how long, and where to track it."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import ByteSize, ConfigDict, Field, RootModel, WithJsonSchema, field_validator, model_validator

from hpo.config.backends import BACKEND_NAMES, BackendSections
from hpo.config.trial import Strict

if TYPE_CHECKING:
    BackendName = str
else:  # the registered names (hpo.config.backends), as a Literal: an unknown one is refused with the list
    BackendName = Literal[BACKEND_NAMES]


@dataclass(frozen=True)
class DatasetFormat:
    """A dataset ``dataset.name`` can name: the function in ``hpo.data`` that reads it (``module:function``,
    imported when the dataset is loaded), and what the study's checks need to know of it."""

    loader: str
    files: bool = False  # decoded from image files: may stream, takes image_size/channels/test_split
    multilabel: bool = False  # labels are 0/1 vectors (N, labels)


# The one list of datasets: adding one is its entry here and its loader in hpo.data.
DATASET_FORMATS = {
    "fashion_mnist": DatasetFormat("hpo.data.fashion_mnist:load_fashion_mnist"),
    "mnist": DatasetFormat("hpo.data.fashion_mnist:load_mnist"),
    "cifar10": DatasetFormat("hpo.data.formats:load_cifar10"),
    "cifar100": DatasetFormat("hpo.data.formats:load_cifar100"),
    "tiny_imagenet": DatasetFormat("hpo.data.formats:load_tiny_imagenet", files=True),
    "image_folder": DatasetFormat("hpo.data.formats:load_image_folder", files=True),
    "multilabel_csv": DatasetFormat("hpo.data.formats:load_multilabel_csv", files=True, multilabel=True),
}
DATASET_NAMES = tuple(DATASET_FORMATS)
MULTILABEL_DATASETS = tuple(name for name, f in DATASET_FORMATS.items() if f.multilabel)
FILE_DATASETS = tuple(name for name, f in DATASET_FORMATS.items() if f.files)

# The search clock starts before the first trial's worker has imported torch and received the data,
# which alone takes 3-5 s on 2 CPU cores: below this, not even the smallest model on the smallest
# subset finishes an epoch (with 10 s, a 1-block CNN on 160 images completes 2).
MIN_SEARCH_TIME = 10.0
_DURATION = re.compile(r"^\s*(?:(\d+(?:\.\d+)?)h)?\s*(?:(\d+(?:\.\d+)?)m)?\s*(?:(\d+(?:\.\d+)?)s)?\s*$")
# For editors: the file says a duration as a number of seconds or as text like 45m (a digit somewhere).
_DURATION_SCHEMA = WithJsonSchema(
    {
        "anyOf": [
            {"type": "number", "minimum": MIN_SEARCH_TIME},
            {"type": "string", "pattern": "^(?=.*\\d)" + _DURATION.pattern[1:]},
            {"type": "null"},
        ]
    }
)


def parse_duration(value: Any) -> float:
    """Seconds from ``90``, ``"90s"``, ``"45m"`` or ``"1h30m"``."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        match = _DURATION.match(value)
        if match and any(match.groups()):
            h, m, s = (float(g) if g else 0.0 for g in match.groups())
            return h * 3600 + m * 60 + s
    raise ValueError(f"must be a duration like 90s, 45m or 1h30m (got {value!r})")


def parse_deadline(value: str, now: datetime | None = None) -> datetime:
    """``"06:00"`` -> the next 06:00 after ``now`` (local time); an ISO date-time as it is (local if naive);
    a duration (``"45m"``, ``"1h30m"``) -> that long after ``now``, the run's start."""
    now = now or datetime.now().astimezone()
    match = re.fullmatch(r"\s*([01]?\d|2[0-3]):([0-5]\d)\s*", value)
    if match:
        at = now.replace(hour=int(match[1]), minute=int(match[2]), second=0, microsecond=0)
        return at if at > now else at + timedelta(days=1)
    duration = _DURATION.match(value)
    if duration and any(duration.groups()):
        return now + timedelta(seconds=parse_duration(value))
    try:
        at = datetime.fromisoformat(value.strip())
    except ValueError:
        raise ValueError(
            "must be a time of day like 06:00, an ISO date-time like 2026-11-23T06:00 or a duration from the "
            f"run's start like 45m (got {value!r})"
        ) from None
    return at if at.tzinfo else at.astimezone()


class Subset(Strict):
    """Use a stratified sample of the data (for smoke tests and first looks)."""

    train: int | None = Field(default=None, ge=20)
    test: int | None = Field(default=None, ge=10)


class DatasetConfig(Strict):
    name: str = Field(json_schema_extra={"enum": list(DATASET_NAMES)})
    validation_split: float = Field(default=0.1, gt=0.0, lt=1.0)
    subset: Subset | None = None
    data_dir: str | None = None
    download: bool = True
    # Image files (tiny_imagenet, image_folder, multilabel_csv): resized to image_size x image_size when
    # given (tiny_imagenet: 32 downsamples its 64 px), as grey (1) or RGB (3) channels (default: the first
    # image's); test_split holds out a stratified test part where the files do not mark one.
    image_size: int | None = Field(default=None, ge=8, le=1024)
    channels: Literal[1, 3] | None = None
    test_split: float = Field(default=0.2, gt=0.0, lt=1.0)
    # Larger than memory: leave the images on disk; worker processes decode each batch ahead of the model
    # (image-file datasets only; needs image_size).
    stream: bool = False
    # multilabel_csv: the CSV (relative to data_dir), its image-path column, and its label columns
    # (default: every other column but "split"); a 0/1 column is one label, any other one label per value.
    csv: str = "labels.csv"
    path_column: str = "path"
    label_columns: list[str] | None = None

    @field_validator("name")
    @classmethod
    def _known(cls, name: str) -> str:
        if name not in DATASET_NAMES:
            raise ValueError(f"unknown dataset {name!r}; known: {', '.join(DATASET_NAMES)}")
        return name

    @property
    def multilabel(self) -> bool:
        """Several labels per image."""
        return self.name in MULTILABEL_DATASETS

    @property
    def from_files(self) -> bool:
        """Decoded from image files (so it may stream)."""
        return self.name in FILE_DATASETS


# What a trial can be judged by: the validation metric it reports each epoch, and what its network costs,
# measured once per trial (``params``: all its parameters, a frozen backbone's too; ``flops``: forward FLOPs
# of one image; ``latency_ms``: one image's forward pass on the trial's device and plan).
OBJECTIVE_METRICS = ("val_accuracy", "val_loss", "params", "flops", "latency_ms")
VALIDATION_METRICS = ("val_accuracy", "val_loss")


class Objective(Strict):
    metric: Literal["val_accuracy", "val_loss", "params", "flops", "latency_ms"] = "val_accuracy"
    mode: Literal["max", "min"] | None = None
    # A bound the chosen model must meet (<= for a minimised objective, >= for a maximised one), e.g.
    # ``{metric: params, limit: 1.0e6}``: the winner is the best of the trials within every limit.
    limit: float | None = None

    @property
    def direction(self) -> str:
        return self.mode or ("max" if self.metric == "val_accuracy" else "min")


class Objectives(RootModel[list[Objective]]):
    """The study's objective: one (``objective: {metric: val_accuracy}``) or several, as a list. The first is
    a validation metric: ASHA prunes by it, and every single-objective stage (re-check, warm start, the
    live view) ranks by it; with several, Optuna's multi-objective samplers search their Pareto front."""

    @model_validator(mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, dict) else value

    @classmethod
    def __get_pydantic_json_schema__(cls, core_schema: Any, handler: Any) -> dict[str, Any]:
        many = handler(core_schema)  # editors accept one objective or a list of them
        return {"anyOf": [many["items"], many], "description": cls.__doc__.split("\n\n")[0] if cls.__doc__ else ""}

    @model_validator(mode="after")
    def _first_is_validation(self) -> Objectives:
        if not self.root:
            raise ValueError("names no objective: give one, e.g. {metric: val_accuracy}")
        if self.root[0].metric not in VALIDATION_METRICS:
            raise ValueError(
                f"the first objective must be a validation metric ({', '.join(VALIDATION_METRICS)}): "
                f"ASHA prunes by it (got {self.root[0].metric!r})"
            )
        names = [o.metric for o in self.root]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"names an objective twice: {', '.join(repeated)}")
        return self

    @property
    def primary(self) -> Objective:
        return self.root[0]

    @property
    def metric(self) -> str:
        """The first objective's metric (what ASHA prunes by and single-objective stages rank by)."""
        return self.root[0].metric

    @property
    def mode(self) -> str | None:
        return self.root[0].mode

    @property
    def direction(self) -> str:
        return self.root[0].direction

    @property
    def multi(self) -> bool:
        return len(self.root) > 1

    def __iter__(self):
        return iter(self.root)

    def __len__(self) -> int:
        return len(self.root)


class Budget(Strict):
    trials: int = Field(ge=1, le=100_000)
    time: Annotated[float | None, _DURATION_SCHEMA] = Field(
        default=None, description="wall-clock limit of the search, e.g. 45m; finalize runs after"
    )
    max_epochs: int = Field(ge=1, le=10_000)
    until: str | None = Field(
        default=None,
        description="a deadline for the whole study, search and final stage: "
        "'06:00' (the next 06:00, local time), an ISO date-time, or a duration from the run's start "
        "('45m': the whole study in 45 minutes, whatever the machine); the search ends "
        "early enough for the re-check and final stage to finish before it",
    )

    @field_validator("until")
    @classmethod
    def _deadline(cls, value: str | None) -> str | None:
        if value is not None:
            parse_deadline(value)
        return value

    @field_validator("time", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> float | None:
        if value is None:
            return None
        seconds = parse_duration(value)
        if seconds < MIN_SEARCH_TIME:
            raise ValueError(
                f"must be at least {MIN_SEARCH_TIME:g}s, or left out: a shorter search stops every "
                f"trial before its first epoch (got {value!r})"
            )
        return seconds


# Optuna's samplers a study can name (hpo.engine.strategies builds them).
SAMPLER_NAMES = ("tpe", "gp", "cmaes", "random", "qmc", "grid", "nsga2")


class NamedByType(Strict):
    """A model with a ``type`` that a study may also give by that name alone (``sampler: gp``)."""

    @model_validator(mode="before")
    @classmethod
    def _name_alone(cls, value: Any) -> Any:
        return {"type": value} if isinstance(value, str) else value


class SamplerConfig(NamedByType):
    """How the search proposes configurations: ``sampler: gp`` or ``sampler: {type: tpe, startup_trials: 4}``.
    ``tpe`` (the default) is multivariate, groups conditional branches, and lies constantly about running
    trials so that trials at once do not propose the same point."""

    type: Literal["tpe", "gp", "cmaes", "random", "qmc", "grid", "nsga2"] = "tpe"
    # The sampler's seed. Default: the study's seed for a run with its own storage; with a shared
    # tracking.optuna_storage, one derived from the run (recorded on the study run), so that no night
    # replays another's random start-up.
    seed: int | None = Field(default=None, ge=0)
    # Random trials before a model-based sampler (tpe, gp, cmaes) starts modelling. Default:
    # min(10, max(2, budget.trials // 3)).
    startup_trials: int | None = Field(default=None, ge=0)


class SchedulerConfig(NamedByType):
    """What stops weak trials early: ``asha`` (default), ``hyperband`` (ASHA over several brackets of
    grace periods), ``median`` (the median stopping rule), or ``none``; ``scheduler: none`` or
    ``scheduler: {type: asha, grace_period: 2}``."""

    type: Literal["asha", "hyperband", "median", "none"] = "asha"
    grace_period: int = Field(default=1, ge=1)
    reduction_factor: float = Field(default=3.0, ge=2.0)
    brackets: int = Field(default=3, ge=1, le=10)  # hyperband: how many grace periods are tried
    # What a low rung saves on: ``epochs`` (a stopped trial trained fewer of them) or ``data`` (the epochs
    # up to each rung train on a stratified fraction of the training images, growing rung by rung).
    fidelity: Literal["epochs", "data"] = "epochs"
    # fidelity: data: the fraction of the training images each rung's epochs train on, rung by rung; after
    # the last, all of them. Default: 1/rf^2, 1/rf (1/9, 1/3 with reduction_factor 3).
    data_fractions: list[Annotated[float, Field(gt=0.0, le=1.0)]] | None = None

    @property
    def fractions(self) -> list[float]:
        """The data fractions per rung (empty with fidelity: epochs)."""
        if self.fidelity != "data":
            return []
        if self.data_fractions is not None:
            return list(self.data_fractions)
        return [1 / self.reduction_factor**2, 1 / self.reduction_factor]


class Resources(Strict):
    cpus_per_trial: float = Field(default=1.0, gt=0.0)
    gpus_per_trial: float = Field(default=0.0, ge=0.0)
    max_concurrent: int | None = Field(default=None, ge=1)
    # A cap per trial ("4GiB", "512MB"): Ray packs trials by it, and a trial that needs more fails as
    # infeasible (out of memory) instead of taking the machine down. On a GPU with a fractional
    # gpus_per_trial, each trial is held to its fraction of the card's memory.
    memory_per_trial: ByteSize | None = None
    # How trials, re-check and the final retrain run (hpo.train.plan): "auto" measures the candidates the
    # hardware can run on each model family's first batch (bf16 only where native, fp16 + loss scaler on
    # CUDA before sm80, TF32 on sm80+) and takes the fastest whose loss matches fp32's; a value fixes it.
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    channels_last: Literal["auto"] | bool = "auto"
    # torch.compile for training steps (inductor). "auto" measures it on CUDA for trials long enough to pay
    # back the compile; on CPUs it did not pay on 2 cores (docs/BENCHMARKS.md), so auto leaves it off there.
    compile: Literal["auto"] | bool = "auto"


class Failures(Strict):
    """What happens when a trial fails (raises, goes NaN, runs out of memory, its process dies)."""

    retries: int = Field(default=0, ge=0, le=10)  # restarts from scratch before the trial counts as failed


class RecheckConfig(Strict):
    """Re-run the top-k configurations at the full epoch budget with fresh seeds and pick the winner by
    the mean of their best validation metric (ASHA's ranking is noisy). ``top_k: 0`` turns it off."""

    top_k: int = Field(default=0, ge=0, le=50)
    seeds: int = Field(default=3, ge=1, le=20)


class FinalConfig(Strict):
    enabled: bool = True
    # With several objectives, how the winner is chosen (hpo.engine.pareto): ``best``, the best first
    # objective among the trials within every objective's limit; ``knee``, the point of their Pareto front
    # nearest the ideal one, each objective scaled to the front's range.
    choose: Literal["best", "knee"] = "best"
    recheck: RecheckConfig = RecheckConfig()
    retrain_on: Literal["train+val", "train"] = "train+val"
    epochs: int | Literal["best"] = "best"
    register_as: str | None = None
    # The registry alias ``champion`` moves to the new version when: always, never, or only if it beats
    # the current champion's ``promote_metric`` by more than ``min_improvement``.
    promote: Literal["if_better", "always", "never"] = "if_better"
    promote_metric: Literal["test_accuracy", "test_loss"] = "test_accuracy"
    min_improvement: float = Field(default=0.0, ge=0.0)
    export: list[Literal["torchscript", "onnx"]] = Field(default=["torchscript", "onnx"])


class TrackingConfig(Strict):
    uri: str | None = None
    experiment: str | None = None
    # Optuna's storage (an SQLAlchemy URL, e.g. postgresql://...): shared, so that runs can warm-start from
    # each other across machines. Default: a SQLite file in each run's folder.
    optuna_storage: str | None = None


class WarmStart(Strict):
    """Evaluate the best configurations of earlier runs first (those still valid in this space)."""

    model_config = ConfigDict(populate_by_name=True, serialize_by_alias=True)

    source: str = Field(
        alias="from",
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$",
        description="the study whose runs to take configurations from",
    )
    top_k: int = Field(default=5, ge=1, le=100)


class _StudyHead(Strict):
    """The study's first keys; :class:`StudyConfig` puts the backends' sections after them."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
    description: str | None = None
    seed: int = Field(default=0, ge=0)
    # multiclass: one class per image (softmax, cross-entropy); multilabel: any number of labels per image
    # (sigmoid, binary cross-entropy; val_accuracy is the mean per-label accuracy, 1 - Hamming loss)
    task: Literal["multiclass", "multilabel"] = "multiclass"
    dataset: DatasetConfig
    search_space: str | dict[str, Any]
    # What runs on the study's splits and budget: hpo's own search (Optuna TPE in Ray Tune, ASHA), the
    # AutoKeras baseline, or both (one after the other, each tracked under its own parent run).
    backends: list[BackendName] = Field(default=["search"], min_length=1)

    @field_validator("backends")
    @classmethod
    def _once_each(cls, backends: list[str]) -> list[str]:
        repeated = sorted({b for b in backends if backends.count(b) > 1})
        if repeated:
            raise ValueError(f"names a backend twice: {', '.join(repeated)}")
        return backends


# A study file: its head, each backend's section (hpo.config.backends.BackendSections), then the objective,
# the budget and the rest (a docstring here would become the JSON schema's description).
class StudyConfig(BackendSections, _StudyHead):
    objective: Objectives = Objectives([Objective()])
    budget: Budget
    sampler: SamplerConfig = SamplerConfig()
    scheduler: SchedulerConfig = SchedulerConfig()
    resources: Resources = Resources()
    failures: Failures = Failures()
    warm_start: WarmStart | None = None
    # Configurations the search evaluates first, before the sampler's own, as flat parameters (the names
    # the trials' MLflow runs show: model.name, model.cnn.depth, ...); each must be a point of the space.
    # A known-good configuration here is the bar every later trial is measured against, and ASHA stops
    # what falls behind it early.
    start_with: list[dict[str, Any]] = Field(default=[])
    final: FinalConfig = FinalConfig()
    tracking: TrackingConfig = TrackingConfig()
    output_dir: str = "runs"

    @property
    def registered_model_name(self) -> str:
        return self.final.register_as or self.name
