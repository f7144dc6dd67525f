"""``hpo plan``: what a study will cost before it runs. Every model family of the space is built at its
corners on PyTorch's meta device (shapes only: no memory, no compute) to count parameters, FLOPs per
image and the activations a training step keeps; a configuration the input is too small for, or whose
training memory exceeds the cap, is refused with the file and line that allow it. Seconds per epoch come
from each family's execution plan (measured on this machine, or cached), and the budget is checked to fit
one full-budget trial and the final stage."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field, replace
from typing import Any

from hpo.config.trial import TrialConfig
from hpo.errors import StudyError
from hpo.study import Study

OPTIMIZER_STATES = {"sgd": 1, "adam": 2, "adamw": 2}  # fp32 tensors per parameter beyond weight and gradient


@dataclass(kw_only=True)
class Cost:
    """One configuration's size: per image unless said otherwise."""

    params: int
    flops: float  # forward pass; a training step costs ~3x
    activation_bytes: int  # outputs of the network's layers, which a training step keeps for backward
    batch_size: int
    optimizer_states: int

    @property
    def training_bytes(self) -> int:
        """Weights, gradients, optimizer state and a batch of activations (fp32): an estimate, within tens
        of percent of what the allocator peaks at."""
        return 4 * self.params * (2 + self.optimizer_states) + self.activation_bytes * self.batch_size


