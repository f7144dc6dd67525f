"""Classify outside images with a registered (or logged) model, using the preprocessing it was trained
with, as stored beside it: channels, size, and the background of its training images, measured from
the images themselves when the model was logged. A model that learned objects on a dark plain background
(Fashion-MNIST's garments, MNIST's digits) gets photos the way such images were made: inverted if their
background is light, cropped to the object, centred and scaled. Any other model gets the whole image
resized. A multi-label model answers every label whose sigmoid score reaches the threshold."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hpo.errors import HpoError

FOREGROUND = 0.15  # after inversion to a dark background: pixels brighter than this belong to the object


@dataclass
class Prediction:
    image: str
    top: list[tuple[str, float]]  # (class, probability) best first; multi-label: (label, score) above the threshold
    multilabel: bool = False
    threshold: float | None = None

    def as_dict(self) -> dict[str, Any]:
        if self.multilabel:
            return {
                "image": self.image,
                "threshold": self.threshold,
                "labels": [{"label": c, "score": round(p, 6)} for c, p in self.top],
            }
        return {"image": self.image, "predictions": [{"class": c, "probability": round(p, 6)} for c, p in self.top]}

    def describe(self) -> str:
        if self.multilabel and not self.top:
            return f"no label scores {self.threshold:.0%} or more"
        return "  ".join(f"{c} {p:.1%}" for c, p in self.top)


def model_uri_for(model: str) -> str:
    """``models:/name@alias``, ``models:/name/3`` and ``runs:/id/model`` pass through; a bare run id
    means that run's logged model."""
    if ":/" in model:
        return model
    return f"runs:/{model}/model"


@contextmanager
def _pickle_refused() -> Iterator[None]:
    """MLflow unpickles a model's files unless told not to (its default allows it); told not to, it also
    checks every record of a .pt2 archive before torch.export.load unpickles the weights."""
    key, before = "MLFLOW_ALLOW_PICKLE_DESERIALIZATION", os.environ.get("MLFLOW_ALLOW_PICKLE_DESERIALIZATION")
    os.environ[key] = "false"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = before


def load_exported_model(model_dir: Path, shown: str) -> Any:
    """The torch.export program in a downloaded MLflow model folder. Anything that could run code on
    load is refused: a pickled model (``model.pth``), code shipped with the model, a .pt2 archive whose
    records are not plain tensors. hpo logs only .pt2 programs, so its own models always pass."""
    import mlflow

    flavor = mlflow.models.Model.load(model_dir).flavors.get("pytorch") or {}
    data = model_dir / flavor["model_data"] if flavor.get("model_data") else None
    if data is None or (data / "model.pth").exists() or not (data / "model.pt2").is_file():
        raise HpoError(
            f"model {shown!r} is not a torch.export program (.pt2); hpo does not load pickled "
            "models, since unpickling can run arbitrary code"
        )
    if flavor.get("code"):
        raise HpoError(f"model {shown!r} ships Python code ({flavor['code']}); hpo does not import a model's code")
    with _pickle_refused():
        try:
            return mlflow.pytorch.load_model(str(model_dir))
        except mlflow.exceptions.MlflowException as exc:
            reason = str(exc).split(" You can set")[0]  # the way out it offers is the one shut here
            raise HpoError(f"model {shown!r} refused: {reason}") from None


