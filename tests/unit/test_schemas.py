"""The committed JSON Schemas (schemas/) are what ``hpo schema`` prints, and every shipped study and search
space validates against them with check-jsonschema (the `test` extra), as an editor would check it. This
is CI's check that schemas, files and code stay in step."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from hpo.testing import REPO_ROOT

SCHEMAS = REPO_ROOT / "schemas"
# schema file -> the `hpo schema` options that print it, and the shipped files it must accept
KINDS = {
    "study": (SCHEMAS / "study.schema.json", [], ["studies/*.yaml", "benchmarks/studies/*.yaml"]),
    "space": (SCHEMAS / "space.schema.json", ["--space"], ["search_spaces/*.yaml"]),
}


def shipped(kind: str) -> list[Path]:
    files = sorted(p for pattern in KINDS[kind][2] for p in REPO_ROOT.glob(pattern))
    assert files, f"no shipped {kind} files found by {KINDS[kind][2]}"
    return files


def check_jsonschema(*args: str) -> subprocess.CompletedProcess:
    found = shutil.which("check-jsonschema", path=str(Path(sys.executable).parent)) or shutil.which("check-jsonschema")
    if not found:
        pytest.fail("check-jsonschema not found: pip install check-jsonschema (it is in the project's `test` extra)")
    return subprocess.run([found, *args], check=False, capture_output=True, text=True, timeout=120, cwd=REPO_ROOT)


@pytest.mark.parametrize("kind", KINDS)
def test_committed_schema_is_what_hpo_schema_prints(kind):
    schema, options, _ = KINDS[kind]
    result = subprocess.run(
        [sys.executable, "-m", "hpo.cli", "schema", *options],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO_ROOT,
    )
    assert result.returncode == 0, result.stderr
    command = " ".join(["hpo schema", *options, ">", schema.relative_to(REPO_ROOT).as_posix()])
    assert schema.exists(), f"{schema.relative_to(REPO_ROOT)} is missing: run `{command}` and commit it"
    assert result.stdout == schema.read_text(), (
        f"{schema.relative_to(REPO_ROOT)} is out of date: run `{command}` and commit it"
    )


def test_committed_schemas_are_json_schemas():
    result = check_jsonschema("--check-metaschema", *(str(schema) for schema, _, _ in KINDS.values()))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("kind", KINDS)
def test_every_shipped_file_validates_against_its_schema(kind):
    files = [str(p.relative_to(REPO_ROOT)) for p in shipped(kind)]
    result = check_jsonschema("--schemafile", str(KINDS[kind][0]), *files)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("kind", KINDS)
def test_every_shipped_file_names_its_schema_for_editors(kind):
    """yaml-language-server reads the first line; the path is relative to the file."""
    schema = KINDS[kind][0]
    for path in shipped(kind):
        expected = os.path.relpath(schema, path.parent)
        first = path.read_text().splitlines()[0]
        assert first == f"# yaml-language-server: $schema={expected}", f"{path.relative_to(REPO_ROOT)}:1: {first!r}"
        assert (path.parent / expected).resolve() == schema.resolve()


STUDY = (
    "name: s\ndataset: {name: fashion_mnist}\nsearch_space: {model: {depth: {int: [2, 3]}}}\n"
    "budget: {trials: 2, max_epochs: 1}\n"
)


@pytest.mark.parametrize(
    "kind, text, expected",
    [
        ("study", STUDY + "budgets: {trials: 3}\n", "Additional properties are not allowed ('budgets' was unexpected)"),
        ("study", STUDY.replace("max_epochs: 1", "max_epochs: 1, time: soon"), "$.budget.time"),
        ("study", STUDY.replace("max_epochs: 1", "max_epochs: 1, time: 5"), "$.budget.time"),  # below 10 s
        ("study", STUDY.replace("fashion_mnist", "fashion_mnst"), "'fashion_mnst' is not one of"),
        ("study", STUDY.replace("{model:", "{extends: base.yaml, model:"), "$.search_space"),  # only in files
        ("space", "optimizer: {lr: {floaty: [0.01, 0.1]}}\n", "$.optimizer"),
        ("space", "optimzer: {lr: 0.1}\n", "Additional properties are not allowed ('optimzer' was unexpected)"),
        ("space", "model: {one_of: {cnn: {name: cnn, depth: 3}}}\n", "$.model"),  # the branch names itself
        ("space", "model: {one_of: {cnnn: {depth: 3}}}\n", "$.model"),
        ("space", "model: {depth: {int: [1, 20]}}\n", "$.model"),  # CNNConfig.depth: at most 12
        ("space", "optimizer: {lr: {float: [0.0, 1.0], log: true}}\n", "$.optimizer"),  # log needs low > 0
        ("space", "optimizer: {lr: {float: [0.1, 1.0], step: 0.1, log: true}}\n", "$.optimizer"),
        ("space", "batch_size: {float: [32, 64]}\n", "$.batch_size"),  # an integer field
    ],
)
def test_schema_refuses_a_wrong_file(tmp_path, kind, text, expected):
    path = tmp_path / "wrong.yaml"
    path.write_text(text)
    result = check_jsonschema("--schemafile", str(KINDS[kind][0]), str(path))
    assert result.returncode == 1, result.stdout + result.stderr
    assert expected in result.stdout, result.stdout


@pytest.mark.parametrize(
    "text", ["sampler: gp\nscheduler: none\n", "sampler: {type: qmc, seed: 3}\nscheduler: hyperband\n"]
)
def test_study_schema_takes_a_sampler_or_scheduler_by_name(tmp_path, text):
    from hpo.study import load_study

    path = tmp_path / "named.yaml"
    path.write_text(STUDY + text)
    result = check_jsonschema("--schemafile", str(KINDS["study"][0]), str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    load_study(path)  # and hpo reads it the same way
    (tmp_path / "wrong.yaml").write_text(STUDY + "scheduler: asha2\n")
    result = check_jsonschema("--schemafile", str(KINDS["study"][0]), str(tmp_path / "wrong.yaml"))
    assert result.returncode == 1 and "$.scheduler" in result.stdout, result.stdout


def test_space_schema_accepts_the_whole_vocabulary(tmp_path):
    """What the parser takes beyond the shipped spaces: extends, one_of on optimizer and schedule, empty and
    null branches, step, null among choices, a model family by name."""
    (tmp_path / "space.yaml").write_text(
        "extends: base.yaml\n"
        "model: {name: resnet, variant: {categorical: [resnet18, resnet34]}, dropout: {float: [0, 0.5], step: 0.1}}\n"
        "optimizer: {one_of: {sgd: {lr: {float: [0.01, 0.1], log: true}}, adam: }}\n"
        "schedule: {one_of: {cosine: {}, step: {step_every: {int: [2, 4]}}}}\n"
        "early_stopping: {patience: {categorical: [null, 3]}}\n"
        "augment: {translate_px: {int: [1, 7], step: 2}, hflip: {categorical: [0, 0.5]}}\n"
    )
    result = check_jsonschema("--schemafile", str(KINDS["space"][0]), str(tmp_path / "space.yaml"))
    assert result.returncode == 0, result.stdout + result.stderr


def test_schema_vocabulary_is_the_parsers():
    from hpo.schemas import DISTRIBUTIONS, EXTENDS, MODIFIERS
    from hpo.space import _private

    assert DISTRIBUTIONS == _private._DISTRIBUTIONS
    assert {k: set(v) for k, v in MODIFIERS.items()} == _private._MODIFIERS
    assert EXTENDS == _private.EXTENDS


def test_one_schema_at_a_time():
    result = subprocess.run(
        [sys.executable, "-m", "hpo.cli", "schema", "--space", "--trial"],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO_ROOT,
    )
    assert result.returncode == 2
    assert "give one" in result.stderr
