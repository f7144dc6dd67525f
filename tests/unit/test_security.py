"""Security: nothing in a study runs code, no config string is evaluated, models load without unpickling
Python objects, and secrets are masked before they are shown.

Each refusal is paired with a positive control: the same payload, loaded the unsafe way, does run (it
creates a marker file), so a refusal that passes is a real one.
"""

from __future__ import annotations

import ast
import io
import zipfile
from pathlib import Path

import pytest
import torch
import yaml

from hpo.errors import HpoError
from hpo.predict import Predictor, load_exported_model
from hpo.security import redact
from hpo.testing import REPO_ROOT, run_hpo

BAD_INPUT = REPO_ROOT / "tests" / "fixtures" / "bad_input"
SRC = REPO_ROOT / "src" / "hpo"


class Touch:
    """A pickle payload: unpickling it creates ``marker`` (a stand-in for any command)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (self.marker,)


# ------------------------------------------------------------------ (1) YAML tags never construct objects


def test_python_object_apply_study_is_refused_and_its_command_never_runs(tmp_path, monkeypatch):
    """The CLI side; tests/unit/test_bad_input.py runs the same fixture through `validate` and `run`."""
    study = BAD_INPUT / "python_object_apply.yaml"
    monkeypatch.chdir(tmp_path)
    yaml.unsafe_load(study.read_text())  # positive control: loaded unsafely, the payload runs
    assert (tmp_path / "hpo-pwned").exists()

    work = tmp_path / "work"
    work.mkdir()
    result = run_hpo(["run", str(study)], work, timeout=60)
    assert result.returncode == 2, result.stderr
    assert "python_object_apply.yaml:2: name: YAML tag !!python/object/apply:os.system is not allowed" in result.stderr
    assert list(work.iterdir()) == []  # in particular no hpo-pwned


# ------------------------------------------------------------------ (2) no eval/exec, no unsafe loaders

UNSAFE_CALLS = {
    "eval": "evaluates a string as code",
    "exec": "executes a string as code",
    "yaml.load": "constructs arbitrary objects with the default loader; use hpo.config.yaml_loader",
    "yaml.load_all": "as yaml.load",
    "yaml.full_load": "constructs Python objects",
    "yaml.unsafe_load": "runs !!python tags",
    "yaml.unsafe_load_all": "runs !!python tags",
    "pickle.load": "runs code from the file",
    "pickle.loads": "runs code from the bytes",
    "marshal.loads": "loads code objects",
    "torch.export.load": "unpickles weights with weights_only=False; go through hpo.predict.load_exported_model",
}
UNSAFE_NAMES = {"yaml.Loader", "yaml.FullLoader", "yaml.UnsafeLoader"}
UNSAFE_MODULES = {"pickle", "dill", "cloudpickle", "marshal", "shelve"}


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return ""


def unsafe_uses(source: str) -> list[tuple[int, str]]:
    """(line, why) for every call or import in ``source`` that could run code from data."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call):
            name = _dotted(node.func)
            if name in UNSAFE_CALLS:
                found.append((node.lineno, f"{name}(): {UNSAFE_CALLS[name]}"))
            elif name == "torch.load":
                safe = any(
                    k.arg == "weights_only" and isinstance(k.value, ast.Constant) and k.value.value is True
                    for k in node.keywords
                )
                if not safe:
                    found.append((node.lineno, "torch.load() without weights_only=True unpickles arbitrary objects"))
        elif isinstance(node, ast.Attribute) and _dotted(node) in UNSAFE_NAMES:
            found.append((node.lineno, f"{_dotted(node)} constructs Python objects"))
        elif isinstance(node, ast.ImportFrom):
            names = {f"{node.module}.{a.name}" for a in node.names}
            if (node.module or "").split(".")[0] in UNSAFE_MODULES or names & (set(UNSAFE_CALLS) | UNSAFE_NAMES):
                found.append((node.lineno, f"from {node.module} import ...: a loader that runs code"))
        elif isinstance(node, ast.Import):
            found += [
                (node.lineno, f"import {a.name}: a deserialiser that runs code")
                for a in node.names
                if a.name.split(".")[0] in UNSAFE_MODULES
            ]
    return found


