"""The execution plan (hpo.train.plan): candidates per hardware, the chooser, its numerics guard, the cache
and the study's overrides. Real models, real Fashion-MNIST batches; step times are injected where a test
needs to say which candidate is fastest."""

import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from hpo.config.trial import TrialConfig
from hpo.models import create_model
from hpo.train import ExecutionPlan, PlanCache, Preferences, TrainData, describe_machine, train
from hpo.train import plan as plan_module
from hpo.train.plan import Gpu, Machine, Measurement, candidates, choose_plan, measure, within_tolerance

AVX2 = Machine("AMD EPYC (Zen 3)", ("AVX2",), "AVX2", bf16_native=False, cores=2)
ZEN4 = Machine("AMD EPYC (Zen 4)", ("AVX2", "AVX-512", "AVX512-BF16"), "AVX512", bf16_native=True, cores=2)
T4 = replace(AVX2, gpus=(Gpu("Tesla T4", (7, 5), 15.0),))
H100 = replace(AVX2, gpus=(Gpu("NVIDIA H100", (9, 0), 80.0),))
CPU, CUDA = torch.device("cpu"), torch.device("cuda:0")


@pytest.fixture(scope="module")
def batch(fashion_subset):
    """128 real Fashion-MNIST training images (float in [0, 1]) and their labels."""
    x = torch.as_tensor(fashion_subset.x_train[:128]).float() / 255
    return x, torch.as_tensor(fashion_subset.y_train[:128])


def cnn(depth=3, width=16) -> TrialConfig:
    return TrialConfig.model_validate({"model": {"depth": depth, "width": width}, "batch_size": 128})


def builder(config: TrialConfig):
    return lambda: create_model(config.model, 1, 10, (0.286,), (0.353,))


@pytest.fixture(autouse=True)
def fresh_process_cache():
    plan_module._PROCESS_PLANS.clear()
    yield
    plan_module._PROCESS_PLANS.clear()


def timings(table: dict[tuple[str, bool], float], loss: float = 2.0, losses: dict | None = None, calls=None):
    """A measure function answering step times (and losses) from a table keyed by (precision, layout)."""

    def fake(plan: ExecutionPlan) -> Measurement:
        if calls is not None:
            calls.append(plan)
        key = (plan.precision, plan.channels_last)
        return Measurement(table[key], (losses or {}).get(key, loss), table[key])

    return fake


def test_candidates_follow_the_hardware():
    def kinds(machine, device, threads=1, prefs=None):
        return {
            (p.precision, p.channels_last, p.tf32, p.threads)
            for p in candidates(machine, device, prefs or Preferences(), threads)
        }

    # no native bf16: fp32 only, both layouts
    assert kinds(AVX2, CPU) == {("fp32", False, False, 1), ("fp32", True, False, 1)}
    # native bf16 on the CPU: bf16 is measured too; several threads: half of them as well
    assert {p for p, *_ in kinds(ZEN4, CPU)} == {"fp32", "bf16"}
    assert {t for *_, t in kinds(ZEN4, CPU, threads=2)} == {1, 2}
    # a T4 (sm75): fp16 (with a scaler), never bf16, no TF32
    assert {(p, tf32) for p, _, tf32, _ in kinds(T4, CUDA)} == {("fp32", False), ("fp16", False)}
    assert ExecutionPlan(precision="fp16").grad_scaler() is not None  # fp16 never trains without a scaler
    # an H100 (sm90): bf16, and fp32 runs on TF32
    assert {(p, tf32) for p, _, tf32, _ in kinds(H100, CUDA)} == {("fp32", True), ("bf16", False)}


def test_chooser_takes_the_fastest_candidate_given_measured_step_times(batch):
    x, y = batch
    config = cnn()
    fastest_bf16 = {("fp32", False): 0.30, ("fp32", True): 0.25, ("bf16", False): 0.20, ("bf16", True): 0.10}
    plan = choose_plan(
        builder(config),
        x,
        y,
        model_name="cnn",
        device=CPU,
        threads=1,
        machine=ZEN4,
        cache=PlanCache(path=None),
        measure_fn=timings(fastest_bf16),
    )
    assert (plan.precision, plan.channels_last, plan.source) == ("bf16", True, "measured")
    assert plan.images_per_second == pytest.approx(128 / 0.10)

    plan_module._PROCESS_PLANS.clear()
    calls: list[ExecutionPlan] = []
    fastest_fp32 = {("fp32", False): 0.20, ("fp32", True): 0.25}
    plan = choose_plan(
        builder(config),
        x,
        y,
        model_name="cnn",
        device=CPU,
        threads=1,
        machine=AVX2,
        cache=PlanCache(path=None),
        measure_fn=timings(fastest_fp32, calls=calls),
    )
    assert (plan.precision, plan.channels_last) == ("fp32", False)
    assert {c.precision for c in calls} == {"fp32"}  # bf16 was not even measured without native support


