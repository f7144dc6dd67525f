"""The search's progress where no terminal is attached (CI logs, nohup): a line per trial event,
including every epoch, so that a long trial is never silent; on a terminal, the same lines in the driver log."""

import io

from rich.console import Console

from hpo.config.trial import TrialConfig
from hpo.engine.driver_log import DriverLog
from hpo.engine.live import LiveView
from hpo.engine.records import TrialRecord
from hpo.names import Artifact


def test_log_lines_show_starts_epochs_and_ends():
    out = io.StringIO()
    record = TrialRecord("t1", 1, {"model.name": "cnn", "model.cnn.depth": 4}, TrialConfig())
    view = LiveView(
        [record],
        trials=3,
        time_budget=600,
        max_epochs=10,
        metric="val_accuracy",
        mode="max",
        console=Console(file=out, force_terminal=False, width=200),
    )
    with view:
        view.trial_changed(record)
        for epoch, acc in ((1, 0.85), (2, 0.83)):
            record.history.append({"epoch": epoch, "val_accuracy": acc, "seconds": 41.0})
            view.trial_changed(record)
        record.status = "pruned"
        view.trial_changed(record)
    lines = out.getvalue().splitlines()
    assert len(lines) == 4, lines
    assert lines[0].endswith("0/3 done | trial 1 started: cnn depth=4")
    assert lines[1].endswith("trial 1 epoch 1/10: val_accuracy 0.8500, 41 s")
    assert lines[2].endswith("trial 1 epoch 2/10: val_accuracy 0.8300, best 0.8500 (epoch 1), 41 s")
    assert lines[3].endswith("1/3 done | trial 1 pruned after 2 epochs: val_accuracy 0.8500 (epoch 1)")


def test_a_trial_ended_before_its_first_epoch_says_so_and_one_epoch_is_singular():
    out = io.StringIO()
    none = TrialRecord("t1", 1, {"model.name": "resnet"}, TrialConfig(), status="stopped")
    one = TrialRecord("t2", 2, {"model.name": "cnn"}, TrialConfig(), status="stopped")
    one.history.append({"epoch": 1, "val_accuracy": 0.85, "seconds": 156.0})
    view = LiveView(
        [none, one],
        trials=24,
        time_budget=None,
        max_epochs=15,
        metric="val_accuracy",
        mode="max",
        console=Console(file=out, force_terminal=False, width=200),
    )
    with view:
        view.trial_changed(none)
        view.trial_changed(one)
        view.note("the search stopped early: the deadline is 06:46 and the final stage needs about 42.1 min")
    lines = out.getvalue().splitlines()
    assert lines[0].endswith("| trial 1 stopped after 0 epochs: no result"), lines
    assert lines[1].endswith("| trial 2 stopped after 1 epoch: val_accuracy 0.8500 (epoch 1)"), lines
    assert lines[2].endswith(
        "] the search stopped early: the deadline is 06:46 and the final stage needs about 42.1 min"
    )


def test_on_a_terminal_the_table_shows_the_trials_and_the_driver_log_still_gets_their_lines(tmp_path):
    screen = io.StringIO()
    console = Console(file=screen, force_terminal=True, width=200)
    record = TrialRecord("t1", 1, {"model.name": "cnn", "model.cnn.depth": 4}, TrialConfig())
    view = LiveView(
        [record], trials=3, time_budget=600, max_epochs=10, metric="val_accuracy", mode="max", console=console
    )
    assert view.interactive
    log = DriverLog.start(console, tmp_path)
    with view:
        view.trial_changed(record)
        record.history.append({"epoch": 1, "val_accuracy": 0.85, "seconds": 41.0})
        view.trial_changed(record)
    log.finish()
    logged = (tmp_path / Artifact.DRIVER_LOG).read_text()
    assert "trial 1 started: cnn" in logged
    assert "trial 1 epoch 1/10: val_accuracy 0.8500, 41 s" in logged
    assert "trial 1 started" not in screen.getvalue()  # the terminal has the table, not the lines
