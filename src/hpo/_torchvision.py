"""The one place that imports torchvision (and timm, which imports it).

Some package indexes ship torchvision's CUDA build beside a CPU-only torch. Importing it then fails with
"operator torchvision::nms does not exist", because torchvision registers fake kernels for detection ops
whose schemas its missing C++ library would have defined. We define the two schemas it looks for and
import again: classification models and datasets work; the detection ops stay unavailable. On a normal
install the first import succeeds and nothing here runs.
"""

from __future__ import annotations

import importlib
import sys
from types import ModuleType

_SCHEMAS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}
_fragment = None  # kept alive: dropping the Library object would unregister the schemas


def import_torchvision() -> ModuleType:
    """``import torchvision``, working around a CPU torch paired with a CUDA torchvision wheel."""
    global _fragment
    try:
        return importlib.import_module("torchvision")
    except RuntimeError as exc:
        if "torchvision::nms does not exist" not in str(exc):
            raise
    import torch

    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[name]
    _fragment = torch.library.Library("torchvision", "FRAGMENT")
    for schema in _SCHEMAS.values():
        _fragment.define(schema)
    return importlib.import_module("torchvision")


def import_timm() -> ModuleType:
    """``import timm``; timm imports torchvision, so through ``import_torchvision`` first."""
    import_torchvision()
    return importlib.import_module("timm")
