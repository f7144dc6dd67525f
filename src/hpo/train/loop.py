from __future__ import annotations

import bisect
import itertools
import math
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from typing import Literal

import numpy as np
import torch
from torch import nn

from hpo.config.trial import ScheduleConfig, TrialConfig
from hpo.data.augment import BatchAugment
from hpo.data.images import ImageData
from hpo.data.splits import nested_subsets
from hpo.data.streaming import FileImages, concat_images, iterate_batches
from hpo.models import create_model
from hpo.models.zoo import backbone_parts
from hpo.names import EPOCH_METRICS
from hpo.train.ops import accuracy, channels_last_gradients, hits, loss_fn, pick_device, to_device, to_float
from hpo.train.plan import ExecutionPlan, Preferences, plan_training

__all__ = [
    "EpochResult",
    "TrainData",
    "TrainResult",
    "TrainStep",
    "accuracy",
    "channels_last_gradients",
    "evaluate",
    "loss_fn",
    "make_optimizer",
    "make_schedule",
    "pick_device",
    "predict_logits",
    "to_float",
    "train",
]

EVAL_BATCH = 1024
ValUse = Literal["validate", "train", "drop"]  # what TrainData.from_image_data does with the validation split
STREAM_WORKERS = 2  # processes decoding streamed images ahead of the model


@dataclass
class TrainData:
    """Tensors for one training run; uint8 images (N, C, H, W); int64 class labels (N,), or for a
    multi-label task 0/1 labels (N, labels). ``x_val`` may be None."""

    x_train: torch.Tensor | FileImages  # streamed images stay files until each batch
    y_train: torch.Tensor
    x_val: torch.Tensor | FileImages | None
    y_val: torch.Tensor | None
    num_classes: int  # classes, or labels of a multi-label task
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @property
    def multilabel(self) -> bool:
        return self.y_train.ndim == 2

    @classmethod
    def from_arrays(
        cls,
        x_train: np.ndarray | FileImages,
        y_train: np.ndarray,
        x_val: np.ndarray | FileImages | None,
        y_val: np.ndarray | None,
        num_classes: int,
        mean: Sequence[float],
        std: Sequence[float],
    ) -> TrainData:
        # Arrays from Ray's object store are read-only views of shared memory; torch.as_tensor keeps them
        # shared (no copy per trial) and we never write to them.
        def t(a):
            if a is None or isinstance(a, FileImages):  # streamed images stay files until each batch
                return a
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
                return torch.as_tensor(a)

        return cls(t(x_train), t(y_train), t(x_val), t(y_val), num_classes, tuple(mean), tuple(std))

    @classmethod
    def from_image_data(cls, data: ImageData, *, val: ValUse = "validate") -> TrainData:
        """The study's splits as one run trains on them: ``validate`` on the validation split (a trial, a
        re-check run), ``train`` on train+val without validation (the final retrain on train+val), or
        ``drop`` it (the final retrain on the training split alone)."""
        x_train: np.ndarray | FileImages = data.x_train
        y_train = data.y_train
        if val == "train":
            x_train = concat_images([data.x_train, data.x_val])
            y_train = np.concatenate([data.y_train, data.y_val])
        x_val, y_val = (data.x_val, data.y_val) if val == "validate" else (None, None)
        return cls.from_arrays(x_train, y_train, x_val, y_val, data.num_classes, data.mean, data.std)


@dataclass
class EpochResult:
    epoch: int
    train_loss: float
    train_accuracy: float
    val_loss: float | None
    val_accuracy: float | None
    lr: float
    seconds: float
    images_per_second: float
    early_stop: bool = False  # this is the last epoch: early stopping ends the run here
    data_fraction: float = 1.0  # the share of the training images this epoch trained on (data fidelity)
    train_images: int | None = None  # how many images it trained on

    def metrics(self) -> dict[str, float]:
        """The epoch's metrics by their names (``hpo.names.Metric``); validation ones only where measured."""
        values = asdict(self)
        return {m.value: values[m.value] for m in EPOCH_METRICS if values[m.value] is not None}


@dataclass
class TrainResult:
    model: nn.Module  # a Classifier, unless ``train`` was handed a model
    plan: ExecutionPlan
    history: list[EpochResult] = field(default_factory=list)
    stopped_early: bool = False


