"""Model families: one registry, ``create_model`` to build, ``list_families`` to enumerate.

Every model hpo trains is wrapped in ``Classifier``, which owns the input normalisation: the logged
model takes float images in [0, 1] and needs no preprocessing code beside it.
"""

from hpo.models import cnn as _cnn  # noqa: F401  (registers "cnn")
from hpo.models import zoo as _zoo  # noqa: F401  (registers the torchvision families and "timm")
from hpo.models._registry import Classifier, create_model, list_families, register_family

__all__ = ["Classifier", "create_model", "list_families", "register_family"]
