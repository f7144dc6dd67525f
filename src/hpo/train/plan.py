"""The execution plan: how a model trains fastest on the machine at hand, chosen by measurement.

The fast path depends on the hardware, not on the code. bf16 autocast is 2-3x faster than fp32 on a CPU
with native bf16 (AVX512-BF16, AMX) and ~10x *slower* on one without (AVX2-only: AMD Zen 2/3, most client
CPUs), where oneDNN emulates it. GPUs before sm80 (T4, V100) want fp16 with a loss scaler, sm80 and later
bf16, and TF32 for what stays fp32. channels_last pays for some networks and costs for others. So for a
(device, model family, input shape, batch size) we time a few training steps of every candidate the
hardware can run and take the fastest, with one guard: a reduced-precision candidate must end those steps
at the same loss as fp32 (it must not change what is learned). The decision is cached per machine, so
the trials of one family measure once.

    plan = plan_training(config, data, device="auto", threads=1, prefs=Preferences())
    train(config, data, epochs=15, plan=plan)
"""

from __future__ import annotations

import copy
import functools
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Mapping
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from hpo._locks import exclusive
from hpo.models import create_model
from hpo.names import Tag
from hpo.train.ops import channels_last_gradients, loss_fn, pick_device, to_device, to_float

Precision = Literal["fp32", "bf16", "fp16"]
_PRECISIONS: dict[str, Precision] = {"fp32": "fp32", "bf16": "bf16", "fp16": "fp16"}
AUTO = "auto"

WARMUP_STEPS = 2  # the first steps allocate and build oneDNN/cuDNN primitives; never timed
TIMED_STEPS = 4
# A reduced-precision candidate must end the timed steps within this of fp32's loss (absolute + relative),
# else it is refused whatever its speed.
LOSS_TOLERANCE = (0.05, 0.05)
# Measuring costs (WARMUP_STEPS + TIMED_STEPS) steps per candidate: it is done only for runs of at least
# this many times that (a smoke test's one-step retrain is not worth planning); shorter runs take the
# hardware's default plan, which is not cached, so the next long run still measures.
MEASURE_WORTH = 10
# torch.compile is measured (in ``auto``) only on CUDA and only for runs whose eager training would take
# longer than this: compiling costs tens of seconds per architecture. On CPUs it did not pay for hpo's
# networks on 2 cores (docs/BENCHMARKS.md); ``compile: true`` still forces it anywhere.
COMPILE_WORTH_SECONDS = 300.0

# What /proc/cpuinfo calls an instruction-set extension, and how hpo names it.
_ISA_FLAGS = {"avx2": "AVX2", "avx512f": "AVX-512", "avx512_bf16": "AVX512-BF16", "amx_bf16": "AMX"}


# ----------------------------------------------------------------------------------------------- machine


@dataclass(frozen=True)
class Gpu:
    name: str
    capability: tuple[int, int]
    memory_gib: float


@dataclass(frozen=True)
class Machine:
    """What decides the fast path: the CPU's instruction sets (as torch dispatches them) and the GPUs."""

    cpu_model: str
    isa: tuple[str, ...]  # of _ISA_FLAGS' names, as the CPU reports them
    cpu_capability: str  # torch's kernel dispatch level: DEFAULT, AVX2, AVX512, ... (ATEN_CPU_CAPABILITY)
    bf16_native: bool  # the CPU runs bf16 matmuls/convolutions natively, and torch dispatches to them
    cores: int
    gpus: tuple[Gpu, ...] = ()
    torch_version: str = torch.__version__

    def signature(self, device: torch.device) -> str:
        """The part of the machine a plan for ``device`` depends on."""
        if device.type == "cuda":
            gpu = self.gpus[device.index or 0] if self.gpus else Gpu("cuda", (0, 0), 0.0)
            return f"{gpu.name}|sm{gpu.capability[0]}{gpu.capability[1]}|torch {self.torch_version}"
        return f"{self.cpu_model}|{'+'.join(self.isa)}|{self.cpu_capability}|torch {self.torch_version}"