def test_the_guard_catches_what_it_looks_for():
    source = (
        "import pickle\nfrom yaml import load\nx = eval('1')\nexec('y = 1')\nyaml.load(s)\n"
        "yaml.unsafe_load(s)\npickle.load(f)\ntorch.load(p)\ntorch.load(p, weights_only=False)\n"
        "torch.export.load(p)\nyaml.compose(s, Loader=yaml.Loader)\n"
    )
    assert {line for line, _ in unsafe_uses(source)} == {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11}
    assert unsafe_uses("model.eval()\ntorch.load(p, weights_only=True)\nyaml.safe_dump(x)\n") == []


def test_no_source_file_evaluates_config_or_unpickles():
    problems = [
        f"{path.relative_to(REPO_ROOT)}:{line}: {why}"
        for path in sorted(SRC.rglob("*.py"))
        for line, why in unsafe_uses(path.read_text())
    ]
    assert problems == [], "\n".join(problems)


# ---------------------------------------------------------------------- (3) models load without pickle


def _model_dir(root: Path, files: dict[str, bytes]) -> Path:
    """An MLflow model folder with a pytorch flavor whose ``data/`` holds ``files``."""
    import mlflow

    root.mkdir()
    (root / "data").mkdir()
    for name, blob in files.items():
        (root / "data" / name).write_bytes(blob)
    model = mlflow.models.Model(
        metadata={"classes": ["a", "b"], "channels": 1, "image_size": [8, 8], "background": "dark"}
    )
    model.add_flavor("pytorch", model_data="data", pytorch_version=str(torch.__version__), code=None)
    model.save(str(root / "MLmodel"))
    return root


def _pt2(sample_inputs: bytes | None = None) -> bytes:
    """A real torch.export archive of a tiny model; ``sample_inputs`` replaces that pickled record."""
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 2)).eval()
    buffer = io.BytesIO()
    torch.export.save(torch.export.export(model, (torch.zeros(2, 1, 8, 8),)), buffer)
    if sample_inputs is None:
        return buffer.getvalue()
    out = io.BytesIO()
    with zipfile.ZipFile(buffer) as src, zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            crafted = info.filename.endswith("sample_inputs/model.pt")
            dst.writestr(info, sample_inputs if crafted else src.read(info))
    return out.getvalue()


def _pickled(payload: object) -> bytes:
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    return buffer.getvalue()


@pytest.fixture
def pickle_allowed(monkeypatch):
    """The loader must refuse even where the environment allows pickles."""
    monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "true")


def test_a_pickled_model_is_refused_and_its_payload_never_runs(tmp_path, pickle_allowed):
    import mlflow

    marker = tmp_path / "pwned"
    model = _model_dir(tmp_path / "model", {"model.pth": _pickled(Touch(marker)), "pickle_module_info.txt": b"pickle"})
    with pytest.raises(AttributeError):  # positive control: MLflow's loader, by default, runs the payload
        mlflow.pytorch.load_model(str(model))  # (which returns None, not a model)
    assert marker.exists()
    marker.unlink()

    with pytest.raises(HpoError, match=r"not a torch\.export program"):
        Predictor(str(model))
    assert not marker.exists()


def test_a_pt2_archive_carrying_a_pickle_is_refused_and_its_payload_never_runs(tmp_path, pickle_allowed):
    marker = tmp_path / "pwned"
    crafted = _pt2(sample_inputs=_pickled(Touch(marker)))
    (tmp_path / "crafted.pt2").write_bytes(crafted)
    # positive control: torch's loader retries the record with weights_only=False, which runs the payload;
    # then it fails on the None it got (or, under pytest, on its own malformed log call about the retry)
    with pytest.raises((AssertionError, TypeError)):
        torch.export.load(tmp_path / "crafted.pt2")
    assert marker.exists()
    marker.unlink()

    with pytest.raises(HpoError, match=r"refused: .*not a pickle-free payload"):
        Predictor(str(_model_dir(tmp_path / "model", {"model.pt2": crafted})))
    assert not marker.exists()


