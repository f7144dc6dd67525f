"""Fault injection for tests: make the trials with a chosen learning rate raise.

Installed in Ray's worker processes with ``ray.init(runtime_env={"worker_process_setup_hook":
"hpo.testing.faults.install", "env_vars": {FAULTS_ENV: json.dumps({...})}})``; the training code itself
has no test hooks. ``{"0.02": "once:/tmp/marker", "0.03": "always"}`` fails lr=0.02 on its first attempt
only (the marker file records it) and lr=0.03 on every attempt."""

from __future__ import annotations

import json
import os
from pathlib import Path

FAULTS_ENV = "HPO_TEST_FAULTS"


class InjectedFault(RuntimeError):
    """Raised in place of training, as a crashing data pipeline or a bug would."""


def install() -> None:
    import hpo.train

    faults = json.loads(os.environ.get(FAULTS_ENV, "{}"))
    real_train = hpo.train.train

    def train(config, *args, **kwargs):
        rule = faults.get(repr(config.optimizer.lr))
        if rule == "always":
            raise InjectedFault(f"injected fault for lr={config.optimizer.lr}")
        if rule and rule.startswith("once:"):
            marker = Path(rule.removeprefix("once:"))
            if not marker.exists():
                marker.touch()
                raise InjectedFault(f"injected fault for lr={config.optimizer.lr} (first attempt)")
        return real_train(config, *args, **kwargs)

    hpo.train.train = train
