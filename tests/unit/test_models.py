import itertools

import pytest
import torch
import torch.nn.functional as F

from hpo.config.trial import MODEL_CONFIGS, CNNConfig
from hpo.models import create_model, list_families

BATCHNORM = ["none", "before_activation", "after_activation"]
DROPOUT = ["none", "after_pool", "head", "everywhere"]


def test_every_config_schema_has_a_builder():
    assert list_families() == sorted(MODEL_CONFIGS)


@pytest.mark.parametrize("batchnorm, dropout", list(itertools.product(BATCHNORM, DROPOUT)))
def test_cnn_builds_and_trains_a_step_for_every_placement(batchnorm, dropout):
    torch.manual_seed(0)
    config = CNNConfig(depth=3, width=8, batchnorm=batchnorm, dropout={"placement": dropout, "rate": 0.3},
                       head_width=16)
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
    assert all(not torch.equal(b, p) for b, p in zip(before, model.parameters()) if p.grad is not None)


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
    with pytest.raises(KeyError, match="registered: cnn"):
        create_model(Fake(), 1, 10)
