import pytest
import torch

from hpo.config.trial import AugmentConfig, Probability, TrialConfig
from hpo.data.augment import (
    AUGMENTATIONS,
    BatchAugment,
    check_registry,
    geometric,
    hflip,
    register_augmentation,
    translate,
)


@pytest.fixture(scope="module")
def images():
    """Noise in (0.05, 0.95): every pixel differs from its neighbours, so any flip or shift shows."""
    return 0.05 + 0.9 * torch.rand(256, 1, 28, 28, generator=torch.Generator().manual_seed(0))


OPS = {
    "hflip": lambda x, p, g: hflip(x, p, g),
    "translate": lambda x, p, g: translate(x, p, 2, g),
    "geometric": lambda x, p, g: geometric(x, AugmentConfig(rotate=p, rotate_degrees=15.0), g),
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
    shifts = set(zip((ys - 4).tolist(), (xs - 4).tolist(), strict=True))
    assert (0, 0) not in shifts
    assert shifts == {(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)} - {(0, 0)}


def test_batch_augment_composes_and_is_seeded(images):
    config = AugmentConfig(hflip=0.5, translate=0.5, rotate=0.5)
    a = BatchAugment(config, torch.Generator().manual_seed(1))(images)
    b = BatchAugment(config, torch.Generator().manual_seed(1))(images)
    assert torch.equal(a, b)
    assert not BatchAugment(AugmentConfig()).active


# -------------------------------------------------------------------- every augmentation, through BatchAugment
EVERY = ["hflip", "vflip", "translate", "rotate", "affine", "resized_crop", "color_jitter", "erasing"]
MIXING = ["cutmix", "mixup"]


def test_every_probability_in_the_config_has_one_registered_op():
    check_registry()  # also run at import: hpo.data.augment does not import when they disagree
    assert AugmentConfig.probabilities() == tuple(EVERY + MIXING)
    read = [name for aug in AUGMENTATIONS.values() for name in aug.reads]
    assert sorted(read) == sorted(EVERY + MIXING) and len(read) == len(set(read))
    assert [name for name, aug in AUGMENTATIONS.items() if aug.mixes_labels] == MIXING


def test_a_probability_without_an_op_fails_loudly():
    class WithSharpen(AugmentConfig):
        sharpen: Probability = 0.0

    with pytest.raises(RuntimeError, match=r"probabilities without an op: \['sharpen'\]"):
        check_registry(WithSharpen)


class WithInvert(AugmentConfig):
    """A config with one more augmentation, as adding one to ``AugmentConfig`` would make it."""

    invert: Probability = 0.0


@pytest.fixture
def invert_registered():
    """Register an ``invert`` op for the length of one test; yields the batch shapes it saw."""
    seen: list[tuple[int, ...]] = []

    @register_augmentation("invert")
    def invert(x, targets, config, generator):
        seen.append(tuple(x.shape))
        return 1.0 - x, targets

    try:
        yield seen
    finally:
        del AUGMENTATIONS["invert"]


def test_an_op_registered_with_its_probability_runs_in_every_training_batch(invert_registered):
    from hpo.train import ExecutionPlan, TrainData, train

    check_registry(WithInvert)  # the new probability and its op agree
    with pytest.raises(RuntimeError, match=r"ops reading no declared probability: \['invert'\]"):
        check_registry(AugmentConfig)  # an op the config does not declare is refused
    config = TrialConfig(model={"depth": 1, "width": 4}, augment=WithInvert(invert=1.0), batch_size=16)
    assert isinstance(config.augment, WithInvert)
    assert not BatchAugment(WithInvert(invert=0.0)).active  # probability 0: left out
    g = torch.Generator().manual_seed(0)
    data = TrainData(
        x_train=torch.randint(0, 256, (64, 1, 8, 8), dtype=torch.uint8, generator=g),
        y_train=torch.arange(64) % 2,
        x_val=None,
        y_val=None,
        num_classes=2,
        mean=(0.5,),
        std=(0.25,),
    )
    train(config, data, epochs=2, plan=ExecutionPlan())
    assert invert_registered == [(16, 1, 8, 8)] * 8  # 4 batches per epoch, 2 epochs


def test_the_registry_is_the_shipped_one_again_after_the_fixture():
    assert "invert" not in AUGMENTATIONS
    check_registry()


def _noise(n: int, channels: int, seed: int = 0) -> torch.Tensor:
    """Images whose every pixel differs from its neighbours: any change of geometry or value shows."""
    return 0.05 + 0.9 * torch.rand(n, channels, 24, 24, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("name", EVERY + MIXING)
def test_every_augmentation_at_p0_is_the_identity(name, channels):
    torch.manual_seed(0)
    x = _noise(64, channels)
    targets = torch.nn.functional.one_hot(torch.arange(64) % 10, 10).float()
    out, mixed = BatchAugment(AugmentConfig(**{name: 0.0}), torch.Generator().manual_seed(0), channels)(x, targets)
    assert torch.equal(out, x) and torch.equal(mixed, targets)


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("name", EVERY + MIXING)
def test_every_augmentation_at_p1_changes_every_image(name, channels):
    torch.manual_seed(0)
    x = _noise(64, channels)
    targets = torch.nn.functional.one_hot(torch.arange(64), 64).float()
    augment = BatchAugment(AugmentConfig(**{name: 1.0}), torch.Generator().manual_seed(0), channels)
    assert augment.active
    out, _ = augment(x, targets)
    assert out.shape == x.shape and out.dtype == x.dtype
    changed = (out != x).flatten(1).any(1)  # MixUp's Beta(0.2, 0.2) weights can be within 1e-4 of 1
    assert changed.all(), f"{name}: {int((~changed).sum())} of 64 images unchanged"


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("name", EVERY + MIXING)
def test_every_augmentation_changes_its_share_and_leaves_the_others_bit_for_bit(name, channels):
    """Ops transform the whole batch (no host sync to find the picked samples): the unpicked get identity
    parameters or are blended back, and must come out exactly as they went in, targets too."""
    x = _noise(512, channels)
    targets = torch.nn.functional.one_hot(torch.arange(512) % 10, 10).float()
    out, mixed = BatchAugment(AugmentConfig(**{name: 0.3}), torch.Generator().manual_seed(0), channels)(x, targets)
    same = (out == x).flatten(1).all(1)
    assert 0.6 < same.float().mean().item() < 0.8  # 30 % picked, each of them changed
    if name in MIXING:
        assert torch.equal(mixed[same], targets[same]) and not torch.equal(mixed, targets)


def test_colour_jitter_is_a_per_image_linear_map_on_grey_and_turns_hues_on_rgb():
    from hpo.data.augment import color_jitter

    g = torch.Generator().manual_seed(0)
    grey = 0.3 + 0.4 * torch.rand(64, 1, 16, 16, generator=g)  # no clamping at this strength
    out = color_jitter(grey, 1.0, 0.2, 0.0, g)
    for before, after in zip(grey.flatten(1), out.flatten(1), strict=True):
        slope, icept = torch.linalg.lstsq(torch.stack([before, torch.ones_like(before)], 1), after[:, None]).solution
        assert torch.allclose(before * slope + icept, after, atol=1e-5) and 0.6 < slope.item() < 1.5
    red = torch.zeros(256, 3, 8, 8)
    red[:, 0] = 0.8
    turned = color_jitter(red, 1.0, 0.01, 0.5, g)
    dominant = turned.mean((2, 3)).argmax(1)
    assert 0.2 < (dominant != 0).float().mean() < 0.9  # half a turn either way: many are no longer red


def _partner_and_share(out: torch.Tensor, targets: torch.Tensor, i: int) -> tuple[int, float]:
    """(the other class in sample i's target, the weight the target gives it); classes = sample indices."""
    others = [j for j in torch.nonzero(targets[i]).flatten().tolist() if j != i]
    assert len(others) == 1 and torch.isclose(targets[i].sum(), torch.tensor(1.0))
    return others[0], float(targets[i, others[0]])


def test_cutmix_labels_follow_the_area_pasted():
    x = _noise(128, 3)
    targets = torch.nn.functional.one_hot(torch.arange(128), 128).float()
    out, mixed = BatchAugment(AugmentConfig(cutmix=1.0), torch.Generator().manual_seed(3), 3)(x, targets)
    shares = []
    for i in range(128):
        j, share = _partner_and_share(out, mixed, i)
        from_partner = (out[i] == x[j]).all(0)
        from_self = (out[i] == x[i]).all(0)
        assert (from_partner | from_self).all()  # every pixel is one image's or the other's
        assert share == pytest.approx(from_partner.float().mean().item(), abs=1e-6)
        rows, cols = torch.nonzero(from_partner, as_tuple=True)
        assert from_partner[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1].all()  # one rectangle
        shares.append(share)
    assert 0.35 < sum(shares) / len(shares) < 0.65  # Beta(1, 1): half the area on average


def test_mixup_labels_follow_the_weights_of_the_blend():
    x = _noise(128, 1)
    targets = torch.nn.functional.one_hot(torch.arange(128), 128).float()
    out, mixed = BatchAugment(AugmentConfig(mixup=1.0, mixup_alpha=0.4), torch.Generator().manual_seed(4), 1)(
        x, targets
    )
    for i in range(128):
        j, share = _partner_and_share(out, mixed, i)
        assert torch.allclose(out[i], (1 - share) * x[i] + share * x[j], atol=1e-5)


def test_the_trainer_learns_with_every_augmentation_on(fashion_subset):
    """Soft targets from CutMix/MixUp reach the loss: a short run on real data still learns."""
    from hpo.config.trial import TrialConfig
    from hpo.train import TrainData, train

    d = fashion_subset
    data = TrainData.from_arrays(d.x_train, d.y_train, d.x_val, d.y_val, d.num_classes, d.mean, d.std)
    config = TrialConfig.model_validate(
        {
            "model": {"depth": 3, "width": 16},
            "batch_size": 32,
            "optimizer": {"name": "adamw", "lr": 0.003},
            "augment": dict.fromkeys(EVERY + MIXING, 0.2),
            "label_smoothing": 0.05,
        }
    )
    result = train(config, data, epochs=3, threads=1)
    assert result.history[-1].val_accuracy > 0.6  # chance: 0.1


@pytest.mark.parametrize("channels", [1, 3])
def test_the_cpu_subset_resample_equals_the_static_shape_one(channels, monkeypatch):
    """On a CPU the geometric ops resample only the samples they moved; on an accelerator the whole batch,
    keeping the unmoved ones: the same draws give the same images either way."""
    from hpo.data import augment

    x = torch.rand(64, channels, 28, 28)
    config = AugmentConfig(rotate=0.5, affine=0.5, resized_crop=0.5)
    out = {}
    for static in (False, True):
        monkeypatch.setattr(augment, "STATIC_SHAPES_ON_CPU", static)
        out[static] = augment.geometric(x, config, torch.Generator().manual_seed(3))
    assert torch.equal(out[False], out[True])
    assert 0 < (out[True] != x).flatten(1).any(1).sum() < len(x)
