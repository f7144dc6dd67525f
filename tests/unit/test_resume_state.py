"""A run's folder: which run `hpo run` continues, what --fresh does, damaged state, the champion guard,
and checks that refuse a run before anything starts."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime, timedelta

import pytest

from hpo.config.backends import BACKENDS, stage_sequence
from hpo.engine.run_dir import ResumeConflict, StudyDir, describe
from hpo.names import RunOutcome, Stage
from hpo.testing import run_hpo

STAGES = (Stage.SEARCH, Stage.RECHECK, Stage.DONE)  # a made-up backend's stages, then done


def _open(root, fingerprint: str = "fp1", **options):
    return StudyDir.open(root, "s", fingerprint, stages=STAGES, **options)


def _finish(run: StudyDir) -> None:
    run.advance(Stage.DONE, outcome=RunOutcome.COMPLETED)
    run.unlock()


def test_an_unfinished_run_is_continued_and_a_finished_one_is_not(tmp_path):
    first, resumed = _open(tmp_path)
    assert not resumed
    first.unlock()  # "killed"
    again, resumed = _open(tmp_path)
    assert resumed and again.path == first.path and again.state.attempts == 2
    _finish(again)
    third, resumed = _open(tmp_path)
    assert not resumed and third.path != first.path


def test_a_changed_study_does_not_continue_an_old_run(tmp_path):
    _open(tmp_path)[0].unlock()
    with pytest.raises(ResumeConflict, match=r"different version of study 's'.*--fresh"):
        _open(tmp_path, "fp2")
    _, resumed = _open(tmp_path, "fp2", fresh=True)
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
                f"StudyDir.open(Path({str(tmp_path)!r}), 's', 'fp1', stages=['search', 'done']); "
                "print('ready', flush=True); time.sleep(60)"
            ),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "ready"
        with pytest.raises(ResumeConflict, match=r"is running now \(pid \d+"):
            _open(tmp_path)
        beside, resumed = _open(tmp_path, fresh=True)
        assert not resumed
        running = [r for r in StudyDir.all(tmp_path / "s") if r.path != beside.path]
        assert running and not running[0].state.abandoned  # the running one is left alone
    finally:
        holder.kill()
        holder.wait()


def test_damaged_or_newer_state_files_do_not_block_the_study(tmp_path):
    good, _ = _open(tmp_path)
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
    assert _open(tmp_path)[1]  # the good run is still continued


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


def test_a_run_records_its_stages_and_passes_through_them_in_order(tmp_path):
    run, _ = _open(tmp_path)
    state = json.loads((run.path / "state.json").read_text())
    assert state["stages"] == list(STAGES) and state["stage"] == Stage.SEARCH
    run.advance_past((Stage.SEARCH,))
    assert run.state.stage == Stage.RECHECK
    run.advance_past((Stage.RECHECK,))
    assert (run.state.stage, run.state.outcome) == (Stage.DONE, RunOutcome.COMPLETED)
    assert StudyDir.load(run.path).state.stage == Stage.DONE


def test_a_state_file_from_an_older_hpo_is_continued_and_learns_its_stages(tmp_path):
    """Before the stages were recorded, a baseline backend kept its state under the stage's name."""
    folder = tmp_path / "s" / "20260101-000000"
    folder.mkdir(parents=True)
    old = {"study": "s", "fingerprint": "fp1", "created": 1.0, "stage": Stage.BASELINE, "attempts": 1}
    (folder / "state.json").write_text(json.dumps({**old, "baseline": {"run_id": "r1", "elapsed": 5.0}}))
    run, resumed = _open(tmp_path)
    assert resumed and run.path == folder and run.state.attempts == 2
    assert run.state.stages == list(STAGES)  # recorded now: the same study has the same stages
    assert run.state.stage_state == {Stage.BASELINE: {"run_id": "r1", "elapsed": 5.0}}
    assert json.loads((folder / "state.json").read_text())["stages"] == list(STAGES)


def test_hpo_status_says_how_far_a_run_is_from_its_recorded_stages(tmp_path):
    run, _ = _open(tmp_path)
    run.advance(Stage.RECHECK)
    assert describe(run)["state"] == "running: recheck (stage 2 of 2)"
    run.unlock()
    assert describe(run)["state"].startswith("interrupted in recheck (stage 2 of 2)")


@pytest.mark.parametrize("name", list(BACKENDS))
def test_each_backend_owns_its_stages_of_the_sequence(tmp_path, name):
    """A run of a study naming every backend passes through each backend's stages, then the next's."""
    sequence = stage_sequence(list(BACKENDS))
    run, _ = StudyDir.open(tmp_path, "s", "fp", stages=sequence)
    owned = BACKENDS[name].stages
    run.advance(owned[0])
    run.advance_past(owned)
    assert run.state.stage == sequence[sequence.index(owned[-1]) + 1]


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
