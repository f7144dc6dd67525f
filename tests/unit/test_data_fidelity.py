"""Data-size fidelity (``scheduler: {fidelity: data}``): which share of the training images each epoch of a
trial trains on, the nested stratified subsets, and the training loop that trains on them, observed on
real Fashion-MNIST through the loop's own training step."""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from hpo.config.study import SchedulerConfig
from hpo.config.trial import ScheduleConfig, TrialConfig
from hpo.config.yaml_loader import parse_yaml
from hpo.data.splits import nested_subsets, rarest_label
from hpo.engine.fidelity import epoch_fractions, rung_epochs
from hpo.engine.trial_book import TrialBook
from hpo.names import Metric
from hpo.space import parse_space
from hpo.tracking import InMemoryTracker
from hpo.train import TrainData, train
from hpo.train.loop import TrainStep, make_schedule
from hpo.train.plan import ExecutionPlan

NINTH, THIRD = 1 / 9, 1 / 3


# ---------------------------------------------------------------------------------------------- the schedule
@pytest.mark.parametrize(
    ("scheduler", "max_epochs", "expected"),
    [
        # the default: 1/rf^2 up to the first rung (epoch 1), 1/rf up to the second (3), then all
        ({}, 9, [NINTH, THIRD, THIRD, 1, 1, 1, 1, 1, 1]),
        ({"type": "hyperband"}, 9, [NINTH, THIRD, THIRD, 1, 1, 1, 1, 1, 1]),  # the base bracket's rungs
        (
            {"grace_period": 2, "reduction_factor": 2, "data_fractions": [0.25, 0.5]},
            8,
            [0.25] * 2 + [0.5] * 2 + [1] * 4,
        ),
        ({"data_fractions": [0.1]}, 9, [0.1, 1, 1, 1, 1, 1, 1, 1, 1]),  # past the list: all images
        # a budget with one rung before its end: the survivors finish on all images
        ({}, 3, [NINTH, 1, 1]),
        ({"grace_period": 2, "reduction_factor": 2.5, "data_fractions": [0.2, 0.5]}, 6, [0.2] * 2 + [0.5] * 3 + [1]),
        ({"type": "median"}, 4, []),
    ],
)
def test_epoch_fractions_follow_the_rungs(scheduler, max_epochs, expected):
    config = SchedulerConfig(fidelity="data", **scheduler)
    assert epoch_fractions(config, max_epochs) == pytest.approx(expected)
    assert epoch_fractions(SchedulerConfig(**{k: v for k, v in scheduler.items() if k != "data_fractions"}), 9) == []


@pytest.mark.parametrize(("grace", "rf", "max_t"), [(1, 3, 27), (2, 2, 20), (1, 4, 16), (2, 2.5, 30)])
def test_rung_epochs_are_the_epochs_ray_asha_judges_at(grace, rf, max_t):
    from ray.tune.schedulers.async_hyperband import _Bracket

    bracket = _Bracket(min_t=grace, max_t=max_t, reduction_factor=rf, s=0)
    assert rung_epochs(grace, rf, max_t) == sorted(math.ceil(m) for m, _ in bracket._rungs)


def test_step_schedule_counts_epochs_of_different_sizes():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = make_schedule(
        ScheduleConfig(name="step", warmup_fraction=0, step_every=1, gamma=0.5), opt, 1.0, 3, 9, [1, 3, 9]
    )
    lrs = []
    for _ in range(13):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == [1.0] + [0.5] * 3 + [0.25] * 9  # halved after each epoch, whatever its length


# ---------------------------------------------------------------------------------------------- the subsets
def test_multilabel_subsets_keep_each_labels_share_and_nest():
    rng = np.random.default_rng(0)
    labels = (rng.random((3000, 6)) < [0.5, 0.3, 0.2, 0.1, 0.05, 0.02]).astype(np.int64)
    small, large = nested_subsets(labels, [300, 1000], seed=4)
    assert len(small) == 300 and len(large) == 1000 and np.isin(small, large).all()
    strata, shares = rarest_label(labels), labels.mean(axis=0)
    for subset in (small, large):
        # each row's rarest label is kept in proportion exactly (to one image), each label's share closely
        full = np.bincount(strata + 1, minlength=8) * len(subset) / len(labels)
        assert np.abs(np.bincount(strata[subset] + 1, minlength=8) - full).max() <= 1
        assert np.abs(labels[subset].mean(axis=0) - shares).max() < 0.05
    assert all(
        np.array_equal(a, b) for a, b in zip(nested_subsets(labels, [300, 1000], seed=4), (small, large), strict=True)
    )
    assert not np.array_equal(nested_subsets(labels, [300, 1000], seed=5)[0], small)


# ---------------------------------------------------------------------------------------------- the loop
def _key(image: torch.Tensor) -> str:
    return hashlib.sha1(image.numpy().tobytes()).hexdigest()


