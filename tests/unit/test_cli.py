import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

HEAVY = ("torch", "ray", "mlflow", "optuna", "torchvision")


def hpo(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hpo.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=60)


def bad_studies(tmp_path: Path, repo_root: Path) -> dict[str, Path]:
    good = (repo_root / "studies" / "smoke.yaml").read_text()
    space = (repo_root / "search_spaces" / "smoke.yaml").read_text()
    (tmp_path / "space.yaml").write_text(space)
    (tmp_path / "inverted.yaml").write_text(
        space.replace("lr: {float: [0.001, 0.3], log: true}", "lr: {float: [0.3, 0.001], log: true}")
    )
    good = good.replace("../search_spaces/smoke.yaml", "space.yaml")
    files = {
        "unknown_key": good.replace("max_epochs: 2", "max_epochs: 2, trails: 3"),
        "inverted_range": good.replace("space.yaml", "inverted.yaml"),
        "missing_space": good.replace("space.yaml", "missing.yaml"),
    }
    paths = {}
    for name, text in files.items():
        paths[name] = tmp_path / f"{name}.yaml"
        paths[name].write_text(text)
    return paths


@pytest.mark.parametrize(
    "case, expected",
    [
        ("unknown_key", r"unknown_key.yaml:11: budget.trails: unknown key 'trails' (did you mean 'trials'?)"),
        (
            "inverted_range",
            r"inverted.yaml:13: optimizer.lr.float: `low <= high` must hold, but got (low=0.3, high=0.001)",
        ),
        ("missing_space", r"missing_space.yaml:9: search_space: search-space file not found: missing.yaml"),
    ],
)
@pytest.mark.parametrize("verb", ["validate", "run"])
def test_bad_studies_exit_2_with_location_and_write_nothing(tmp_path, repo_root, case, expected, verb):
    work = tmp_path / "work"
    work.mkdir()
    study = bad_studies(tmp_path, repo_root)[case]
    start = time.time()
    result = hpo(verb, str(study), cwd=work)
    assert result.returncode == 2, result.stderr
    assert expected in " ".join(result.stderr.split()), result.stderr
    assert "Traceback" not in result.stderr
    assert list(work.iterdir()) == []  # no MLflow store, no runs/ folder
    assert time.time() - start < 10


def test_validate_prints_the_resolved_study_and_space(repo_root):
    result = hpo("validate", "studies/fashion_mnist.yaml", cwd=repo_root)
    assert result.returncode == 0, result.stderr
    assert "max_epochs:" in result.stdout
    assert "model.cnn.depth" in result.stdout and "int [3, 5]" in result.stdout
    assert "optimizer.adamw.lr" in result.stdout


def test_validate_and_help_do_not_import_heavy_packages(repo_root):
    code = (
        "import sys; from typer.testing import CliRunner; from hpo.cli import app; "
        "r = CliRunner().invoke(app, ['validate', 'studies/fashion_mnist.yaml']); "
        "assert r.exit_code == 0, r.output; "
        "r = CliRunner().invoke(app, ['--help']); assert r.exit_code == 0; "
        f"print([m for m in {HEAVY!r} if m in sys.modules])"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=repo_root, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_schema_is_json_schema(repo_root):
    result = hpo("schema", cwd=repo_root)
    schema = json.loads(result.stdout)
    assert result.returncode == 0
    assert schema["additionalProperties"] is False
    assert {"name", "dataset", "search_space", "budget"} <= set(schema["required"])


def test_ui_serves_the_store_on_loopback(tmp_path):
    import os
    import signal
    import socket
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "hpo.cli", "ui", "--port", str(port), "--tracking-uri", uri],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        deadline = time.time() + 90
        status = None
        while time.time() < deadline and status is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
                    status = response.status
            except OSError:
                time.sleep(0.5)
                assert proc.poll() is None, proc.stderr.read().decode()
        assert status == 200
        listening = subprocess.run(["ss", "-ltn"], capture_output=True, text=True).stdout
        bound = [line.split()[3] for line in listening.splitlines()[1:] if line.split()[3].endswith(f":{port}")]
        assert bound and all(addr.startswith("127.0.0.1:") for addr in bound), bound
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)


def test_hpo_validate_prints_the_install_command_for_a_missing_backend_extra(tmp_path, repo_root):
    """In a process where AutoKeras cannot be found, ``hpo validate`` refuses the study, and the command
    to run reaches the terminal whole (its brackets are not taken for markup)."""
    study = (
        (repo_root / "studies" / "smoke.yaml")
        .read_text()
        .replace("../search_spaces/smoke.yaml", str(repo_root / "search_spaces" / "smoke.yaml"))
    )
    (tmp_path / "ak.yaml").write_text(study + "backends: [search, autokeras]\n")
    code = (
        "import importlib.util, sys; real = importlib.util.find_spec; "
        "importlib.util.find_spec = lambda n, *a: None if n == 'autokeras' else real(n, *a); "
        "sys.argv = ['hpo', 'validate', 'ak.yaml']; from hpo.cli import main; main()"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert (
        "ak.yaml:15: backends: the autokeras backend on Keras' torch backend needs autokeras: "
        'pip install -e ".[autokeras]"' in result.stderr
    )
    assert "nothing was run" in result.stderr


def test_hpo_status_lists_the_runs_and_warns_of_an_unreadable_one(tmp_path, repo_root):
    """A damaged state file is a warning (in yellow on a terminal: its markup is not printed), the others
    are listed with the stage they reached out of the stages they recorded."""
    from hpo.engine.run_dir import StudyDir
    from hpo.names import Stage

    study = (repo_root / "studies" / "smoke.yaml").read_text()
    (tmp_path / "s.yaml").write_text(
        study.replace("../search_spaces/smoke.yaml", str(repo_root / "search_spaces/smoke.yaml"))
    )
    name = next(line.split(":", 1)[1].strip() for line in study.splitlines() if line.startswith("name:"))
    run, _ = StudyDir.open(tmp_path / "runs", name, "fp", stages=(Stage.SEARCH, Stage.RECHECK, Stage.DONE))
    run.unlock()
    broken = tmp_path / "runs" / name / "00000000-000000"
    broken.mkdir()
    (broken / "state.json").write_text("{trunc")
    result = hpo("status", "s.yaml", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "warning: " in result.stderr and "unreadable state.json" in result.stderr
    assert "[yellow]" not in result.stderr
    assert "interrupted in search (stage 1 of 2)" in result.stdout
