"""What one trial trains: the schema every sampled configuration must satisfy.

Search spaces are checked against this schema before anything runs (``hpo.space``), and each trial
re-validates its sampled values, so a trial never starts on a configuration the trainer cannot honour.
No torch import here: ``hpo validate`` stays fast.
"""

from __future__ import annotations

import types
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _AugmentationProbability:
    """Marks an ``AugmentConfig`` field as the probability of one augmentation (in the field's metadata, out
    of the JSON schema): ``hpo.data.augment`` must implement an op for each such field, and only for them."""


# The probability an augmentation picks a sample with.
Probability = Annotated[float, Field(ge=0.0, le=1.0), _AugmentationProbability()]


class Strict(BaseModel):
    """Unknown keys are errors, never silently dropped."""

    model_config = ConfigDict(extra="forbid")


def boolean_numbers(model: type[BaseModel], data: Any, path: tuple = ()) -> list[tuple[tuple, bool]]:
    """(path, value) of each YAML boolean in ``data`` where ``model``'s schema takes only numbers: pydantic
    would take ``trials: yes`` as 1. Checked beside the schema, on the raw data."""
    found: list[tuple[tuple, bool]] = []
    if not isinstance(data, dict):
        return found
    fields = {**model.model_fields, **{f.alias: f for f in model.model_fields.values() if f.alias}}
    for key, value in data.items():
        field = fields.get(key)
        if field is None:
            continue
        if isinstance(value, bool):
            if _numbers_only(field.annotation):
                found.append(((*path, key), value))
        elif isinstance(value, dict):
            for sub in _models_in(field.annotation):
                found += [hit for hit in boolean_numbers(sub, value, (*path, key)) if hit not in found]
    return found


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    out: list[type[BaseModel]] = []
    origin = get_origin(annotation)
    if origin in (Annotated, Union, types.UnionType):
        for arg in get_args(annotation):
            out += _models_in(arg)
    elif isinstance(annotation, type) and issubclass(annotation, BaseModel):
        out.append(annotation)
    return out


def _numbers_only(annotation: Any) -> bool:
    """Whether a field takes numbers and nothing a boolean could stand for (bool, str, Any)."""
    kinds: set[Any] = set()

    def collect(t: Any) -> None:
        origin = get_origin(t)
        if origin is Annotated:
            collect(get_args(t)[0])
        elif origin is Literal:
            kinds.update(type(a) for a in get_args(t))
        elif origin in (Union, types.UnionType):
            for arg in get_args(t):
                collect(arg)
        else:
            kinds.add(t)

    collect(annotation)
    kinds.discard(type(None))
    return bool(kinds) and kinds <= {int, float}


class DropoutConfig(Strict):
    placement: Literal["none", "after_pool", "head", "everywhere"] = "none"
    rate: float = Field(default=0.0, ge=0.0, lt=1.0)


class CNNConfig(Strict):
    """A plain conv net: ``depth`` conv blocks split over up to three stages, each ending in a 2x2 max-pool;
    the width doubles at every stage. Global average pooling, then an optional hidden layer."""

    name: Literal["cnn"] = "cnn"
    depth: int = Field(default=4, ge=1, le=12)
    width: int = Field(default=32, ge=4, le=512)
    kernel_size: Literal[1, 3, 5, 7] = 3
    batchnorm: Literal["none", "before_activation", "after_activation"] = "before_activation"
    dropout: DropoutConfig = DropoutConfig()
    activation: Literal["relu", "leaky_relu", "gelu"] = "relu"
    head_width: int = Field(default=0, ge=0, le=4096)


class ZooConfig(Strict):
    """What every ImageNet-style family shares: how small inputs get in, and where the weights come from.

    ``stem: small`` (the default) adapts the network to 28-64 px images: its first convolution becomes a
    3x3 with stride 1 taking the dataset's channels, and the early downsampling that would shrink such an
    image to nothing is dropped. ``stem: imagenet`` keeps the original stem (with the first convolution
    taking the dataset's channels), usually together with ``resize``, which scales every batch to
    ``resize`` x ``resize`` pixels inside the model. ``pretrained: true`` starts from ImageNet weights
    (torchvision's, or timm's): then the stem stays as trained and 1-channel images are repeated to 3."""

    stem: Literal["small", "imagenet"] = "small"
    resize: int | None = Field(default=None, ge=16, le=1024)
    pretrained: bool = False
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)  # before the classifier


