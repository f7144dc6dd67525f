import itertools

import pytest
import torch
import torch.nn.functional as F

from hpo.config.trial import MODEL_CONFIGS, CNNConfig
from hpo.models import create_model, list_families
from hpo.train import Preferences

BATCHNORM = ["none", "before_activation", "after_activation"]
DROPOUT = ["none", "after_pool", "head", "everywhere"]


def test_every_config_schema_has_a_builder():
    assert list_families() == sorted(MODEL_CONFIGS)


@pytest.mark.parametrize("batchnorm, dropout", list(itertools.product(BATCHNORM, DROPOUT)))
def test_cnn_builds_and_trains_a_step_for_every_placement(batchnorm, dropout):
    torch.manual_seed(0)
    config = CNNConfig(
        depth=3, width=8, batchnorm=batchnorm, dropout={"placement": dropout, "rate": 0.3}, head_width=16
    )
    model = create_model(config, in_channels=1, num_classes=10)
    has_bn = any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    has_dropout = any(isinstance(m, (torch.nn.Dropout, torch.nn.Dropout2d)) for m in model.modules())
    assert has_bn == (batchnorm != "none")
    assert has_dropout == (dropout != "none")

    x, y = torch.rand(8, 1, 28, 28), torch.randint(0, 10, (8,))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    before = [p.detach().clone() for p in model.parameters()]
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    opt.step()
    assert model(x).shape == (8, 10)
    assert all(not torch.equal(b, p) for b, p in zip(before, model.parameters(), strict=False) if p.grad is not None)


@pytest.mark.parametrize("depth", [1, 2, 5, 8, 12])
@pytest.mark.parametrize("activation", ["relu", "leaky_relu", "gelu"])
def test_cnn_depths_and_activations(depth, activation):
    model = create_model(CNNConfig(depth=depth, width=4, activation=activation, kernel_size=5), 3, 7)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == depth
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 7)


def test_classifier_normalises_inside_the_model():
    model = create_model(CNNConfig(depth=1, width=4), 1, 10, mean=(0.5,), std=(0.25,))
    assert model.mean.item() == 0.5 and model.std.item() == 0.25
    assert "mean" in model.state_dict()


def test_unknown_family_lists_the_registered_ones():
    class Fake:
        name = "transformer"

    with pytest.raises(KeyError, match="registered: alexnet, cnn, densenet"):
        create_model(Fake(), 1, 10)


# ---------------------------------------------------------------------------------------------- the zoo
ZOO_DEFAULTS = {"timm": {"model": "resnet10t"}}  # timm takes any model name; a small one here
VARIANTS = (
    [("resnet", v) for v in ("resnet18", "resnet34", "resnet50")]
    + [("vgg", v) for v in ("vgg11_bn", "vgg16_bn")]
    + [("mobilenet", v) for v in ("mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large")]
    + [("efficientnet", v) for v in ("efficientnet_b0", "efficientnet_b1", "efficientnet_b2")]
    + [("densenet", "densenet121"), ("inception", "inception_v3")]
)


def _family_config(family: str, **extra):
    return MODEL_CONFIGS[family].model_validate({"name": family, **ZOO_DEFAULTS.get(family, {}), **extra})


@pytest.mark.parametrize("channels, size", [(1, 28), (3, 32)])
@pytest.mark.parametrize("family", list_families())
def test_every_family_builds_for_small_inputs_and_trains_a_step(family, channels, size):
    """Through hpo's own trainer (its execution plan: precision and layout as measured): 8 images, 2 steps of 4."""
    import numpy as np

    from hpo.config.trial import TrialConfig
    from hpo.train import TrainData, train

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (8, channels, size, size), dtype=np.uint8)
    y = np.arange(8) % 5
    data = TrainData.from_arrays(x, y, x[:4], y[:4], 5, (0.5,) * channels, (0.25,) * channels)
    config = TrialConfig.model_validate(
        {"model": _family_config(family).model_dump(), "batch_size": 4, "optimizer": {"name": "sgd", "lr": 0.01}}
    )
    model = create_model(config.model, channels, 5)
    before = [p.detach().clone() for p in model.parameters()]
    result = train(config, data, epochs=1, threads=1, model=model)
    assert len(result.history) == 1 and np.isfinite(result.history[0].train_loss)
    trained = result.model.float().eval()
    with torch.no_grad():
        out = trained(torch.rand(3, channels, size, size))
    assert out.shape == (3, 5)
    changed = [not torch.equal(b, p.detach().cpu()) for b, p in zip(before, trained.parameters(), strict=False)]
    assert sum(changed) >= len(changed) // 2  # the step reached the network, not just its head


