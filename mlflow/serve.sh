#!/usr/bin/env bash
# The MLflow UI for the local store, on loopback only. Usage: mlflow/serve.sh [PORT]
set -euo pipefail
cd "$(dirname "$0")/.."
port="${1:-5000}"
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false
exec mlflow server --backend-store-uri "sqlite:///mlflow/mlflow.db" \
  --default-artifact-root "mlflow/artifacts" --host 127.0.0.1 --port "$port" --workers 1
