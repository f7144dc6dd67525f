"""A training step never makes the host wait for the device.

On a GPU the host queues kernels and runs ahead; an operator whose result the host must read (a value, or
a shape that depends on the values: ``nonzero``, boolean indexing, ``.item()``, ``if tensor``) stops it
until the device has finished everything queued before. One such operator per step leaves the GPU idle
while Python prepares the next kernels. The CPU runs the same operators, so the counting happens here:
``HostSyncs`` sees every aten operator (a ``TorchDispatchMode``) and counts the ones torch tags as needing
the data (``dynamic_output_shape``, ``data_dependent_output``, the list ``torch.cuda.set_sync_debug_mode``
flags: ``nonzero``, ``unique``, ``masked_select``, ``_local_scalar_dense`` under ``.item()``, ``equal``,
``repeat_interleave`` without ``output_size``, ...), indexing by a boolean mask, and at the Python level
(a ``TorchFunctionMode``) the reads that are no operator on a CPU: ``.tolist()``, ``.cpu()``,
``.numpy()``. What a CPU cannot show: a copy from the host to the device (the same device here), so
constants are made on the device, or copied there once (``hpo.data.augment._colour_constants``).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from hpo.config.trial import AugmentConfig, TrialConfig
from hpo.data.augment import AUGMENTATIONS
from hpo.models import create_model
from hpo.space import load_space, parse_space
from hpo.train import ExecutionPlan, TrainData, train
from hpo.train.loop import TrainStep

aten = torch.ops.aten
ROOT = Path(__file__).resolve().parents[2]
NEEDS_THE_DATA = (torch.Tag.dynamic_output_shape, torch.Tag.data_dependent_output)
MASK_INDEXING = {aten.index.Tensor, aten.index_put.default, aten.index_put_.default, aten._index_put_impl_.default}
HOST_READS = {"item", "tolist", "numpy", "cpu", "__bool__", "__int__", "__float__", "__index__"}


@pytest.fixture(autouse=True)
def accelerator_formulation(monkeypatch):
    """Count what the GPU path does: on a CPU the augmentation may take a cheaper data-dependent path."""
    monkeypatch.setattr("hpo.data.augment.STATIC_SHAPES_ON_CPU", True)


class _Operators(TorchDispatchMode):
    def __init__(self, counts: Counter, exempt: set[int]) -> None:
        super().__init__()
        self.counts, self.exempt = counts, exempt

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self._waits(func, args, kwargs):
            self.counts[str(func)] += 1
        return func(*args, **kwargs)

    def _waits(self, func, args, kwargs) -> bool:
        if any(id(a) in self.exempt for a in args if isinstance(a, torch.Tensor)):
            return False
        if func in MASK_INDEXING:  # by integer indices, a gather; by a mask, nonzero first
            return any(i is not None and i.dtype in (torch.bool, torch.uint8) for i in args[1])
        if func is aten.repeat_interleave.Tensor:
            return kwargs.get("output_size") is None
        return any(tag in func.tags for tag in NEEDS_THE_DATA)


class _HostReads(TorchFunctionMode):
    def __init__(self, counts: Counter, exempt: set[int]) -> None:
        super().__init__()
        self.counts, self.exempt = counts, exempt

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name in HOST_READS and not (args and id(args[0]) in self.exempt):
            self.counts[f"Tensor.{name}"] += 1
        return func(*args, **kwargs)


class HostSyncs:
    """Counts, by name, what would make the host wait for a GPU while the block runs. ``exempt``: tensors
    that stay on the host on a GPU too (reading them waits for nothing)."""

    def __init__(self, exempt: tuple[torch.Tensor, ...] = ()) -> None:
        self.counts: Counter[str] = Counter()
        ids = {id(t) for t in exempt}
        self._modes = (_HostReads(self.counts, ids), _Operators(self.counts, ids))

    def __enter__(self) -> HostSyncs:
        for mode in self._modes:
            mode.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        for mode in reversed(self._modes):
            mode.__exit__(*exc)


def test_the_counter_counts_what_waits_and_only_that():
    x, mask = torch.rand(16, 1, 8, 8), torch.rand(16) < 0.5
    with HostSyncs() as waits:
        mask.nonzero()  # how the augmentations picked their samples before
        _ = x[mask]
        mask.any().item()
        bool(mask.any())
        torch.unique(mask.long())
        mask.long().tolist()
        _ = x.cpu()
    assert set(waits.counts) >= {
        "aten.nonzero.default",
        "aten.index.Tensor",
        "aten._local_scalar_dense.default",
        "Tensor.tolist",
        "Tensor.cpu",
    }
    assert any("unique" in name for name in waits.counts)
    with HostSyncs() as none:
        idx = torch.randperm(16)
        torch.where(mask.view(-1, 1, 1, 1), x.flip(-1), x)[idx].masked_fill(mask.view(-1, 1, 1, 1), 0.0)
        x.to(torch.float64)
    assert none.counts == {}


EVERY_OP = dict.fromkeys(AugmentConfig.probabilities(), 0.5)


def _corners() -> dict[str, dict]:
    """The Fashion-MNIST study's space, every parameter at its last value (the largest numbers: the most
    augmentation), one point per optimizer branch. The CNN branch only: the step around the model is the
    same for ResNet-18, which takes seconds more here."""
    doc = load_space(ROOT / "search_spaces" / "fashion_mnist.yaml")
    last: dict[str, dict] = {}
    for point, _ in parse_space(doc).corner_points():  # each branch's all-last point comes last
        if point["model"]["name"] == "cnn":
            last[f"cnn-{point['optimizer']['name']}"] = point
    return last


CORNERS = _corners()


def _step(config: TrialConfig, *, multilabel: bool = False) -> tuple[TrainStep, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    classes = 10
    model = create_model(config.model, 1, classes, (0.3,), (0.3,))
    step = TrainStep(
        config,
        model,
        ExecutionPlan(),
        channels=1,
        num_classes=classes,
        multilabel=multilabel,
        epochs=2,
        steps_per_epoch=4,
        generator=g,
    )
    x = torch.randint(0, 256, (32, 1, 28, 28), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 2, (32, classes), generator=g) if multilabel else torch.randint(0, classes, (32,), generator=g)
    return step, x, y


def _host_side(step: TrainStep) -> tuple[torch.Tensor, ...]:
    """The optimizer's step counts: on a GPU the fused optimizers keep them on the device and read nothing;
    the CPU's unfused ones read them on the host, where no device is waited for."""
    return tuple(s["step"] for s in step.optimizer.state.values() if "step" in s)