Report = Callable[[EpochResult, nn.Module], None]


def train(
    config: TrialConfig,
    data: TrainData,
    *,
    epochs: int,
    seed: int = 0,
    plan: ExecutionPlan | None = None,
    device: str = "auto",
    threads: int | None = None,
    prefs: Preferences | None = None,
    report: Report | None = None,
    model: nn.Module | None = None,
    data_fractions: Sequence[float] | None = None,
) -> TrainResult:
    """Train ``config`` for up to ``epochs`` epochs; after each, evaluate on the validation data (if any)
    and call ``report(result, model)``. Stops early when ``config.early_stopping.patience`` epochs pass
    without the validation accuracy improving by ``min_delta``.

    ``plan`` says how (precision, layout, compile, threads, device: ``hpo.train.plan``); without one it
    is chosen here by measurement on ``device`` with ``threads`` (default: torch's) as ``prefs`` allow.
    ``model`` replaces the network ``config.model`` describes (it must take float images in [0, 1]);
    benchmarks use it to train one architecture with two different loops. A compiled plan runs training
    steps through ``torch.compile``; evaluation and the returned model stay eager.

    ``data_fractions`` (data fidelity, ``hpo.engine.fidelity``): epoch ``e`` trains on a stratified
    ``data_fractions[e - 1]`` of the training images (all of them past the list's end), the smaller
    subsets inside the larger, drawn with ``seed``; the learning-rate schedule spans the steps these
    epochs really take. Validation always uses the whole validation split."""
    if plan is None:
        plan = plan_training(
            config,
            data,
            device=device,
            threads=threads or torch.get_num_threads(),
            prefs=prefs or Preferences(),
            epochs=epochs,
            model=model,
        )
    plan.apply()
    dev = plan.torch_device
    torch.manual_seed(seed)
    gen = torch.Generator(device=dev).manual_seed(seed)
    if model is None:
        model = create_model(config.model, data.x_train.shape[1], data.num_classes, data.mean, data.std)
    # Master weights and the loss stay fp32 whatever the plan's precision.
    model = to_device(model, dev, plan.memory_format)
    steps_per_epoch = math.ceil(len(data.y_train) / config.batch_size)
    data_fractions = list(data_fractions or [])
    subsets = epoch_subsets(data.y_train, data_fractions, epochs, seed)
    fractions = [1.0 if s is None else data_fractions[e] for e, s in enumerate(subsets)]
    sizes = [len(data.y_train) if s is None else len(s) for s in subsets]
    step = TrainStep(
        config,
        model,
        plan,
        channels=data.x_train.shape[1],
        num_classes=data.num_classes,
        multilabel=data.multilabel,
        epochs=epochs,
        steps_per_epoch=steps_per_epoch,
        epoch_steps=[math.ceil(n / config.batch_size) for n in sizes] if data_fractions else None,
        generator=gen,
    )
    on_device = {id(s): torch.as_tensor(s, device=dev) for s in subsets if s is not None}  # each subset once
    x_train = data.x_train if isinstance(data.x_train, FileImages) else data.x_train.to(dev)
    y_train = data.y_train.to(dev)
    # The validation images join the training images on the device, once per trial (they are a fraction
    # of them); streamed ones stay files, decoded per chunk.
    x_val = data.x_val if isinstance(data.x_val, FileImages | None) else data.x_val.to(dev)
    y_val = None if data.y_val is None else data.y_val.to(dev)
    freezer = Freezer(model, config.transfer)

    result = TrainResult(model=model, plan=plan)
    best, since_best = -math.inf, 0
    with channels_last_gradients(model) if plan.channels_last else nullcontext():
        for epoch in range(1, epochs + 1):
            start = time.perf_counter()
            model.train()
            freezer.epoch_begins(epoch)
            subset = subsets[epoch - 1]
            if subset is None:
                order = torch.randperm(len(y_train), generator=gen, device=dev)
            else:  # a data-fidelity epoch: the same shuffle, over the subset's indices
                chosen = on_device[id(subset)]
                order = chosen[torch.randperm(len(chosen), generator=gen, device=dev)]
            # batch norm cannot train on a single sample: a last batch of one is left out
            batches = [b for b in torch.split(order, config.batch_size) if len(b) >= 2]
            images: Iterator[torch.Tensor]  # uint8, one batch at a time, on the device
            if isinstance(x_train, FileImages):  # decoded by worker processes ahead of the model
                host = order.cpu().numpy()  # read once an epoch, not once a batch
                spans = [host[i * config.batch_size :][: len(b)] for i, b in enumerate(batches)]
                images = (b.to(dev, non_blocking=True) for b in iterate_batches(x_train, spans, STREAM_WORKERS))
            else:
                images = (x_train[b] for b in batches)
            for batch, uint8 in zip(batches, images, strict=True):
                step(uint8, y_train[batch])
            loss_sum, hit_sum = step.epoch_totals()  # the epoch's one wait for the device
            if not math.isfinite(loss_sum):
                raise FloatingPointError(f"training loss became {loss_sum} in epoch {epoch}")

            n = sum(len(b) for b in batches)  # the images it trained on (a last batch of one is left out)
            val_loss = val_acc = None
            if x_val is not None and y_val is not None:
                val_loss, val_acc = evaluate(model, x_val, y_val, plan=plan)
            seconds = time.perf_counter() - start

            patience = config.early_stopping.patience
            if patience and val_acc is not None:
                if val_acc > best + config.early_stopping.min_delta:
                    best, since_best = val_acc, 0
                else:
                    since_best += 1
            stop = patience is not None and since_best >= patience
            epoch_result = EpochResult(
                epoch=epoch,
                train_loss=loss_sum / n,
                train_accuracy=hit_sum / n,
                val_loss=val_loss,
                val_accuracy=val_acc,
                lr=step.optimizer.param_groups[0]["lr"],
                seconds=seconds,
                images_per_second=n / seconds,
                early_stop=stop,
                data_fraction=fractions[epoch - 1],
                train_images=n,
            )
            result.history.append(epoch_result)
            if report is not None:
                report(epoch_result, model)
            if stop:
                result.stopped_early = True
                break
    return result


