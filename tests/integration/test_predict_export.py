"""`hpo predict` on real test images and a photo-like image; the ONNX and TorchScript exports."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from hpo.testing import run_hpo

pytestmark = pytest.mark.integration


def test_predict_agrees_with_the_model_on_100_real_test_images(tmp_path, smoke_run, smoke_model, smoke_data, data_dir):
    from PIL import Image

    images = smoke_data.x_test[:100]
    paths = []
    for i, image in enumerate(images):
        paths.append(tmp_path / f"test_{i:03d}.png")
        Image.fromarray(image[0]).save(paths[-1])
    with torch.no_grad():
        expected = smoke_model(torch.as_tensor(images, dtype=torch.float32) / 255.0).argmax(1).numpy()
    result = run_hpo(
        [
            "predict",
            "models:/smoke@champion",
            *map(str, paths),
            "--json",
            "--top-k",
            "2",
            "--tracking-uri",
            smoke_run.uri,
        ],
        smoke_run.work,
        data_dir,
    )
    assert result.returncode == 0, result.stderr
    answers = json.loads(result.stdout)
    assert [a["image"] for a in answers] == [str(p) for p in paths]
    predicted = [smoke_data.classes.index(a["predictions"][0]["class"]) for a in answers]
    assert predicted == expected.tolist()
    assert all(len(a["predictions"]) == 2 for a in answers)


def test_predict_handles_a_photo_like_image(tmp_path, smoke_run, smoke_model, smoke_data, data_dir):
    """A dark garment on a large white canvas, off-centre: inverted, cropped, centred, resized."""
    from PIL import Image

    with torch.no_grad():
        probs = torch.softmax(smoke_model(torch.as_tensor(smoke_data.x_test, dtype=torch.float32) / 255.0), 1)
    trouser = smoke_data.classes.index("Trouser")
    confident = np.flatnonzero((smoke_data.y_test == trouser) & (probs[:, trouser].numpy() > 0.9))
    assert len(confident), "the smoke model should recognise some trousers"
    garment = 255 - smoke_data.x_test[confident[0], 0]  # dark garment on white
    big = Image.fromarray(garment).resize((112, 112), Image.Resampling.BICUBIC)
    canvas = Image.new("L", (400, 300), 255)
    canvas.paste(big, (40, 150))
    photo = tmp_path / "photo.jpg"
    canvas.convert("RGB").save(photo, quality=95)
    result = run_hpo(
        ["predict", "models:/smoke@champion", str(photo), "--tracking-uri", smoke_run.uri], smoke_run.work, data_dir
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("  ")[1].startswith("Trouser"), result.stdout


def test_predict_rejects_missing_files_and_models(tmp_path, smoke_run, data_dir):
    missing = run_hpo(["predict", "models:/smoke@champion", str(tmp_path / "nope.png")], smoke_run.work, data_dir)
    assert missing.returncode == 2 and "no such file" in missing.stderr
    (tmp_path / "x.png").write_bytes(b"not an image")
    unknown = run_hpo(
        ["predict", "models:/nosuchmodel/1", str(tmp_path / "x.png"), "--tracking-uri", smoke_run.uri],
        smoke_run.work,
        data_dir,
    )
    assert unknown.returncode == 1 and "cannot load model" in unknown.stderr


def test_onnx_export_matches_pytorch_top1_on_256_test_images(smoke_runs, smoke_model, data_dir):
    import onnxruntime as ort

    from hpo.data import load_data
    from hpo.study import load_study
    from hpo.testing import REPO_ROOT

    client, by_kind = smoke_runs
    (final,) = by_kind["final"]
    exports = client.download_artifacts(final.info.run_id, "exports")
    study = load_study(REPO_ROOT / "studies" / "smoke.yaml")
    config = study.config.dataset.model_copy(update={"data_dir": str(data_dir), "subset": None})
    x = torch.as_tensor(load_data(config, 0).x_test[:256], dtype=torch.float32) / 255.0
    with torch.no_grad():
        reference = smoke_model(x).argmax(1).numpy()
    session = ort.InferenceSession(f"{exports}/model.onnx", providers=["CPUExecutionProvider"])
    onnx_logits = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    assert onnx_logits.shape == (256, 10)
    assert (onnx_logits.argmax(1) == reference).all()
    scripted = torch.jit.load(f"{exports}/model.torchscript.pt")
    with torch.no_grad():
        assert (scripted(x).argmax(1).numpy() == reference).all()