def test_numerics_guard_refuses_a_faster_candidate_whose_loss_drifts(batch):
    x, y = batch
    table = {("fp32", False): 0.30, ("fp32", True): 0.25, ("bf16", False): 0.20, ("bf16", True): 0.10}
    drifted = {("bf16", True): 3.5, ("bf16", False): 2.02}  # fp32 ends at 2.0
    plan = choose_plan(
        builder(cnn()),
        x,
        y,
        model_name="cnn",
        device=CPU,
        threads=1,
        machine=ZEN4,
        cache=PlanCache(path=None),
        measure_fn=timings(table, losses=drifted),
    )
    assert (plan.precision, plan.channels_last) == ("bf16", False)  # the fastest within tolerance
    nan = {("bf16", True): float("nan"), ("bf16", False): float("inf")}
    plan_module._PROCESS_PLANS.clear()
    plan = choose_plan(
        builder(cnn()),
        x,
        y,
        model_name="cnn",
        device=CPU,
        threads=1,
        machine=ZEN4,
        cache=PlanCache(path=None),
        measure_fn=timings(table, losses=nan),
    )
    assert (plan.precision, plan.channels_last) == ("fp32", True)


def test_the_measured_plan_ends_its_steps_at_fp32s_loss(batch):
    """Measured for real on this machine: the chosen plan trains (same weights, same batch, same steps)
    to within tolerance of fp32's loss, and the loss went down."""
    x, y = batch
    config = cnn()
    plan = choose_plan(builder(config), x, y, model_name="cnn", device=CPU, threads=1, cache=PlanCache(path=None))
    assert plan.source == "measured" and plan.images_per_second > 0
    assert plan.precision in ("fp32", "bf16" if describe_machine().bf16_native else "fp32")
    chosen = measure(builder(config), x, y, plan, steps=6)
    reference = measure(builder(config), x, y, ExecutionPlan(), steps=6)
    assert within_tolerance(chosen.loss, reference.loss), (chosen.loss, reference.loss)
    before = torch.nn.functional.cross_entropy(builder(config)()(x), y).item()
    assert reference.loss < before


def test_a_decided_plan_is_reused_without_measuring_again(batch, tmp_path):
    x, y = batch
    path = tmp_path / "plans.json"
    calls: list[ExecutionPlan] = []
    table = {("fp32", False): 0.20, ("fp32", True): 0.10}
    first = choose_plan(
        builder(cnn()),
        x,
        y,
        model_name="cnn",
        device=CPU,
        threads=1,
        machine=AVX2,
        cache=PlanCache(path=path),
        measure_fn=timings(table, calls=calls),
    )
    assert len(calls) == 2 and path.is_file()
    plan_module._PROCESS_PLANS.clear()  # as a new process would: from the file
    again = choose_plan(
        builder(cnn(depth=4)),
        x,
        y,
        model_name="cnn",
        device=CPU,
        threads=1,
        machine=AVX2,
        cache=PlanCache(path=path),
        measure_fn=timings(table, calls=calls),
    )
    assert len(calls) == 2  # not measured again
    assert again.source == "cache" and (again.precision, again.channels_last) == (first.precision, True)
    # another batch size, thread count or machine is another decision
    choose_plan(
        builder(cnn()),
        x[:64],
        y[:64],
        model_name="cnn",
        device=CPU,
        threads=1,
        machine=AVX2,
        cache=PlanCache(path=path),
        measure_fn=timings(table, calls=calls),
    )
    choose_plan(
        builder(cnn()),
        x,
        y,
        model_name="cnn",
        device=CPU,
        threads=1,
        machine=ZEN4,
        cache=PlanCache(path=path),
        measure_fn=timings({**table, ("bf16", False): 1, ("bf16", True): 1}, calls=calls),
    )
    assert len(calls) == 2 + 2 + 4
    # plans handed down by the driver (the run folder's) win over measuring
    plan_module._PROCESS_PLANS.clear()
    known = {first.key: replace(first, channels_last=False).to_dict()}
    handed = choose_plan(
        builder(cnn()),
        x,
        y,
        model_name="cnn",
        device=CPU,
        threads=1,
        machine=AVX2,
        cache=PlanCache(path=None, known=known),
        measure_fn=timings(table, calls=calls),
    )
    assert len(calls) == 8 and handed.channels_last is False


def test_a_run_too_short_to_repay_measuring_takes_the_hardwares_default(batch, tmp_path):
    x, y = batch

    def never(plan):
        raise AssertionError("a short run is not measured")

    cache = PlanCache(path=tmp_path / "plans.json")
    for machine, expected in ((AVX2, ("fp32", False)), (ZEN4, ("bf16", True))):
        plan = choose_plan(
            builder(cnn()),
            x,
            y,
            model_name="cnn",
            device=CPU,
            threads=2,
            machine=machine,
            cache=cache,
            expected_steps=30,
            measure_fn=never,
        )
        assert (plan.precision, plan.channels_last, plan.threads, plan.source) == (*expected, 2, "default")
    assert not (tmp_path / "plans.json").exists()  # not a decision: the next long run measures
    calls: list[ExecutionPlan] = []
    long = choose_plan(
        builder(cnn()),
        x,
        y,
        model_name="cnn",
        device=CPU,
        threads=1,
        machine=AVX2,
        cache=cache,
        expected_steps=5000,
        measure_fn=timings({("fp32", False): 0.2, ("fp32", True): 0.1}, calls=calls),
    )
    assert len(calls) == 2 and long.source == "measured"
    for gpu, expected in ((T4, ("fp16", True)), (H100, ("bf16", True))):
        plan = choose_plan(
            builder(cnn()),
            x,
            y,
            model_name="cnn",
            device=CUDA,
            threads=1,
            machine=gpu,
            cache=PlanCache(path=None),
            expected_steps=1,
            measure_fn=never,
        )
        assert (plan.precision, plan.channels_last) == expected