def test_a_model_shipping_code_is_refused(tmp_path):
    model = _model_dir(tmp_path / "model", {"model.pt2": _pt2()})
    text = (model / "MLmodel").read_text().replace("code: null", "code: code")
    (model / "MLmodel").write_text(text)
    with pytest.raises(HpoError, match="ships Python code"):
        load_exported_model(model, "m")


def test_a_plain_exported_model_loads_and_runs(tmp_path, pickle_allowed):
    predictor = Predictor(str(_model_dir(tmp_path / "model", {"model.pt2": _pt2()})))
    assert predictor.model(torch.zeros(2, 1, 8, 8)).shape == (2, 2)
    assert predictor.classes == ["a", "b"]


# -------------------------------------------------------------------------------- (4) secrets masked


@pytest.mark.parametrize(
    "text, expected",
    [
        # passwords in URIs
        ("postgresql://user:secret@host/db", "postgresql://user:***@host/db"),
        (
            "postgresql+psycopg2://mlflow:s3cr3t@db.internal:5432/mlflow?sslmode=require",
            "postgresql+psycopg2://mlflow:***@db.internal:5432/mlflow?sslmode=require",
        ),
        ("mysql://root:p@ss:w0rd@localhost/x", "mysql://root:***@localhost/x"),  # unencoded '@' and ':'
        ("redis://:hunter2@cache:6379/0", "redis://:***@cache:6379/0"),  # password without a user
        ("https://alice:%40pw@mlflow.example.com", "https://alice:***@mlflow.example.com"),
        # credentials in query strings and fragments, any case
        ("https://mlflow.example.com/api?token=abc123", "https://mlflow.example.com/api?token=***"),
        ("https://h/x?a=1&TOKEN=abc&b=2", "https://h/x?a=1&TOKEN=***&b=2"),
        ("s3://bucket/key?access_key=AKIA123&secret=xyz", "s3://bucket/key?access_key=***&secret=***"),
        ("https://h/?Password=pw&API_KEY=k1&apiKey=k2", "https://h/?Password=***&API_KEY=***&apiKey=***"),
        (
            "https://h/?X-Amz-Security-Token=t&X-Amz-Signature=s&X-Amz-Credential=c&X-Amz-Date=20260101",
            "https://h/?X-Amz-Security-Token=***&X-Amz-Signature=***&X-Amz-Credential=***&X-Amz-Date=20260101",
        ),
        ("https://h/#access_token=abc&state=1", "https://h/#access_token=***&state=1"),
        ("https://h/?client_secret=s;x=1", "https://h/?client_secret=***;x=1"),
        # both in one URI, and inside a longer message
        ("http://u:pw@h/x?token=t", "http://u:***@h/x?token=***"),
        (
            "cannot reach postgresql://u:pw@h/db (timeout); retry with ?password='a b'",
            "cannot reach postgresql://u:***@h/db (timeout); retry with ?password=***",
        ),
        ("MLFLOW_TRACKING_TOKEN=abc hpo run", "MLFLOW_TRACKING_TOKEN=*** hpo run"),
    ],
)
def test_redact_masks_secrets(text, expected):
    assert redact(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "sqlite:///mlflow/mlflow.db",
        "file:///home/me/mlruns",
        "http://127.0.0.1:5000",
        "http://host:8080/x?a=b@c",  # a port is not a password
        "https://alice@mlflow.example.com/",  # a user name alone is not secret
        "models:/fashion-mnist@champion",
        "https://h/?tokenizer=bpe&secretary=bob&page=2",  # names that merely contain a secret word
        "budget.trials: must be >= 1 (got 0)",
        "password: is required",  # the word, but no value
    ],
)
def test_redact_leaves_other_strings_unchanged(text):
    assert redact(text) == text


def test_redact_is_idempotent():
    once = redact("postgresql://u:pw@h/db?token=t&x=1")
    assert redact(once) == once