def _cpu_info() -> tuple[str, set[str]]:
    """The CPU's model name (with its family and model numbers, which tell e.g. AMD's Zen 3 from Zen 4
    where the name is just "AMD EPYC") and its instruction-set flags."""
    fields: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key in ("model name", "cpu family", "model", "flags") and key not in fields:
                fields[key] = value.strip()
            if key == "flags":
                break
    except OSError:
        pass
    model = fields.get("model name") or platform.processor() or platform.machine() or "cpu"
    if "cpu family" in fields and "model" in fields:
        model += f" (family {fields['cpu family']}, model {fields['model']})"
    return model, set(fields.get("flags", "").split())


@functools.lru_cache(maxsize=1)
def describe_machine() -> Machine:
    """This machine, as the plan sees it (read once per process)."""
    model, flags = _cpu_info()
    isa = tuple(name for flag, name in _ISA_FLAGS.items() if flag in flags)
    capability = torch.backends.cpu.get_cpu_capability()
    try:  # oneDNN's own answer honours ONEDNN_MAX_CPU_ISA; the flags say whether it is native, not emulated
        onednn_bf16 = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        onednn_bf16 = False
    bf16_native = onednn_bf16 and capability not in ("DEFAULT", "AVX2") and bool({"avx512_bf16", "amx_bf16"} & flags)
    gpus: list[Gpu] = []
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            gpus.append(Gpu(p.name, (p.major, p.minor), round(p.total_memory / 2**30, 1)))
    return Machine(model, isa, capability, bf16_native, os.cpu_count() or 1, tuple(gpus))


# --------------------------------------------------------------------------------------------------- plan


@dataclass(frozen=True)
class Preferences:
    """The study's ``resources.precision`` / ``channels_last`` / ``compile``: ``auto`` (measure) or fixed."""

    precision: str = AUTO  # auto | fp32 | bf16 | fp16
    channels_last: bool | str = AUTO  # auto | True | False
    compile: bool | str = AUTO  # auto | True | False

    @classmethod
    def from_resources(cls, resources: Any) -> Preferences:
        """From a study's ``resources`` (``hpo.config.study.Resources``)."""
        return cls(resources.precision, resources.channels_last, resources.compile)

    def fixed_precision(self) -> Precision | None:
        """The precision the preferences fix; None for ``auto``."""
        return None if self.precision == AUTO else _PRECISIONS[self.precision]

    def key(self) -> str:
        return f"precision={self.precision},channels_last={self.channels_last},compile={self.compile}"


@dataclass(frozen=True)
class ExecutionPlan:
    """How one model trains: device, precision, memory layout, compilation, threads."""

    device: str = "cpu"
    precision: Precision = "fp32"
    channels_last: bool = False
    compile: bool = False
    threads: int = 1
    tf32: bool = False  # CUDA sm80+: fp32 matmuls and convolutions on TF32 tensor cores
    images_per_second: float | None = None  # measured training throughput (no augmentation, no data loading)
    source: str = "default"  # measured | cache | override | default
    key: str = ""  # what it was decided for: machine, model family, input shape, batch, threads, preferences

    @property
    def torch_device(self) -> torch.device:
        return torch.device(self.device)

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format

    @property
    def layout(self) -> str:
        return "channels_last" if self.channels_last else "contiguous"

    def autocast(self):
        """The forward pass's autocast context (none for fp32)."""
        if self.precision == "fp32":
            return nullcontext()
        return torch.autocast(
            device_type=self.torch_device.type, dtype=torch.bfloat16 if self.precision == "bf16" else torch.float16
        )

    def grad_scaler(self) -> torch.amp.GradScaler | None:
        """fp16 never trains without a loss scaler (its gradients underflow); the others need none."""
        return torch.amp.GradScaler(self.torch_device.type) if self.precision == "fp16" else None

    def apply(self) -> None:
        """Set the process-wide parts: the thread count, and TF32 on CUDA."""
        if self.torch_device.type == "cpu":
            torch.set_num_threads(max(1, self.threads))
        if self.torch_device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = self.tf32
            torch.backends.cudnn.allow_tf32 = self.tf32

    def describe(self) -> str:
        extras = [self.layout, "compiled" if self.compile else "eager"]
        if self.tf32:
            extras.append("tf32")
        if self.torch_device.type == "cpu":
            extras.append(f"{self.threads} thread{'s' if self.threads != 1 else ''}")
        rate = f", {self.images_per_second:,.0f} img/s" if self.images_per_second else ""
        return f"{self.precision} on {self.device} ({', '.join(extras)}){rate} [{self.source}]"

    def tags(self) -> dict[str, str]:
        """The plan as MLflow tags (``hpo.plan.*``)."""
        machine = describe_machine()
        dev = self.torch_device
        name = (
            machine.gpus[dev.index or 0].name
            if dev.type == "cuda" and machine.gpus
            else f"{machine.cpu_model} ({', '.join(machine.isa) or 'no AVX2'})"
        )
        tags = {
            Tag.PLAN_DEVICE: self.device,
            Tag.PLAN_DEVICE_NAME: name,
            Tag.PLAN_PRECISION: self.precision,
            Tag.PLAN_LAYOUT: self.layout,
            Tag.PLAN_COMPILE: str(self.compile).lower(),
            Tag.PLAN_THREADS: str(self.threads),
            Tag.PLAN_TF32: str(self.tf32).lower(),
            Tag.PLAN_SOURCE: self.source,
        }
        return {key.value: value for key, value in tags.items()}  # plain strings: they cross processes

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ExecutionPlan:
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})


