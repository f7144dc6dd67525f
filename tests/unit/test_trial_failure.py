"""What the driver's callback reads of a trial's failure (``ray_callbacks.trial_failure``): the last entry of
the error file Ray's ``Trial.handle_error`` appends to, and the output the pickled error carries; with no
Ray started (the files are written here as Ray writes them)."""

from __future__ import annotations

from types import SimpleNamespace

from ray import cloudpickle
from ray.exceptions import RayTaskError

from hpo.engine.ray_callbacks import trial_failure
from hpo.engine.trial_output import attach_output


def failed_trial(tmp_path, failures: list[str], pickled: BaseException | None) -> SimpleNamespace:
    error_file, pickle_file = tmp_path / "error.txt", tmp_path / "error.pkl"
    with open(error_file, "a") as f:
        for n, text in enumerate(failures, 1):  # as Trial.handle_error appends each failure
            f.write(f"Failure # {n} (occurred at 2026-01-01_00-00-0{n})\n{text}\n")
    if pickled is not None:
        pickle_file.write_bytes(cloudpickle.dumps(pickled))
    return SimpleNamespace(error_file=str(error_file), pickled_error_file=str(pickle_file) if pickled else None)


def task_error(text: str, output: str) -> RayTaskError:
    cause = ValueError(text.splitlines()[-1])
    attach_output(cause, output)
    return RayTaskError("train", text, cause).as_instanceof_cause()


def test_the_last_failure_with_its_whole_traceback_and_the_output_its_error_carried(tmp_path):
    first = "\x1b[36mray::train()\x1b[39m\n  File 'a.py', line 1, in f\nValueError: first"
    last = "\x1b[36mray::train()\x1b[39m\n" + "  File 'b.py', line 2, in g\n" * 50 + "ValueError: " + "x" * 600
    trial = failed_trial(tmp_path, [first, last], task_error(last, "its last words\n"))
    traceback, output = trial_failure(trial)
    assert traceback == last.replace("\x1b[36m", "").replace("\x1b[39m", "")  # whole, without colour codes
    assert "first" not in traceback and output == "its last words\n"


def test_a_pickle_left_by_an_earlier_failure_does_not_lend_its_output(tmp_path):
    earlier = "ray::train()\nValueError: earlier"  # a task's error: pickled
    trial = failed_trial(tmp_path, [earlier, "the actor died unexpectedly"], task_error(earlier, "stale\n"))
    assert trial_failure(trial) == ("the actor died unexpectedly", "")


def test_no_error_file_gives_the_pickled_errors_text_and_nothing_gives_nothing(tmp_path):
    text = "ray::train()\nValueError: boom"
    trial = failed_trial(tmp_path, [], task_error(text, "out\n"))
    assert trial_failure(SimpleNamespace(error_file=None, pickled_error_file=trial.pickled_error_file)) == (
        text,
        "out\n",
    )
    assert trial_failure(SimpleNamespace(error_file=None, pickled_error_file=None)) == ("", "")
