"""``start_with``: the study's own configurations are the search's first trials, exactly as written, and
the sampler's proposals follow."""

from __future__ import annotations

import json

import pytest

from hpo.testing import REPO_ROOT, run_hpo

pytestmark = pytest.mark.integration

POINT = {
    "model.name": "cnn",
    "model.cnn.depth": 2,
    "model.cnn.width": 24,
    "model.cnn.batchnorm": "after_activation",
    "model.cnn.dropout.placement": "head",
    "optimizer.lr": 0.05,
    "augment.hflip": 0.25,
}


def test_start_with_configurations_run_first_as_written(tmp_path, data_dir):
    smoke = (REPO_ROOT / "studies" / "smoke.yaml").read_text()
    study = (
        smoke.replace("budget: {trials: 4, time: 5m, max_epochs: 2}", "budget: {trials: 3, max_epochs: 1}")
        .replace("grace_period: 1, ", "")
        .replace("final: {", "final: {enabled: false, ")
        + f"start_with:\n  - {json.dumps(POINT)}\n"
    )
    (tmp_path / "studies").mkdir()
    (tmp_path / "search_spaces").mkdir()
    (tmp_path / "studies" / "smoke.yaml").write_text(study)
    (tmp_path / "search_spaces" / "smoke.yaml").write_text((REPO_ROOT / "search_spaces" / "smoke.yaml").read_text())

    result = run_hpo(["run", "studies/smoke.yaml"], tmp_path, data_dir)
    assert result.returncode == 0, result.stderr
    assert "start_with: 1 configuration evaluated first" in result.stderr
    (run_dir,) = [d for d in (tmp_path / "runs" / "smoke").iterdir() if d.is_dir()]
    trials = sorted(json.loads((run_dir / "trials.json").read_text())["trials"], key=lambda t: t["number"])
    assert len(trials) == 3
    assert trials[0]["params"] == POINT
    assert all(t["params"] != POINT for t in trials[1:])  # then the sampler's own