@pytest.mark.parametrize("family, variant", VARIANTS)
def test_every_variant_classifies_32px_rgb(family, variant):
    model = create_model(_family_config(family, variant=variant), 3, 100).eval()
    with torch.no_grad():
        assert model(torch.rand(2, 3, 32, 32)).shape == (2, 100)


def test_a_small_stem_keeps_small_images_large_enough_to_convolve():
    """ResNet's ImageNet stem (7x7 stride 2 + max-pool) shrinks 28 px to 7 before the first block; the
    small stem keeps all 28."""
    seen = {}
    for stem in ("small", "imagenet"):
        model = create_model(_family_config("resnet", stem=stem), 1, 10).eval()
        model.net.layer1.register_forward_hook(lambda m, i, o, stem=stem: seen.__setitem__(stem, o.shape[-1]))
        model(torch.rand(1, 1, 28, 28))
    assert seen == {"small": 28, "imagenet": 7}


def test_inception_needs_75_pixels_and_resizes_to_them():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="greater than or equal to 75"):
        _family_config("inception", resize=64)
    model = create_model(_family_config("inception"), 1, 10)
    sizes = []
    model.net[0].register_forward_hook(lambda m, i, o: sizes.append(tuple(o.shape[-2:])))
    model.eval()(torch.rand(2, 1, 28, 28))
    assert sizes == [(75, 75)]


# ------------------------------------------------------------------------------------- pretrained weights
PRETRAINED_SPACE = """\
model:
  one_of:
    cnn: {depth: 2}
    resnet: {variant: resnet18, pretrained: true}
optimizer: {lr: 0.01}
"""
PRETRAINED_STUDY = """\
name: pt
dataset: {name: fashion_mnist}
search_space: space.yaml
budget: {trials: 2, max_epochs: 1}
"""


def _offline_env(tmp_path):
    """An empty weights cache and no way out: every HTTP(S) request goes to a closed local port."""
    import os

    return {
        **os.environ,
        "TORCH_HOME": str(tmp_path / "torch"),
        "HF_HOME": str(tmp_path / "hf"),
        "HTTPS_PROXY": "http://127.0.0.1:9",
        "HTTP_PROXY": "http://127.0.0.1:9",
        "NO_PROXY": "",
    }


