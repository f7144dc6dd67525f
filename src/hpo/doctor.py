"""``hpo doctor``: what this machine is to hpo (CPU model and instruction sets, GPUs, torch), and with a
study, each model family's execution plan, measured on the study's own images: images/s and the seconds
an epoch is expected to take."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from hpo.study import Study

ISA_SHOWN = ("AVX2", "AVX-512", "AVX512-BF16", "AMX")


def machine_rows() -> list[tuple[str, str]]:
    """(what, value) rows describing this machine."""
    import torch

    from hpo.train.plan import describe_machine

    m = describe_machine()
    rows = [
        ("CPU", f"{m.cpu_model}, {m.cores} cores"),
        ("instruction sets", "  ".join(f"{name} {'yes' if name in m.isa else 'no'}" for name in ISA_SHOWN)),
        ("torch CPU kernels", f"{m.cpu_capability} (ATEN_CPU_CAPABILITY)"),
        (
            "native bf16 on the CPU",
            "yes: bf16 autocast is a candidate"
            if m.bf16_native
            else "no: bf16 would be emulated (~10x slower than fp32), so plans stay fp32",
        ),
    ]
    for i, gpu in enumerate(m.gpus):
        rows.append((f"GPU {i}", f"{gpu.name}, sm{gpu.capability[0]}{gpu.capability[1]}, {gpu.memory_gib:g} GiB"))
    if not m.gpus:
        rows.append(("GPUs", "none visible to torch"))
    rows.append(("torch", torch.__version__))
    return rows


@dataclass(kw_only=True)
class FamilyPlan:
    family: str
    batch_size: int
    parameters: int
    plan: Any  # hpo.train.plan.ExecutionPlan
    seconds_per_epoch: float  # training images at the measured rate, plus validation at ~3x that rate


def family_plans(study: Study, data, *, device: str = "auto") -> list[FamilyPlan]:
    """Each model family of the study's space (at the middle of its ranges), planned as a trial would be
    (``resources``: threads, precision, layout, compile) on the study's first training images."""
    from hpo.models import create_model
    from hpo.train import PlanCache, Preferences, TrainData, plan_training

    c = study.config
    train_data = TrainData.from_arrays(
        data.x_train, data.y_train, data.x_val, data.y_val, data.num_classes, data.mean, data.std
    )
    threads = max(1, math.floor(c.resources.cpus_per_trial))
    rows = []
    for family, config in study.space.representatives().items():
        plan = plan_training(
            config,
            train_data,
            device=device,
            threads=threads,
            prefs=Preferences.from_resources(c.resources),
            cache=PlanCache(),
            epochs=c.budget.max_epochs,
            always_measure=True,
        )
        model = create_model(config.model, data.x_train.shape[1], data.num_classes, data.mean, data.std)
        rate = plan.images_per_second or math.nan
        seconds = len(data.y_train) / rate + len(data.y_val) / (3 * rate)
        rows.append(
            FamilyPlan(
                family=family,
                batch_size=config.batch_size,
                parameters=sum(p.numel() for p in model.parameters()),
                plan=plan,
                seconds_per_epoch=seconds,
            )
        )
    return rows
