"""What the driver's callback reads of a trial's failure (``hpo.engine.ray_callbacks``): the last entry of
the error file Ray's ``Trial.handle_error`` appends to — the whole traceback, and the output the error
carried — and the error's one-line text; with no Ray started (the file is written here as Ray writes it)."""

from __future__ import annotations

import traceback
from types import SimpleNamespace

from hpo.engine.ray_callbacks import trial_error, trial_failure
from hpo.engine.trial_output import attach_output


def failed_trial(tmp_path, failures: list[str]) -> SimpleNamespace:
    error_file = tmp_path / "error.txt"
    with open(error_file, "a") as f:
        for n, text in enumerate(failures, 1):  # as Trial.handle_error appends each failure
            f.write(f"Failure # {n} (occurred at 2026-01-01_00-00-0{n})\n{text}\n")
    return SimpleNamespace(error_file=str(error_file), get_pickled_error=lambda: None)


def formatted(error: BaseException, output: str = "") -> str:
    """The text of a task's error as Ray records it: its header, then the traceback formatted in the trial."""
    try:
        raise error
    except BaseException as exc:
        attach_output(exc, output)
        return "\x1b[36mray::ImplicitFunc.train()\x1b[39m (pid=1)\n" + "".join(traceback.format_exception(exc))


def test_the_last_failure_whole_without_colour_codes_and_the_output_its_error_carried(tmp_path):
    first = formatted(ValueError("first"), "first attempt's words\n")
    last = formatted(ValueError("x" * 600 + "\nsecond line of the message\n  indented third"), "its last words\n")
    traceback, output = trial_failure(failed_trial(tmp_path, [first, last]))
    assert traceback.startswith("ray::ImplicitFunc.train() (pid=1)\n") and "\x1b" not in traceback
    assert traceback.endswith("ValueError: " + "x" * 600 + "\nsecond line of the message\n  indented third")
    assert "first" not in traceback and output == "its last words\n"


def test_the_error_text_is_the_exceptions_first_line_not_its_last_nor_the_output(tmp_path):
    from hpo.engine.limits import TrialOutOfMemory

    oom = formatted(TrialOutOfMemory("CUDA out of memory.\nIf reserved memory is >> allocated..."), "words\n")
    assert trial_error(failed_trial(tmp_path, [oom])) == "TrialOutOfMemory: CUDA out of memory."  # not retried
    died = "The actor died unexpectedly.\n\tpid: 7\nThe actor is dead because its worker process has died."
    (tmp_path / "died").mkdir()
    assert trial_error(failed_trial(tmp_path / "died", [died])).startswith("TrialProcessDied")


def test_no_error_file_gives_nothing_to_log(tmp_path):
    assert trial_failure(SimpleNamespace(error_file=None)) == ("", "")
    assert trial_error(SimpleNamespace(error_file=None, get_pickled_error=lambda: None)) == "unknown error"