def default_plan(machine: Machine, device: torch.device, prefs: Preferences, threads: int) -> ExecutionPlan:
    """What the hardware is known to run fastest, without measuring: bf16 + channels_last where bf16 is
    native (CPU AVX512-BF16/AMX, CUDA sm80+), fp16 + channels_last on older GPUs, fp32 otherwise; the
    preferences where they fix a part."""
    cuda = device.type == "cuda"
    capability = machine.gpus[device.index or 0].capability if cuda and machine.gpus else (0, 0)
    fast: Precision = "bf16" if (capability >= (8, 0) if cuda else machine.bf16_native) else "fp16" if cuda else "fp32"
    precision = prefs.fixed_precision() or fast
    layout = prefs.channels_last if isinstance(prefs.channels_last, bool) else precision != "fp32"
    return ExecutionPlan(
        device=str(device),
        precision=precision,
        channels_last=layout,
        compile=prefs.compile is True,
        threads=threads,
        tf32=cuda and capability >= (8, 0) and precision == "fp32",
        source="default",
    )


def candidates(machine: Machine, device: torch.device, prefs: Preferences, threads: int) -> list[ExecutionPlan]:
    """Every plan the hardware can run that the preferences allow (compile aside: see ``plan_training``).
    bf16 only where it is native (emulated bf16 is ~10x slower: measuring it would only cost time), fp16
    only on CUDA, TF32 with fp32 on sm80+."""
    cuda = device.type == "cuda"
    capability = (0, 0)
    if cuda and machine.gpus:
        capability = machine.gpus[device.index or 0].capability
    fixed = prefs.fixed_precision()
    precisions: list[Precision]
    if fixed is not None:
        precisions = [fixed]
    elif cuda:
        precisions = ["fp32", "bf16"] if capability >= (8, 0) else ["fp32", "fp16"]
    else:
        precisions = ["fp32", "bf16"] if machine.bf16_native else ["fp32"]
    layouts = [prefs.channels_last] if isinstance(prefs.channels_last, bool) else [False, True]
    thread_counts = [threads] if cuda or threads <= 1 else [threads, max(1, threads // 2)]
    compile_ = prefs.compile is True
    return [
        ExecutionPlan(
            device=str(device),
            precision=p,
            channels_last=cl,
            compile=compile_,
            threads=t,
            tf32=cuda and capability >= (8, 0) and p == "fp32",
        )
        for p in precisions
        for cl in layouts
        for t in thread_counts
    ]


# ----------------------------------------------------------------------------------------------- compile


def fresh_compile(threads: int) -> None:
    """Make ready for compiling a new model: forget what dynamo compiled before and hold the compile workers
    to ``threads``. Ray runs many trials in one process; dynamo keeps every compiled graph and guard of
    them, and once a code object (every ``Classifier.forward``) has recompiled ``recompile_limit`` (8)
    times it silently runs eager. Inductor compiles in a pool of up to 32 worker processes (its
    ``compile_threads``, one per core by default): on a node shared by trials, each starting its own pool
    the size of the machine oversubscribes it, so the pool gets the trial's CPUs. The pool is made at the
    first compile, which reads this setting; ``TORCHINDUCTOR_COMPILE_THREADS`` carries it to a process
    whose inductor is not imported yet."""
    os.environ["TORCHINDUCTOR_COMPILE_THREADS"] = str(max(1, threads))
    inductor = sys.modules.get("torch._inductor.config")
    if inductor is not None:
        inductor.compile_threads = max(1, threads)  # type: ignore[attr-defined]
    dynamo = sys.modules.get("torch._dynamo")
    if dynamo is not None:  # not imported yet: nothing was compiled (and importing it costs seconds)
        dynamo.reset()


# ----------------------------------------------------------------------------------------------- measure


@dataclass
class Measurement:
    seconds_per_step: float  # median of the timed steps
    loss: float  # after the last step (the numerics guard compares it with fp32's)
    first_step_seconds: float = 0.0  # includes compilation, when compiled

    @property
    def finite(self) -> bool:
        return math.isfinite(self.loss) and math.isfinite(self.seconds_per_step)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _Stepper:
    """One candidate's model, optimizer and batch, ready to take timed SGD steps."""

    def __init__(
        self,
        build: Callable[[], nn.Module],
        x: torch.Tensor,
        y: torch.Tensor,
        plan: ExecutionPlan,
        loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    ) -> None:
        self.plan, self.y, self.loss_of = plan, y, loss
        self.device = plan.torch_device
        plan.apply()
        torch.manual_seed(0)  # every candidate starts from the same weights
        self.model = to_device(build(), self.device, plan.memory_format).train()
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.01, momentum=0.9)
        self.scaler = plan.grad_scaler()
        self.forward = torch.compile(self.model) if plan.compile else self.model
        self.x = x.contiguous(memory_format=plan.memory_format)
        self.times: list[float] = []
        self.loss = math.nan

    def step(self) -> None:
        self.plan.apply()
        _sync(self.device)
        start = time.perf_counter()
        with self.plan.autocast(), channels_last_gradients(self.model) if self.plan.channels_last else nullcontext():
            logits = self.forward(self.x)
        value = self.loss_of(logits.float(), self.y)
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is None:
            value.backward()
            self.optimizer.step()
        else:
            self.scaler.scale(value).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        _sync(self.device)
        self.times.append(time.perf_counter() - start)
        self.loss = float(value.detach())

    def result(self, warmup: int) -> Measurement:
        return Measurement(statistics.median(self.times[warmup:]), self.loss, self.times[0])


def measure_all(
    build: Callable[[], nn.Module],
    x: torch.Tensor,
    y: torch.Tensor,
    plans: list[ExecutionPlan],
    *,
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    warmup: int = WARMUP_STEPS,
    steps: int = TIMED_STEPS,
) -> list[Measurement]:
    """Time ``warmup + steps`` SGD steps of a fresh copy of the model under each plan on one batch (``x``
    float in [0, 1] on the plans' device). The candidates take turns, one step each per round, so that a
    shared machine's drift (tens of percent within minutes on a VM) falls on all of them alike. Every
    candidate starts from the same weights and sees the same batch: their losses after the steps are
    comparable."""
    loss = loss or (lambda logits, target: F.cross_entropy(logits, target))
    steppers = [_Stepper(build, x, y, plan, loss) for plan in plans]
    for _ in range(warmup + steps):
        for stepper in steppers:
            stepper.step()
    return [stepper.result(warmup) for stepper in steppers]


def measure(
    build: Callable[[], nn.Module],
    x: torch.Tensor,
    y: torch.Tensor,
    plan: ExecutionPlan,
    *,
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    warmup: int = WARMUP_STEPS,
    steps: int = TIMED_STEPS,
) -> Measurement:
    """``measure_all`` for one plan."""
    return measure_all(build, x, y, [plan], loss=loss, warmup=warmup, steps=steps)[0]


def within_tolerance(loss: float, reference: float, tolerance: tuple[float, float] = LOSS_TOLERANCE) -> bool:
    absolute, relative = tolerance
    return math.isfinite(loss) and abs(loss - reference) <= absolute + relative * abs(reference)


def choose(measured: list[tuple[ExecutionPlan, Measurement]], batch: int) -> tuple[ExecutionPlan, list[str]]:
    """The fastest candidate whose loss matches fp32's (the first fp32 candidate is the reference), and
    why the others lost (for the log)."""
    reference = next((m.loss for p, m in measured if p.precision == "fp32" and m.finite), None)
    allowed, notes = [], []
    for plan, m in measured:
        if not m.finite:
            notes.append(f"{plan.describe()}: not finite (loss {m.loss})")
        elif plan.precision != "fp32" and reference is not None and not within_tolerance(m.loss, reference):
            notes.append(
                f"{plan.describe()}: loss {m.loss:.4f} after {TIMED_STEPS + WARMUP_STEPS} steps, "
                f"fp32 {reference:.4f}: refused"
            )
        else:
            allowed.append((plan, m))
    if not allowed:
        raise RuntimeError("no execution plan trained with finite loss: " + "; ".join(notes))
    plan, m = min(allowed, key=lambda pm: pm[1].seconds_per_step)
    return replace(plan, images_per_second=batch / m.seconds_per_step, source="measured"), notes


# ------------------------------------------------------------------------------------------------- cache


def default_cache_path() -> Path | None:
    """``$HPO_PLAN_CACHE`` (``off`` for none), else ``$XDG_CACHE_HOME/hpo/plans.json``."""
    configured = os.environ.get("HPO_PLAN_CACHE")
    if configured:
        return None if configured.lower() == "off" else Path(configured)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "hpo" / "plans.json"


@dataclass
class PlanCache:
    """Plans already decided: ``known`` (handed down by the driver, e.g. the run folder's), this process's,
    and a JSON file shared by the processes of this machine (the user cache)."""

    path: Path | None = field(default_factory=default_cache_path)
    known: dict[str, dict] = field(default_factory=dict)

    def get(self, key: str) -> ExecutionPlan | None:
        entry = self.known.get(key) or _PROCESS_PLANS.get(key) or self._read().get(key)
        return ExecutionPlan.from_dict(entry) if entry else None

    def put(self, key: str, plan: ExecutionPlan) -> None:
        _PROCESS_PLANS[key] = plan.to_dict()
        if self.path is None:
            return
        try:
            with exclusive(self.path.with_suffix(".lock")):
                entries = {**self._read(), key: plan.to_dict()}
                tmp = self.path.with_suffix(f".{os.getpid()}.tmp")
                tmp.write_text(json.dumps(entries, indent=1, sort_keys=True))
                tmp.replace(self.path)
        except OSError:
            pass  # a read-only home: the plan is still kept for this process

    def _read(self) -> dict[str, dict]:
        if self.path is None:
            return {}
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}


