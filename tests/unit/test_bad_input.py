"""The bad-input corpus: every malformed study is refused by the real CLI, fast, with its place, before
anything is written or started.

For each case, `hpo run` and `hpo validate` run in an empty working directory and must: exit 2, within
2 s, say `file.yaml:LINE: field: message`, write nothing there, and import neither Ray, MLflow nor torch
(so no Ray session, no tracking store). The committed cases and what they must say are listed in
tests/fixtures/bad_input/cases.yaml; the ones that would be unwieldy in git are generated here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from hpo.config.yaml_loader import MAX_DEPTH, MAX_FILE_BYTES
from hpo.testing import REPO_ROOT, run_hpo

FIXTURES = REPO_ROOT / "tests" / "fixtures" / "bad_input"
HEAVY = ("ray", "mlflow", "torch", "optuna")
# A refusal must stay fast: it may not import these (torch alone costs 2-3 s). Checked by what the
# process imported, not by a clock, which a loaded machine would make flaky; benchmarks/startup.py times it.


@dataclass
class Case:
    study: str
    says: str
    also: tuple[str, ...] = ()
    line: bool = True  # False where the path has no lines to point at (a directory, a missing file)
    imports: tuple[str, ...] = ()  # heavy packages this refusal may load (timm's registry needs torch)


def committed_cases() -> list[Case]:
    entries = yaml.safe_load((FIXTURES / "cases.yaml").read_text())
    return [Case(e["study"], e["says"], tuple(e.get("also", ())), imports=tuple(e.get("imports", ()))) for e in entries]


def generate(name: str, where: Path) -> Path:
    """Write a generated case into ``where`` and return the path to give the CLI."""
    path = where / f"{name}.yaml"
    if name == "huge_file":  # 50 MB of valid YAML comments: refused by size, without being read whole
        path.write_bytes(b"# padding\n" * 5_242_880)
    elif name == "binary":
        path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)))
    elif name == "latin1":
        path.write_bytes("# a study saved by an old editor\nseed: 0\nname: café\n".encode("latin-1"))
    elif name == "control_char":
        path.write_text("name: ok\nseed: 0\ndescription: a\x00b\n")
    elif name == "deep_nesting":  # composing recurses per level: this would exhaust Python's stack
        path.write_text("name: deep\ndescription: " + "[" * 5000 + "]" * 5000 + "\n")
    elif name == "directory":
        path.mkdir()
    elif name != "missing":
        raise ValueError(name)
    return path


GENERATED = [
    Case(
        "huge_file",
        f"huge_file.yaml:100001: study files are limited to {MAX_FILE_BYTES:,} bytes",
        ("passes the limit on line 100,001 (it is 52,428,800 bytes)",),
    ),
    Case("binary", "binary.yaml:1: a binary file, not YAML text: byte 0x89 at column 1 is not valid UTF-8"),
    Case("latin1", "latin1.yaml:3: not UTF-8 text (save it as UTF-8): byte 0xe9 at column 10"),
    Case("control_char", "control_char.yaml:3: YAML cannot hold control characters (U+0000 at column 15)"),
    Case("deep_nesting", f"deep_nesting.yaml:2: nested more than {MAX_DEPTH} levels deep"),
    Case("directory", "directory.yaml: is a directory, not a file", line=False),
    Case("missing", "missing.yaml: file not found", line=False),
]
CASES = committed_cases() + GENERATED
# `hpo run` gets every case; `hpo validate` shares its loading path, so it gets the generated cases and a
# few from each part of the corpus (each CLI start costs ~0.3 s).
VALIDATE_TOO = {c.study for c in GENERATED} | {
    "syntax_tab.yaml",
    "python_object_apply.yaml",
    "alias_bomb.yaml",
    "unknown_key_close.yaml",
    "budget_too_short.yaml",
    "inverted_float_range.yaml",
    "unknown_family.yaml",
    "extends_cycle.yaml",
}


def refuse(verb: str, study: Path, tmp_path: Path, allowed: tuple[str, ...] = ()) -> str:
    """Run ``hpo VERB STUDY`` in an empty folder and check the refusal; return stderr (without the import
    log). No data folder is configured (``HPO_DATA_DIR`` empty): the study alone must say where its data is."""
    work = tmp_path / "work"
    work.mkdir()
    ray_dir = tmp_path / "ray"
    result = run_hpo(
        [verb, str(study)],
        work,
        timeout=60,
        env={"PYTHONPROFILEIMPORTTIME": "1", "RAY_TMPDIR": str(ray_dir), "HPO_DATA_DIR": ""},
    )
    imported = [
        line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines() if line.startswith("import time:")
    ]
    stderr = "\n".join(line for line in result.stderr.splitlines() if not line.startswith("import time:"))
    assert result.returncode == 2, stderr
    assert "Traceback" not in stderr
    assert "hpo.study" in imported  # the import log is live, so its silence below means something
    heavy = [m for m in imported if m.split(".")[0] in HEAVY and m.split(".")[0] not in allowed]
    assert heavy == [], "a refused study must not load the heavy stack"
    assert list(work.iterdir()) == []  # no mlflow/, no runs/, no file at all
    assert not ray_dir.exists()  # no Ray session
    return stderr


def test_the_corpus_is_big_and_lists_every_committed_study():
    helpers = {"cases.yaml", "space.yaml"}  # the manifest, and the valid space most cases point at
    studies = {
        p.name
        for p in FIXTURES.glob("*.yaml")
        if p.name not in helpers and not p.name.endswith((".space.yaml", "_base.yaml", "_b.yaml"))
    }
    assert studies == {c.study for c in committed_cases()}
    assert len(CASES) >= 25


@pytest.mark.parametrize(
    "case, verb",
    [(c, "run") for c in CASES] + [(c, "validate") for c in CASES if c.study in VALIDATE_TOO],
    ids=lambda x: x.study.removesuffix(".yaml") if isinstance(x, Case) else x,
)
def test_a_bad_study_is_refused_with_its_place_and_nothing_runs(case, verb, tmp_path):
    study = FIXTURES / case.study if case.study.endswith(".yaml") else generate(case.study, tmp_path)
    stderr = refuse(verb, study, tmp_path, case.imports)
    flat = " ".join(stderr.split())  # the console may wrap long lines
    assert case.says in flat, stderr
    for fragment in case.also:
        assert fragment in flat, stderr
    if case.line:
        assert re.search(r"\S+\.yaml:\d+: ", flat), stderr
    assert "nothing was run" in flat
