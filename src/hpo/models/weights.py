"""Pretrained weights: where they are cached, whether they can be fetched, and loading them.

torchvision's weights live in torch hub's cache (``$TORCH_HOME/hub/checkpoints/``, default
``~/.cache/torch/hub/checkpoints/``); timm's in the Hugging Face cache (``$HF_HOME``). ``hpo validate``
asks :func:`missing_weights` for every pretrained family a search space can produce, so an offline machine
without the files refuses the study before anything runs, naming the files and where to put them.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from hpo._torchvision import import_timm, import_torchvision

REACH_TIMEOUT = 5.0  # seconds to wait for a weights server before calling it unreachable


@dataclass
class WeightsSource:
    model: str  # torchvision name (resnet18) or timm/<name>
    file: Path  # where the cache holds it
    url: str  # where it is downloaded from


def torchvision_source(name: str) -> WeightsSource:
    weights = import_torchvision().models.get_model_weights(name).DEFAULT
    file = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url)
    return WeightsSource(name, file, weights.url)


def timm_source(name: str) -> WeightsSource:
    timm = import_timm()
    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is None:
        raise ValueError(f"timm has no pretrained weights for {name!r}")
    if cfg.hf_hub_id:
        from huggingface_hub import constants

        repo = cfg.hf_hub_id.split("@")[0]
        folder = Path(constants.HF_HUB_CACHE) / f"models--{repo.replace('/', '--')}"
        return WeightsSource(f"timm/{name}", folder, f"https://huggingface.co/{repo}")
    file = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(cfg.url)
    return WeightsSource(f"timm/{name}", file, cfg.url)


def source(model: str) -> WeightsSource:
    return timm_source(model.removeprefix("timm/")) if model.startswith("timm/") else torchvision_source(model)


def reachable(url: str, timeout: float = REACH_TIMEOUT) -> bool:
    request = urllib.request.Request(url, method="HEAD")
    try:
        with urllib.request.urlopen(request, timeout=timeout):
            return True
    except urllib.error.HTTPError as exc:  # the server answered: it is there (some refuse HEAD)
        return exc.code < 500
    except (urllib.error.URLError, OSError, ValueError):
        return False


def cached(src: WeightsSource) -> bool:
    if src.file.is_dir():  # the Hugging Face cache: a snapshot with a weights file in it
        return any(src.file.glob("snapshots/*/*.safetensors")) or any(src.file.glob("snapshots/*/*.bin"))
    return src.file.is_file()


def missing_weights(model: str) -> str | None:
    """None when ``model``'s pretrained weights are cached or can be downloaded; else what to do."""
    try:
        src = source(model)
    except (ValueError, KeyError) as exc:
        return str(exc)
    if cached(src) or reachable(src.url):
        return None
    return (
        f"pretrained weights for {src.model} are not cached ({src.file}) and {src.url} cannot be reached "
        f"(offline?): fetch them on a machine with internet and copy them to {src.file}, or set "
        f"{'HF_HOME' if src.file.is_dir() or 'huggingface' in src.url else 'TORCH_HOME'} to a cache that "
        f"holds them, or use pretrained: false"
    )


def load_pretrained(net: nn.Module, model: str, in_channels: int | None = None) -> None:
    """Load ``model``'s ImageNet weights into ``net`` (built with the original architecture)."""
    if model.startswith("timm/"):
        timm = import_timm()
        name = model.removeprefix("timm/")
        pretrained = timm.create_model(name, pretrained=True, num_classes=0, in_chans=in_channels or 3)
        net.load_state_dict(pretrained.state_dict(), strict=False)
        return
    weights = import_torchvision().models.get_model_weights(model).DEFAULT
    net.load_state_dict(weights.get_state_dict(progress=False, check_hash=True))