class Steps:
    """The images and labels each call of the loop's real training step receives, epoch by epoch (the
    loop's report closes an epoch), and whether the model entered each epoch as the last one left it."""

    def __init__(self, monkeypatch) -> None:
        self.epochs: list[dict] = []
        self.current: dict = {"images": [], "labels": []}
        self.weights: list[torch.Tensor] | None = None
        self.continued: list[bool] = []
        step = TrainStep.__call__

        def observed(step_self, uint8: torch.Tensor, y: torch.Tensor) -> None:
            if not self.current["images"] and self.weights is not None:  # the first step of a later epoch
                now = list(step_self.forward.parameters())
                self.continued.append(all(torch.equal(a, b) for a, b in zip(now, self.weights, strict=True)))
            self.current["images"] += [_key(img) for img in uint8.cpu()]
            self.current["labels"].append(y.cpu())
            step(step_self, uint8, y)

        monkeypatch.setattr(TrainStep, "__call__", observed)

    def report(self, epoch, model) -> None:
        labels = torch.cat(self.current["labels"]).numpy()
        self.epochs.append({"images": self.current["images"], "labels": labels, "result": epoch})
        self.current = {"images": [], "labels": []}
        self.weights = [p.detach().clone() for p in model.parameters()]


CONFIG = TrialConfig.model_validate(
    {
        "model": {"depth": 2, "width": 8},
        "optimizer": {"name": "sgd", "lr": 0.05},
        "batch_size": 64,
        "schedule": {"name": "onecycle"},
    }
)
PLAN = ExecutionPlan(threads=2)  # fp32 on the CPU, without measuring the candidates first
FRACTIONS = [NINTH, THIRD]  # three epochs: rung 1 on a ninth, rung 2 on a third, then all the images


@pytest.fixture(scope="module")
def train_data(fashion_subset):
    d = fashion_subset
    return TrainData.from_arrays(d.x_train, d.y_train, d.x_val, d.y_val, d.num_classes, d.mean, d.std)


@pytest.fixture(scope="module")
def observed_run(train_data):
    with pytest.MonkeyPatch.context() as monkeypatch:
        steps = Steps(monkeypatch)
        result = train(CONFIG, train_data, epochs=3, seed=7, plan=PLAN, report=steps.report, data_fractions=FRACTIONS)
    return steps, result


def test_each_rung_trains_on_its_stratified_fraction(observed_run, train_data):
    steps, result = observed_run
    labels, n = train_data.y_train.numpy(), len(train_data.y_train)
    assert len(steps.epochs) == 3
    for epoch, fraction in zip(steps.epochs, [*FRACTIONS, 1.0], strict=True):
        expected = round(fraction * n)
        assert len(epoch["labels"]) == len(epoch["images"]) == expected == epoch["result"].train_images
        assert epoch["result"].data_fraction == pytest.approx(fraction)
        # class proportions as in the whole training split, to within one image per class
        per_class = np.bincount(epoch["labels"], minlength=10)
        assert np.abs(per_class - np.bincount(labels, minlength=10) * expected / n).max() <= 1
        assert len(set(epoch["images"])) >= expected - 2  # each image once an epoch (a few are duplicates)
    ninth, third, whole = (set(e["images"]) for e in steps.epochs)
    assert ninth < third < whole  # nested
    assert whole == {_key(img) for img in train_data.x_train}
    # the validation split is the whole one every epoch, and the model learns
    assert (
        all(e.val_accuracy is not None for e in result.history) and result.history[-1].val_accuracy > 0.3
    )  # chance: 0.1
    # OneCycle spans the steps the epochs really took: it ends near zero, where a schedule sized for three
    # full epochs would still be high
    assert result.history[-1].lr < 0.05 * 0.01


def test_a_promoted_trial_continues_with_its_model(observed_run):
    steps, _ = observed_run
    assert steps.continued == [True, True]  # each epoch starts from the weights the last one ended with


def test_the_same_seed_gives_the_same_subsets(train_data, monkeypatch):
    steps = Steps(monkeypatch)
    d = train_data
    unvalidated = TrainData(d.x_train, d.y_train, None, None, d.num_classes, d.mean, d.std)  # only the subsets count
    for seed in (7, 7, 8):
        train(CONFIG, unvalidated, epochs=1, seed=seed, plan=PLAN, report=steps.report, data_fractions=[NINTH])
    same, again, other = (set(e["images"]) for e in steps.epochs)
    assert same == again and same != other


