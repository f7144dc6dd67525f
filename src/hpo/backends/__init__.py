"""Backends: the ways ``hpo run`` finds a model for a study (see :mod:`hpo.backends.base`)."""

from __future__ import annotations

import importlib

# The study's ``backends`` names -> the classes implementing them (imported when a study uses them).
BACKENDS = {"search": "hpo.backends.search:SearchBackend", "autokeras": "hpo.backends.autokeras:AutoKerasBackend"}


def backend_class(name: str) -> type:
    module, attr = BACKENDS[name].split(":")
    return getattr(importlib.import_module(module), attr)
