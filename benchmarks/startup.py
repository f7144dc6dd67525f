"""Start-up latency of the CLI paths that must stay light: ``hpo --help`` and ``hpo validate``.

    python benchmarks/startup.py [--repeat 7] [--no-record]

Median wall time of a fresh process each, and whether torch / ray / mlflow were imported on the way.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

from _common import ROOT, markdown_table, record

COMMANDS = {
    "hpo --help": ["--help"],
    "hpo validate studies/fashion_mnist.yaml": ["validate", "studies/fashion_mnist.yaml"],
}
PROBE = (
    "import sys, runpy; sys.argv = ['hpo'] + sys.argv[1:]\n"
    "try:\n    runpy.run_module('hpo.cli', run_name='__main__')\nexcept SystemExit:\n    pass\n"
    "print('HEAVY', sorted(m for m in ('torch', 'ray', 'mlflow', 'optuna') if m in sys.modules), file=sys.stderr)"
)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    hpo = [sys.executable, "-m", "hpo.cli"]
    rows = []
    for label, argv in COMMANDS.items():
        times = []
        for _ in range(args.repeat):
            start = time.perf_counter()
            subprocess.run(hpo + argv, cwd=ROOT, capture_output=True, check=True)
            times.append(time.perf_counter() - start)
        probe = subprocess.run([sys.executable, "-c", PROBE, *argv], cwd=ROOT, capture_output=True, text=True)
        heavy = probe.stderr.strip().splitlines()[-1].removeprefix("HEAVY ")
        rows.append([f"`{label}`", f"{statistics.median(times):.2f} s", f"{max(times):.2f} s", heavy])
    table = markdown_table(["command", "median wall", "max wall", "heavy modules imported"], rows)
    record(
        "CLI start-up",
        table,
        f"{args.repeat} fresh processes per command (`python -m hpo.cli`).",
        dry_run=args.no_record,
    )


if __name__ == "__main__":
    main()
