"""Shared by the benchmark scripts: machine description and appending results to docs/BENCHMARKS.md."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS_MD = ROOT / "docs" / "BENCHMARKS.md"


def machine() -> str:
    """CPU model (with family/model numbers), its instruction sets as torch dispatches them, cores, GPU."""
    from hpo.train.plan import describe_machine

    m = describe_machine()
    isa = ", ".join(m.isa) or "no AVX2"
    bf16 = "native bf16" if m.bf16_native else "no native bf16"
    gpus = "".join(f", GPU {g.name} (sm{g.capability[0]}{g.capability[1]})" for g in m.gpus)
    return f"{m.cpu_model}, {m.cores} cores, {isa} (torch dispatch {m.cpu_capability}, {bf16}){gpus}"


def commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def markdown_table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def record(title: str, table: str, notes: str = "", *, dry_run: bool = False) -> None:
    """Print the table and append it, with date, machine, commit and command, to docs/BENCHMARKS.md
    (``dry_run``: print only)."""
    command = "python " + " ".join([os.path.relpath(sys.argv[0], ROOT), *sys.argv[1:]])
    block = (
        f"\n### {title} — {dt.date.today().isoformat()}\n\n"
        f"Machine: {machine()}. Commit {commit()}. Command: `{command}`.\n\n{table}\n"
    )
    if notes:
        block += f"\n{notes}\n"
    print(block)
    if dry_run:
        return
    with BENCHMARKS_MD.open("a") as fh:
        fh.write(block)
