"""Several objectives: the Pareto front of finished trials, the winner by the stated rule (best within the
limits, or the knee), a study none of whose trials is within the limits, the front as a table and a plot,
the study checks; and the costs trials measure, on real small networks."""

from __future__ import annotations

import csv
import math
import textwrap

import pytest
import torch

from hpo.config.study import Objective, Objectives
from hpo.config.trial import CNNConfig, TrialConfig
from hpo.engine.pareto import (
    NoTrialWithinLimits,
    choose_pareto,
    choose_winner,
    dominates,
    pareto_front,
    rule_text,
    within_limits,
)
from hpo.engine.records import TrialRecord, best_trial
from hpo.errors import StudyErrors
from hpo.models import create_model
from hpo.names import Metric
from hpo.report.pareto import pareto_rows, write_pareto
from hpo.study import load_study
from hpo.train.costs import count_flops, count_params, measure_costs, measure_latency_ms
from hpo.train.plan import ExecutionPlan

ACC = Objective(metric="val_accuracy")
PARAMS = Objective(metric="params")


def trial(number: int, accuracies: list[float], **costs: float) -> TrialRecord:
    """A trial whose epochs reached ``accuracies`` and reported ``costs`` with each."""
    history = [
        {"epoch": e, Metric.VAL_ACCURACY: a, Metric.VAL_LOSS: 1.0 - a, **costs} for e, a in enumerate(accuracies, 1)
    ]
    return TrialRecord(f"t{number}", number, {"model.cnn.width": number}, TrialConfig(), history=history)


def objectives(*items: Objective) -> Objectives:
    return Objectives(list(items))


# ------------------------------------------------------------------------------------------ the front


def test_dominance_needs_no_worse_everywhere_and_better_somewhere():
    assert dominates((0.9, 100), (0.8, 200), ["max", "min"])
    assert dominates((0.9, 100), (0.9, 200), ["max", "min"])
    assert not dominates((0.9, 100), (0.9, 100), ["max", "min"])  # equal: neither dominates
    assert not dominates((0.9, 300), (0.8, 200), ["max", "min"])  # a trade-off
    assert dominates((0.1, 5.0), (0.2, 5.0), ["min", "min"])


def test_front_of_accuracy_and_size():
    values = [(0.90, 1000), (0.85, 100), (0.80, 500), (0.92, 5000), (0.85, 100), (0.70, 50)]
    # 2 is beaten by 1 (more accurate and smaller); 1 and 4 tie and both stay
    assert pareto_front(values, ["max", "min"]) == [0, 1, 3, 4, 5]
    assert pareto_front([], ["max", "min"]) == []


def test_limits_are_ceilings_for_minimised_and_floors_for_maximised_objectives():
    objs = [Objective(metric="val_accuracy", limit=0.8), Objective(metric="params", limit=1000)]
    assert within_limits((0.8, 1000), objs)  # the bounds themselves are allowed
    assert not within_limits((0.79, 10), objs)
    assert not within_limits((0.95, 1001), objs)
    assert within_limits((0.1, 1e9), [ACC, PARAMS])  # no limits: everything


def test_values_are_the_best_first_objective_and_the_last_costs():
    records = [trial(0, [0.5, 0.9, 0.7], params=100.0), trial(1, [0.6], params=10.0), trial(2, [])]
    choice = choose_pareto(records, [ACC, PARAMS])
    assert [(p.record.number, p.values) for p in choice.points] == [(0, (0.9, 100.0)), (1, (0.6, 10.0))]
    # a trial without the cost (it failed before measuring) has no point
    assert choose_pareto([trial(3, [0.8])], [ACC, PARAMS]).points == []


# ------------------------------------------------------------------------------------------ the rule


def front_study() -> list[TrialRecord]:
    return [
        trial(0, [0.70, 0.91], params=50_000.0),
        trial(1, [0.86], params=2_000.0),
        trial(2, [0.80, 0.84], params=8_000.0),  # beaten by 1: more params, less accurate
        trial(3, [0.89], params=9_000.0),
        trial(4, [0.60], params=500.0),
    ]


def test_best_within_the_limit_wins():
    records = front_study()
    objs = objectives(ACC, Objective(metric="params", limit=10_000))
    choice = choose_pareto(records, list(objs))
    assert [p.record.number for p in choice.front] == [0, 1, 3, 4]
    assert [p.record.number for p in choice.points if not p.feasible] == [0]
    assert choice.chosen is records[3]  # the most accurate of those with <= 10,000 parameters
    assert choose_winner(records, objs) is records[3]
    assert choice.describe() == "best val_accuracy with params <= 10000"
    # without the limit the most accurate wins, as with one objective
    assert choose_winner(records, objectives(ACC, PARAMS)) is records[0]
    assert choose_winner(records, objectives(ACC)) is best_trial(records, "val_accuracy", "max") is records[0]


