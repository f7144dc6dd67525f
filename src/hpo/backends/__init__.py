"""Backends: the ways ``hpo run`` finds a model for a study (see :mod:`hpo.backends.base`). Each is declared
in :mod:`hpo.config.backends` (name, stages, checks) and implemented in a module here."""

from __future__ import annotations

import importlib

from hpo.backends.base import Backend
from hpo.config.backends import BACKENDS


def backend_class(name: str) -> type[Backend]:
    """The class implementing the backend the study's ``backends`` list calls ``name`` (imported now)."""
    module, attr = BACKENDS[name].implementation.split(":")
    cls: type[Backend] = getattr(importlib.import_module(module), attr)
    return cls