def measure_cost(config: TrialConfig, shape: tuple[int, int, int], classes: int) -> Cost:
    """Build ``config``'s network on the meta device and run one image through it. Raises what PyTorch
    raises for an input too small for the network."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from hpo.models import create_model

    with torch.device("meta"):
        model = create_model(config.model, shape[0], classes, (0.5,) * shape[0], (0.25,) * shape[0])
    activations = 0

    def count(_module, _inputs, output) -> None:
        nonlocal activations
        for t in output if isinstance(output, (tuple, list)) else (output,):
            if isinstance(t, torch.Tensor):
                activations += t.numel() * 4

    leaves = [m for m in model.modules() if not any(True for _ in m.children())]
    handles = [m.register_forward_hook(count) for m in leaves]
    try:  # two images: batch norm cannot train on one; the counts are halved
        with FlopCounterMode(display=False) as flops:
            model.train()(torch.empty(2, *shape, device="meta"))
    finally:
        for handle in handles:
            handle.remove()
    o = config.optimizer
    states = OPTIMIZER_STATES.get(o.name, 2) if o.name != "sgd" or o.momentum > 0 else 0
    return Cost(
        params=sum(p.numel() for p in model.parameters()),
        flops=flops.get_total_flops() / 2,
        activation_bytes=activations // 2,
        batch_size=config.batch_size,
        optimizer_states=states,
    )


@dataclass(kw_only=True)
class FamilyCost:
    family: str
    smallest: Cost
    largest: Cost  # by training memory
    configurations: int  # corner configurations built
    plan: Any = None  # hpo.train.plan.ExecutionPlan of its middle configuration
    seconds_per_epoch: float = math.nan


@dataclass(kw_only=True)
class StudyPlan:
    families: list[FamilyCost]
    train_images: int
    val_images: int
    cap_bytes: int | None
    cap_what: str
    notes: list[str] = field(default_factory=list)


def memory_cap(study: Study) -> tuple[int | None, str]:
    """What one trial may use: ``resources.memory_per_trial``, else the GPU's share, else the machine's RAM."""
    r = study.config.resources
    if r.memory_per_trial:
        return int(r.memory_per_trial), "resources.memory_per_trial"
    if r.gpus_per_trial > 0:
        from hpo.train.plan import describe_machine

        gpus = describe_machine().gpus
        if gpus:
            return int(gpus[0].memory_gib * 2**30 * min(1.0, r.gpus_per_trial)), f"{gpus[0].name}'s memory share"
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "this machine's memory"
    except (ValueError, OSError, AttributeError):
        return None, ""


def size_families(
    study: Study, shape: tuple[int, int, int], classes: int
) -> tuple[dict[str, list[Cost]], list[StudyError]]:
    """Every corner of every family, sized; and the errors: a network the input is too small for, or whose
    training memory exceeds the cap, located where the space allows it."""
    doc = study.space_doc
    cap, cap_what = memory_cap(study)
    costs: dict[str, list[Cost]] = {}
    errors: dict[tuple, StudyError] = {}
    networks: dict[str, Cost | Exception] = {}  # most corners vary the optimizer or augmentation, not the net
    for values, where in study.space.corner_points(study.space_base):
        config = TrialConfig.model_validate(values)
        network = config.model.model_dump_json()
        if network not in networks:
            try:
                networks[network] = measure_cost(config, shape, classes)
            except (RuntimeError, ValueError) as exc:
                networks[network] = exc
        try:
            known = networks[network]
            if isinstance(known, Exception):
                raise known
            o = config.optimizer
            cost = replace(
                known,
                batch_size=config.batch_size,
                optimizer_states=OPTIMIZER_STATES.get(o.name, 2) if o.name != "sgd" or o.momentum > 0 else 0,
            )
        except (RuntimeError, ValueError) as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            message = (
                f"the {'x'.join(map(str, shape))} input is too small for this {config.model.name} network ({reason})"
            )
            error = doc.error(where, message) if doc is not None else StudyError(message)
            errors.setdefault((config.model.name, reason), error)  # once per cause: where it first shows
            continue
        costs.setdefault(config.model.name, []).append(cost)
        if cap is not None and cost.training_bytes > cap:
            message = (
                f"a {config.model.name} here needs ~{_bytes(cost.training_bytes)} to train at batch "
                f"{cost.batch_size} ({cost.params / 1e6:.1f} M parameters, "
                f"{_bytes(cost.activation_bytes)} of activations per image): over {cap_what} "
                f"({_bytes(cap)})"
            )
            error = doc.error(where, message) if doc is not None else StudyError(message)
            errors.setdefault((error.file, error.line), error)
    return costs, list(errors.values())


def plan_study(study: Study, data, *, measure: bool = True) -> StudyPlan:
    """Size every family (raises StudyErrors for what cannot work) and time each family's middle
    configuration with its execution plan (``measure=False``: sizes only)."""
    from hpo.errors import StudyErrors

    height, width, channels = (int(d) for d in data.x_train.shape[1:])
    shape = (height, width, channels)
    costs, errors = size_families(study, shape, data.num_classes)
    if errors:
        raise StudyErrors(errors)
    cap, cap_what = memory_cap(study)
    families = [
        FamilyCost(
            family=name,
            smallest=min(group, key=lambda c: c.training_bytes),
            largest=max(group, key=lambda c: c.training_bytes),
            configurations=len(group),
        )
        for name, group in costs.items()
    ]
    if measure:
        for family in families:
            config = study.space.representatives().get(family.family)
            if config is not None:
                family.plan = quick_plan(study, config, data)
                rate = family.plan.images_per_second
                family.seconds_per_epoch = len(data.y_train) / rate + len(data.y_val) / (3 * rate)
    return StudyPlan(
        families=families,
        train_images=len(data.y_train),
        val_images=len(data.y_val),
        cap_bytes=cap,
        cap_what=cap_what,
        notes=budget_notes(study, families, data),
    )


ESTIMATE_IMAGES = 16  # a dry run times one step on this many images when no measured plan is cached


def quick_plan(study: Study, config: TrialConfig, data):
    """The family's execution plan as its trials would take it: the one measured on this machine if the
    cache holds it (``hpo doctor`` or an earlier run measured it), else the hardware's default plan timed
    for one step on a few images (source ``estimate``: a dry run stays seconds, where measuring every
    candidate at the full batch takes minutes for a DenseNet on a CPU)."""
    import torch

    from hpo.models import create_model
    from hpo.train.loop import loss_fn, pick_device, to_float
    from hpo.train.plan import PlanCache, Preferences, default_plan, describe_machine, measure, plan_key

    c = study.config
    device = pick_device("auto")
    threads = max(1, math.floor(c.resources.cpus_per_trial))
    prefs = Preferences.from_resources(c.resources)
    machine = describe_machine()
    batch = min(config.batch_size, len(data.y_train))
    shape = tuple(int(d) for d in data.x_train.shape[1:])
    cached = PlanCache().get(plan_key(machine, device, config.model.name, shape, batch, threads, prefs))
    if cached is not None and cached.images_per_second:
        return cached
    plan = default_plan(machine, device, prefs, threads)
    n = min(ESTIMATE_IMAGES, len(data.y_train))
    x = to_float(torch.as_tensor(data.x_train[:n]).to(device))
    y = torch.as_tensor(data.y_train[:n]).to(device)
    multilabel = y.ndim == 2

    def build():
        return create_model(config.model, shape[0], data.num_classes, data.mean, data.std)

    m = measure(build, x, y, plan, loss=lambda logits, t: loss_fn(logits, t, multilabel=multilabel), warmup=1, steps=1)
    return replace(plan, images_per_second=n / m.seconds_per_step, source="estimate")


def budget_notes(study: Study, families: list[FamilyCost], data) -> list[str]:
    """Whether the budget fits a full-budget trial of each family, and how long the final stage takes."""
    c = study.config
    epochs = c.budget.max_epochs
    notes = []
    for f in families:
        if math.isnan(f.seconds_per_epoch):
            continue
        trial = epochs * f.seconds_per_epoch
        if c.budget.time is None:
            fits = "no time budget"
        elif trial <= c.budget.time:
            fits = f"fits the {c.budget.time / 60:.0f} min search"
        else:
            fits = f"does NOT fit the {c.budget.time / 60:.0f} min search: ASHA will stop it early, or lower max_epochs"
        retrain = epochs * f.seconds_per_epoch * (len(data.y_train) + len(data.y_val)) / len(data.y_train)
        notes.append(
            f"{f.family}: a full {epochs}-epoch trial ~{trial / 60:.1f} min ({fits}); "
            f"its final retrain on train+val ~{retrain / 60:.1f} min at a trial's threads "
            f"(less with the machine's {os.cpu_count()} cores)"
        )
    return notes


def bytes_span(low: float, high: float) -> str:
    """``53-265 MiB``: both ends in the larger one's unit."""
    text = _bytes(high)
    number, unit = text.split(" ")
    scale = 1024 ** ["B", "KiB", "MiB", "GiB", "TiB"].index(unit)
    low_text = f"{low / scale:.0f}" if unit == "B" else f"{low / scale:.1f}"
    return text if low_text == number else f"{low_text}-{number} {unit}"


def _bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"
