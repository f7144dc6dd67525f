"""`hpo report` writes an HTML page that a real browser renders, showing leaderboard and confusion matrix."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from hpo.testing import REPO_ROOT, run_hpo

pytestmark = pytest.mark.integration


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def test_report_renders_in_headless_chromium(smoke_run, data_dir, tmp_path):
    from PIL import Image

    result = run_hpo(
        ["report", str(REPO_ROOT / "studies" / "smoke.yaml"), "--out", str(tmp_path / "report")],
        smoke_run.work,
        data_dir,
    )
    assert result.returncode == 0, result.stderr
    html_path, md_path = (tmp_path / "report" / "report.html"), (tmp_path / "report" / "report.md")
    html = html_path.read_text()
    assert "<h2>Leaderboard</h2>" in html and html.count("<tr>") >= 1 + 4 + 10  # header, 4 trials, 10 classes
    assert 'alt="Confusion matrix (counts)"' in html and "data:image/png;base64," in html
    assert "## Leaderboard" in md_path.read_text() and (tmp_path / "report" / "confusion_matrix.png").exists()

    browser = chromium()
    if browser is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed; .ci/run installs it")
        pytest.skip("no chromium here (apt-get install chromium)")
    shot = tmp_path / "report.png"
    subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--window-size=1200,2000",
            f"--screenshot={shot}",
            html_path.as_uri(),
        ],
        capture_output=True,
        timeout=120,
        check=True,
    )
    with Image.open(shot) as image:
        image = image.convert("L")
        assert image.size == (1200, 2000)
        histogram = image.histogram()
        dark = sum(histogram[:128]) / (image.size[0] * image.size[1])
        assert dark > 0.01, "the page rendered blank"  # text, tables and the matrix's dark cells