def test_pretrained_offline_fails_validation_naming_the_missing_weights(tmp_path):
    import subprocess
    import sys

    (tmp_path / "space.yaml").write_text(PRETRAINED_SPACE)
    (tmp_path / "study.yaml").write_text(PRETRAINED_STUDY)
    result = subprocess.run(
        [sys.executable, "-m", "hpo.cli", "validate", "study.yaml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env=_offline_env(tmp_path),
    )
    assert result.returncode == 2
    expected = tmp_path / "torch" / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    assert (
        f"space.yaml:4: model.one_of.resnet.pretrained: pretrained weights for resnet18 are not cached "
        f"({expected}) and https://download.pytorch.org/models/resnet18-f37072fd.pth cannot be reached"
    ) in result.stderr.replace("\n", "")
    assert "nothing was run" in result.stderr

    # the same file in the cache: the study validates (offline still)
    expected.parent.mkdir(parents=True)
    expected.write_bytes(b"weights")
    result = subprocess.run(
        [sys.executable, "-m", "hpo.cli", "validate", "study.yaml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env=_offline_env(tmp_path),
    )
    assert result.returncode == 0, result.stderr


# ------------------------------------------------------------------------------------- transfer learning
@pytest.mark.parametrize("family", list_families())
def test_every_family_splits_into_backbone_stages_and_a_head(family):
    from hpo.models.zoo import backbone_parts

    model = create_model(_family_config(family), 3, 7)
    stages, head = backbone_parts(model)
    assert len(stages) >= 2
    head_params = {id(p) for p in head.parameters()}
    stage_params = [{id(p) for p in s.parameters()} for s in stages]
    assert head_params and all(stage_params)
    assert not head_params & set().union(*stage_params)
    final = [m for m in head.modules() if isinstance(m, torch.nn.Linear)][-1]
    assert final.out_features == 7  # the head ends in the new classifier


def test_a_frozen_backbone_unfreezes_its_last_stage_on_schedule():
    import numpy as np

    from hpo.config.trial import TrialConfig
    from hpo.models.zoo import backbone_parts
    from hpo.train import TrainData, train
    from hpo.train.loop import make_optimizer

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (32, 3, 32, 32), dtype=np.uint8)
    y = np.arange(32) % 4
    data = TrainData.from_arrays(x, y, None, None, 4, (0.5,) * 3, (0.25,) * 3)
    config = TrialConfig.model_validate(
        {
            "model": {"name": "resnet"},
            "batch_size": 8,
            "optimizer": {"name": "sgd", "lr": 0.05},
            "transfer": {"freeze_backbone": True, "unfreeze_last": 1, "unfreeze_after": 1, "backbone_lr_mult": 0.1},
        }
    )
    model = create_model(config.model, 3, 4)
    stages, head = backbone_parts(model)
    snapshots = [[{n: p.detach().clone() for n, p in part.named_parameters()} for part in [*stages, head]]]

    def report(epoch, _model):
        snapshots.append([{n: p.detach().clone() for n, p in part.named_parameters()} for part in [*stages, head]])

    train(config, data, epochs=2, threads=1, model=model, report=report, prefs=Preferences(precision="fp32"))

    def moved(before, after):
        return [any(not torch.equal(before[i][n], after[i][n]) for n in before[i]) for i in range(len(before))]

    first, second = moved(snapshots[0], snapshots[1]), moved(snapshots[1], snapshots[2])
    assert first == [False] * len(stages) + [True]  # epoch 1: only the head learns
    assert second == [False] * (len(stages) - 1) + [True, True]  # epoch 2: the last stage joins
    assert sorted({g["lr"] for g in make_optimizer(config, model).param_groups}) == pytest.approx([0.005, 0.05])


@pytest.mark.parametrize("family, variant", [("resnet", "resnet18"), ("inception", "inception_v3")])
def test_pretrained_loads_the_original_architectures_weights(family, variant, monkeypatch):
    """``pretrained: true`` loads the ImageNet state dict of torchvision's own architecture, every key of it
    (Inception's includes the auxiliary head, which hpo then drops); here the weights come from a freshly
    initialised original network instead of the download."""
    from hpo._torchvision import import_torchvision

    models = import_torchvision().models
    torch.manual_seed(0)
    original = models.get_model(variant, weights=None, init_weights=True) if family == "inception" else None
    original = original or models.get_model(variant, weights=None)
    state = original.state_dict()

    class Weights:
        DEFAULT = type("Default", (), {"get_state_dict": staticmethod(lambda **_: state)})

    monkeypatch.setattr(models, "get_model_weights", lambda name: Weights)
    model = create_model(_family_config(family, variant=variant, pretrained=True), 3, 7).eval()
    loaded = dict(model.named_parameters())
    # a deep weight (past the stem hpo may rebuild) arrived unchanged
    name, tensor = next(
        (n, t)
        for n, t in state.items()
        if n.endswith("weight") and t.ndim == 4 and "1a" not in n and not n.startswith("conv1")
    )
    match = [p for n, p in loaded.items() if n.endswith(name)]
    assert match and torch.equal(match[0].detach(), tensor), name
    with torch.no_grad():
        assert model(torch.rand(2, 3, 75, 75)).shape == (2, 7)
    assert not any("AuxLogits" in n for n in loaded)
