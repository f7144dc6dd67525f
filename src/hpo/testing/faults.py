"""Fault injection for tests: make the trials with a chosen learning rate raise.

Installed in Ray's worker processes with ``ray.init(runtime_env={"worker_process_setup_hook":
"hpo.testing.faults.install", "env_vars": {FAULTS_ENV: json.dumps({...})}})``; the training code itself
has no test hooks. ``{"0.02": "once:/tmp/marker", "0.03": "always"}`` fails lr=0.02 on its first attempt
only (the marker file records it) and lr=0.03 on every attempt.

Every trial first writes a line to stdout (``print``) and one to stderr (below Python, on the file
descriptor), and a fault's message is longer than 500 characters (``DETAIL``) and ends with ``MESSAGE_END``, raised
two frames down (in ``_fail``): what a trial's logged output and traceback must hold in full."""

from __future__ import annotations

import json
import os
from pathlib import Path

FAULTS_ENV = "HPO_TEST_FAULTS"
MESSAGE_END = "(the end of the injected fault's message)"
DETAIL = (
    "This message is long on purpose: a traceback or an error that is cut at 500 characters loses its end, "
    "and the end of a message is often the part that says what went wrong, such as the shape that did not "
    "match, the file that could not be read, the value that was out of range, or the node that went away. "
    "So the whole of it must reach the trial's run, and the innermost frame of the traceback with it, "
    "however long the message and however deep the frame: nothing of either may be cut on the way. "
)


class InjectedFault(RuntimeError):
    """Raised in place of training, as a crashing data pipeline or a bug would."""


def install() -> None:
    import hpo.train

    faults = json.loads(os.environ.get(FAULTS_ENV, "{}"))
    real_train = hpo.train.train

    def train(config, *args, **kwargs):
        lr = repr(config.optimizer.lr)
        rule = faults.get(lr)
        print(f"fault injection on stdout: lr={lr}, rule {rule}", flush=True)
        os.write(2, f"fault injection on stderr: lr={lr}\n".encode())
        if rule == "always":
            _fail(f"injected fault for lr={lr}")
        if rule and rule.startswith("once:"):
            marker = Path(rule.removeprefix("once:"))
            if not marker.exists():
                marker.touch()
                _fail(f"injected fault for lr={lr} (first attempt)")
        return real_train(config, *args, **kwargs)

    hpo.train.train = train


def _fail(message: str) -> None:
    raise InjectedFault(f"{message}. {DETAIL}{MESSAGE_END}")