def test_overrides_are_honoured(batch, fashion_subset):
    x, y = batch

    def never(plan):
        raise AssertionError("a fixed plan is not measured")

    fixed = Preferences(precision="fp32", channels_last=False, compile=False)
    plan = choose_plan(
        builder(cnn()),
        x,
        y,
        model_name="cnn",
        device=CPU,
        threads=1,
        prefs=fixed,
        machine=ZEN4,
        cache=PlanCache(path=None),
        measure_fn=never,
    )
    assert (plan.precision, plan.channels_last, plan.compile, plan.source) == ("fp32", False, False, "override")
    # precision fixed, layout measured
    calls: list[ExecutionPlan] = []
    choose_plan(
        builder(cnn()),
        x,
        y,
        model_name="cnn",
        device=CPU,
        threads=1,
        prefs=Preferences(precision="bf16"),
        machine=ZEN4,
        cache=PlanCache(path=None),
        measure_fn=timings({("bf16", False): 0.1, ("bf16", True): 0.2}, calls=calls),
    )
    assert {(c.precision, c.channels_last) for c in calls} == {("bf16", False), ("bf16", True)}

    # and through the trainer: what the study's resources say is what trains
    d = fashion_subset
    data = TrainData.from_arrays(d.x_train[:256], d.y_train[:256], None, None, 10, d.mean, d.std)
    for prefs in (Preferences("fp32", True, False), Preferences("fp32", False, False)):
        result = train(cnn(), data, epochs=1, threads=1, prefs=prefs)
        assert (result.plan.precision, result.plan.channels_last) == ("fp32", prefs.channels_last)
        conv = next(m for m in result.model.modules() if isinstance(m, torch.nn.Conv2d))
        assert conv.weight.is_contiguous(memory_format=result.plan.memory_format)


def test_this_machine_is_described_as_its_cpu_reports_itself():
    machine = describe_machine()
    flags = set()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            break
    assert ("AVX2" in machine.isa) == ("avx2" in flags)
    assert ("AVX512-BF16" in machine.isa) == ("avx512_bf16" in flags)
    if not {"avx512_bf16", "amx_bf16"} & flags:
        assert not machine.bf16_native


def test_an_avx2_dispatch_is_not_native_bf16_whatever_the_cpu():
    """ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 make any x86 CPU dispatch like an AVX2-only one:
    the plan must then see no native bf16."""
    env = {**os.environ, "ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "from hpo.train.plan import describe_machine as d; m = d(); print(m.cpu_capability, m.bf16_native)",
        ],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert out == ["AVX2", "False"]


def test_a_training_run_that_may_compile_starts_dynamo_afresh_with_bounded_workers(fashion_subset, monkeypatch):
    """Ray runs many trials in one process: what dynamo compiled for the last one must not count against
    the next (after ``recompile_limit`` recompiles of ``forward`` it silently runs eager), and inductor's
    compile pool gets the trial's threads, not one worker per core of the node."""
    import torch._dynamo
    import torch._inductor.config
    from torch._dynamo.eval_frame import _debug_get_cache_entry_list

    monkeypatch.setattr(torch._inductor.config, "compile_threads", torch._inductor.config.compile_threads)
    monkeypatch.setenv("TORCHINDUCTOR_COMPILE_THREADS", "")

    def step(x: torch.Tensor) -> torch.Tensor:
        return x * 2 + 1

    torch.compile(step, backend="eager")(torch.ones(3))  # what an earlier trial left compiled
    assert len(_debug_get_cache_entry_list(step.__code__)) == 1
    d = fashion_subset
    data = TrainData.from_arrays(d.x_train[:256], d.y_train[:256], None, None, 10, d.mean, d.std)
    prefs = Preferences(precision="fp32", channels_last=False, compile=True)  # fixed: nothing to measure

    plan = plan_module.plan_training(cnn(), data, device="cpu", threads=3, prefs=prefs, cache=PlanCache(path=None))

    assert plan.compile  # as the preferences fix it (too short a run to measure the thread counts)
    assert _debug_get_cache_entry_list(step.__code__) == []  # the next compile starts from nothing
    assert torch._inductor.config.compile_threads == 3 and os.environ["TORCHINDUCTOR_COMPILE_THREADS"] == "3"
