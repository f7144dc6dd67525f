from __future__ import annotations

import itertools
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from hpo.config.messages import to_study_errors
from hpo.config.trial import MODEL_CONFIGS, TrialConfig, boolean_numbers
from hpo.config.yaml_loader import YamlDoc, load_yaml
from hpo.errors import StudyError, StudyErrors

DocPath = tuple[str | int, ...]
_DISTRIBUTIONS = ("float", "int", "categorical", "one_of")
_MODIFIERS = {"float": {"log", "step"}, "int": {"log", "step"}, "categorical": set(), "one_of": set()}
EXTENDS = "extends"


@dataclass(frozen=True)
class Float:
    low: float
    high: float
    log: bool = False
    step: float | None = None

    def suggest(self, trial: Any, name: str) -> float:
        return trial.suggest_float(name, self.low, self.high, log=self.log, step=self.step)

    def corners(self) -> list[float]:
        return [self.low, self.high]

    def middle(self) -> float:
        mid = math.sqrt(self.low * self.high) if self.log else (self.low + self.high) / 2
        return self.low + round((mid - self.low) / self.step) * self.step if self.step else mid

    def describe(self) -> str:
        scale = "log" if self.log else "linear"
        step = f", step {self.step:g}" if self.step else ""
        return f"float [{self.low:g}, {self.high:g}] {scale}{step}"


@dataclass(frozen=True)
class Int:
    low: int
    high: int
    log: bool = False
    step: int = 1

    def suggest(self, trial: Any, name: str) -> int:
        return trial.suggest_int(name, self.low, self.high, log=self.log, step=self.step)

    def corners(self) -> list[int]:
        return [self.low, self.high]

    def middle(self) -> int:
        mid = math.sqrt(self.low * self.high) if self.log else (self.low + self.high) / 2
        return self.low + round((mid - self.low) / self.step) * self.step

    def describe(self) -> str:
        step = f", step {self.step}" if self.step != 1 else ""
        return f"int [{self.low}, {self.high}]{' log' if self.log else ''}{step}"


