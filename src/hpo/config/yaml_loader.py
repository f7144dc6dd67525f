"""Safe YAML loading that remembers the line of every key, so errors can point at it.

PyYAML composes the node tree (safe tags only); we build plain Python values from it ourselves, which
lets us record line numbers, reject duplicate keys and anchors/aliases (the "billion laughs" vector), and
read ``1e-3`` as the float every user means (YAML 1.1 would read it as a string). A file is read only up
to its size limit and composed only to a bounded depth, so no input can exhaust memory or the stack.
"""

from __future__ import annotations

import codecs
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from hpo.errors import StudyError

MAX_FILE_BYTES = 1_000_000
MAX_DEPTH = 64  # a study nests about 6 levels
_MERGE_TAG = "tag:yaml.org,2002:merge"
_SAFE_TAGS = {f"tag:yaml.org,2002:{t}" for t in ("str", "int", "float", "bool", "null", "map", "seq")}
_FLOAT_RE = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$")

Path_ = tuple[str | int, ...]


@dataclass
class YamlDoc:
    """A parsed YAML file: plain data plus the 1-based line of every key and list item.

    A document merged from several files (a search space that ``extends:`` another) keeps, in ``files``,
    the file of every line that is not in ``file``, so each error still points at the file that says it.
    """

    data: Any
    file: Path
    lines: dict[Path_, int] = field(default_factory=dict)
    files: dict[Path_, Path] = field(default_factory=dict)

    def line_of(self, path: Path_) -> int | None:
        """The line of ``path``, or of its nearest ancestor that has one."""
        anchor = self._anchor(path)
        return None if anchor is None else self.lines[anchor]

    def file_of(self, path: Path_) -> Path:
        """The file that holds ``path`` (or its nearest ancestor that has a line)."""
        anchor = self._anchor(path)
        return self.file if anchor is None else self.files.get(anchor, self.file)

    def error(self, path: Path_, message: str) -> StudyError:
        """A StudyError located at ``path``."""
        shown = ".".join(str(p) for p in path) or None
        return StudyError(message, file=self.file_of(path), line=self.line_of(path), path=shown)

    def _anchor(self, path: Path_) -> Path_ | None:
        path = tuple(path)
        while path and path not in self.lines:
            path = path[:-1]
        return path if path in self.lines else None


def load_yaml(file: str | Path, *, display: str | Path | None = None) -> YamlDoc:
    """Load one YAML file safely. ``display`` is how the file is named in errors (default: as given)."""
    file = Path(file)
    shown = Path(display) if display is not None else file
    if not file.exists():
        raise StudyError("file not found", file=shown)
    if not file.is_file():
        raise StudyError("is a directory, not a file" if file.is_dir() else "not a regular file", file=shown)
    try:
        with file.open("rb") as f:
            raw = f.read(MAX_FILE_BYTES + 1)  # never more: the size check must not read a huge file
    except OSError as exc:
        raise StudyError(f"cannot read the file ({exc.strerror})", file=shown) from None
    if len(raw) > MAX_FILE_BYTES:
        line = raw.count(b"\n", 0, MAX_FILE_BYTES) + 1
        raise StudyError(
            f"study files are limited to {MAX_FILE_BYTES:,} bytes; this one passes the limit on "
            f"line {line:,} (it is {file.stat().st_size:,} bytes)",
            file=shown,
            line=line,
        )
    return parse_yaml(_decode(raw, shown), shown)


def _decode(raw: bytes, file: Path) -> str:
    """UTF-8, or UTF-16 with its byte-order mark (YAML allows it; some Windows editors write it). An error
    points at the first bad byte."""
    utf16 = raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE))
    try:
        return raw.decode("utf-16" if utf16 else "utf-8")
    except UnicodeDecodeError as exc:
        if utf16:
            raise StudyError(
                "starts as UTF-16 text but is not valid UTF-16; save it as UTF-8", file=file, line=1
            ) from None
        line = raw.count(b"\n", 0, exc.start) + 1
        column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        what = "a binary file, not YAML text" if b"\0" in raw[:8192] else "not UTF-8 text (save it as UTF-8)"
        raise StudyError(
            f"{what}: byte 0x{raw[exc.start]:02x} at column {column} is not valid UTF-8", file=file, line=line
        ) from None


