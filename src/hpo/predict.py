"""Classify outside images with a registered (or logged) model, using the preprocessing it was trained
with: channels, size, and the background polarity of its data (Fashion-MNIST garments are light on
black; photos of clothing are dark on white, so they are inverted, cropped to the garment, centred and
scaled the way Fashion-MNIST's images were made)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hpo.errors import HpoError

FOREGROUND = 0.15  # after inversion to a dark background: pixels brighter than this belong to the object


@dataclass
class Prediction:
    image: str
    top: list[tuple[str, float]]

    def as_dict(self) -> dict[str, Any]:
        return {"image": self.image, "predictions": [{"class": c, "probability": round(p, 6)} for c, p in self.top]}


def model_uri_for(model: str) -> str:
    """``models:/name@alias``, ``models:/name/3`` and ``runs:/id/model`` pass through; a bare run id
    means that run's logged model."""
    if ":/" in model:
        return model
    return f"runs:/{model}/model"


class Predictor:
    def __init__(self, model_uri: str) -> None:
        import mlflow

        try:
            info = mlflow.models.get_model_info(model_uri)
            self.model = mlflow.pytorch.load_model(model_uri)
        except Exception as exc:  # MLflow raises several types for "not found"
            raise HpoError(f"cannot load model {model_uri!r}: {exc}") from None
        meta = info.metadata or {}
        missing = {"classes", "channels", "image_size", "background"} - set(meta)
        if missing:
            raise HpoError(f"model {model_uri!r} lacks hpo's preprocessing metadata ({', '.join(sorted(missing))}); "
                           "was it logged by hpo?")
        self.classes: list[str] = meta["classes"]
        self.channels: int = int(meta["channels"])
        self.size: tuple[int, int] = tuple(meta["image_size"])
        self.dark_background: bool = meta["background"] == "dark"

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
        border = np.concatenate([pixels[0].ravel(), pixels[-1].ravel(), pixels[:, 0].ravel(), pixels[:, -1].ravel()])
        if (border.mean() > 0.5) == self.dark_background:
            pixels = 1.0 - pixels  # a light background where the model knows dark ones (or the reverse)
        if pixels.shape[:2] != (h, w):
            # work on a dark background (object bright), then restore the model's polarity
            flip = not self.dark_background
            pixels = self._crop_and_fit(1.0 - pixels if flip else pixels)
            pixels = 1.0 - pixels if flip else pixels
        return np.ascontiguousarray(pixels.transpose(2, 0, 1), dtype=np.float32)

    def _crop_and_fit(self, pixels: np.ndarray) -> np.ndarray:
        """Crop to the object (on a dark background), pad to a square, and scale its longer side to the
        model's size, centred: how Fashion-MNIST's 28x28 images were made from product photos."""
        from PIL import Image

        h, w = self.size
        mask = pixels.max(axis=2) > FOREGROUND
        if mask.any():
            rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
            pixels = pixels[rows[0]: rows[-1] + 1, cols[0]: cols[-1] + 1]
        side = max(pixels.shape[:2])
        square = np.zeros((side, side, pixels.shape[2]), dtype=np.float32)
        top, left = (side - pixels.shape[0]) // 2, (side - pixels.shape[1]) // 2
        square[top: top + pixels.shape[0], left: left + pixels.shape[1]] = pixels
        mode = "L" if square.shape[2] == 1 else "RGB"
        data = (square[:, :, 0] if mode == "L" else square) * 255.0
        resized = Image.fromarray(data.round().astype(np.uint8), mode).resize((w, h), Image.Resampling.LANCZOS)
        out = np.asarray(resized, dtype=np.float32) / 255.0
        return out[:, :, None] if out.ndim == 2 else out

    def predict(self, paths: list[str | Path], top_k: int = 3) -> list[Prediction]:
        import torch

        batch = torch.as_tensor(np.stack([self.preprocess(p) for p in paths]))
        with torch.no_grad():
            probs = torch.softmax(self.model(batch).float(), dim=1).numpy()
        k = min(top_k, len(self.classes))
        out = []
        for path, p in zip(paths, probs):
            order = np.argsort(-p)[:k]
            out.append(Prediction(str(path), [(self.classes[i], float(p[i])) for i in order]))
        return out
