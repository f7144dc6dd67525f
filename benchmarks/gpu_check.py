"""The measuring parts of benchmarks/gpu_check.sh, one per command; each prints its figures and writes them
as JSON into the output folder (``OUT/<part>.json``). Without CUDA each part runs what a CPU can (saying
so) or reports itself skipped.

    python benchmarks/gpu_check.py plans   OUT   # the execution plan per compute capability, the plan measured
                                                 # here, and (CUDA) the kernels a training step runs
    python benchmarks/gpu_check.py steps   OUT   # host syncs and kernel launches per training step
    python benchmarks/gpu_check.py packing OUT   # four trial processes at 0.25 GPU on one card vs one alone
    python benchmarks/gpu_check.py compile OUT   # torch.compile on vs off: compile time, images/s
    python benchmarks/gpu_check.py study   OUT WORK  # the check study's accuracy, time and devices, from
                                                     # the MLflow store `hpo run` wrote in WORK

The training step measured is hpo's own (``hpo.train.loop.TrainStep``: augmentation, forward, loss, backward,
optimizer, schedule) on a mid-sized configuration of the Fashion-MNIST CNN space, on uint8 batches already
on the device, as a trial's are.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import torch
from torch.autograd import DeviceType

# A configuration from the middle of search_spaces/fashion_mnist_cnn.yaml, its augmentations included.
CONFIG: dict[str, Any] = {
    "model": {
        "name": "cnn",
        "depth": 4,
        "width": 32,
        "batchnorm": "before_activation",
        "dropout": {"placement": "head", "rate": 0.1},
        "activation": "relu",
        "head_width": 128,
    },
    "optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 1e-4},
    "schedule": {"name": "onecycle", "warmup_fraction": 0.2},
    "batch_size": 256,
    "label_smoothing": 0.1,
    "augment": {"hflip": 0.5, "translate": 0.5, "translate_px": 2},
}
CAPABILITIES = {  # the cards of a pool, by compute capability
    (7, 0): "V100",
    (7, 5): "T4",
    (8, 0): "A100",
    (8, 6): "A10 / A40",
    (8, 9): "L4 / L40S",
    (9, 0): "H100 / H200",
}
CUDA = torch.cuda.is_available()
# Without CUDA the stand-ins run a smaller network and batch: they check the measuring code, not a speed.
CPU_STAND_IN = {"model": {**CONFIG["model"], "depth": 3, "width": 16, "head_width": 0}, "batch_size": 64}


def write(out: Path, part: str, figures: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{part}.json").write_text(json.dumps(figures, indent=1, default=str))
    print(f"-> {out / f'{part}.json'}")


def device() -> torch.device:
    return torch.device("cuda", 0) if CUDA else torch.device("cpu")


def config():
    from hpo.config.trial import TrialConfig

    return TrialConfig.model_validate(CONFIG if CUDA else {**CONFIG, **CPU_STAND_IN})


def make_step(plan, steps: int = 10**6):
    """hpo's training step for ``CONFIG`` under ``plan``, and a batch of uint8 images with labels on its device."""
    from hpo.models import create_model
    from hpo.train.loop import TrainStep
    from hpo.train.ops import to_device

    cfg, dev = config(), plan.torch_device
    plan.apply()
    torch.manual_seed(0)
    model = create_model(cfg.model, 1, 10, (0.286,), (0.353,))
    model = to_device(model, dev, plan.memory_format)
    gen = torch.Generator(device=dev).manual_seed(0)
    step = TrainStep(
        cfg, model, plan, channels=1, num_classes=10, multilabel=False, epochs=1, steps_per_epoch=steps, generator=gen
    )
    x = torch.randint(0, 256, (cfg.batch_size, 1, 28, 28), dtype=torch.uint8, device=dev, generator=gen)
    y = torch.randint(0, 10, (cfg.batch_size,), device=dev, generator=gen)
    return step, x, y


def default_plan_here(prefs=None):
    from hpo.train.plan import Preferences, default_plan, describe_machine

    return default_plan(describe_machine(), device(), prefs or Preferences(), threads=torch.get_num_threads())


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


# ------------------------------------------------------------------------------------------------- plans


