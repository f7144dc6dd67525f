"""The in-memory ``Tracker`` for tests of code that writes runs (see ``hpo.tracking.memory``)."""

from hpo.tracking.memory import InMemoryTracker, StoredRun, StoredVersion

__all__ = ["InMemoryTracker", "StoredRun", "StoredVersion"]