_PROCESS_PLANS: dict[str, dict] = {}


def plan_key(
    machine: Machine,
    device: torch.device,
    model: str,
    input_shape: tuple[int, ...],
    batch: int,
    threads: int,
    prefs: Preferences,
) -> str:
    shape = "x".join(str(d) for d in input_shape)
    return f"{machine.signature(device)}|{model}|{shape}|batch {batch}|threads {threads}|{prefs.key()}"


# ------------------------------------------------------------------------------------------------ choose

Measure = Callable[[ExecutionPlan], Measurement]


def choose_plan(
    build: Callable[[], nn.Module],
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    model_name: str,
    device: torch.device,
    threads: int,
    prefs: Preferences = Preferences(),
    cache: PlanCache | None = None,
    expected_steps: int | None = None,
    machine: Machine | None = None,
    loss: Callable | None = None,
    measure_fn: Measure | None = None,
    log: Callable[[str], None] | None = None,
    always_measure: bool = False,
) -> ExecutionPlan:
    """The plan for training ``build()`` on batches like ``x`` (float, on ``device``): from the cache,
    from the preferences when they fix everything, else measured. ``measure_fn`` replaces the timing
    (tests inject step times through it). ``expected_steps`` (the run's training steps, if known): a run
    too short to repay the measuring takes ``default_plan``. ``always_measure``: measure even then, and
    time a plan the preferences fix too (for its images/s)."""
    machine = machine or describe_machine()
    cache = cache if cache is not None else PlanCache()
    batch = len(x)
    key = plan_key(machine, device, model_name, tuple(x.shape[1:]), batch, threads, prefs)
    cached = cache.get(key)
    if cached is not None:
        return replace(cached, source="cache", key=key)
    options = candidates(machine, device, prefs, threads)
    if (
        len(options) > 1
        and not always_measure
        and expected_steps is not None
        and expected_steps < MEASURE_WORTH * len(options) * (WARMUP_STEPS + TIMED_STEPS)
    ):
        return replace(default_plan(machine, device, prefs, threads), key=key)  # too short to be worth it

    def measure_many(plans: list[ExecutionPlan]) -> list[Measurement]:
        if measure_fn is not None:
            return [measure_fn(plan) for plan in plans]
        return measure_all(build, x, y, plans, loss=loss)

    if len(options) == 1:  # the preferences fixed precision and layout (and the threads leave no choice)
        plan, notes = replace(options[0], source="override"), list[str]()
        if always_measure:
            (m,) = measure_many([plan])
            plan = replace(plan, images_per_second=batch / m.seconds_per_step)
    else:
        plan, notes = choose(list(zip(options, measure_many(options), strict=True)), batch)
    if prefs.compile == AUTO and device.type == "cuda" and expected_steps:
        rate = plan.images_per_second
        step = batch / rate if rate else measure_many([plan])[0].seconds_per_step
        if expected_steps * step > COMPILE_WORTH_SECONDS:
            (m,) = measure_many([replace(plan, compile=True)])
            if m.finite and m.first_step_seconds + expected_steps * m.seconds_per_step < expected_steps * step:
                plan = replace(plan, compile=True, images_per_second=batch / m.seconds_per_step)
    for note in notes:
        if log is not None:
            log(note)
    plan = replace(plan, key=key)
    cache.put(key, plan)
    return plan