def test_a_floor_on_the_first_objective_and_a_tie_broken_by_the_next():
    records = [*front_study(), trial(5, [0.89], params=3_000.0)]  # as accurate as 3, and smaller
    objs = objectives(Objective(metric="val_accuracy", limit=0.85), PARAMS)
    assert choose_winner(records, objs) is records[0]
    objs = objectives(Objective(metric="val_accuracy", limit=0.85), Objective(metric="params", limit=10_000))
    assert choose_winner(records, objs) is records[5]
    assert rule_text(list(objs)) == "best val_accuracy with val_accuracy >= 0.85 and params <= 10000"


def test_the_knee_trades_a_little_accuracy_for_much_less_size():
    records = front_study()
    # scaled to the front's range (accuracy 0.60-0.91, params 500-50,000), trial 1 is nearest the ideal:
    # 0.05 below the best accuracy for 1/25 of the largest network
    assert choose_winner(records, objectives(ACC, PARAMS), "knee") is records[1]
    # within a floor of 0.85 the front is trials 0, 1 and 3: scaled to its range, 3 gives up 0.4 of the
    # accuracy span for 0.85 of the size span; 0 and 1 are each at one end (distance 1)
    objs = objectives(Objective(metric="val_accuracy", limit=0.85), PARAMS)
    assert choose_winner(records, objs, "knee") is records[3]
    assert rule_text(list(objs), "knee").startswith("the knee of the Pareto front of val_accuracy (max), params")


def test_no_trial_within_the_limits_is_an_error_that_says_how_near_they_came():
    records = front_study()
    objs = objectives(ACC, Objective(metric="params", limit=100))
    with pytest.raises(NoTrialWithinLimits, match=r"params <= 100\).*the lowest params: 500 \(trial #4\)"):
        choose_winner(records, objs)
    assert choose_pareto(records, list(objs)).chosen is None
    assert choose_winner([], objs) is None  # no result at all: the caller's "no trial produced a result"


# ------------------------------------------------------------------------------------------ shown


def test_the_table_and_the_plot(tmp_path):
    records = front_study()
    choice = choose_pareto(records, [ACC, Objective(metric="params", limit=10_000)])
    rows = pareto_rows(choice)
    assert rows[0][:6] == ["trial", "val_accuracy", "params", "on_front", "within_limits", "chosen"]
    assert [r[0] for r in rows[1:]] == ["0", "3", "1", "4", "2"]  # the front first, best first
    chosen = [r for r in rows[1:] if r[5] == "true"]
    assert chosen == [["3", "0.8900", "9000", "true", "true", "true", "width=3"]]
    assert rows[1][3:5] == ["true", "false"]  # the most accurate is on the front, over the limit
    paths = write_pareto(choice, tmp_path, "test")
    with paths[0].open() as fh:
        assert list(csv.reader(fh)) == rows
    assert paths[1].name == "pareto.png" and paths[1].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert paths[1].stat().st_size > 10_000


# ------------------------------------------------------------------------------------------ study checks


STUDY = """\
name: pareto-check
dataset: {name: fashion_mnist}
search_space: {model: {one_of: {cnn: {width: {categorical: [8, 16]}}}}, optimizer: {name: sgd, lr: 0.05}}
budget: {trials: 2, max_epochs: 1}
"""


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("objective: {metric: val_accuracy, limit: 0.9}", "objective.limit: applies with several objectives"),
        (
            "objective: [{metric: val_accuracy}, {metric: params, limit: 0}]",
            "objective.1.limit: params is positive: must be > 0",
        ),
        (
            "objective: [{metric: val_accuracy, limit: 90}, {metric: params}]",
            r"objective.0.limit: val_accuracy is a share: must be in \(0, 1\]",
        ),
        ("final: {choose: knee}", "final.choose: knee needs several objectives"),
        (
            "objective: [{metric: val_accuracy}, {metric: flops}]\nfinal: {choose: knee, recheck: {top_k: 2}}",
            "final.choose: knee cannot be combined with final.recheck",
        ),
        (
            "objective: [{metric: val_accuracy}, {metric: params}]\nbackends: [search, autokeras]",
            "backends: the autokeras baseline optimises one objective",
        ),
        ("objective: [{metric: params}, {metric: val_accuracy}]", "the first objective must be a validation metric"),
    ],
)
def test_study_checks_refuse_what_several_objectives_cannot_mean(tmp_path, extra, message):
    path = tmp_path / "study.yaml"
    path.write_text(STUDY + textwrap.dedent(extra) + "\n")
    with pytest.raises(StudyErrors, match=message):
        load_study(path)