@dataclass(frozen=True)
class Categorical:
    choices: tuple[Any, ...]

    def suggest(self, trial: Any, name: str) -> Any:
        return trial.suggest_categorical(name, list(self.choices))

    def corners(self) -> list[Any]:
        return list(self.choices)

    def middle(self) -> Any:
        return self.choices[(len(self.choices) - 1) // 2]

    def describe(self) -> str:
        return "one of " + ", ".join(repr(c) for c in self.choices)


@dataclass(frozen=True)
class Constant:
    value: Any


@dataclass(frozen=True)
class Branches:
    """A conditional: one named sub-space per branch."""

    options: dict[str, dict[str, Node]]

    @property
    def selector(self) -> Categorical:
        return Categorical(tuple(self.options))


Param = Float | Int | Categorical
Node = Param | Constant | Branches | dict
Suggest = Callable[[str, Param], Any]


@dataclass(frozen=True)
class ParamInfo:
    """One searchable parameter, for display and for mapping back to the file."""

    name: str  # Optuna's parameter name: dotted path with branch names inserted
    param: Param
    condition: str | None  # e.g. "model.name == 'cnn'"
    doc_path: DocPath


class SearchSpace:
    """A parsed, validated search space; ``sample`` turns Optuna suggestions into a nested config."""

    def __init__(self, root: dict[str, Node], params: list[ParamInfo], file: str | None = None) -> None:
        self.root = root
        self.params = params
        self.file = file

    def sample(self, suggest: Suggest) -> dict[str, Any]:
        """Build one nested trial config, asking ``suggest(name, distribution)`` for each parameter."""
        return _sample(self.root, suggest, ())

    def suggest_with(self, trial: Any) -> dict[str, Any]:
        """Sample through an Optuna trial (or Ray's captor of one)."""
        return self.sample(lambda name, p: p.suggest(trial, name))

    def resolve(self, flat: dict[str, Any]) -> TrialConfig:
        """The TrialConfig for flat Optuna params (as Ray Tune hands them to a trial)."""

        def lookup(name: str, _: Param) -> Any:
            if name not in flat:
                raise KeyError(f"sampled parameters lack {name!r}")
            return flat[name]

        return TrialConfig.model_validate(self.sample(lookup))

    def corner_points(self, base: DocPath = ()) -> Iterator[tuple[dict[str, Any], DocPath]]:
        """Every branch's corners, as ``hpo plan`` sizes them: all parameters at their first value, each
        parameter at each of its ends (the others at their first), and all at their last (the largest
        numbers); each with the document path of what makes the point (the varied parameter, or the
        branch), for errors."""
        for assignment in _branch_assignments(self.root, ()):
            leaves: list[tuple[tuple, Param]] = []
            origin: dict[tuple, DocPath] = {}
            _collect(self.root, (), base, assignment, leaves, origin)
            branch = origin.get(("model", "name"), (*base, "model"))
            firsts = {path: p.corners()[0] for path, p in leaves}
            yield _build(self.root, (), assignment, firsts), branch
            for path, p in leaves:
                for value in p.corners()[1:]:
                    yield _build(self.root, (), assignment, {**firsts, path: value}), origin[path]
            yield _build(self.root, (), assignment, {path: p.corners()[-1] for path, p in leaves}), branch

    def representatives(self) -> dict[str, TrialConfig]:
        """One configuration per model family: every parameter at the middle of its range (the geometric
        middle on a log scale, the middle choice of a categorical)."""
        model = self.root.get("model")
        families = list(model.options) if isinstance(model, Branches) else [None]

        def middle(family: str | None) -> TrialConfig:
            return TrialConfig.model_validate(
                self.sample(lambda name, p: family if name == "model.name" and family is not None else p.middle())
            )

        configs = [middle(family) for family in families]
        return {config.model.name: config for config in configs}

    def mismatch(self, flat: dict[str, Any]) -> str | None:
        """Why ``flat`` (parameters sampled from some space, e.g. last night's) is not a point of this
        space, or None if it is: every parameter this space asks for is there and within its range, and
        nothing else is."""
        used: set[str] = set()
        problems: list[str] = []

        def check(name: str, p: Param) -> Any:
            used.add(name)
            if name not in flat:
                problems.append(f"{name} missing")
                return p.corners()[0]
            value = flat[name]
            if not _contains(p, value):
                problems.append(f"{name}={value!r} outside {p.describe()}")
                return p.corners()[0]
            return value

        self.sample(check)
        problems += [f"{name} not in this space" for name in sorted(set(flat) - used)]
        return "; ".join(problems) or None

    def pretrained_models(self) -> list[tuple[str, tuple[str, ...]]]:
        """(weights name, where ``pretrained`` is set in the space file) for every model the space can build
        with ``pretrained: true``: torchvision names (``resnet18``) and ``timm/<model>``. ``hpo validate``
        checks that their weights can be had."""
        model = self.root.get("model")
        branches = model.options if isinstance(model, Branches) else {None: model} if isinstance(model, dict) else {}
        found: list[tuple[str, tuple[str, ...]]] = []
        for branch, node in branches.items():
            family = branch or _values(node.get("name"), [None])[0]
            schema = MODEL_CONFIGS.get(family)
            if schema is None or True not in _values(node.get("pretrained"), [False]):
                continue
            key = "model" if family == "timm" else "variant"
            default = schema.model_fields[key].default if key in schema.model_fields else family
            where = ("model", "one_of", branch, "pretrained") if branch else ("model", "pretrained")
            for value in _values(node.get(key), [default if isinstance(default, str) else family]):
                found.append((f"timm/{value}" if family == "timm" else value, where))
        return found

    def family_values(self, family: str, key: str) -> list[tuple[Any, tuple[str, ...]]]:
        """(value, where in the space file) of every value ``key`` of model family ``family`` can take."""
        model = self.root.get("model")
        branches = model.options if isinstance(model, Branches) else {None: model} if isinstance(model, dict) else {}
        found: list[tuple[Any, tuple[str, ...]]] = []
        for branch, node in branches.items():
            if (branch or _values(node.get("name"), [None])[0]) != family or key not in node:
                continue
            where = ("model", "one_of", branch, key) if branch else ("model", key)
            found += [(value, where) for value in _values(node.get(key), [])]
        return found

    def describe_rows(self) -> list[tuple[str, str, str]]:
        return [(p.name, p.param.describe(), p.condition or "") for p in self.params]


def _values(node: Node | None, missing: list[Any]) -> list[Any]:
    """Every value a constant or categorical node can take (``missing`` when the space leaves it out)."""
    if isinstance(node, Constant):
        return [node.value]
    if isinstance(node, Categorical):
        return list(node.choices)
    return missing


def _contains(p: Param, value: Any) -> bool:
    if isinstance(p, Categorical):
        return any(value == c and type(value) is type(c) for c in p.choices)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    if isinstance(p, Int):
        return float(value).is_integer() and p.low <= value <= p.high and (int(value) - p.low) % p.step == 0
    return p.low <= value <= p.high


def define_by_run(trial: Any, space: SearchSpace) -> None:
    """Optuna define-by-run entry point. Module-level so Ray pickles it by reference
    (``functools.partial(define_by_run, space=space)``), which ``Tuner.restore`` needs."""
    space.suggest_with(trial)


def _sample(node: dict[str, Node], suggest: Suggest, names: tuple[str, ...]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, child in node.items():
        name = (*names, key)
        if isinstance(child, Constant):
            out[key] = child.value
        elif isinstance(child, dict):
            out[key] = _sample(child, suggest, name)
        elif isinstance(child, Branches):
            choice = suggest(".".join((*name, "name")), child.selector)
            out[key] = {"name": choice, **_sample(child.options[choice], suggest, (*name, choice))}
        else:
            out[key] = suggest(".".join(name), child)
    return out


# --------------------------------------------------------------------------------------------- parsing


def parse_space(doc: YamlDoc, data: Any = None, base: DocPath = ()) -> SearchSpace:
    """Parse and validate a search space held in ``doc`` (at ``base``, for one inlined in a study).

    Raises StudyErrors listing every problem, each with its line in the file.
    """
    data = doc.data if data is None else data
    errors: list[StudyError] = []
    if not isinstance(data, dict):
        raise StudyErrors([doc.error(base, "a search space must be a mapping of config keys")])
    if EXTENDS in data:  # load_space resolves it in files; a space inlined in a study has no file to be
        raise StudyErrors(
            [
                doc.error(
                    (*base, EXTENDS),
                    "extends works in search-space files: put this space in a file and name that file in search_space",
                )
            ]
        )
    params: list[ParamInfo] = []
    root = _parse_mapping(data, doc, base, (), None, params, errors)
    if errors:
        raise StudyErrors(errors)
    space = SearchSpace(root, params, file=str(doc.file))
    _check_against_schema(space, doc, base)
    return space


def _parse_mapping(
    data: dict,
    doc: YamlDoc,
    doc_path: DocPath,
    names: tuple[str, ...],
    condition: str | None,
    params: list[ParamInfo],
    errors: list[StudyError],
) -> dict[str, Node]:
    out: dict[str, Node] = {}
    for key, value in data.items():
        path = (*doc_path, key)
        name = (*names, key)
        if isinstance(value, dict) and any(k in value for k in _DISTRIBUTIONS):
            node = _parse_distribution(value, doc, path, name, condition, params, errors)
            if node is not None:
                out[key] = node
        elif isinstance(value, dict):
            out[key] = _parse_mapping(value, doc, path, name, condition, params, errors)
        else:
            out[key] = Constant(value)
    return out


def _parse_distribution(
    value: dict,
    doc: YamlDoc,
    path: DocPath,
    name: tuple[str, ...],
    condition: str | None,
    params: list[ParamInfo],
    errors: list[StudyError],
) -> Node | None:
    kinds = [k for k in _DISTRIBUTIONS if k in value]
    if len(kinds) > 1:
        errors.append(doc.error(path, f"give one distribution, not {' and '.join(kinds)}"))
        return None
    kind = kinds[0]
    for extra in set(value) - {kind} - _MODIFIERS[kind]:
        allowed = sorted(_MODIFIERS[kind])
        hint = f"; {kind} takes {', '.join(allowed)}" if allowed else f"; {kind} takes no options"
        errors.append(doc.error((*path, extra), f"unknown key {extra!r}{hint}"))
    spec = value[kind]
    here = (*path, kind)
    dotted = ".".join(name)
    try:
        if kind == "one_of":
            return _parse_branches(spec, doc, here, name, condition, params, errors)
        if kind == "categorical":
            param: Param = _categorical(spec)
        else:
            param = _numeric(kind, spec, value.get("log", False), value.get("step"))
    except ValueError as exc:
        errors.append(doc.error(here, str(exc)))
        return None
    params.append(ParamInfo(dotted, param, condition, path))
    return param


def _parse_branches(
    spec: Any,
    doc: YamlDoc,
    path: DocPath,
    name: tuple[str, ...],
    condition: str | None,
    params: list[ParamInfo],
    errors: list[StudyError],
) -> Branches:
    if not isinstance(spec, dict) or not spec:
        raise ValueError(
            "one_of takes a mapping of branch names to their parameters, e.g. {cnn: {depth: {int: [2, 4]}}, resnet: {}}"
        )
    selector = ".".join((*name, "name"))
    params.append(ParamInfo(selector, Categorical(tuple(spec)), condition, path))
    options: dict[str, dict[str, Node]] = {}
    for branch, sub in spec.items():
        sub = {} if sub is None else sub
        if not isinstance(sub, dict):
            errors.append(doc.error((*path, branch), "a branch must be a mapping of parameters (or empty)"))
            continue
        if "name" in sub:
            errors.append(doc.error((*path, branch, "name"), "'name' is set by the branch itself; remove it"))
            continue
        cond = f"{selector} == {branch!r}"
        cond = f"{condition} and {cond}" if condition else cond
        options[branch] = _parse_mapping(sub, doc, (*path, branch), (*name, branch), cond, params, errors)
    return Branches(options)


def _categorical(spec: Any) -> Categorical:
    if not isinstance(spec, list) or not spec:
        raise ValueError(f"categorical takes a non-empty list of choices (got {spec!r})")
    for choice in spec:
        if not (choice is None or isinstance(choice, (bool, int, float, str))):
            raise ValueError(f"categorical choices must be plain values (got {choice!r})")
    if len({repr(c) for c in spec}) != len(spec):
        raise ValueError(f"categorical choices must be distinct (got {spec!r})")
    return Categorical(tuple(spec))


def _numeric(kind: str, spec: Any, log: Any, step: Any) -> Float | Int:
    if not (isinstance(spec, list) and len(spec) == 2):
        raise ValueError(f"{kind} takes [low, high] (got {spec!r})")
    low, high = spec
    number = int if kind == "int" else (int, float)
    for label, v in (("low", low), ("high", high)):
        if isinstance(v, bool) or not isinstance(v, number) or (isinstance(v, float) and not math.isfinite(v)):
            what = "an integer" if kind == "int" else "a finite number"
            raise ValueError(f"{label} must be {what} (got {v!r})")
    if not isinstance(log, bool):
        raise ValueError(f"log must be true or false (got {log!r})")
    if not low <= high:
        raise ValueError(f"`low <= high` must hold, but got (low={low}, high={high})")
    if log and low <= 0:
        raise ValueError(f"a log scale needs `low > 0`, but got (low={low})")
    if step is not None:
        if log:
            raise ValueError("`step` and `log: true` cannot be combined")
        if isinstance(step, bool) or not isinstance(step, number) or step <= 0:
            raise ValueError(f"step must be a positive {'integer' if kind == 'int' else 'number'} (got {step!r})")
    if kind == "int":
        return Int(low, high, log=log, step=step or 1)
    return Float(float(low), float(high), log=log, step=None if step is None else float(step))


# ------------------------------------------------------------------------------------------- extends


def load_space(file: Path, display: Callable[[Path], Path] = Path) -> YamlDoc:
    """Load a search-space file, resolving ``extends: other.yaml`` (relative to the extending file).

    The extended file is deep-merged under the extending one, which wins: mappings of config keys merge
    key by key (as do ``one_of`` branches); anything else, a distribution included, is replaced whole.
    Chains are followed and a cycle is an error that shows it. ``display`` names files in errors.
    """
    return _load_extending(Path(file), display, ())


def _load_extending(file: Path, display: Callable[[Path], Path], chain: tuple[Path, ...]) -> YamlDoc:
    doc = load_yaml(file, display=display(file))
    if not isinstance(doc.data, dict) or EXTENDS not in doc.data:
        return doc
    target = doc.data[EXTENDS]
    if not isinstance(target, str) or not target.strip():
        raise doc.error(
            (EXTENDS,), f"must be the path of another search-space file, relative to this one (got {target!r})"
        )
    parent = Path(os.path.normpath(file.parent / target))
    here = (*chain, file.resolve())
    if parent.resolve() in here:
        start = here[0].parent
        cycle = " -> ".join(os.path.relpath(p, start) for p in (*here, parent.resolve()))
        raise doc.error((EXTENDS,), f"circular extends: {cycle}")
    if not parent.exists():
        raise doc.error((EXTENDS,), f"search-space file not found: {target} (looked for {parent.resolve()})")
    base = _load_extending(parent, display, here)
    if not isinstance(base.data, dict):
        raise base.error((), "a search space must be a mapping of config keys")
    merged = YamlDoc(data=None, file=doc.file)
    own = {k: v for k, v in doc.data.items() if k != EXTENDS}
    merged.data = _merge(base, doc, (), base.data, own, merged)
    return merged


def _merge(base: YamlDoc, over: YamlDoc, path: DocPath, old: Any, new: Any, out: YamlDoc) -> Any:
    """``new`` over ``old`` (both at ``path``), recording in ``out`` the file and line of every key kept."""
    if not (
        isinstance(old, dict) and isinstance(new, dict) and _kind(old) == _kind(new) and _kind(new) in (None, "one_of")
    ):
        _take(over, path, new, out)
        return new
    _take(over, path, None, out)
    merged: dict[str, Any] = {}
    for key in (*old, *(k for k in new if k not in old)):
        here = (*path, key)
        if key in new and key in old:
            merged[key] = _merge(base, over, here, old[key], new[key], out)
        elif key in new:
            merged[key] = new[key]
            _take(over, here, new[key], out)
        else:
            merged[key] = old[key]
            _take(base, here, old[key], out)
    return merged


def _kind(node: dict) -> str | None:
    return next((k for k in _DISTRIBUTIONS if k in node), None)


def _take(doc: YamlDoc, path: DocPath, value: Any, out: YamlDoc) -> None:
    """Copy the lines of ``value`` (found at ``path`` in ``doc``) into ``out``."""
    if path in doc.lines:
        out.lines[path] = doc.lines[path]
        if (file := doc.file_of(path)) != out.file:
            out.files[path] = file
    children = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, child in children:
        _take(doc, (*path, key), child, out)


# ----------------------------------------------------------------------- validation against the schema


def _check_against_schema(space: SearchSpace, doc: YamlDoc, base: DocPath) -> None:
    """Every value the space can produce must be a valid TrialConfig: validate the corners of the space
    (each parameter at each end / each choice, the others at their first corner) in every branch."""
    errors: dict[tuple, StudyError] = {}
    for config, origin in _corner_configs(space.root, base):

        def locate(loc, origin=origin):
            for n in range(len(loc), 0, -1):
                if tuple(loc[:n]) in origin:
                    return (*origin[tuple(loc[:n])], *loc[n:])
            return (*base, *loc)

        booleans = boolean_numbers(TrialConfig, config)  # pydantic would take `true` as 1
        for path, value in booleans:
            err = doc.error(locate(path), f"must be a number, not a YAML boolean (got {str(value).lower()})")
            errors.setdefault((err.line, err.message), err)
        if booleans:
            continue
        try:
            TrialConfig.model_validate(config)
        except ValidationError as exc:
            for err in to_study_errors(exc, doc, TrialConfig, locate=locate, data=config):
                errors.setdefault((err.line, err.message), err)
    if errors:
        raise StudyErrors(list(errors.values()))


def _corner_configs(root: dict[str, Node], base: DocPath) -> Iterator[tuple[dict, dict]]:
    """Yield (config, origin) pairs; origin maps config paths to document paths for error locations."""
    branch_sets = list(_branch_assignments(root, ()))
    for assignment in branch_sets:
        leaves: list[tuple[tuple, Param]] = []
        origin: dict[tuple, DocPath] = {}
        _collect(root, (), base, assignment, leaves, origin)
        firsts = {path: p.corners()[0] for path, p in leaves}
        variants = [dict(firsts)]
        for path, p in leaves:
            for value in p.corners()[1:]:
                variants.append({**firsts, path: value})
        for values in variants:
            yield _build(root, (), assignment, values), origin


def _branch_assignments(node: dict[str, Node], path: tuple) -> Iterator[dict[tuple, str]]:
    choices: list[list[dict[tuple, str]]] = []
    for key, child in node.items():
        here = (*path, key)
        if isinstance(child, dict):
            choices.append(list(_branch_assignments(child, here)))
        elif isinstance(child, Branches):
            options = []
            for label, sub in child.options.items():
                for inner in _branch_assignments(sub, here):
                    options.append({here: label, **inner})
            choices.append(options)
    for combo in itertools.product(*choices):
        merged: dict[tuple, str] = {}
        for part in combo:
            merged.update(part)
        yield merged


def _collect(
    node: dict[str, Node], path: tuple, doc_path: DocPath, assignment: dict, leaves: list, origin: dict
) -> None:
    for key, child in node.items():
        here, doc_here = (*path, key), (*doc_path, key)
        origin[here] = doc_here
        if isinstance(child, dict):
            _collect(child, here, doc_here, assignment, leaves, origin)
        elif isinstance(child, Branches):
            label = assignment[here]
            origin[(*here, "name")] = (*doc_here, "one_of")
            _collect(child.options[label], here, (*doc_here, "one_of", label), assignment, leaves, origin)
        elif not isinstance(child, Constant):
            leaves.append((here, child))


def _build(node: dict[str, Node], path: tuple, assignment: dict, values: dict) -> dict:
    out: dict[str, Any] = {}
    for key, child in node.items():
        here = (*path, key)
        if isinstance(child, Constant):
            out[key] = child.value
        elif isinstance(child, dict):
            out[key] = _build(child, here, assignment, values)
        elif isinstance(child, Branches):
            label = assignment[here]
            out[key] = {"name": label, **_build(child.options[label], here, assignment, values)}
        else:
            out[key] = values[here]
    return out
