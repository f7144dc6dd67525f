"""JSON Schemas of hpo's files, for editors (yaml-language-server) and CI: studies, search spaces, trials.

Generated from the pydantic models, so they follow the code; ``schemas/*.schema.json`` are the committed
copies that the shipped YAML files name on their first line, kept in step with ``hpo schema`` by a test.
A schema is an aid, not the judge: ``hpo validate`` also checks what a schema cannot say (``low <= high``,
files that exist, rules across fields) and names the file and line.
"""

from __future__ import annotations

import copy
import json
from typing import Any

from hpo.config import StudyConfig, TrialConfig
from hpo.config.study import NamedByType

DRAFT = "https://json-schema.org/draft/2020-12/schema"
# The search-space vocabulary (hpo.space), kept in step with its parser by a test.
DISTRIBUTIONS = ("float", "int", "categorical", "one_of")
MODIFIERS = {"float": ("log", "step"), "int": ("log", "step"), "categorical": (), "one_of": ()}
EXTENDS = "extends"
SELECTOR = "name"  # one_of stores the chosen branch here, so only objects with a `name` can branch
_NOTES = ("title", "description", "default")
_BOUNDS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "enum", "const")


def to_json(schema: dict[str, Any]) -> str:
    """The one text form of a schema: what ``hpo schema`` prints and ``schemas/`` holds, byte for byte."""
    return json.dumps(schema, indent=2, ensure_ascii=False) + "\n"


def trial_schema() -> dict[str, Any]:
    """One trial's configuration (``hpo.config.TrialConfig``), as pydantic states it."""
    return {"$schema": DRAFT, **TrialConfig.model_json_schema()}


def study_schema() -> dict[str, Any]:
    """A study file: ``StudyConfig``, with ``search_space`` either a file or a space written inline."""
    schema = StudyConfig.model_json_schema()
    defs, root = _space_parts()
    clash = set(defs) & set(schema["$defs"])
    assert not clash, f"study and search-space schemas both define {sorted(clash)}"
    schema["$defs"].update(defs)
    schema["$defs"]["SearchSpace"] = {
        **root,
        "title": "SearchSpace",
        "description": "A search space written inline: the trial configuration, where any leaf may be a "
        "distribution (extends works only in search-space files).",
    }
    schema["properties"]["search_space"] = {
        "title": "Search Space",
        "description": "a search-space file (relative to this study), or the space itself",
        "anyOf": [{"type": "string", "minLength": 1}, {"$ref": "#/$defs/SearchSpace"}],
    }
    named = [f for f, info in StudyConfig.model_fields.items() if _named_by_type(info.annotation)]
    for field in named:  # `sampler: gp` as well as `sampler: {type: gp, seed: 3}`
        model = schema["properties"][field]
        names = schema["$defs"][model["$ref"].rsplit("/", 1)[1]]["properties"]["type"]["enum"]
        reference = {"$ref": model.pop("$ref")}
        model["anyOf"] = [{"type": "string", "enum": names}, reference]
    schema.pop("title")
    return {
        "$schema": DRAFT,
        "title": "hpo study",
        "description": "A study file of hpo (hpo validate checks it in full).",
        **schema,
    }


def _named_by_type(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, NamedByType)


def space_schema() -> dict[str, Any]:
    """A search-space file: the trial configuration's structure where any leaf may also be a distribution
    (``{float: [low, high]}``, ``{int: ...}``, ``{categorical: [...]}``), an object with a ``name`` may be
    ``{one_of: {branch: {...}}}``, and the top level may say ``extends: other.yaml``."""
    defs, root = _space_parts()
    extends = {
        "type": "string",
        "minLength": 1,
        "description": "another search-space file (relative to this one), deep-merged under this one",
    }
    return {
        "$schema": DRAFT,
        "title": "hpo search space",
        "description": "A search-space file of hpo: the trial configuration, where any leaf may be a "
        "distribution (hpo validate checks it in full).",
        "type": "object",
        "properties": {EXTENDS: extends, **root["properties"]},
        "additionalProperties": False,
        "$defs": defs,
    }


# ---------------------------------------------------------------------------------------- the space


def _space_parts() -> tuple[dict[str, Any], dict[str, Any]]:
    """The space's definitions and its root object, derived from TrialConfig's schema: every object
    keeps its keys (unknown keys stay errors), every leaf also takes a distribution."""
    trial = TrialConfig.model_json_schema()
    models = trial["$defs"]
    defs = {_space_name(name): _space_object(model, models) for name, model in models.items()}
    defs.update(_distributions())
    return defs, _space_object(trial, models)


def _space_name(model: str) -> str:
    return f"{model}Space"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/$defs/{name}"}