def test_a_study_with_a_cost_limit_loads(tmp_path):
    path = tmp_path / "study.yaml"
    path.write_text(STUDY + "objective: [{metric: val_accuracy}, {metric: latency_ms, limit: 2.5}]\n")
    study = load_study(path)
    assert study.config.objective.multi and study.config.objective.root[1].limit == 2.5


# ------------------------------------------------------------------------------------------ costs


def cnn(width: int, depth: int = 2) -> torch.nn.Module:
    return create_model(CNNConfig(depth=depth, width=width), 1, 10)


def test_params_count_every_parameter():
    model = cnn(8)
    assert count_params(model) == sum(p.numel() for p in model.parameters()) > 0
    for p in model.parameters():  # a frozen backbone is still part of the model
        p.requires_grad_(False)
    assert count_params(model) == sum(p.numel() for p in model.parameters())


def test_flops_grow_with_width_and_depth():
    small, wide, deep = (count_flops(m, (1, 28, 28)) for m in (cnn(8), cnn(16), cnn(8, depth=4)))
    assert 0 < small < wide and small < deep
    # a 3x3 convolution of 1 -> 8 channels over 28 x 28 pixels alone is 2 * 9 * 8 * 784 FLOPs
    assert small > 2 * 9 * 8 * 28 * 28


def test_latency_of_one_image_on_the_plan_and_the_model_left_as_it_was():
    model = cnn(16)
    model.train()
    plan = ExecutionPlan(device="cpu", threads=1)
    latency = measure_latency_ms(model, (1, 28, 28), plan)
    assert 0 < latency < 1000 and math.isfinite(latency)
    assert model.training  # measured in eval mode, then back to training
    channels_last = ExecutionPlan(device="cpu", threads=1, channels_last=True)
    assert measure_latency_ms(model, (1, 28, 28), channels_last) > 0
    costs = measure_costs(model, (1, 28, 28), plan, which=(Metric.PARAMS, Metric.LATENCY_MS))
    assert set(costs) == {"params", "latency_ms"} and costs["params"] == count_params(model)
    assert set(measure_costs(model, (1, 28, 28), plan)) == {"params", "flops", "latency_ms"}


def test_optunas_plots_of_a_two_objective_study_follow_the_first_and_add_the_front(tmp_path):
    import optuna

    from hpo.report.study_plots import optuna_plots_html

    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.create_study(study_name="two", storage=storage, directions=["maximize", "minimize"])
    for accuracy, params in ((0.8, 100.0), (0.9, 1000.0), (0.7, 500.0)):
        trial = study.ask({"width": optuna.distributions.IntDistribution(4, 64)})
        study.tell(trial, [accuracy, params])
    page = optuna_plots_html(storage, "two", tmp_path / "plots.html", "val_accuracy").read_text()
    titles = ["Optimisation history", "Parameter importances", "Parallel coordinates", "Pareto front"]
    assert all(f"<h2>{title}</h2>" in page for title in titles)
    assert "<em>not available" not in page and "val_accuracy" in page


def test_where_no_trial_ran_its_budget_the_plots_page_says_so_and_shows_every_learning_curve(tmp_path, caplog):
    """A deadline or ASHA can cut every trial (the full study on a 2-core Zen 3 did): Optuna's history,
    importances and parallel coordinates would be empty, with its warnings; the epochs are still there."""
    import optuna

    from hpo.report.study_plots import optuna_plots_html

    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.create_study(study_name="cut", storage=storage, direction="maximize")
    for curve in ((0.80, 0.85), (0.70,)):
        trial = study.ask({"width": optuna.distributions.IntDistribution(4, 64)})
        for epoch, value in enumerate(curve, start=1):
            trial.report(value, epoch)
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)
    optuna.logging.enable_propagation()  # Optuna's warnings reach caplog
    try:
        page = optuna_plots_html(storage, "cut", tmp_path / "plots.html").read_text()
    finally:
        optuna.logging.disable_propagation()
    assert "No trial ran its full budget" in page
    assert "<h2>Learning curves</h2>" in page and "plotly" in page.lower() and "<em>not available" not in page
    assert "<h2>Optimisation history</h2>" not in page
    assert "no complete trials" not in caplog.text.lower()

    # once one has, the page has Optuna's plots and the curves, and no such note
    trial = study.ask({"width": optuna.distributions.IntDistribution(4, 64)})
    trial.report(0.9, 1)
    study.tell(trial, 0.9)
    page = optuna_plots_html(storage, "cut", tmp_path / "plots.html").read_text()
    titles = ["Optimisation history", "Parameter importances", "Parallel coordinates", "Learning curves"]
    assert all(f"<h2>{title}</h2>" in page for title in titles) and "No trial ran" not in page
