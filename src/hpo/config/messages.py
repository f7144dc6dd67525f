"""Turn pydantic's validation errors into StudyErrors that name file, line and field path."""

from __future__ import annotations

import difflib
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from pydantic import BaseModel, ValidationError

from hpo.config.yaml_loader import YamlDoc
from hpo.errors import StudyError

Loc = tuple[str | int, ...]


def describe(error: Mapping[str, Any]) -> str:
    """One pydantic error as a rule and the value that broke it: ``must be >= 1 (got 0)``."""
    kind, ctx, value = error["type"], error.get("ctx") or {}, error.get("input")
    got = f" (got {value!r})"
    if kind == "greater_than_equal":
        return f"must be >= {ctx['ge']}{got}"
    if kind == "greater_than":
        return f"must be > {ctx['gt']}{got}"
    if kind == "less_than_equal":
        return f"must be <= {ctx['le']}{got}"
    if kind == "less_than":
        return f"must be < {ctx['lt']}{got}"
    if kind == "literal_error":
        return f"must be one of {ctx['expected']}{got}"
    if kind == "missing":
        return "is required"
    if kind in ("int_type", "int_parsing", "int_from_float"):
        return f"must be an integer{got}"
    if kind in ("float_type", "float_parsing"):
        return f"must be a number{got}"
    if kind in ("bool_type", "bool_parsing"):
        return f"must be true or false{got}"
    if kind in ("string_type",):
        return f"must be a string{got}"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return f"must be a mapping of keys to values{got}"
    if kind == "union_tag_invalid":  # a model family (or other tagged branch) that does not exist
        return f"must be one of {ctx['expected_tags']} (got {ctx['tag']!r})"
    if kind == "string_pattern_mismatch":
        return f"must match {ctx['pattern']}{got}"
    msg = error["msg"]
    msg = msg.removeprefix("Value error, ")
    return msg[:1].lower() + msg[1:] + (got if kind != "value_error" else "")


def fields_at(model: type[BaseModel], loc: Sequence[str | int]) -> list[str]:
    """The field names valid at ``loc`` inside ``model`` (for "did you mean" suggestions)."""
    current: Any = model
    for part in loc:
        tagged = _member(current, part)
        if tagged is not None:  # pydantic names the member of a tagged union in the location
            current = tagged
            continue
        cls = _model_in(current)
        if cls is None or not isinstance(part, str) or part not in cls.model_fields:
            return []
        current = cls.model_fields[part].annotation
    cls = _model_in(current)
    return list(cls.model_fields) if cls else []


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType) or origin is typing.Annotated:
        for arg in typing.get_args(annotation):
            found = _model_in(arg)
            if found:
                return found
    return None


def _member(annotation: Any, tag: Any) -> type[BaseModel] | None:
    """The member of a union tagged ``name: tag`` (model families), if ``annotation`` is such a union."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _member(typing.get_args(annotation)[0], tag)
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            if (
                isinstance(arg, type)
                and issubclass(arg, BaseModel)
                and "name" in arg.model_fields
                and arg.model_fields["name"].default == tag
            ):
                return arg
    return None


def unknown_key_message(key: str, valid: Sequence[str]) -> str:
    close = difflib.get_close_matches(key, list(valid), n=1, cutoff=0.6)
    if close:
        return f"unknown key {key!r} (did you mean {close[0]!r}?)"
    if valid:
        return f"unknown key {key!r}; valid keys: {', '.join(valid)}"
    return f"unknown key {key!r}"


def to_study_errors(
    exc: ValidationError,
    doc: YamlDoc,
    model: type[BaseModel],
    *,
    locate: Callable[[Loc], Loc] | None = None,
    data: Any = None,
) -> list[StudyError]:
    """Map each pydantic error to the line of the offending key in ``doc``.

    ``locate`` translates a location in the validated ``data`` (default: the document's) to a path in the
    YAML document when the two differ (as for a search space, whose branches and distributions sit
    between the keys).
    """
    data = doc.data if data is None else data
    grouped: dict[Loc, list[str]] = {}
    for err in exc.errors(include_url=False):
        raw: Loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        loc = _untagged(raw, data, model)
        if err["type"] == "extra_forbidden":
            message = unknown_key_message(str(loc[-1]), fields_at(model, raw[:-1]))
        else:
            message = describe(err)
        if err["type"] == "union_tag_invalid":
            loc = (*loc, err["ctx"]["discriminator"].strip("'"))
        if err["type"] != "missing":
            loc = _existing(loc, data)
        grouped.setdefault(loc, []).append(message)
    return [doc.error(locate(loc) if locate else loc, _either(messages)) for loc, messages in grouped.items()]


def _untagged(loc: Loc, data: Any, model: type[BaseModel]) -> Loc:
    """``loc`` without the member tags pydantic puts in for tagged unions: ``model.resnet.variant`` names
    ``model.variant`` of a study whose ``model.name`` is ``resnet`` (or left out, for the default)."""
    out: list[str | int] = []
    current: Any = model
    for part in loc:
        tagged = _member(current, part)
        if tagged is not None and not _holds(data, part):
            current = tagged
            continue
        out.append(part)
        data = data[part] if _holds(data, part) else None
        cls = _model_in(current)
        current = (
            cls.model_fields[part].annotation if cls and isinstance(part, str) and part in cls.model_fields else None
        )
    return tuple(out)


def _existing(loc: Loc, data: Any) -> Loc:
    """The part of ``loc`` that exists in ``data``: pydantic appends the member type to the location of a
    value that fits no member of a union (``final.epochs.int``), which names no key of the study."""
    n = 0
    for part in loc:
        if not _holds(data, part):
            break
        data = data[part]
        n += 1
    return loc[:n]


def _holds(data: Any, part: str | int) -> bool:
    if isinstance(data, dict):
        return part in data
    return isinstance(data, list) and isinstance(part, int) and 0 <= part < len(data)


def _either(messages: list[str]) -> str:
    """One message for a value that fits none of a union's members: ``must be an integer or one of
    'best' (got 'x')``."""
    if len(messages) == 1:
        return messages[0]
    got = messages[0][messages[0].rfind(" (got ") :] if " (got " in messages[0] else ""
    rules = list(dict.fromkeys(m.removesuffix(got) for m in messages))
    return " or ".join([rules[0], *(r.removeprefix("must be ") for r in rules[1:])]) + got
