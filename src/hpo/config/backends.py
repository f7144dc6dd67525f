"""The backends a study may name (``backends: [search, autokeras]``), declared once.

Each declaration says where the backend is implemented (imported only when a study uses it), the stages a
run passes through for it (``state.json``), the packages it needs and the checks a study naming it must
pass before anything runs. A backend with options of its own has a section in the study, declared here
too (:class:`BackendSections`). Adding a backend touches this module and its implementation in
:mod:`hpo.backends`; the study loader, the run folder and the runner read the declarations.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol

from pydantic import Field

from hpo.config.trial import Strict
from hpo.errors import StudyError
from hpo.names import Stage

if TYPE_CHECKING:  # the checks only call doc.error(); the YAML parser loads with a study, not with a trial
    from hpo.config.yaml_loader import YamlDoc


# ------------------------------------------------------------------------------- the study's sections
class AutoKerasConfig(Strict):
    """The AutoKeras baseline (``backends: [search, autokeras]``): ``autokeras.ImageClassifier`` on the
    study's exact splits, with its budget: ``budget.trials`` models (unless ``max_trials`` says otherwise),
    ``budget.max_epochs`` epochs each, ``budget.time`` of wall time; its winner is retrained as
    ``final.retrain_on`` and ``final.epochs`` say, then tested once."""

    tuner: Literal["greedy", "bayesian", "hyperband", "random"] = "greedy"
    # The kind of network AutoKeras builds (its ImageBlock's block_type); left out, AutoKeras searches all of
    # them, and its greedy tuner's second and third models are a ResNet50 and a pretrained EfficientNet-B7
    # at 224 px (minutes a batch on a CPU; the latter downloads ImageNet weights).
    block_type: Literal["vanilla", "resnet", "xception", "efficient"] | None = None
    max_trials: int | None = Field(default=None, ge=1, le=10_000)
    batch_size: int = Field(default=32, ge=1, le=8192)
    # Keras 3 runs on PyTorch by default (no TensorFlow needed); "tensorflow" needs the tensorflow extra.
    keras_backend: Literal["torch", "tensorflow"] = "torch"


class BackendSections(Strict):
    """The study's sections of backend options, one per backend that has options (``StudyConfig`` holds
    them, after ``backends``)."""

    autokeras: AutoKerasConfig = AutoKerasConfig()


# ------------------------------------------------------------------------------- what checks read
class _Budget(Protocol):
    @property
    def until(self) -> str | None: ...


class _Dataset(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def stream(self) -> bool: ...
    @property
    def image_size(self) -> int | None: ...
    @property
    def multilabel(self) -> bool: ...
    @property
    def from_files(self) -> bool: ...


class StudyView(Protocol):
    """What a backend's checks read of a study (``hpo.config.study.StudyConfig`` has it all)."""

    @property
    def backends(self) -> Sequence[str]: ...
    @property
    def task(self) -> str: ...
    @property
    def autokeras(self) -> AutoKerasConfig: ...
    @property
    def budget(self) -> _Budget: ...
    @property
    def dataset(self) -> _Dataset: ...


Check = Callable[["StudyView", "YamlDoc"], "StudyError | None"]


@dataclass(frozen=True, kw_only=True)
class BackendDeclaration:
    """One backend: its name in the study, where it is implemented, its stages, and its checks."""

    name: str
    implementation: str  # "module:Class", imported when a study names the backend
    stages: tuple[Stage, ...]  # the run's stages it owns, in order (hpo.engine.run_dir records them)
    checks: tuple[Check, ...] = ()  # run on a study that names it, after the schema (None: fine)


# ------------------------------------------------------------------------------- AutoKeras
KERAS_RANGE = ((3, 12), (3, 13))  # AutoKeras 3.0.0 breaks on Keras 3.13+
INSTALL = {"torch": 'pip install -e ".[autokeras]"', "tensorflow": 'pip install -e ".[tensorflow]"'}


@dataclass(kw_only=True)
class Missing:
    """Packages a backend lacks in this environment, and the command that installs them."""

    packages: list[str]
    keras_backend: str
    detail: str = ""

    def __str__(self) -> str:
        what = ", ".join(self.packages)
        return (
            f"the autokeras backend on Keras' {self.keras_backend} backend needs {what}{self.detail}: "
            f"{INSTALL[self.keras_backend]}"
        )


def missing_packages(keras_backend: str = "torch") -> Missing | None:
    """What the AutoKeras baseline lacks in this environment (None: ready). Imports nothing heavy."""
    needed = ["autokeras", "keras"] + (["tensorflow"] if keras_backend == "tensorflow" else [])
    missing = [name for name in needed if importlib.util.find_spec(name) is None]
    if missing:
        return Missing(packages=missing, keras_backend=keras_backend)
    version = importlib.metadata.version("keras")
    parts = tuple(int(p) for p in version.split(".")[:2] if p.isdigit())
    if not KERAS_RANGE[0] <= parts < KERAS_RANGE[1]:
        return Missing(
            packages=["keras>=3.12,<3.13"],
            keras_backend=keras_backend,
            detail=f" (found keras {version}, which AutoKeras 3.0.0 cannot run on)",
        )
    return None


def _autokeras_installed(config: StudyView, doc: YamlDoc) -> StudyError | None:
    """A study that asks for AutoKeras fails here, before anything runs, when its extra is missing."""
    missing = missing_packages(config.autokeras.keras_backend)
    if missing:
        field = (
            ("autokeras", "keras_backend")
            if config.autokeras.keras_backend == "tensorflow" and "autokeras" not in missing.packages
            else ("backends",)
        )
        return doc.error(field, str(missing))
    if config.budget.until:
        return doc.error(
            ("budget", "until"),
            "is not supported with the autokeras backend yet: give the baseline a budget.time instead",
        )
    return None


def _autokeras_multiclass(config: StudyView, doc: YamlDoc) -> StudyError | None:
    if config.task == "multilabel" and config.dataset.multilabel:  # else the study's task check speaks
        return doc.error(("backends",), "the autokeras baseline runs multiclass tasks only")
    return None


def _autokeras_in_memory(config: StudyView, doc: YamlDoc) -> StudyError | None:
    d = config.dataset
    if d.stream and d.from_files and d.image_size is not None:  # else the study's stream check speaks
        return doc.error(("dataset", "stream"), "the autokeras baseline needs the images in memory")
    return None


# ------------------------------------------------------------------------------- the registry
BACKENDS: dict[str, BackendDeclaration] = {
    d.name: d
    for d in (
        BackendDeclaration(
            name="search",
            implementation="hpo.backends.search:SearchBackend",
            stages=(Stage.SEARCH, Stage.RECHECK, Stage.FINALIZE),
        ),
        BackendDeclaration(
            name="autokeras",
            implementation="hpo.backends.autokeras:AutoKerasBackend",
            stages=(Stage.BASELINE,),
            checks=(_autokeras_installed, _autokeras_multiclass, _autokeras_in_memory),
        ),
    )
}
BACKEND_NAMES = tuple(BACKENDS)


def stage_sequence(backends: Sequence[str]) -> tuple[Stage, ...]:
    """The stages a run of a study naming ``backends`` passes through, in order, ending with ``done``."""
    return (*(stage for name in backends for stage in BACKENDS[name].stages), Stage.DONE)


def backend_checks(backends: Sequence[str]) -> list[Check]:
    """The checks of the backends a study names, in the order it names them."""
    return [check for name in backends for check in BACKENDS[name].checks]