def _space_object(model: dict[str, Any], models: dict[str, Any]) -> dict[str, Any]:
    # No `required`: a file that extends another may leave any key to the file it extends.
    notes: dict[str, Any] = {k: model[k] for k in ("title", "description") if k in model}
    properties = {key: _space_value(value, models) for key, value in model["properties"].items()}
    return {**notes, "type": "object", "properties": properties, "additionalProperties": False}


def _space_value(value: dict[str, Any], models: dict[str, Any]) -> dict[str, Any]:
    choices = value.get("oneOf", value.get("anyOf", [value]))
    refs = [c["$ref"].rsplit("/", 1)[1] for c in choices if "$ref" in c]
    if not refs:
        return _space_leaf(value)
    assert len(refs) == len(choices), f"a field that is a model or something else: {value}"
    notes: dict[str, Any] = {k: value[k] for k in ("title", "description") if k in value}
    # A model family without `name` is the CNN (TrialConfig), so the forms are not exclusive: anyOf.
    forms = [_ref(_space_name(ref)) for ref in refs]
    branches = {name: ref for ref in refs for name in _names(models[ref])}
    if branches:
        forms.append(_one_of(branches))
    return {**notes, **forms[0]} if len(forms) == 1 else {**notes, "anyOf": forms}


def _names(model: dict[str, Any]) -> list[str]:
    """The values a model's ``name`` can take: the branches a one_of over it can name."""
    name = model["properties"].get(SELECTOR, {})
    return [name["const"]] if "const" in name else list(name.get("enum", []))


def _one_of(branches: dict[str, str]) -> dict[str, Any]:
    def branch(ref: str) -> dict[str, Any]:
        # `name` is the branch's own: the parser refuses it inside a branch.
        return {"anyOf": [{**_ref(_space_name(ref)), "not": {"required": [SELECTOR]}}, {"type": "null"}]}

    return {
        "type": "object",
        "required": ["one_of"],
        "additionalProperties": False,
        "properties": {
            "one_of": {
                "description": "a conditional: each trial takes one branch and samples only its parameters; the "
                f"branch's name becomes `{SELECTOR}`",
                "type": "object",
                "minProperties": 1,
                "additionalProperties": False,
                "properties": {name: branch(ref) for name, ref in branches.items()},
            }
        },
    }


def _space_leaf(value: dict[str, Any]) -> dict[str, Any]:
    """A constant as the trial config takes it, or a distribution whose values it would take."""
    notes = {k: value[k] for k in _NOTES if k in value}
    constant = {k: v for k, v in value.items() if k not in notes}
    choices = constant["anyOf"] if set(constant) == {"anyOf"} else [constant]
    forms = [*choices, _bounded("Categorical", "categorical", constant)]
    for choice in choices:
        bounds = {k: v for k, v in choice.items() if k in _BOUNDS}
        if choice.get("type") == "number":
            forms.append(_bounded("Float", "float", bounds))
        if choice.get("type") in ("number", "integer"):
            forms.append(_bounded("Int", "int", bounds))
    return {**notes, "anyOf": forms}


def _bounded(name: str, kind: str, items: dict[str, Any]) -> dict[str, Any]:
    """A distribution whose values must also satisfy ``items`` (the field's bounds or its constants)."""
    if not items:
        return _ref(name)
    return {**_ref(name), "properties": {kind: {"items": copy.deepcopy(items)}}}


def _distributions() -> dict[str, Any]:
    def numeric(kind: str, number: str, what: str) -> dict[str, Any]:
        modifiers = {
            "log": {"type": "boolean", "default": False, "description": "sample on a log scale (low > 0)"},
            "step": {
                "type": number,
                "exclusiveMinimum": 0,
                "description": "sample only low, low + step, low + 2 step, ... (not with log)",
            },
        }
        return {
            "description": f"{what} on [low, high], both ends included",
            "type": "object",
            "required": [kind],
            "additionalProperties": False,
            "properties": {
                kind: {
                    "type": "array",
                    "items": {"type": number},
                    "minItems": 2,
                    "maxItems": 2,
                    "description": "[low, high]",
                },
                **{m: modifiers[m] for m in MODIFIERS[kind]},
            },
            # the parser's rules across keys: log needs low > 0, and takes no step
            "if": {"required": ["log"], "properties": {"log": {"const": True}}},
            "then": {"properties": {kind: {"items": {"exclusiveMinimum": 0}}}, "not": {"required": ["step"]}},
        }

    plain = {"type": ["null", "boolean", "integer", "number", "string"]}
    return {
        "Float": numeric("float", "number", "a real number"),
        "Int": numeric("int", "integer", "an integer"),
        "Categorical": {
            "description": "one of the listed values",
            "type": "object",
            "required": ["categorical"],
            "additionalProperties": False,
            "properties": {"categorical": {"type": "array", "minItems": 1, "uniqueItems": True, "items": plain}},
        },
    }