def epoch_subsets(labels: torch.Tensor, fractions: Sequence[float], epochs: int, seed: int) -> list[np.ndarray | None]:
    """For each epoch, the training images it trains on under ``fractions`` (see ``train``): sorted indices,
    or None for all of them. One nested family of stratified subsets per run (``nested_subsets``), so an
    epoch on a third of the images sees the ninth it trained on before, and the same ``seed`` gives the
    same subsets in every trial."""
    per_epoch = [fractions[e] if e < len(fractions) else 1.0 for e in range(epochs)]
    partial = sorted({f for f in per_epoch if f < 1.0})
    if not partial:
        return [None] * epochs
    n = len(labels)
    sizes = [min(n, max(2, round(f * n))) for f in partial]  # batch norm needs two images
    subsets = dict(zip(partial, nested_subsets(labels.cpu().numpy(), sizes, seed), strict=True))
    return [subsets.get(f) for f in per_epoch]


class TrainStep:
    """One optimisation step on a batch of uint8 images and their labels, on the plan's device: augment,
    forward, loss, backward, optimizer and schedule. Everything a step needs is decided here, once (which
    augmentations run, soft or hard targets, the scaler), and nothing in a step waits for the device: the
    loss and the hits add up there, read once per epoch (``epoch_totals``), so a GPU queues step after
    step (``tests/unit/test_host_syncs.py`` counts the operators that would wait)."""

    def __init__(
        self,
        config: TrialConfig,
        model: nn.Module,
        plan: ExecutionPlan,
        *,
        channels: int,
        num_classes: int,
        multilabel: bool,
        epochs: int,
        steps_per_epoch: int,
        epoch_steps: Sequence[int] | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        dev = plan.torch_device
        self.config, self.plan, self.multilabel = config, plan, multilabel
        self.optimizer = make_optimizer(config, model)
        self.scheduler = make_schedule(
            config.schedule, self.optimizer, config.optimizer.lr, epochs, steps_per_epoch, epoch_steps
        )
        self.scaler = plan.grad_scaler()
        self.augment = BatchAugment(config.augment, generator, channels=channels)
        self.forward = torch.compile(model) if plan.compile else model
        # CutMix/MixUp mix targets as class probabilities: a row of the identity per label, looked up on the
        # device (F.one_hot on a CPU reads the labels' range back first, which a GPU would wait for).
        soft = not multilabel and self.augment.mixes_labels
        self.classes = torch.eye(num_classes, device=dev) if soft else None
        self.loss_sum = torch.zeros((), device=dev)
        self.hit_sum = torch.zeros((), device=dev)  # per-label hits / labels for a multi-label task

    def __call__(self, uint8: torch.Tensor, y: torch.Tensor) -> None:
        x = to_float(uint8)
        targets = y.float() if self.multilabel else y
        if self.classes is not None:
            targets = self.classes[y]
        if self.augment.active:
            x, targets = self.augment(x, targets) if self.augment.mixes_labels else (self.augment(x), targets)
        with self.plan.autocast():
            logits = self.forward(x.contiguous(memory_format=self.plan.memory_format))
        loss = loss_fn(logits.float(), targets, multilabel=self.multilabel, label_smoothing=self.config.label_smoothing)
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is None:
            loss.backward()
            self.optimizer.step()
        else:  # fp16: scaled so that small gradients survive; steps with inf/NaN gradients are skipped
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        self.scheduler.step()
        self.loss_sum += loss.detach() * len(y)
        self.hit_sum += hits(logits.detach(), y)

    def epoch_totals(self) -> tuple[float, float]:
        """(summed loss, hits) since the last call, read from the device at once; both start again at 0."""
        loss_sum, hit_sum = torch.stack([self.loss_sum, self.hit_sum]).tolist()
        self.loss_sum.zero_()
        self.hit_sum.zero_()
        return loss_sum, hit_sum


class Freezer:
    """``transfer``: keep the backbone frozen (no gradients, batch-norm statistics fixed) at first, then
    unfreeze its last ``unfreeze_last`` stages from epoch ``unfreeze_after + 1`` on."""

    def __init__(self, model: nn.Module, transfer) -> None:
        self.transfer = transfer
        self.frozen: list[nn.Module] = []
        if transfer.freeze_backbone:
            self.stages, _ = backbone_parts(model)
            self._set(self.stages, frozen=True)

    def _set(self, stages: list[nn.Module], *, frozen: bool) -> None:
        for stage in stages:
            for p in stage.parameters():
                p.requires_grad_(not frozen)
        self.frozen = [s for s in self.frozen if s not in stages] + (list(stages) if frozen else [])

    def epoch_begins(self, epoch: int) -> None:
        t = self.transfer
        if t.freeze_backbone and t.unfreeze_last and epoch == t.unfreeze_after + 1:
            self._set(self.stages[-t.unfreeze_last :], frozen=False)
        for stage in self.frozen:
            stage.eval()  # frozen batch norm keeps its (pretrained) statistics


def _logits_in_chunks(model: nn.Module, x: torch.Tensor | FileImages, plan: ExecutionPlan) -> Iterator[torch.Tensor]:
    """The model's logits (float32, on the plan's device) for uint8 images ``x``, chunk by chunk, in eval
    mode with the plan's precision and layout. Images already on the device are sliced there."""
    dev = plan.torch_device
    model.eval()
    spans = [np.arange(i, min(i + EVAL_BATCH, len(x))) for i in range(0, len(x), EVAL_BATCH)]
    chunks = (
        iterate_batches(x, spans, STREAM_WORKERS)
        if isinstance(x, FileImages)
        else (x[i : i + EVAL_BATCH] for i in range(0, len(x), EVAL_BATCH))
    )
    for chunk in chunks:
        xb = to_float(chunk.to(dev)).contiguous(memory_format=plan.memory_format)
        with plan.autocast():
            logits = model(xb).float()
        yield logits  # outside autocast: what the caller does with them runs at its own precision


@torch.no_grad()
def predict_logits(
    model: nn.Module, x: torch.Tensor | FileImages, *, plan: ExecutionPlan | None = None
) -> torch.Tensor:
    """Logits (float32, on the CPU) for uint8 images ``x``, in batches, on the plan's device with its
    precision and layout (default: fp32 on the CPU); brought to the CPU once, at the end."""
    return torch.cat(list(_logits_in_chunks(model, x, plan or ExecutionPlan()))).cpu()


@torch.no_grad()
def evaluate(
    model: nn.Module, x: torch.Tensor | FileImages, y: torch.Tensor, *, plan: ExecutionPlan | None = None
) -> tuple[float, float]:
    """(mean loss, accuracy) of ``model`` on uint8 images ``x`` with labels ``y``: cross-entropy and
    accuracy; for multi-label ``y`` (N, labels), binary cross-entropy and the mean per-label accuracy
    (1 - Hamming loss). Summed on the device chunk by chunk and read once, at the end."""
    plan = plan or ExecutionPlan()
    y = y.to(plan.torch_device)
    multilabel = y.ndim == 2
    loss_sum = torch.zeros((), device=plan.torch_device)
    hit_sum = torch.zeros((), device=plan.torch_device)
    start = 0
    for logits in _logits_in_chunks(model, x, plan):
        yb = y[start : start + len(logits)]
        start += len(logits)
        loss_sum += loss_fn(logits, yb, multilabel=multilabel, reduction="sum")
        hit_sum += hits(logits, yb)
    loss_total, hit_total = torch.stack([loss_sum, hit_sum]).tolist()
    elements = y.numel() if multilabel else len(y)  # binary cross-entropy averages over every label
    return loss_total / elements, hit_total / len(y)


def make_optimizer(config: TrialConfig, model: nn.Module) -> torch.optim.Optimizer:
    """The trial's optimizer. Parameter groups: weight decay only on weights (not on biases and norm
    parameters, where it only hurts), and the backbone at ``transfer.backbone_lr_mult`` times the head's
    learning rate (each group's ``lr``; the schedule scales them together)."""
    o = config.optimizer
    mult = config.transfer.backbone_lr_mult
    backbone: set[int] = set()
    if mult != 1.0:
        stages, _ = backbone_parts(model)
        backbone = {id(p) for stage in stages for p in stage.parameters()}
    groups = []
    for part_lr, in_part in ((o.lr, lambda p: id(p) not in backbone), (o.lr * mult, lambda p: id(p) in backbone)):
        params = [p for p in model.parameters() if in_part(p)]
        for decay in (True, False):
            chosen = [p for p in params if (p.ndim > 1) == decay]
            if chosen:
                groups.append({"params": chosen, "weight_decay": o.weight_decay if decay else 0.0, "lr": part_lr})
    # On a GPU, the fused kernels: one launch for all parameters, the step counts kept on the device, and
    # under fp16 the loss scaler hands them its inf check instead of reading it on the host every step.
    params = list(model.parameters())
    fused = True if params and all(p.is_cuda for p in params) else None
    if o.name == "sgd":
        nesterov = o.nesterov and o.momentum > 0
        return torch.optim.SGD(groups, lr=o.lr, momentum=o.momentum, nesterov=nesterov, fused=fused)
    if o.name == "adam":
        return torch.optim.Adam(groups, lr=o.lr, fused=fused)
    return torch.optim.AdamW(groups, lr=o.lr, fused=fused)


def make_schedule(
    s: ScheduleConfig,
    optimizer: torch.optim.Optimizer,
    lr: float,
    epochs: int,
    steps_per_epoch: int,
    epoch_steps: Sequence[int] | None = None,
) -> torch.optim.lr_scheduler.LRScheduler:
    """A per-step schedule over the whole run, with a linear warm-up over ``warmup_fraction`` of it.
    ``epoch_steps``: the steps of each epoch where they differ (data fidelity); else ``steps_per_epoch``
    each. The schedule spans their sum, so OneCycle and cosine end where the run does."""
    ends = list(itertools.accumulate(epoch_steps if epoch_steps is not None else [steps_per_epoch] * epochs))
    total = max(2, ends[-1] if ends else 0)
    if s.name == "onecycle":
        # Each phase must span more than one step, or OneCycleLR divides by zero (runs of a few steps).
        pct = min(max(s.warmup_fraction, 0.02, 1.5 / total), 1 - 0.5 / total)
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer,
            max_lr=[g["lr"] for g in optimizer.param_groups],
            total_steps=total,
            pct_start=pct,
            cycle_momentum=isinstance(optimizer, torch.optim.SGD),
        )
    warmup = int(s.warmup_fraction * total)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if s.name == "cosine":
            return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))
        if s.name == "step":
            return s.gamma ** (bisect.bisect_right(ends, step) // s.step_every)  # epochs done // step_every
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