def plans(out: Path) -> None:
    from hpo.train import TrainData, plan_training
    from hpo.train.plan import Gpu, Machine, Preferences, candidates, default_plan, describe_machine

    here = describe_machine()
    print("The plan hpo starts from per compute capability (hpo.train.plan.default_plan; `auto` then measures")
    print("the candidates and keeps the fastest whose loss matches fp32's):")
    rows = []
    for capability, cards in CAPABILITIES.items():
        machine = Machine(
            here.cpu_model, here.isa, here.cpu_capability, here.bf16_native, here.cores, (Gpu(cards, capability, 16.0),)
        )
        cuda0 = torch.device("cuda", 0)
        plan = default_plan(machine, cuda0, Preferences(), threads=1)
        measured = sorted({p.precision for p in candidates(machine, cuda0, Preferences(), threads=1)})
        row = {
            "capability": f"{capability[0]}.{capability[1]}",
            "cards": cards,
            "precision": plan.precision,
            "grad_scaler": plan.precision == "fp16",  # ExecutionPlan.grad_scaler() makes one for fp16 only
            "layout": plan.layout,
            "tf32": plan.tf32,
            "candidates": measured,
        }
        rows.append(row)
        print(
            f"  sm{capability[0]}{capability[1]} ({cards:11}): {row['precision']}"
            f"{' + GradScaler' if row['grad_scaler'] else ''}, {row['layout']}, candidates {'/'.join(measured)}"
        )
    figures: dict[str, Any] = {"per_capability": rows, "device": str(device())}

    # The plan measured on this machine's device for the check configuration (what a trial would run).
    cfg = config()
    n = 4096
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n, 1, 28, 28), dtype=torch.uint8, generator=gen).numpy()
    y = torch.randint(0, 10, (n,), generator=gen).numpy()
    data = TrainData.from_arrays(x[:3584], y[:3584], x[3584:], y[3584:], 10, (0.286,), (0.353,))
    start = time.perf_counter()
    plan = plan_training(
        cfg, data, device=str(device()), threads=torch.get_num_threads(), prefs=Preferences(), epochs=100
    )
    figures["measured_plan"] = {**plan.to_dict(), "describe": plan.describe(), "seconds": time.perf_counter() - start}
    print(f"measured here ({time.perf_counter() - start:.0f} s): {plan.describe()}")
    if CUDA:
        capability = torch.cuda.get_device_capability()
        native = capability >= (8, 0)
        figures["card"] = {"name": torch.cuda.get_device_name(), "capability": f"{capability[0]}.{capability[1]}"}
        print(
            f"card: {torch.cuda.get_device_name()} sm{capability[0]}{capability[1]}: reduced precision here is "
            f"{'bf16 (native)' if native else 'fp16 + GradScaler (no native bf16 below sm80)'}"
        )
        figures["kernels"] = kernels(plan)
    write(out, "plans", figures)


def kernels(plan) -> list[dict[str, Any]]:
    """The CUDA kernels of 10 training steps under ``plan``, by GPU time: names tell the path (cuDNN/cuBLAS
    tensor-core kernels carry the precision and the architecture, e.g. ``sm80_xmma_..._bf16``)."""
    from torch.profiler import ProfilerActivity, profile

    step, x, y = make_step(plan)
    for _ in range(5):
        step(x, y)
    sync(plan.torch_device)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(10):
            step(x, y)
        sync(plan.torch_device)
    rows = []
    events = [e for e in prof.key_averages() if e.device_type == DeviceType.CUDA]
    total = sum(e.device_time_total for e in events) or 1.0
    print("top kernels of a training step (share of GPU time):")
    for e in sorted(events, key=lambda e: -e.device_time_total)[:12]:
        rows.append({"kernel": e.key, "calls_per_step": e.count / 10, "share": e.device_time_total / total})
        print(f"  {e.device_time_total / total:6.1%}  x{e.count / 10:4.1f}  {e.key[:110]}")
    return rows


# ------------------------------------------------------------------------------------------------- steps


NEEDS_THE_DATA = (torch.Tag.dynamic_output_shape, torch.Tag.data_dependent_output)


