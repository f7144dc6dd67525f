#!/usr/bin/env bash
# The GPU check: run it once on any machine with CUDA (<= 8 minutes), and keep the folder it writes.
#
#   bash benchmarks/gpu_check.sh [OUT]        # OUT defaults to $OUT, else gpu-check/
#
# What it measures, each part into its own file under OUT (summary.txt lists every part and its exit code):
#   machine.txt   nvidia-smi and `hpo doctor` (GPU name, compute capability, the plan per family of the
#                 check study: precision, layout, compile, images/s)
#   tests.txt     the GPU tests (tests/unit/test_gpu.py) and the execution-plan tests
#   trainer.txt   the trainer benchmark (hpo vs a hand-written loop, same models) on this device
#   study.txt     a short Fashion-MNIST study on the GPU (benchmarks/studies/gpu_check.yaml: four 0.25-GPU
#                 trials side by side, 4 min of search, final retrain and test): accuracy and wall time
# Without CUDA only the CPU parts run (machine, plan tests, a short trainer benchmark), so the script can be
# checked anywhere; the GPU parts are then reported as skipped.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
OUT=${1:-${OUT:-gpu-check}}
mkdir -p "$OUT"
PY=${PYTHON:-python}
[ -x .venv/bin/python ] && PY=.venv/bin/python
export RAY_USAGE_STATS_ENABLED=0 HPO_PLAN_CACHE="$OUT/plans.json"
export HPO_DATA_DIR=${HPO_DATA_DIR:-$(ls -d ../shared/datasets 2>/dev/null || true)}
summary="$OUT/summary.txt"
: > "$summary"

part() {  # part NAME SECONDS COMMAND...: run with a time limit, output to OUT/NAME.txt, exit code to the summary
  local name=$1 limit=$2
  shift 2
  local start=$SECONDS
  timeout "$limit" "$@" > "$OUT/$name.txt" 2>&1
  local rc=$?
  echo "$name: exit $rc in $((SECONDS - start)) s ($*)" | tee -a "$summary"
  return 0
}

cuda=$("$PY" -c "import torch; print(int(torch.cuda.is_available()))" 2>/dev/null || echo 0)
echo "cuda available: $cuda" | tee -a "$summary"
if [ "$cuda" = 1 ]; then
  part gpu 20 nvidia-smi --query-gpu=name,compute_cap,memory.total,driver_version --format=csv
  part machine 120 "$PY" -m hpo.cli doctor benchmarks/studies/gpu_check.yaml
  part tests 240 "$PY" -m pytest -q -p no:cacheprovider tests/unit/test_gpu.py tests/unit/test_plan.py
  part trainer 120 "$PY" benchmarks/trainer_vs_baseline.py --rounds 6 --chunk 16 --no-record
  part study 360 "$PY" -m hpo.cli run benchmarks/studies/gpu_check.yaml --fresh
else
  part machine 60 "$PY" -m hpo.cli doctor
  part tests 240 "$PY" -m pytest -q -p no:cacheprovider tests/unit/test_gpu.py tests/unit/test_plan.py
  part trainer 300 "$PY" benchmarks/trainer_vs_baseline.py --rounds 2 --chunk 2 --no-record
  echo "study: skipped (no CUDA)" | tee -a "$summary"
fi
echo "written to $OUT/"
