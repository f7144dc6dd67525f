from pathlib import Path

import pytest

from hpo.config.yaml_loader import load_yaml, parse_yaml
from hpo.errors import StudyError


def parse(text: str):
    return parse_yaml(text, Path("x.yaml"))


def test_records_the_line_of_every_key():
    doc = parse("a: 1\nb:\n  c: 2\n  d: [1, 2]\n")
    assert doc.data == {"a": 1, "b": {"c": 2, "d": [1, 2]}}
    assert doc.line_of(("a",)) == 1
    assert doc.line_of(("b", "c")) == 3
    assert doc.line_of(("b", "d")) == 4
    assert doc.line_of(("b", "missing", "deeper")) == 2  # falls back to the nearest ancestor


def test_exponent_floats_are_floats_not_strings():
    assert parse("lr: 1e-3\nq: '1e-3'\n").data == {"lr": 0.001, "q": "1e-3"}


def test_duplicate_keys_are_errors():
    with pytest.raises(StudyError, match=r"x.yaml:3: a: duplicate key 'a'"):
        parse("a: 1\nb: 2\na: 3\n")


def test_python_tags_are_refused_and_never_constructed(tmp_path):
    marker = tmp_path / "pwned"
    text = f"a: !!python/object/apply:os.system ['touch {marker}']\n"
    with pytest.raises(StudyError, match=r"tag .* is not allowed"):
        parse(text)
    assert not marker.exists()


def test_aliases_are_refused():
    bomb = 'a: &a ["x", "x"]\nb: &b [*a, *a]\nc: [*b, *b]\n'
    with pytest.raises(StudyError, match="anchors and aliases"):
        parse(bomb)


def test_syntax_errors_name_the_line():
    with pytest.raises(StudyError, match=r"x.yaml:2: YAML syntax error"):
        parse("a: [1, 2\nb: 3\n")


def test_empty_and_missing_files(tmp_path):
    (tmp_path / "empty.yaml").write_text("# only a comment\n")
    with pytest.raises(StudyError, match="file is empty"):
        load_yaml(tmp_path / "empty.yaml")
    with pytest.raises(StudyError, match="file not found"):
        load_yaml(tmp_path / "nope.yaml")


def test_an_alias_is_refused_on_its_own_line():
    with pytest.raises(StudyError, match=r"x.yaml:3: YAML anchors and aliases"):
        parse('a: &a ["x", "x"]\nb: 1\nc: [*a, *a]\n')


def test_merge_keys_are_refused_by_name():
    with pytest.raises(StudyError, match=r"x.yaml:2: a: YAML merge keys \(<<\) are not allowed"):
        parse("a:\n  <<: {b: 1}\n")


def test_nesting_is_bounded_before_the_stack_is():
    with pytest.raises(StudyError, match=r"x.yaml:1: nested more than 64 levels deep"):
        parse("a: " + "[" * 10_000 + "]" * 10_000)
    assert parse("a: " + "[" * 60 + "]" * 60).data["a"]


def test_files_are_read_as_utf8_only_and_never_past_the_size_limit(tmp_path):
    (tmp_path / "bom.yaml").write_bytes("\ufeffa: é\n".encode())  # a BOM is fine
    assert load_yaml(tmp_path / "bom.yaml").data == {"a": "é"}
    (tmp_path / "utf16.yaml").write_text("a: é\n", encoding="utf-16")  # with its byte-order mark
    assert load_yaml(tmp_path / "utf16.yaml").data == {"a": "é"}
    (tmp_path / "latin1.yaml").write_bytes("a: 1\nb: é\n".encode("latin-1"))
    with pytest.raises(StudyError, match=r"latin1.yaml:2: not UTF-8 text \(save it as UTF-8\): byte 0xe9 at column 4"):
        load_yaml(tmp_path / "latin1.yaml")
    (tmp_path / "big.yaml").write_bytes(b"a: 1\n" + b"#" * 2_000_000)
    with pytest.raises(StudyError, match=r"big.yaml:2: study files are limited to 1,000,000 bytes; .* line 2"):
        load_yaml(tmp_path / "big.yaml")