def count_operators(run) -> tuple[Counter, int]:
    """(operators that would make the host wait for a GPU, all aten operators) while ``run()`` runs: the
    CPU stand-in for set_sync_debug_mode and the profiler (tests/unit/test_host_syncs.py has the full
    counter; this one sees operators only)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    waits: Counter = Counter()
    total = [0]

    aten = torch.ops.aten
    indexing = {aten.index.Tensor, aten.index_put.default, aten.index_put_.default, aten._index_put_impl_.default}

    class Operators(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            total[0] += 1
            if func in indexing:  # a gather by integer indices waits for nothing; by a mask, nonzero first
                if any(i is not None and i.dtype in (torch.bool, torch.uint8) for i in args[1]):
                    waits[str(func)] += 1
            elif any(tag in func.tags for tag in NEEDS_THE_DATA):
                waits[str(func)] += 1
            return func(*args, **(kwargs or {}))

    with Operators():
        run()
    return waits, total[0]


def steps(out: Path) -> None:
    plan = default_plan_here()
    step, x, y = make_step(plan)
    for _ in range(3):  # set-up: first allocations, cuDNN's algorithm choice
        step(x, y)
    sync(plan.torch_device)
    n = 20 if CUDA else 4
    figures: dict[str, Any] = {"plan": plan.describe(), "steps": n, "config": config().model_dump()}
    if CUDA:
        torch.cuda.set_sync_debug_mode("warn")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for _ in range(n):
                step(x, y)
            torch.cuda.set_sync_debug_mode("default")
        syncs = [str(w.message).splitlines()[0] for w in caught if "synchroniz" in str(w.message)]
        sync(plan.torch_device)
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for _ in range(n):
                step(x, y)
            sync(plan.torch_device)
        launches = sum(e.count for e in prof.key_averages() if e.key.startswith(("cudaLaunch", "cuLaunch")))
        kernels = sum(e.count for e in prof.key_averages() if e.device_type == DeviceType.CUDA)
        start = time.perf_counter()
        for _ in range(n):
            step(x, y)
        sync(plan.torch_device)
        ms = (time.perf_counter() - start) / n * 1e3
        figures |= {
            "syncs_per_step": len(syncs) / n,
            "sync_messages": Counter(syncs).most_common(5),
            "launches_per_step": launches / n,
            "device_ops_per_step": kernels / n,
            "ms_per_step": ms,
        }
        print(
            f"{plan.describe()}: {len(syncs) / n:.2f} host syncs per step (set_sync_debug_mode 'warn'), "
            f"{launches / n:.0f} kernel launches per step (profiler), {ms:.2f} ms per step"
        )
    else:

        def run():
            for _ in range(n):
                step(x, y)

        waits, total = count_operators(run)
        figures |= {
            "operators_waiting_per_step": sum(waits.values()) / n,
            "waiting": dict(waits),
            "aten_operators_per_step": total / n,
            "note": "CPU stand-in: operators counted, no CUDA",
        }
        print(
            f"CPU stand-in ({plan.describe()}): {sum(waits.values()) / n:.2f} operators per step that would make "
            f"the host wait for a GPU {dict(waits) or ''}, {total / n:.0f} aten operators per step (each one or "
            "more kernel launches on a GPU)"
        )
    write(out, "steps", figures)


# ----------------------------------------------------------------------------------------------- packing


def _train_for(seconds: float, go: float, on_gpu: bool) -> dict[str, Any]:
    """Inside a Ray task: hpo's training step for ``seconds`` from the wall-clock instant ``go`` (so that
    tasks started together measure the same window)."""
    import ray

    from hpo.engine.devices import assigned_device

    assigned = assigned_device(0.25 if on_gpu else 0.0)  # empties CUDA_VISIBLE_DEVICES for a CPU task
    plan = default_plan_here()
    step, x, y = make_step(plan)
    for _ in range(5):
        step(x, y)
    sync(plan.torch_device)
    time.sleep(max(0.0, go - time.time()))
    start, n = time.time(), 0
    while time.time() - start < seconds:
        for _ in range(10):
            step(x, y)
        n += 10
        sync(plan.torch_device)
    end = time.time()
    return {
        "gpu_ids": [str(i) for i in ray.get_gpu_ids()],
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "device": assigned.device,
        "images_per_second": n * x.shape[0] / (end - start),
        "start": start,
        "end": end,
    }


def packing(out: Path) -> None:
    import ray

    seconds = 12.0 if CUDA else 3.0
    ray.init(
        num_cpus=os.cpu_count(),
        num_gpus=torch.cuda.device_count(),
        include_dashboard=False,
        log_to_driver=False,
        logging_level="ERROR",
    )
    try:
        share, together = (0.25, 4) if CUDA else (0.0, min(2, os.cpu_count() or 1))
        task = ray.remote(num_cpus=1, num_gpus=share)(_train_for)

        def round_of(k: int) -> list[dict[str, Any]]:
            go = time.time() + (20.0 if CUDA else 8.0)  # worker start, imports, warm-up before the window
            return ray.get([task.remote(seconds, go, CUDA) for _ in range(k)])

        alone, packed = round_of(1), round_of(together)
    finally:
        ray.shutdown()
    one = alone[0]["images_per_second"]
    total = sum(r["images_per_second"] for r in packed)
    overlap = min(r["end"] for r in packed) - max(r["start"] for r in packed)
    figures = {
        "share": share,
        "alone_images_per_second": one,
        "packed": packed,
        "packed_total_images_per_second": total,
        "speedup": total / one,
        "overlap_seconds": overlap,
        "note": "" if CUDA else f"CPU stand-in: {together} one-CPU tasks vs one (no CUDA)",
    }
    what = f"{together} tasks at {share} GPU each" if CUDA else f"CPU stand-in: {together} one-CPU tasks"
    each = ", ".join(f"{r['images_per_second']:,.0f}" for r in packed)
    print(
        f"{what}: {total:,.0f} img/s together ({each}) "
        f"vs {one:,.0f} img/s alone: x{total / one:.2f}; side by side for {overlap:.1f} s of {seconds:.0f} s"
    )
    print(f"GPU ids Ray gave each: {[r['gpu_ids'] for r in packed]}; devices: {[r['device'] for r in packed]}")
    write(out, "packing", figures)


# ----------------------------------------------------------------------------------------------- compile


def compile_on_off(out: Path) -> None:
    from dataclasses import replace

    if not CUDA:
        print("compile: skipped (no CUDA; on 2 CPU cores compile did not pay, docs/BENCHMARKS.md)")
        write(out, "compile", {"skipped": "no CUDA"})
        return
    base = default_plan_here()
    figures: dict[str, Any] = {}
    for compiled in (False, True):
        torch._dynamo.reset()
        plan = replace(base, compile=compiled)
        step, x, y = make_step(plan)
        start = time.perf_counter()
        step(x, y)
        sync(plan.torch_device)
        first = time.perf_counter() - start
        for _ in range(5):
            step(x, y)
        sync(plan.torch_device)
        n, start = 50, time.perf_counter()
        for _ in range(n):
            step(x, y)
        sync(plan.torch_device)
        rate = n * x.shape[0] / (time.perf_counter() - start)
        key = "compiled" if compiled else "eager"
        figures[key] = {"first_step_seconds": first, "images_per_second": rate, "plan": plan.describe()}
        print(f"{key:8}: first step {first:6.1f} s, then {rate:,.0f} img/s ({plan.describe()})")
    figures["speedup"] = figures["compiled"]["images_per_second"] / figures["eager"]["images_per_second"]
    print(f"compiled / eager: x{figures['speedup']:.2f}")
    write(out, "compile", figures)


# ------------------------------------------------------------------------------------------------- study


def study(out: Path, work: Path) -> None:
    import mlflow
    from hpo.names import Metric, RunKind, Tag

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{work / 'mlflow' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("gpu-check")
    if experiment is None:
        print(f"no experiment gpu-check in {work}/mlflow: the study did not run")
        write(out, "study", {"error": "no experiment"})
        return
    runs = client.search_runs([experiment.experiment_id])
    trials = [r for r in runs if r.data.tags.get(Tag.KIND) == RunKind.TRIAL]
    final = [r for r in runs if r.data.tags.get(Tag.KIND) == RunKind.FINAL]
    best = max((r.data.metrics.get(Metric.VAL_ACCURACY, 0.0) for r in trials), default=None)
    device_tags = (Tag.DEVICE, Tag.DEVICE_NAME, Tag.DEVICE_CAPABILITY, Tag.GPU_SHARE, Tag.GPU_IDS)

    def devices(rs) -> dict[str, int]:
        return dict(Counter(" | ".join(r.data.tags.get(t, "-") for t in device_tags) for r in rs))

    figures: dict[str, Any] = {
        "trials": len(trials),
        "best_val_accuracy": best,
        "trial_devices": devices(trials),
        "final": [
            {
                "test_accuracy": r.data.metrics.get("test_accuracy"),
                "device": devices([r]),
                "seconds": (r.info.end_time - r.info.start_time) / 1e3 if r.info.end_time else None,
            }
            for r in final
        ],
    }
    print(f"{len(trials)} trials, best val_accuracy {best}")
    print(f"trial devices (device | name | capability | share | ids): {figures['trial_devices']}")
    for f in figures["final"]:
        print(f"final retrain: test_accuracy {f['test_accuracy']}, {f['seconds']} s, on {f['device']}")
    write(out, "study", figures)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("part", choices=["plans", "steps", "packing", "compile", "study"])
    parser.add_argument("out", type=Path)
    parser.add_argument("work", type=Path, nargs="?", help="study: the folder `hpo run` ran in")
    args = parser.parse_args(argv)
    print(
        f"torch {torch.__version__}, CUDA {'available: ' + torch.cuda.get_device_name() if CUDA else 'not available'}"
    )
    if args.part == "study":
        study(args.out, args.work)
    else:
        {"plans": plans, "steps": steps, "packing": packing, "compile": compile_on_off}[args.part](args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
