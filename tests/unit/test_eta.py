"""The search's ETA (hpo.engine.eta) from fake trial records: epochs left under the budget and ASHA's
rungs, spread over the trials at once, capped by the time budget; and the log lines that show it."""

from __future__ import annotations

import io
import re

import pytest
from rich.console import Console

from hpo.config.trial import TrialConfig
from hpo.engine.eta import Eta, SearchBudget, epoch_survival, estimate, remaining_epochs
from hpo.engine.live import LiveView
from hpo.engine.records import TrialRecord
from hpo.names import Metric, TrialStatus

NOW = 1_000_000.0


def trial(number: int, epochs: int, status: str = TrialStatus.RUNNING, seconds: float = 10.0, **kw) -> TrialRecord:
    history = [{"epoch": e, Metric.VAL_ACCURACY: 0.5, Metric.SECONDS: seconds} for e in range(1, epochs + 1)]
    return TrialRecord(f"t{number}", number, {}, TrialConfig(), history=history, status=status, **kw)


def test_asha_survival_follows_the_rungs():
    assert epoch_survival(3, None) == [1.0, 1.0, 1.0, 1.0]
    assert epoch_survival(2, (1, 2.0)) == [1.0, 1.0, 0.5]  # the smoke study: rungs at 1 (and 2, its end)
    # rungs at 1 and 3 of 9, a third promoted at each: epoch 1 by all, 2-3 by a third, 4-9 by a ninth
    survival = epoch_survival(9, (1, 3.0))
    assert survival == pytest.approx([1, 1, 1 / 3, 1 / 3, *[1 / 9] * 6])
    assert remaining_epochs(survival, 0) == pytest.approx(1 + 2 / 3 + 6 / 9)
    assert remaining_epochs(survival, 3) == pytest.approx(6 / 9 / (1 / 3))  # promoted at 3 with chance 1/3
    assert remaining_epochs(survival, 9) == 0.0


def test_no_estimate_before_an_epoch_was_measured():
    budget = SearchBudget(trials=4, max_epochs=3)
    assert estimate([], budget, now=NOW) is None
    assert estimate([trial(0, 0)], budget, now=NOW) is None
    over = SearchBudget(trials=4, max_epochs=3, ends_at=NOW - 5)  # the time budget is spent: it ends now
    assert estimate([trial(0, 0)], over, now=NOW) == Eta(0.0, "time")


def test_epochs_left_times_the_measured_epoch_time():
    budget = SearchBudget(trials=4, max_epochs=3)
    # trial 0 at epoch 1 of 3 (2 left), three trials not started (3 epochs each), 10 s an epoch
    found = estimate([trial(0, 1)], budget, now=NOW)
    assert found == Eta(pytest.approx((2 + 3 * 3) * 10.0), "trials")
    assert found.describe() == "~2 min"
    # a slower epoch measured doubles it
    slow = estimate([trial(0, 1, seconds=20.0)], budget, now=NOW)
    assert slow is not None and slow.seconds == pytest.approx(2 * found.seconds)


def test_trials_at_once_share_the_work_but_the_longest_trial_bounds_it():
    budget = SearchBudget(trials=4, max_epochs=3)
    records = [trial(0, 1), trial(1, 1)]
    one = estimate(records, budget, now=NOW, concurrency=1)
    two = estimate(records, budget, now=NOW, concurrency=2)
    assert one is not None and two is not None
    assert one.seconds == pytest.approx((2 + 2 + 2 * 3) * 10.0)
    assert two.seconds == pytest.approx(one.seconds / 2)
    # the last trial running alone: more slots do not make its 2 epochs left any shorter
    last = estimate([trial(0, 1), *[trial(n, 3, TrialStatus.COMPLETED) for n in (1, 2, 3)]], budget, now=NOW)
    assert last is not None and last.seconds == pytest.approx(2 * 10.0)
    wide = estimate(
        [trial(0, 1), *[trial(n, 3, TrialStatus.COMPLETED) for n in (1, 2, 3)]], budget, now=NOW, concurrency=4
    )
    assert wide == last