class ResNetConfig(ZooConfig):
    name: Literal["resnet"] = "resnet"
    variant: Literal["resnet18", "resnet34", "resnet50"] = "resnet18"
    zero_init_residual: bool = False  # start each residual block as the identity


class VGGConfig(ZooConfig):
    name: Literal["vgg"] = "vgg"
    variant: Literal["vgg11_bn", "vgg16_bn"] = "vgg11_bn"
    head_width: int = Field(default=512, ge=16, le=4096)  # the hidden layers of the classifier (ImageNet: 4096)


class MobileNetConfig(ZooConfig):
    name: Literal["mobilenet"] = "mobilenet"
    variant: Literal["mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large"] = "mobilenet_v3_small"
    width_mult: float = Field(default=1.0, ge=0.25, le=2.0)


class EfficientNetConfig(ZooConfig):
    name: Literal["efficientnet"] = "efficientnet"
    variant: Literal["efficientnet_b0", "efficientnet_b1", "efficientnet_b2"] = "efficientnet_b0"
    stochastic_depth: float = Field(default=0.2, ge=0.0, lt=1.0)


class DenseNetConfig(ZooConfig):
    name: Literal["densenet"] = "densenet"
    variant: Literal["densenet121"] = "densenet121"
    growth_rate: int = Field(default=32, ge=4, le=64)
    drop_rate: float = Field(default=0.0, ge=0.0, lt=1.0)  # dropout after each dense layer
    memory_efficient: bool = False  # checkpointing: less memory, slower


class InceptionConfig(ZooConfig):
    """Inception v3 needs at least 75 x 75 pixels: ``resize`` (default 75) scales smaller images up."""

    name: Literal["inception"] = "inception"
    variant: Literal["inception_v3"] = "inception_v3"
    stem: Literal["imagenet"] = "imagenet"
    resize: int = Field(default=75, ge=75, le=1024)


class AlexNetConfig(ZooConfig):
    name: Literal["alexnet"] = "alexnet"
    head_width: int = Field(default=512, ge=16, le=4096)


class TimmConfig(ZooConfig):
    """Any timm model by name (``timm.list_models()``); timm adapts the input channels itself, and
    ``stem`` does not apply: give small inputs a ``resize`` where the model needs one."""

    name: Literal["timm"] = "timm"
    model: str = Field(pattern=r"^[A-Za-z0-9_.-]+$", min_length=1, max_length=200)
    drop_path: float = Field(default=0.0, ge=0.0, lt=1.0)
    stem: Literal["imagenet"] = "imagenet"


# One entry per model family (``hpo.models`` registers a builder under each ``name``): adding a family is
# its config class here, in this union, and its builder module in hpo.models.
ModelConfig = Annotated[
    CNNConfig
    | ResNetConfig
    | VGGConfig
    | MobileNetConfig
    | EfficientNetConfig
    | DenseNetConfig
    | InceptionConfig
    | AlexNetConfig
    | TimmConfig,
    Field(discriminator="name"),
]
MODEL_CONFIGS: dict[str, type[Strict]] = {
    model.model_fields["name"].default: model for model in get_args(get_args(ModelConfig)[0])
}


class OptimizerConfig(Strict):
    name: Literal["sgd", "adam", "adamw"] = "sgd"
    lr: float = Field(default=0.05, gt=0.0, le=10.0)
    weight_decay: float = Field(default=5e-4, ge=0.0, le=1.0)
    momentum: float = Field(default=0.9, ge=0.0, lt=1.0)
    nesterov: bool = True


class ScheduleConfig(Strict):
    """Learning-rate schedule over the trial's epochs, stepped every batch."""

    name: Literal["constant", "cosine", "step", "onecycle"] = "onecycle"
    warmup_fraction: float = Field(default=0.2, ge=0.0, lt=1.0)
    step_every: int = Field(default=3, ge=1)
    gamma: float = Field(default=0.2, gt=0.0, le=1.0)


