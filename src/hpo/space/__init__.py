"""The one search-space vocabulary, and its compilation to Optuna (define-by-run).

A search space mirrors the trial configuration (``hpo.config.trial.TrialConfig``). Every leaf is either a
constant or one distribution:

    {float: [low, high]}              uniform on [low, high], both inclusive; ``log: true``, ``step: q``
    {int: [low, high]}                integers, both ends inclusive; ``log: true``, ``step: k``
    {categorical: [a, b, c]}          one of the listed values
    {one_of: {cnn: {...}, ...}}       a conditional branch: one branch per trial; only the chosen
                                      branch's parameters are sampled; its name is stored under ``name``

Optuna parameter names are the dotted config paths with the branch inserted (``model.cnn.depth``), so two
branches never share a parameter; the branch choice itself is the parameter ``model.name``.

A search-space file may start from another: ``extends: base.yaml`` (relative to the file) deep-merges
``base.yaml`` under it, the extending file winning key by key (``load_space``).
"""

from hpo.space._private import (
    Branches,
    Categorical,
    Constant,
    Float,
    Int,
    SearchSpace,
    define_by_run,
    load_space,
    parse_space,
)

__all__ = [
    "Branches",
    "Categorical",
    "Constant",
    "Float",
    "Int",
    "SearchSpace",
    "define_by_run",
    "load_space",
    "parse_space",
]
