#!/usr/bin/env bash
# The GPU check: one script, at most 8 minutes on a machine with CUDA, every figure into one folder.
#
#   bash benchmarks/gpu_check.sh [OUT]              # OUT defaults to $OUT, else gpu-check/
#   bash benchmarks/gpu_check.sh --cpu-only [OUT]   # only the CPU stand-ins, CUDA or not
#
# Each part prints into OUT/<part>.txt and writes its figures to OUT/<part>.json; OUT/summary.txt lists
# every part with its exit code and seconds (124: cut off by its time limit).
#   gpu      nvidia-smi: the card, its compute capability and memory, the driver
#   machine  `hpo doctor` (with CUDA: on the check study): devices, the plan per model family
#   plans    the plan per compute capability (bf16 where native, fp16 + GradScaler below sm80), the plan
#            measured on this device, and with CUDA the kernels a training step runs (hpo.train.plan)
#   steps    host syncs (torch.cuda.set_sync_debug_mode "warn") and kernel launches (profiler) per training
#            step; on a CPU the operators that would wait for a GPU, counted
#   packing  four trial processes at 0.25 GPU each on one card vs one alone: images/s, the GPU ids Ray gave
#            each; on a CPU two one-CPU tasks vs one
#   tests    the GPU tests (tests/unit/test_gpu.py; skipped without CUDA)
#   compile  torch.compile on vs off: compile time, images/s (CUDA only)
#   study    a short Fashion-MNIST study on the GPU (benchmarks/studies/gpu_check.yaml: trials at 0.25 GPU
#            side by side, the final retrain on the GPU); study-figures: accuracy, time, devices (CUDA only)
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
ROOT=$PWD
cpu_only=0
if [ "${1:-}" = "--cpu-only" ]; then
  cpu_only=1
  shift
fi
OUT=${1:-${OUT:-gpu-check}}
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd)
PY=${PYTHON:-python}
[ -x "$ROOT/.venv/bin/python" ] && PY=$ROOT/.venv/bin/python
export RAY_USAGE_STATS_ENABLED=0 HPO_PLAN_CACHE="$OUT/plan-cache.json"
export HPO_DATA_DIR=${HPO_DATA_DIR:-$(cd ../shared/datasets 2>/dev/null && pwd)}
summary="$OUT/summary.txt"
: > "$summary"
DEADLINE=$((SECONDS + 470))  # the whole check stays within 8 minutes

part() {  # part NAME SECONDS COMMAND...: at most SECONDS (and what is left), output to OUT/NAME.txt
  local name=$1 limit=$2 left=$((DEADLINE - SECONDS))
  shift 2
  if [ "$left" -lt 15 ]; then
    echo "$name: skipped (the 8 minutes are used up)" | tee -a "$summary"
    return 0
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  local start=$SECONDS
  timeout "$limit" "$@" > "$OUT/$name.txt" 2>&1
  local rc=$?
  echo "$name: exit $rc in $((SECONDS - start)) s ($*)" | tee -a "$summary"
  return 0
}
skipped() {
  echo "$1: skipped ($2)" | tee -a "$summary"
}

cuda=$("$PY" -c "import torch; print(int(torch.cuda.is_available()))" 2>/dev/null || echo 0)
[ "$cpu_only" = 1 ] && cuda=0
echo "cuda: $cuda$([ "$cpu_only" = 1 ] && echo ' (--cpu-only)')" | tee -a "$summary"
py=("$PY")
[ "$cpu_only" = 1 ] && py=(env CUDA_VISIBLE_DEVICES= "$PY")  # the Python parts then see no GPU
check=("${py[@]}" benchmarks/gpu_check.py)
if [ "$cuda" = 1 ]; then
  part gpu 20 nvidia-smi --query-gpu=name,compute_cap,memory.total,driver_version --format=csv
  part machine 60 "$PY" -m hpo.cli doctor benchmarks/studies/gpu_check.yaml
else
  skipped gpu "no CUDA"
  part machine 60 "${py[@]}" -m hpo.cli doctor
fi
part plans 90 "${check[@]}" plans "$OUT"
part steps 60 "${check[@]}" steps "$OUT"
part packing 100 "${check[@]}" packing "$OUT"
part tests 150 "${py[@]}" -m pytest -q -p no:cacheprovider tests/unit/test_gpu.py
if [ "$cuda" = 1 ]; then
  part compile 100 "${check[@]}" compile "$OUT"
  mkdir -p "$OUT/study-run"
  part study 240 env -C "$OUT/study-run" "$PY" -m hpo.cli run "$ROOT/benchmarks/studies/gpu_check.yaml" --fresh
  part study-figures 30 "${check[@]}" study "$OUT" "$OUT/study-run"
else
  skipped compile "no CUDA"
  skipped study "no CUDA"
fi
echo "written to $OUT/ in $SECONDS s"
