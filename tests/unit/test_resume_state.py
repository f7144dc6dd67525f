"""A run's folder: which run `hpo run` continues, what --fresh does, damaged state, the champion guard,
and checks that refuse a run before anything starts."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime, timedelta

import pytest

from hpo.engine.run_dir import ResumeConflict, StudyDir
from hpo.testing import run_hpo


def _finish(run: StudyDir) -> None:
    run.advance("done", outcome="completed")
    run.unlock()


def test_an_unfinished_run_is_continued_and_a_finished_one_is_not(tmp_path):
    first, resumed = StudyDir.open(tmp_path, "s", "fp1")
    assert not resumed
    first.unlock()  # "killed"
    again, resumed = StudyDir.open(tmp_path, "s", "fp1")
    assert resumed and again.path == first.path and again.state.attempts == 2
    _finish(again)
    third, resumed = StudyDir.open(tmp_path, "s", "fp1")
    assert not resumed and third.path != first.path


def test_a_changed_study_does_not_continue_an_old_run(tmp_path):
    StudyDir.open(tmp_path, "s", "fp1")[0].unlock()
    with pytest.raises(ResumeConflict, match="different version of study 's'.*--fresh"):
        StudyDir.open(tmp_path, "s", "fp2")
    fresh, resumed = StudyDir.open(tmp_path, "s", "fp2", fresh=True)
    assert not resumed
    assert [r.state.abandoned for r in StudyDir.all(tmp_path / "s")] == [True, False]


def test_a_running_study_is_not_joined_but_fresh_starts_beside_it(tmp_path):
    # Another process holds the run: a child that opens it and waits.
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            (
                "import sys, time; from pathlib import Path; from hpo.engine.run_dir import StudyDir; "
                f"StudyDir.open(Path({str(tmp_path)!r}), 's', 'fp1'); print('ready', flush=True); time.sleep(60)"
            ),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "ready"
        with pytest.raises(ResumeConflict, match=r"is running now \(pid \d+"):
            StudyDir.open(tmp_path, "s", "fp1")
        beside, resumed = StudyDir.open(tmp_path, "s", "fp1", fresh=True)
        assert not resumed
        running = [r for r in StudyDir.all(tmp_path / "s") if r.path != beside.path]
        assert running and not running[0].state.abandoned  # the running one is left alone
    finally:
        holder.kill()
        holder.wait()


def test_damaged_or_newer_state_files_do_not_block_the_study(tmp_path):
    good, _ = StudyDir.open(tmp_path, "s", "fp1")
    good.unlock()
    state = json.loads((good.path / "state.json").read_text())
    (good.path / "state.json").write_text(json.dumps({**state, "added_by_a_newer_hpo": 1}))
    broken = tmp_path / "s" / "00000000-000000"
    broken.mkdir()
    (broken / "state.json").write_text("{trunc")
    problems: list[str] = []
    runs = StudyDir.all(tmp_path / "s", problems)
    assert [r.path for r in runs] == [good.path]
    assert len(problems) == 1 and "unreadable state.json" in problems[0]
    assert StudyDir.open(tmp_path, "s", "fp1")[1]  # the good run is still continued


def test_the_champion_goes_back_to_its_holder_when_a_redone_final_stage_had_taken_it(tmp_path):
    from hpo.stages.finalize import CHAMPION, ChampionGuard
    from hpo.tracking import MlflowTracker

    tracker = MlflowTracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "guard")
    tracker.ensure_registered_model("m", {})
    runs = [tracker.start_run(f"final-{i}") for i in range(2)]
    for run in runs:
        tracker.create_model_version(
            "m", source=f"runs:/{run}/model", run_id=run, model_id=None, tags={}, description=""
        )
    guard = ChampionGuard(tracker, "m")
    tracker.set_alias("m", CHAMPION, "1")
    before = guard.current()
    tracker.set_alias("m", CHAMPION, "2")  # the half-finished stage promoted v2 ...
    tracker.delete_run(runs[1])  # ... and is discarded on resume
    assert guard.current() is None
    guard.restore(before)
    assert guard.current() == "1"


def test_a_deadline_too_close_refuses_the_run_and_leaves_nothing(tmp_path):
    soon = (datetime.now().astimezone() + timedelta(seconds=20)).isoformat(timespec="seconds")
    (tmp_path / "study.yaml").write_text(
        "name: late\ndataset: {name: fashion_mnist}\nsearch_space: {model: {name: cnn}}\n"
        f'budget: {{trials: 2, max_epochs: 1, until: "{soon}"}}\n'
    )
    result = run_hpo(["run", "study.yaml"], tmp_path)
    assert result.returncode == 2, result.stderr
    assert "budget.until" in result.stderr and "too close" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["study.yaml"]
