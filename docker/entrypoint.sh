#!/usr/bin/env bash
# The images' ENTRYPOINT: get ready, then `exec hpo "$@"` (hpo becomes the process; exit codes pass through).
#
#   HPO_WAIT_FOR=postgres:5432,mlflow:5000   wait until each host:port accepts TCP connections
#   HPO_WAIT_TIMEOUT=120                     ... for at most this many seconds in all (then exit 1)
#   HPO_RAY_JOIN=ray-head:6379               join that Ray cluster as a node with no CPUs or GPUs first:
#                                            a Ray driver needs a raylet on its own machine, so `hpo run
#                                            --address` from a container that is not a Ray node would
#                                            fail; with 0 CPUs/GPUs no trial is ever scheduled here.
set -euo pipefail

log() { printf 'hpo-entrypoint: %s\n' "$*" >&2; }

wait_for() {  # $1: comma-separated host:port list
  local timeout="${HPO_WAIT_TIMEOUT:-120}" target host port
  if ! [[ "$timeout" =~ ^[0-9]+$ ]]; then
    log "HPO_WAIT_TIMEOUT must be a whole number of seconds (got '$timeout')"
    exit 2
  fi
  local deadline=$((SECONDS + timeout))
  IFS=',' read -r -a targets <<<"$1"
  for target in "${targets[@]}"; do
    target="${target//[[:space:]]/}"
    [[ -z "$target" ]] && continue
    host="${target%:*}" port="${target##*:}"
    host="${host#[}" host="${host%]}"  # [::1]:5432 -> ::1
    if [[ "$target" != *:* || -z "$host" ]] || ! [[ "$port" =~ ^[0-9]+$ ]]; then
      log "HPO_WAIT_FOR: '$target' is not host:port (HPO_WAIT_FOR=$1)"
      exit 2
    fi
    log "waiting for $target (up to ${timeout}s in all)"
    # bash's /dev/tcp opens a TCP connection; `timeout` bounds a connect to a host that never answers.
    # shellcheck disable=SC2016  # $0 and $1 are expanded by the inner bash, on purpose
    until timeout 2 bash -c 'exec 3<>"/dev/tcp/$0/$1"' "$host" "$port" 2>/dev/null; do
      if ((SECONDS >= deadline)); then
        log "gave up: $target did not accept connections within ${timeout}s (HPO_WAIT_FOR=$1)"
        exit 1
      fi
      sleep 1
    done
    log "$target is up"
  done
}

if [[ -n "${HPO_WAIT_FOR:-}" ]]; then
  wait_for "$HPO_WAIT_FOR"
fi

if [[ -n "${HPO_RAY_JOIN:-}" ]]; then
  log "joining the Ray cluster at $HPO_RAY_JOIN as a driver-only node"
  ray start --address="$HPO_RAY_JOIN" --num-cpus=0 --num-gpus=0 --disable-usage-stats
fi

exec hpo "$@"
