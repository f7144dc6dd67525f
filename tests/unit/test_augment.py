import pytest
import torch

from hpo.config.trial import AugmentConfig
from hpo.data.augment import BatchAugment, hflip, rotate, translate


@pytest.fixture(scope="module")
def images(fashion_subset):
    return torch.as_tensor(fashion_subset.x_train[:256]).float() / 255.0


OPS = {
    "hflip": lambda x, p, g: hflip(x, p, g),
    "translate": lambda x, p, g: translate(x, p, 2, g),
    "rotate": lambda x, p, g: rotate(x, p, 15.0, g),
}


@pytest.mark.parametrize("op", OPS)
def test_p0_is_identity(images, op):
    out = OPS[op](images, 0.0, torch.Generator().manual_seed(0))
    assert torch.equal(out, images)


@pytest.mark.parametrize("op", OPS)
def test_p1_changes_every_image(images, op):
    for seed in range(3):
        out = OPS[op](images, 1.0, torch.Generator().manual_seed(seed))
        changed = (out != images).flatten(1).any(1)
        assert changed.all(), f"{int((~changed).sum())} images unchanged"
        assert out.shape == images.shape and out.dtype == images.dtype


@pytest.mark.parametrize("op", OPS)
def test_probability_sets_the_fraction_changed(images, op):
    many = images.repeat(8, 1, 1, 1)
    out = OPS[op](many, 0.3, torch.Generator().manual_seed(0))
    fraction = (out != many).flatten(1).any(1).float().mean().item()
    assert 0.2 < fraction < 0.4


def test_translate_moves_by_whole_pixels_within_range():
    x = torch.zeros(500, 1, 9, 9)
    x[:, :, 4, 4] = 1.0
    out = translate(x, 1.0, 2, torch.Generator().manual_seed(0))
    ys, xs = torch.nonzero(out[:, 0] == 1.0, as_tuple=True)[1:]
    assert len(ys) == 500  # one bright pixel per image, moved not smeared
    shifts = set(zip((ys - 4).tolist(), (xs - 4).tolist()))
    assert (0, 0) not in shifts
    assert shifts == {(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)} - {(0, 0)}


def test_batch_augment_composes_and_is_seeded(images):
    config = AugmentConfig(hflip=0.5, translate=0.5, rotate=0.5)
    a = BatchAugment(config, torch.Generator().manual_seed(1))(images)
    b = BatchAugment(config, torch.Generator().manual_seed(1))(images)
    assert torch.equal(a, b)
    assert not BatchAugment(AugmentConfig()).active
