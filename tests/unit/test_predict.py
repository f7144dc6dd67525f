"""``hpo predict`` prepares outside images from what the model was trained with (measured from its
training images when it was logged), and answers a multi-label model with every label above the threshold.
Models are real torch.export programs logged to a real MLflow store, as finalize logs them."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from hpo.cli import app
from hpo.predict import Predictor
from hpo.stages.finalize import background_kind, pip_requirements


class Constant(torch.nn.Module):
    """Logits that do not depend on the image: the scores are known exactly."""

    def __init__(self, logits: list[float], pixels: int) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(pixels, len(logits))
        with torch.no_grad():
            self.linear.weight.zero_()
            self.linear.bias.copy_(torch.tensor(logits))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.flatten(1))


@pytest.fixture(autouse=True)
def _mlflow_uri_put_back():
    """log_model sets MLflow's process-wide tracking URI, which MLflow mirrors in $MLFLOW_TRACKING_URI: put
    both back after each test, so that a later test in the process finds its default store."""
    import os

    import mlflow

    before_env = os.environ.get("MLFLOW_TRACKING_URI")
    before = mlflow.get_tracking_uri() if mlflow.is_tracking_uri_set() else None
    yield
    mlflow.set_tracking_uri(before)  # type: ignore[arg-type]  # None: back to unset
    if before_env is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = before_env


def log_model(tmp_path, *, logits, classes, size, background, task="multiclass") -> tuple[str, str]:
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    metadata = {
        "classes": classes,
        "task": task,
        "channels": 1,
        "image_size": [size, size],
        "background": background,
        "mean": [0.5],
        "std": [0.25],
    }
    experiment = mlflow.create_experiment("predict", artifact_location=(tmp_path / "artifacts").as_uri())
    with mlflow.start_run(experiment_id=experiment) as run:
        mlflow.pytorch.log_model(
            Constant(logits, size * size).eval(),
            name="model",
            serialization_format="pt2",
            input_example=np.zeros((2, 1, size, size), np.float32),
            pip_requirements=pip_requirements(),  # as finalize does: MLflow then infers none (a subprocess)
            metadata=metadata,
        )
    return uri, f"runs:/{run.info.run_id}/model"


def digit(size: int, *, light_on_dark: bool) -> np.ndarray:
    """A bar-shaped 'digit' in the middle of a plain background (uint8, H x W)."""
    image = np.zeros((size, size), np.uint8)
    image[size // 4 : 3 * size // 4, size // 2 - 2 : size // 2 + 2] = 255
    return image if light_on_dark else 255 - image


def test_a_multilabel_model_answers_every_label_above_the_threshold(tmp_path):
    logits = [2.0, -1.0, 0.5]  # sigmoid: 0.881, 0.269, 0.622
    classes = ["category=shirt", "colour=red", "colour=blue"]
    uri, model = log_model(tmp_path, logits=logits, classes=classes, size=8, background="varied", task="multilabel")
    Image.fromarray(digit(8, light_on_dark=True)).save(tmp_path / "shirt.png")
    # in-process (MLflow and torch are loaded already): the CLI's own subprocess is tested on the smoke model
    cli = CliRunner()
    image = str(tmp_path / "shirt.png")
    shown = cli.invoke(app, ["predict", model, image, "--tracking-uri", uri])
    assert shown.exit_code == 0, shown.output
    assert "category=shirt 88.1%  colour=blue 62.2%" in shown.stdout and "colour=red" not in shown.stdout
    as_json = cli.invoke(app, ["predict", model, image, "--tracking-uri", uri, "--json", "--threshold", "0.25"])
    assert as_json.exit_code == 0, as_json.output
    (answer,) = json.loads(as_json.stdout)
    assert answer["threshold"] == 0.25
    assert [(x["label"], x["score"]) for x in answer["labels"]] == [
        ("category=shirt", pytest.approx(0.880797, abs=1e-5)),
        ("colour=blue", pytest.approx(0.622459, abs=1e-5)),
        ("colour=red", pytest.approx(0.268941, abs=1e-5)),
    ]  # sigmoid per label: they need not sum to 1
    none = cli.invoke(app, ["predict", model, image, "--tracking-uri", uri, "--threshold", "0.95"])
    assert none.exit_code == 0, none.output
    assert "no label scores 95% or more" in none.stdout


def test_preprocessing_follows_the_background_the_model_was_trained_on(tmp_path):
    _, model = log_model(tmp_path, logits=[0.0, 1.0], classes=["a", "b"], size=28, background="dark")
    predictor = Predictor(model)
    # light digits on a dark background, as the model learned them: not inverted, not moved
    Image.fromarray(digit(28, light_on_dark=True)).save(tmp_path / "light.png")
    np.testing.assert_allclose(predictor.preprocess(tmp_path / "light.png")[0], digit(28, light_on_dark=True) / 255.0)
    # the same digit drawn dark on white paper: inverted to the model's polarity
    Image.fromarray(digit(28, light_on_dark=False)).save(tmp_path / "paper.png")
    np.testing.assert_allclose(predictor.preprocess(tmp_path / "paper.png")[0], digit(28, light_on_dark=True) / 255.0)
    # a larger photo of it: inverted, cropped to the digit (whose height then fills the frame, where the
    # photo had a quarter of empty paper above it) and centred on a dark background
    Image.fromarray(digit(112, light_on_dark=False)).save(tmp_path / "photo.png")
    big = predictor.preprocess(tmp_path / "photo.png")[0]
    assert big.shape == (28, 28) and big[0].max() > 0.5 and big[:, 0].max() < 0.1 and big[:, -1].max() < 0.1


def test_a_model_of_varied_photos_gets_them_resized_not_inverted(tmp_path):
    _, model = log_model(tmp_path, logits=[0.0, 1.0], classes=["a", "b"], size=8, background="varied")
    predictor = Predictor(model)
    sky = np.full((32, 32), 230, np.uint8)  # a bright photo: inverting it would be wrong for such a model
    sky[20:] = 40
    Image.fromarray(sky).save(tmp_path / "sky.png")
    out = predictor.preprocess(tmp_path / "sky.png")[0]
    assert out[0].mean() > 0.85 and out[-1].mean() < 0.2  # bright top, dark bottom, as in the photo


def test_the_background_is_measured_from_the_training_images(fashion_subset, rng):
    assert background_kind(fashion_subset.x_train[:512]) == "dark"
    assert background_kind(255 - fashion_subset.x_train[:512]) == "light"
    photos = rng.integers(0, 256, size=(64, 3, 32, 32), dtype=np.uint8)
    assert background_kind(photos) == "varied"


def test_logging_a_model_leaves_the_default_store_alone(tmp_path):
    """What the fixture above undoes, checked: after a test that logged a model, hpo's default store is again
    ./mlflow/ (not that test's), as for the next test in the process."""
    import os

    from hpo.tracking.mlflow_tracker import default_tracking_uri

    env = os.environ.get("MLFLOW_TRACKING_URI")
    fixture = _mlflow_uri_put_back.__wrapped__()  # the fixture's body, run by hand around one log_model
    next(fixture)
    log_model(tmp_path, logits=[0.0, 1.0], classes=["a", "b"], size=4, background="dark")
    assert os.environ.get("MLFLOW_TRACKING_URI") == f"sqlite:///{tmp_path / 'mlflow.db'}"  # what it sets
    with pytest.raises(StopIteration):
        next(fixture)
    assert os.environ.get("MLFLOW_TRACKING_URI") == env
    assert str(tmp_path) not in default_tracking_uri()