def plan_training(
    config,
    data,
    *,
    device: str | torch.device = "auto",
    threads: int = 1,
    prefs: Preferences = Preferences(),
    cache: PlanCache | None = None,
    epochs: int = 1,
    model: nn.Module | None = None,
    log: Callable[[str], None] | None = None,
    always_measure: bool = False,
) -> ExecutionPlan:
    """The plan for one training run of ``config`` (a TrialConfig) on ``data`` (a TrainData), measured on
    its first batch of real images. ``model`` (as ``train`` takes it) replaces the config's network."""
    dev = pick_device(device) if isinstance(device, str) else device
    if prefs.compile is not False:  # a plan that may compile: each training run compiles a new model
        fresh_compile(threads)
    batch = min(config.batch_size, len(data.y_train))
    x = (
        data.x_train[:batch]
        if not hasattr(data.x_train, "decode")
        else torch.as_tensor(data.x_train.decode(list(range(batch))))
    )
    x = to_float(torch.as_tensor(x).to(dev))
    y = data.y_train[:batch].to(dev)
    multilabel = y.ndim == 2
    if model is not None:
        template = model

        def build() -> nn.Module:
            return copy.deepcopy(template)

        name = f"{type(model).__name__}:{sum(p.numel() for p in model.parameters())}"
    else:

        def build() -> nn.Module:
            return create_model(config.model, data.x_train.shape[1], data.num_classes, data.mean, data.std)

        name = config.model.name
    steps = epochs * math.ceil(len(data.y_train) / config.batch_size)
    return choose_plan(
        build,
        x,
        y,
        model_name=name,
        device=dev,
        threads=threads,
        prefs=prefs,
        cache=cache,
        expected_steps=steps,
        loss=lambda logits, t: loss_fn(logits, t, multilabel=multilabel),
        log=log,
        always_measure=always_measure,
    )