class Predictor:
    def __init__(self, model_uri: str) -> None:
        import mlflow

        try:
            local = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri))
            info = mlflow.models.Model.load(local)
        except Exception as exc:  # MLflow raises several types for "not found"
            raise HpoError(f"cannot load model {model_uri!r}: {exc}") from None
        self.model = load_exported_model(local, model_uri)
        meta = info.metadata or {}
        missing = {"classes", "channels", "image_size", "background"} - set(meta)
        if missing:
            raise HpoError(
                f"model {model_uri!r} lacks hpo's preprocessing metadata ({', '.join(sorted(missing))}); "
                "was it logged by hpo?"
            )
        self.classes: list[str] = meta["classes"]
        self.multilabel = meta.get("task") == "multilabel"
        self.channels: int = int(meta["channels"])
        self.size: tuple[int, int] = tuple(meta["image_size"])
        self.background: str = meta["background"]  # dark | light (plain) | varied

    def preprocess(self, path: str | Path) -> np.ndarray:
        """One image file -> float32 (C, H, W) in [0, 1], as the model saw its training data."""
        from PIL import Image, ImageOps, UnidentifiedImageError

        try:
            with Image.open(path) as opened:
                image = ImageOps.exif_transpose(opened)
                if image.mode in ("RGBA", "LA", "P"):
                    canvas = Image.new("RGBA", image.size, (255, 255, 255, 255))
                    image = Image.alpha_composite(canvas, image.convert("RGBA"))
                image = image.convert("L" if self.channels == 1 else "RGB")
        except (OSError, UnidentifiedImageError) as exc:
            raise HpoError(f"{path}: cannot read the image ({exc})") from None
        pixels = np.asarray(image, dtype=np.float32) / 255.0
        if pixels.ndim == 2:
            pixels = pixels[:, :, None]
        h, w = self.size
        if self.background in ("dark", "light"):  # the model knows objects on a plain background
            border = np.concatenate(
                [pixels[0].ravel(), pixels[-1].ravel(), pixels[:, 0].ravel(), pixels[:, -1].ravel()]
            )
            if (border.mean() > 0.5) == (self.background == "dark"):
                pixels = 1.0 - pixels  # a light background where the model knows dark ones (or the reverse)
        if pixels.shape[:2] != (h, w):
            # objects on a dark background were cropped and centred when the training images were made
            pixels = self._crop_and_fit(pixels) if self.background == "dark" else self._resize(pixels)
        return np.ascontiguousarray(pixels.transpose(2, 0, 1), dtype=np.float32)

    def _resize(self, pixels: np.ndarray) -> np.ndarray:
        from PIL import Image

        h, w = self.size
        mode = "L" if pixels.shape[2] == 1 else "RGB"
        data = (pixels[:, :, 0] if mode == "L" else pixels) * 255.0
        resized = Image.fromarray(data.round().astype(np.uint8), mode).resize((w, h), Image.Resampling.LANCZOS)
        out = np.asarray(resized, dtype=np.float32) / 255.0
        return out[:, :, None] if out.ndim == 2 else out

    def _crop_and_fit(self, pixels: np.ndarray) -> np.ndarray:
        """Crop to the object (on a dark background), pad to a square, and scale its longer side to the
        model's size, centred: how Fashion-MNIST's 28x28 images were made from product photos."""
        mask = pixels.max(axis=2) > FOREGROUND
        if mask.any():
            rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
            pixels = pixels[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
        side = max(pixels.shape[:2])
        square = np.zeros((side, side, pixels.shape[2]), dtype=np.float32)
        top, left = (side - pixels.shape[0]) // 2, (side - pixels.shape[1]) // 2
        square[top : top + pixels.shape[0], left : left + pixels.shape[1]] = pixels
        return self._resize(square)

    def predict(self, paths: list[str | Path], top_k: int = 3, threshold: float = 0.5) -> list[Prediction]:
        """Per image: the ``top_k`` classes by softmax probability; for a multi-label model, every label
        whose sigmoid score is at least ``threshold``, best first."""
        import torch

        batch = torch.as_tensor(np.stack([self.preprocess(p) for p in paths]))
        with torch.no_grad():
            logits = self.model(batch).float()
        out = []
        if self.multilabel:
            for path, p in zip(paths, torch.sigmoid(logits).numpy(), strict=True):
                order = [i for i in np.argsort(-p) if p[i] >= threshold]
                out.append(Prediction(str(path), [(self.classes[i], float(p[i])) for i in order], True, threshold))
            return out
        k = min(top_k, len(self.classes))
        for path, p in zip(paths, torch.softmax(logits, dim=1).numpy(), strict=True):
            top = np.argsort(-p)[:k]
            out.append(Prediction(str(path), [(self.classes[i], float(p[i])) for i in top]))
        return out