def test_streamed_images_train_on_the_fraction(tmp_path, monkeypatch):
    import hpo.data.images as images
    from hpo.config.study import DatasetConfig
    from hpo.data import load_data
    from hpo.data.streaming import FileImages
    from hpo.testing.datasets import write_image_folder

    monkeypatch.setattr(images, "CACHE_DIR", tmp_path / "cache")
    folder = write_image_folder(tmp_path / "data", classes=["a", "b", "c"], per_class=30, size=16, channels=3)
    d = load_data(
        DatasetConfig(name="image_folder", data_dir=str(folder), image_size=16, validation_split=0.2, stream=True),
        seed=1,
    )
    assert isinstance(d.x_train, FileImages)
    data = TrainData.from_arrays(d.x_train, d.y_train, d.x_val, d.y_val, d.num_classes, d.mean, d.std)
    steps = Steps(monkeypatch)
    config = CONFIG.model_copy(update={"batch_size": 16})
    train(config, data, epochs=2, seed=0, plan=ExecutionPlan(), report=steps.report, data_fractions=[THIRD])
    third, whole = steps.epochs
    assert len(third["labels"]) == round(len(d.y_train) / 3) == third["result"].train_images
    assert np.abs(np.bincount(third["labels"], minlength=3) - np.bincount(d.y_train, minlength=3) / 3).max() <= 1
    assert set(third["images"]) < set(whole["images"])


def test_the_fraction_reaches_the_trials_record_and_run(observed_run):
    """What ``_train_trial`` reports of each epoch (its metrics by name) becomes the trial's history, the
    per-epoch metrics of its run and the live view's lines."""
    import io

    from rich.console import Console

    from hpo.engine.live import LiveView

    steps, _ = observed_run
    space = parse_space(
        parse_yaml("model: {name: cnn, depth: 2, width: 8}\noptimizer: {name: sgd, lr: 0.05}\n", Path("s.yaml"))
    )
    tracker = InMemoryTracker()
    out, records = io.StringIO(), []
    view = LiveView(records, trials=1, time_budget=None, max_epochs=3, metric="val_accuracy", mode="max",
                    console=Console(file=out, force_terminal=False, width=200))  # fmt: skip
    book = TrialBook(space, tracker, tracker.start_run("study"), records, 3, on_change=view.trial_changed)
    with view:
        record = book.started("t1", {})
        for e in steps.epochs:
            epoch = e["result"]
            book.reported("t1", {**epoch.metrics(), "epoch": epoch.epoch, "early_stop": epoch.early_stop})
    lines = out.getvalue().splitlines()
    assert lines[1].endswith("s on 11% of the training images") and lines[2].endswith("s on 33% of the training images")
    assert lines[3].endswith(" s")  # the last epoch, on all of them
    expected = pytest.approx([*FRACTIONS, 1.0])
    assert [row[Metric.DATA_FRACTION] for row in record.history] == expected
    run = tracker.runs[record.run_id]
    assert [p.step for p in run.metrics[Metric.DATA_FRACTION]] == [1, 2, 3]
    assert [p.value for p in run.metrics[Metric.DATA_FRACTION]] == expected
    assert [p.value for p in run.metrics[Metric.TRAIN_IMAGES]] == [e["result"].train_images for e in steps.epochs]


# ---------------------------------------------------------------------------------------------- the study
@pytest.mark.parametrize(
    ("scheduler", "expected"),
    [
        ("{type: median, fidelity: data}", "s.yaml:7: scheduler.fidelity: data needs scheduler.type asha or hyperband"),
        ("{type: asha, data_fractions: [0.1]}", "s.yaml:7: scheduler.data_fractions: applies with scheduler.fidelity"),
        (
            "{fidelity: data, data_fractions: [0.3, 0.2]}",
            "s.yaml:7: scheduler.data_fractions.1: must be >= the fraction",
        ),
        ("{fidelity: data, data_fractions: [0.1, 1.0]}", "s.yaml:7: scheduler.data_fractions.1: must be < 1"),
        ("{type: hyperband, fidelity: data, data_fractions: [0.1, 0.5]}", None),
        ("{fidelity: data, data_fractions: [0.5, 0.5]}", None),  # a rung may train longer on the same images
    ],
)
def test_the_study_check_names_the_field(tmp_path, scheduler, expected):
    from hpo.errors import StudyErrors
    from hpo.study import load_study

    (tmp_path / "s.yaml").write_text(
        "name: x\ndataset: {name: fashion_mnist}\nsearch_space:\n  model: {name: cnn}\n"
        f"  optimizer: {{name: sgd, lr: 0.1}}\nbudget: {{trials: 2, max_epochs: 9}}\nscheduler: {scheduler}\n"
    )
    if expected is None:
        listed = yaml.safe_load(scheduler)["data_fractions"]
        assert load_study(tmp_path / "s.yaml").config.scheduler.fractions == listed
        return
    with pytest.raises(StudyErrors) as info:
        load_study(tmp_path / "s.yaml")
    assert any(expected in str(e) for e in info.value.errors), info.value.errors


@pytest.mark.parametrize("name", ["asha", "hyperband", "median", "none"])
def test_a_scheduler_is_named_alone(name):
    assert SchedulerConfig.model_validate(name) == SchedulerConfig(type=name)
