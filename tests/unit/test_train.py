import math

import numpy as np
import pytest
import torch

from hpo.config.trial import TrialConfig
from hpo.train import Preferences, TrainData, evaluate, train
from hpo.train.loop import make_schedule


@pytest.fixture(scope="module")
def train_data(fashion_subset):
    d = fashion_subset
    return TrainData.from_arrays(d.x_train, d.y_train, d.x_val, d.y_val, d.num_classes, d.mean, d.std)


def small(**overrides) -> TrialConfig:
    base = {
        "model": {"depth": 3, "width": 16},
        "optimizer": {"name": "sgd", "lr": 0.05},
        "batch_size": 64,
        "augment": {"hflip": 0.5, "translate": 0.5},
    }
    base.update(overrides)
    return TrialConfig.model_validate(base)


def test_trainer_learns_real_fashion_mnist(train_data, fashion_subset):
    reports = []
    result = train(small(), train_data, epochs=3, seed=0, threads=2, report=lambda e, m: reports.append(e))
    assert [r.epoch for r in reports] == [1, 2, 3]
    assert reports[-1].val_accuracy > 0.70  # chance is 0.10
    assert reports[-1].train_loss < reports[0].train_loss
    x_test = torch.as_tensor(fashion_subset.x_test)
    _, test_acc = evaluate(result.model, x_test, torch.as_tensor(fashion_subset.y_test))
    assert test_acc > 0.65


@pytest.mark.parametrize("optimizer", ["adam", "adamw"])
def test_adaptive_optimizers_learn(train_data, optimizer):
    config = small(optimizer={"name": optimizer, "lr": 2e-3}, schedule={"name": "cosine"})
    result = train(config, train_data, epochs=1, seed=0, threads=2)
    assert result.history[-1].val_accuracy > 0.5


def test_early_stopping_stops_and_says_so(train_data):
    # a learning rate of ~0 never improves: patience 1 ends the run after epoch 2
    config = small(
        optimizer={"name": "sgd", "lr": 1e-9},
        schedule={"name": "constant", "warmup_fraction": 0},
        early_stopping={"patience": 1, "min_delta": 0.05},
    )
    result = train(config, train_data, epochs=5, seed=0, threads=2)
    assert result.stopped_early
    assert len(result.history) == 2 and result.history[-1].early_stop


def test_divergence_raises_instead_of_reporting_nan(train_data):
    config = small(
        optimizer={"name": "sgd", "lr": 10.0, "momentum": 0.99},
        batch_size=16,
        schedule={"name": "constant", "warmup_fraction": 0},
        model={"depth": 2, "width": 8, "batchnorm": "none", "activation": "leaky_relu"},
    )
    with pytest.raises(FloatingPointError, match="training loss became nan"):
        train(config, train_data, epochs=2, seed=0, threads=2)


@pytest.mark.parametrize("name", ["constant", "cosine", "step", "onecycle"])
def test_schedules_warm_up_and_end_where_expected(name):
    from hpo.config.trial import ScheduleConfig

    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=0.1, momentum=0.9)
    sched = make_schedule(
        ScheduleConfig(name=name, warmup_fraction=0.2, step_every=2, gamma=0.5), opt, 0.1, epochs=4, steps_per_epoch=10
    )
    lrs = []
    for _ in range(40):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] < 0.05  # warm-up starts low
    assert max(lrs) == pytest.approx(0.1, rel=0.05)
    if name == "constant":
        assert lrs[-1] == pytest.approx(0.1)
    elif name == "step":
        assert lrs[-1] == pytest.approx(0.05)  # one decay after 2 epochs (20 steps) ... then 0.05 until 40
    else:
        assert lrs[-1] < 0.01


@pytest.mark.parametrize("name", ["constant", "cosine", "step", "onecycle"])
@pytest.mark.parametrize("steps", [1, 2, 3, 5, 7])
def test_schedules_survive_runs_of_a_few_steps(name, steps):
    """A tiny subset with one epoch gives a handful of steps; OneCycleLR divided by zero on 5 once."""
    from hpo.config.trial import ScheduleConfig

    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=0.1, momentum=0.9)
    sched = make_schedule(ScheduleConfig(name=name, warmup_fraction=0.2), opt, 0.1, epochs=1, steps_per_epoch=steps)
    for _ in range(steps):
        opt.step()
        sched.step()
        assert math.isfinite(opt.param_groups[0]["lr"]) and opt.param_groups[0]["lr"] >= 0


def test_train_data_shares_the_arrays(fashion_subset):
    d = fashion_subset
    x = d.x_train.copy()
    x.setflags(write=False)  # as Ray's object store hands them out
    td = TrainData.from_arrays(x, d.y_train, None, None, 10, d.mean, d.std)
    assert td.x_train.data_ptr() == x.__array_interface__["data"][0]
    assert np.shares_memory(td.x_train.numpy(), x)


def test_flatten_sends_its_gradient_back_channels_last_while_training_only():
    from torch import nn

    from hpo.train.ops import channels_last_gradients

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(8 * 13 * 13, 4))
    net = net.to(memory_format=torch.channels_last)
    x = torch.rand(6, 1, 28, 28).contiguous(memory_format=torch.channels_last)
    seen = []
    net[2].register_full_backward_hook(lambda m, grad_in, grad_out: seen.append(grad_out[0]))

    def grads():
        net.zero_grad()
        net(x).square().sum().backward()
        return [p.grad.clone() for p in net.parameters()]

    plain = grads()
    outputs = net(x).detach()
    assert not seen[-1].is_contiguous(memory_format=torch.channels_last)  # Flatten's own NCHW gradient
    with channels_last_gradients(net):
        fixed = grads()
        assert seen[-1].is_contiguous(memory_format=torch.channels_last)
        assert torch.equal(net(x).detach(), outputs)  # the forward pass computes what it did without
        with torch.no_grad():
            assert torch.equal(net(x), outputs)  # inference too
    assert all(torch.allclose(a, b) for a, b in zip(plain, fixed, strict=True))
    assert not net[3]._forward_pre_hooks  # removed afterwards


def test_compile_trains_through_torch_compile_and_returns_the_eager_model(train_data):
    from torch._dynamo.utils import counters

    counters.clear()
    result = train(small(), train_data, epochs=3, seed=0, threads=2, prefs=Preferences(compile=True))
    assert counters["stats"]["unique_graphs"] >= 1  # dynamo captured the training forward
    assert not isinstance(result.model, torch._dynamo.eval_frame.OptimizedModule)
    assert not any(k.startswith("_orig_mod") for k in result.model.state_dict())
    assert result.history[-1].val_accuracy > 0.5  # chance is 0.10
    assert result.history[-1].train_loss < result.history[0].train_loss