class AugmentConfig(Strict):
    """Each augmentation is applied to a sample with its probability (searchable), on whole batches on the
    device; the fields after each probability are its magnitude. CutMix and MixUp mix a picked sample with
    another of the batch and its label with the other's, by the area (CutMix) or weight (MixUp) taken."""

    hflip: Probability = 0.0
    vflip: Probability = 0.0
    translate: Probability = 0.0
    translate_px: int = Field(default=2, ge=1, le=8)  # whole-pixel shifts up to this many pixels
    rotate: Probability = 0.0
    rotate_degrees: float = Field(default=10.0, gt=0.0, le=180.0)
    affine: Probability = 0.0  # one random affine map per picked sample:
    affine_translate: float = Field(default=0.1, ge=0.0, le=0.5)  # shift up to this fraction of the size,
    affine_scale: float = Field(default=0.1, ge=0.0, le=0.5)  # zoom by 1 +- this,
    affine_shear: float = Field(default=10.0, ge=0.0, le=45.0)  # shear up to this many degrees
    resized_crop: Probability = 0.0  # a random crop resized back to the full size
    crop_scale: float = Field(default=0.5, gt=0.0, lt=1.0)  # the smallest crop, as a fraction of the area
    color_jitter: Probability = 0.0  # brightness and contrast (and saturation, hue on RGB)
    jitter: float = Field(default=0.2, gt=0.0, le=1.0)
    jitter_hue: float = Field(default=0.05, ge=0.0, le=0.5)
    erasing: Probability = 0.0  # a random rectangle set to zero
    erasing_scale: float = Field(default=0.2, gt=0.02, le=0.5)  # the largest rectangle, as a fraction of the area
    cutmix: Probability = 0.0
    cutmix_alpha: float = Field(default=1.0, gt=0.0, le=10.0)  # Beta(alpha, alpha) draws the kept area
    mixup: Probability = 0.0
    mixup_alpha: float = Field(default=0.2, gt=0.0, le=10.0)  # Beta(alpha, alpha) draws the kept weight

    @classmethod
    def probabilities(cls) -> tuple[str, ...]:
        """The fields that are an augmentation's probability (declared ``Probability``), in order."""
        return tuple(
            name
            for name, field in cls.model_fields.items()
            if any(isinstance(m, _AugmentationProbability) for m in field.metadata)
        )


class TransferConfig(Strict):
    """How the backbone trains (most useful with ``model.pretrained: true``): frozen at first with only the
    new head learning, its last ``unfreeze_last`` stages unfrozen after ``unfreeze_after`` epochs, and at
    ``backbone_lr_mult`` times the head's learning rate throughout."""

    freeze_backbone: bool = False
    unfreeze_last: int = Field(default=0, ge=0, le=100)  # stages counted from the head; 100: all of them
    unfreeze_after: int = Field(default=1, ge=0, le=10_000)  # epochs
    backbone_lr_mult: float = Field(default=1.0, gt=0.0, le=1.0)


class EarlyStoppingConfig(Strict):
    patience: int | None = Field(default=None, ge=1)
    min_delta: float = Field(default=0.0, ge=0.0)


class TrialConfig(Strict):
    model: ModelConfig = CNNConfig()
    optimizer: OptimizerConfig = OptimizerConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    augment: AugmentConfig = AugmentConfig()
    batch_size: int = Field(default=128, ge=2, le=8192)
    label_smoothing: float = Field(default=0.0, ge=0.0, lt=1.0)
    transfer: TransferConfig = TransferConfig()
    early_stopping: EarlyStoppingConfig = EarlyStoppingConfig()

    @model_validator(mode="before")
    @classmethod
    def _cnn_by_default(cls, data):
        """A model without ``name`` is the configurable CNN (as before there were other families)."""
        if isinstance(data, dict) and isinstance(data.get("model"), dict) and "name" not in data["model"]:
            data = {**data, "model": {"name": "cnn", **data["model"]}}
        return data