def parse_yaml(text: str, file: Path) -> YamlDoc:
    try:
        root = _Composer(text, file).get_single_node()
    except yaml.MarkedYAMLError as exc:
        raise _syntax_error(exc, file) from None
    except yaml.reader.ReaderError as exc:  # control characters: report the line, not the offset
        line = text.count("\n", 0, exc.position) + 1
        column = exc.position - text.rfind("\n", 0, exc.position)
        char = f"U+{exc.character:04X}" if isinstance(exc.character, int) else repr(exc.character)
        raise StudyError(
            f"YAML cannot hold control characters ({char} at column {column})", file=file, line=line
        ) from None
    except yaml.YAMLError as exc:
        raise StudyError(f"YAML error: {exc}", file=file) from None
    if root is None:
        raise StudyError("file is empty" + (": it holds only comments" if text.strip() else ""), file=file, line=1)
    doc = YamlDoc(data=None, file=file)
    doc.data = _Builder(doc).build(root, ())
    return doc


# PyYAML's wording for the usual slips, and what the user most likely did
_HINTS = {
    "mapping values are not allowed here": "is the indentation off, or a space missing after a ':'?",
    "found character '\\t' that cannot start any token": "YAML indents with spaces, not tabs",
}


def _syntax_error(exc: yaml.MarkedYAMLError, file: Path) -> StudyError:
    """Point at the problem, and say where the construct it broke began (an unclosed bracket or quote
    is only noticed lines later)."""
    mark = exc.problem_mark or exc.context_mark
    problem = exc.problem or exc.context or "malformed YAML"
    if exc.context and problem.startswith("but "):  # one sentence, split in two by PyYAML
        problem = f"{exc.context}, {problem}"
    elif exc.context and exc.context_mark and exc.problem_mark and exc.context_mark.line != exc.problem_mark.line:
        problem += f" ({exc.context} that starts on line {exc.context_mark.line + 1})"
    hint = f"; {_HINTS[exc.problem]}" if exc.problem in _HINTS else ""
    return StudyError(f"YAML syntax error: {problem}{hint}", file=file, line=mark.line + 1 if mark else None)


class _Composer(yaml.SafeLoader):
    """PyYAML's safe composer, refusing aliases where they are written and bounding the nesting depth
    (composing recurses once per level; a 10,000-deep ``[[[...]]]`` would exhaust Python's stack)."""

    def __init__(self, text: str, file: Path) -> None:
        super().__init__(text)
        self.file = file
        self.depth = 0

    def compose_node(self, parent: yaml.Node | None, index: object) -> yaml.Node | None:
        event = self.peek_event()
        line = event.start_mark.line + 1
        if isinstance(event, yaml.AliasEvent):
            # Nested aliases expand exponentially ("billion laughs"); a study gains nothing from them.
            raise StudyError(
                "YAML anchors and aliases (&name / *name) are not allowed in study files", file=self.file, line=line
            )
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise StudyError(f"nested more than {MAX_DEPTH} levels deep", file=self.file, line=line)
        try:
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


class _Builder:
    def __init__(self, doc: YamlDoc) -> None:
        self.doc = doc
        self.constructor = yaml.constructor.SafeConstructor()

    def fail(self, node: yaml.Node, message: str, path: Path_) -> StudyError:
        shown = ".".join(str(p) for p in path) or None
        return StudyError(message, file=self.doc.file, line=node.start_mark.line + 1, path=shown)

    def build(self, node: yaml.Node, path: Path_) -> Any:
        if node.tag == _MERGE_TAG:
            raise self.fail(node, "YAML merge keys (<<) are not allowed; write the keys out", path)
        if node.tag not in _SAFE_TAGS:
            tag = node.tag.replace("tag:yaml.org,2002:", "!!", 1)  # as written in the file
            raise self.fail(node, f"YAML tag {tag} is not allowed (plain values, lists and mappings only)", path)
        self.doc.lines.setdefault(path, node.start_mark.line + 1)

        if isinstance(node, yaml.MappingNode):
            out: dict[str, Any] = {}
            for key_node, value_node in node.value:
                if not isinstance(key_node, yaml.ScalarNode):
                    raise self.fail(key_node, "mapping keys must be plain scalars", path)
                key = str(self.build(key_node, path))
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
