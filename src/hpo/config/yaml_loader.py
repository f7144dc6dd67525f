"""Safe YAML loading that remembers the line of every key, so errors can point at it.

PyYAML composes the node tree (safe tags only); we build plain Python values from it ourselves, which
lets us record line numbers, reject duplicate keys and anchors/aliases (the "billion laughs" vector), and
read ``1e-3`` as the float every user means (YAML 1.1 would read it as a string).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from hpo.errors import StudyError

MAX_FILE_BYTES = 1_000_000
_SAFE_TAGS = {f"tag:yaml.org,2002:{t}" for t in ("str", "int", "float", "bool", "null", "map", "seq")}
_FLOAT_RE = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$")

Path_ = tuple[str | int, ...]


@dataclass
class YamlDoc:
    """A parsed YAML file: plain data plus the 1-based line of every key and list item."""

    data: Any
    file: Path
    lines: dict[Path_, int] = field(default_factory=dict)

    def line_of(self, path: Path_) -> int | None:
        """The line of ``path``, or of its nearest ancestor that has one."""
        path = tuple(path)
        while path:
            if path in self.lines:
                return self.lines[path]
            path = path[:-1]
        return self.lines.get((), None)

    def error(self, path: Path_, message: str) -> StudyError:
        """A StudyError located at ``path``."""
        shown = ".".join(str(p) for p in path) or None
        return StudyError(message, file=self.file, line=self.line_of(path), path=shown)


def load_yaml(file: str | Path, *, display: str | Path | None = None) -> YamlDoc:
    """Load one YAML file safely. ``display`` is how the file is named in errors (default: as given)."""
    file = Path(file)
    shown = Path(display) if display is not None else file
    if not file.is_file():
        raise StudyError("file not found" if not file.exists() else "not a file", file=shown)
    size = file.stat().st_size
    if size > MAX_FILE_BYTES:
        raise StudyError(f"file is {size:,} bytes; study files are limited to {MAX_FILE_BYTES:,}", file=shown)
    text = file.read_text(encoding="utf-8", errors="replace")
    return parse_yaml(text, shown)


def parse_yaml(text: str, file: Path) -> YamlDoc:
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        raise StudyError(f"YAML syntax error: {exc.problem or exc}", file=file, line=line) from None
    except yaml.YAMLError as exc:
        raise StudyError(f"YAML error: {exc}", file=file) from None
    if root is None:
        raise StudyError("file is empty", file=file, line=1)
    doc = YamlDoc(data=None, file=file)
    doc.data = _Builder(doc).build(root, ())
    return doc


class _Builder:
    def __init__(self, doc: YamlDoc) -> None:
        self.doc = doc
        self.seen: set[int] = set()
        self.constructor = yaml.constructor.SafeConstructor()

    def fail(self, node: yaml.Node, message: str, path: Path_) -> StudyError:
        shown = ".".join(str(p) for p in path) or None
        return StudyError(message, file=self.doc.file, line=node.start_mark.line + 1, path=shown)

    def build(self, node: yaml.Node, path: Path_) -> Any:
        if node.tag not in _SAFE_TAGS:
            raise self.fail(node, f"YAML tag {node.tag!r} is not allowed (plain values, lists and mappings only)", path)
        if id(node) in self.seen:
            # A node reached twice is an alias (*name) to an anchor: refused, since nested aliases expand
            # exponentially and a study gains nothing from them.
            raise self.fail(node, "YAML anchors and aliases (&name / *name) are not allowed in study files", path)
        self.seen.add(id(node))
        self.doc.lines.setdefault(path, node.start_mark.line + 1)

        if isinstance(node, yaml.MappingNode):
            out: dict[str, Any] = {}
            for key_node, value_node in node.value:
                if not isinstance(key_node, yaml.ScalarNode):
                    raise self.fail(key_node, "mapping keys must be plain scalars", path)
                key = self.build(key_node, path)
                if key == "<<":
                    raise self.fail(key_node, "YAML merge keys (<<) are not allowed", path)
                key = str(key)
                if key in out:
                    raise self.fail(key_node, f"duplicate key {key!r}", (*path, key))
                self.doc.lines[(*path, key)] = key_node.start_mark.line + 1
                out[key] = self.build(value_node, (*path, key))
            return out
        if isinstance(node, yaml.SequenceNode):
            return [self.build(item, (*path, i)) for i, item in enumerate(node.value)]
        value = self.constructor.construct_object(node)
        if isinstance(value, str) and node.style is None and _FLOAT_RE.match(value):
            return float(value)
        return value
