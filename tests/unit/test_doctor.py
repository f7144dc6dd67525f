"""``hpo doctor``: the machine as the execution plan sees it, and a measured plan per model family."""

import os
import re
import subprocess
import sys
from pathlib import Path


def cpu_flags() -> set[str]:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def doctor(*args: str, cwd: Path, cache: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HPO_PLAN_CACHE": str(cache), "COLUMNS": "160"}
    return subprocess.run(
        [sys.executable, "-m", "hpo.cli", "doctor", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )


def test_doctor_lists_the_instruction_sets_this_cpu_has(tmp_path):
    result = doctor(cwd=tmp_path, cache=tmp_path / "plans.json")
    assert result.returncode == 0, result.stderr
    flags = cpu_flags()
    for name, flag in (("AVX2", "avx2"), ("AVX-512", "avx512f"), ("AVX512-BF16", "avx512_bf16"), ("AMX", "amx_bf16")):
        assert f"{name} {'yes' if flag in flags else 'no'}" in result.stdout
    native = "yes" if {"avx512_bf16", "amx_bf16"} & flags else "no"
    assert re.search(rf"native bf16 on the CPU\s*│\s*{native}", result.stdout)
    assert not (tmp_path / "plans.json").exists()  # the machine alone measures nothing


def test_doctor_plans_each_model_family_of_a_study(tmp_path, data_dir):
    (tmp_path / "space.yaml").write_text(
        "model:\n"
        "  one_of:\n"
        "    cnn: {depth: {int: [2, 4]}, width: {categorical: [16, 32]}}\n"
        "    mobilenet: {variant: mobilenet_v3_small}\n"
        "optimizer: {lr: {float: [0.01, 0.1], log: true}}\n"
        "batch_size: 64\n"
    )
    (tmp_path / "study.yaml").write_text(
        "name: doctor\n"
        f"dataset: {{name: fashion_mnist, data_dir: {data_dir}, subset: {{train: 600, test: 100}}}}\n"
        "search_space: space.yaml\n"
        "budget: {trials: 2, max_epochs: 3}\n"
    )
    result = doctor("study.yaml", cwd=tmp_path, cache=tmp_path / "plans.json")
    assert result.returncode == 0, result.stderr
    rows = {
        m.group(1): m.groups()
        for m in re.finditer(
            r"│ (cnn|mobilenet)\s*│\s*64 │\s*([\d.]+) M │ (fp32|bf16) (contiguous|channels_last), 1 thread on cpu\s*│"
            r"\s*([\d,]+) │\s*([\d,]+) │",
            result.stdout,
        )
    }
    assert set(rows) == {"cnn", "mobilenet"}, result.stdout
    for _family, (_, params, precision, _, rate, seconds) in rows.items():
        assert float(params) > 0 and int(rate.replace(",", "")) > 0
        # an epoch of the 480 training images (+120 validation) at the measured rate
        assert int(seconds.replace(",", "")) <= 600 / int(rate.replace(",", "")) + 1
        if not {"avx512_bf16", "amx_bf16"} & cpu_flags():
            assert precision == "fp32"  # bf16 is never chosen where it would be emulated
    assert (tmp_path / "plans.json").is_file()  # the decisions are cached for the trials that follow