def test_finished_trials_pull_the_expectation_towards_what_the_search_does():
    budget = SearchBudget(trials=10, max_epochs=9, asha=(1, 3.0))
    model = 1 + 2 / 3 + 6 / 9  # epochs a new trial trains under these rungs
    pruned_early = [trial(n, 1, TrialStatus.PRUNED) for n in range(4)]
    found = estimate(pruned_early, budget, now=NOW)
    per_trial = (2 * model + 4 * 1) / (2 + 4)
    assert found is not None and found.seconds == pytest.approx(6 * per_trial * 10.0)
    assert found.seconds < 6 * model * 10.0
    # a trial's time beyond its epochs (start-up) counts for each trial still to start
    slow_start = [trial(n, 1, TrialStatus.PRUNED, started=NOW - 100, ended=NOW - 100 + 15) for n in range(4)]
    later = estimate(slow_start, budget, now=NOW)
    assert later is not None and later.seconds == pytest.approx(found.seconds + 6 * 5.0)
    # the first trial also paid the worker's start-up (20 s here): it counts only until another one finished
    first = trial(0, 1, TrialStatus.PRUNED, started=NOW - 200, ended=NOW - 200 + 30)
    alone = estimate([first], SearchBudget(trials=2, max_epochs=1), now=NOW)
    assert alone is not None and alone.seconds == pytest.approx(10.0 + 20.0)
    after = estimate([first, *slow_start], budget, now=NOW)
    assert after is not None and after.seconds == pytest.approx(5 * (per_trial2 := (2 * model + 5) / 7) * 10 + 5 * 5.0)
    assert per_trial2 < model


def test_data_fidelity_epochs_cost_their_share_of_the_images():
    """Rungs at 1 and 3 of 9 with a ninth and a third of the images before them: a new trial is expected to
    train 1/9 + (2/3)(1/3) + 6/9 full-data epochs, and the epochs measured on a ninth count as a ninth."""
    fractions = (1 / 9, 1 / 3, 1 / 3, *[1.0] * 6)
    budget = SearchBudget(trials=3, max_epochs=9, asha=(1, 3.0), fractions=fractions)
    model = 1 / 9 + 2 / 3 * 1 / 3 + 6 / 9
    survival = epoch_survival(9, (1, 3.0))
    assert remaining_epochs(survival, 0, budget.weights()) == pytest.approx(model)
    assert remaining_epochs(survival, 3, budget.weights()) == pytest.approx(6 / 9 / (1 / 3))
    # one trial ran its first epoch on a ninth of the images in 2 s: a full-data epoch takes 18 s
    first = trial(0, 1, seconds=2.0)
    first.history[0][Metric.DATA_FRACTION] = 1 / 9
    found = estimate([first], budget, now=NOW)
    expected_running = 18.0 * remaining_epochs(survival, 1, budget.weights())
    assert found is not None and found.seconds == pytest.approx(expected_running + 2 * model * 18.0)
    # the same search counted in plain epochs would expect far more (each epoch as long as the first)
    plain = estimate([trial(0, 1, seconds=2.0)], SearchBudget(trials=3, max_epochs=9, asha=(1, 3.0)), now=NOW)
    assert plain is not None and plain.seconds == pytest.approx(2.0 * (remaining_epochs(survival, 1) + 2 * 7 / 3))


def test_a_retrying_trial_starts_again_from_scratch():
    budget = SearchBudget(trials=1, max_epochs=3)
    retrying = trial(0, 2, TrialStatus.RETRYING)
    found = estimate([retrying], budget, now=NOW)
    assert found is not None and found.seconds == pytest.approx(3 * 10.0)


def test_the_time_budget_caps_the_estimate():
    records = [trial(0, 1)]
    found = estimate(records, SearchBudget(trials=100, max_epochs=3, ends_at=NOW + 300), now=NOW)
    assert found == Eta(300.0, "time")
    assert found.describe() == "~5 min (time budget)"
    roomy = estimate(records, SearchBudget(trials=2, max_epochs=3, ends_at=NOW + 3600), now=NOW)
    assert roomy == Eta(pytest.approx(50.0), "trials") and roomy.describe() == "~50 s"
    assert Eta(3 * 3600.0, "trials").describe() == "~3.0 h"


def test_log_lines_carry_the_eta_once_an_epoch_was_measured():
    out = io.StringIO()
    record = trial(1, 0)
    view = LiveView(
        [record],
        trials=3,
        time_budget=3600,
        max_epochs=4,
        metric=Metric.VAL_ACCURACY,
        mode="max",
        console=Console(file=out, force_terminal=False, width=200),
    )
    with view:
        view.trial_changed(record)
        record.history.append({"epoch": 1, Metric.VAL_ACCURACY: 0.8, Metric.SECONDS: 30.0})
        view.trial_changed(record)
    first, second = out.getvalue().splitlines()
    assert "ETA" not in first  # nothing measured yet
    # 3 epochs left of trial 1, then 2 trials of 4 epochs, at 30 s each: 11 x 30 s = 5.5 min
    assert re.match(r"\[\s*0\.\d min, ETA ~6 min\] 0/3 done \| trial 1 epoch 1/4: val_accuracy 0\.8000", second), second
    assert view.progress.tasks[0].fields["eta"] == ""  # the live table's column fills in when it renders
    view.render()
    assert view.progress.tasks[0].fields["eta"] == "ETA ~6 min"