@pytest.mark.parametrize("corner", sorted(CORNERS))
def test_a_training_step_at_the_most_augmented_corner_waits_for_nothing(corner):
    point = CORNERS[corner]
    config = TrialConfig.model_validate({**point, "augment": {**point["augment"], **EVERY_OP}})
    assert all(getattr(config.augment, name) > 0 for name in AugmentConfig.probabilities())
    step, x, y = _step(config)
    assert len(step.augment.ops) == len(AUGMENTATIONS)  # every registered augmentation runs
    step(x, y)  # set-up: the optimizer's state, lazily built modules
    with HostSyncs(exempt=_host_side(step)) as waits:
        step(x, y)
    assert waits.counts == {}


def test_a_multilabel_step_waits_for_nothing():
    config = TrialConfig.model_validate({"model": {"depth": 2, "width": 8}, "augment": EVERY_OP})
    step, x, y = _step(config, multilabel=True)
    step(x, y)
    with HostSyncs(exempt=_host_side(step)) as waits:
        step(x, y)
    assert waits.counts == {}


def _waits_in_training(train_images: int, val_images: int) -> Counter[str]:
    g = torch.Generator().manual_seed(0)
    data = TrainData(
        x_train=torch.randint(0, 256, (train_images, 1, 8, 8), dtype=torch.uint8, generator=g),
        y_train=torch.arange(train_images) % 3,
        x_val=torch.randint(0, 256, (val_images, 1, 8, 8), dtype=torch.uint8, generator=g),
        y_val=torch.arange(val_images) % 3,
        num_classes=3,
        mean=(0.5,),
        std=(0.25,),
    )
    config = TrialConfig.model_validate(
        {"model": {"depth": 1, "width": 4}, "batch_size": 16, "augment": EVERY_OP, "early_stopping": {"patience": 5}}
    )
    with HostSyncs() as waits:
        train(config, data, epochs=2, plan=ExecutionPlan())
    return waits.counts


def test_what_training_waits_for_does_not_grow_with_steps_or_validation_chunks():
    """The whole loop around the step too: the host waits once or twice an epoch (the epoch's loss and
    accuracy, the validation figures), however many steps and validation chunks the epoch has."""
    few = _waits_in_training(train_images=32, val_images=8)  # 2 steps, 1 validation chunk per epoch
    many = _waits_in_training(train_images=160, val_images=2100)  # 10 steps, 3 chunks
    assert many == few
    assert sum(few.values()) <= 2 * 4  # per epoch: the training totals, the validation totals
