"""Model families: one registry, ``create_model`` to build, ``list_families`` to enumerate.

Every model hpo trains is wrapped in ``Classifier``, which owns the input normalisation: the logged
model takes float images in [0, 1] and needs no preprocessing code beside it.

Each public module of this package is imported here, and registers its families as it loads
(``@register_family``): adding a family is its module here and its config in ``hpo.config.trial``.
"""

import importlib
import pkgutil

from hpo.models._registry import Classifier, create_model, list_families, register_family

for _module in pkgutil.iter_modules(__path__):
    if not _module.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["Classifier", "create_model", "list_families", "register_family"]