# ---------------------------------------------------------------------------- what the deadline waits for
DEADLINE_STUDY = """\
name: d
dataset: {{name: fashion_mnist, validation_split: 0.1}}
search_space: {{model: {{name: cnn}}}}
budget: {{trials: 8, max_epochs: 15, until: 45m}}
final: {{retrain_on: train+val, epochs: {epochs}{recheck}}}
"""


def _deadline_study(tmp_path, epochs="best", recheck=""):
    from hpo.study import load_study

    path = tmp_path / "study.yaml"
    path.write_text(DEADLINE_STUDY.format(epochs=epochs, recheck=recheck))
    return load_study(path)


def _scored(number: int, accuracies: list[float], seconds: float, fraction: float | None = None) -> TrialRecord:
    history = [
        {
            "epoch": e,
            Metric.VAL_ACCURACY: a,
            Metric.SECONDS: seconds,
            **({Metric.DATA_FRACTION: fraction} if fraction else {}),
        }
        for e, a in enumerate(accuracies, start=1)
    ]
    return TrialRecord(f"t{number}", number, {}, TrialConfig(), history=history)


def test_the_deadline_waits_for_the_winner_so_far_retrained_for_its_best_epoch_count(tmp_path):
    """Not for ``max_epochs`` at the slowest epoch any trial ran: on a 2-core Zen 3, a CNN's first 156-s
    epoch stopped the 45-minute Fashion-MNIST study at once, as if its final stage needed 15 such epochs."""
    from types import SimpleNamespace

    from hpo.backends.search import FINAL_OVERHEAD, after_search_seconds

    study, data = _deadline_study(tmp_path), SimpleNamespace(y_train=[0] * 900, y_val=[0] * 100)
    scale = 1000 / 900  # the final stage retrains on train+val
    assert after_search_seconds(study, data, [_scored(0, [], 100.0)]) is None  # no epoch yet: nothing to go by
    fast = _scored(0, [0.80, 0.90, 0.88], seconds=100.0)  # the winner so far, best at epoch 2
    slow = _scored(1, [0.70], seconds=300.0)
    assert after_search_seconds(study, data, [fast, slow]) == pytest.approx(1.2 * (2 * 100.0 * scale + FINAL_OVERHEAD))
    # the slow one takes the lead at its epoch 3: its epochs, at its pace
    slow = _scored(1, [0.70, 0.85, 0.95], seconds=300.0)
    assert after_search_seconds(study, data, [fast, slow]) == pytest.approx(1.2 * (3 * 300.0 * scale + FINAL_OVERHEAD))
    # an epoch on a third of the data (data fidelity) stands for three times its seconds on all of it
    screened = _scored(2, [0.99], seconds=50.0, fraction=1 / 3)
    assert after_search_seconds(study, data, [fast, screened]) == pytest.approx(
        1.2 * (1 * 150.0 * scale + FINAL_OVERHEAD)
    )


def test_a_fixed_epoch_count_or_a_recheck_is_waited_for_at_the_slowest_epoch(tmp_path):
    from types import SimpleNamespace

    from hpo.backends.search import FINAL_OVERHEAD, after_search_seconds

    data = SimpleNamespace(y_train=[0] * 900, y_val=[0] * 100)
    records = [_scored(0, [0.80, 0.90], seconds=100.0), _scored(1, [0.70], seconds=300.0)]
    fixed = _deadline_study(tmp_path, epochs="10")
    assert after_search_seconds(fixed, data, records) == pytest.approx(1.2 * (10 * 300.0 * 1000 / 900 + FINAL_OVERHEAD))
    # a re-check runs the top configurations for max_epochs: the winner's best epoch is not known before it
    rechecked = _deadline_study(tmp_path, recheck=", recheck: {top_k: 2, seeds: 1}")
    need = after_search_seconds(rechecked, data, records)
    assert need is not None and need >= 1.2 * (15 * 300.0 * 1000 / 900 + FINAL_OVERHEAD + 15 * 300.0)
