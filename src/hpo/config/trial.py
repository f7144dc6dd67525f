"""What one trial trains: the schema every sampled configuration must satisfy.

Search spaces are checked against this schema before anything runs (``hpo.space``), and each trial
re-validates its sampled values, so a trial never starts on a configuration the trainer cannot honour.
No torch import here: ``hpo validate`` stays fast.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


def probability(default: float = 0.0):
    return Field(default, ge=0.0, le=1.0)


class Strict(BaseModel):
    """Unknown keys are errors, never silently dropped."""

    model_config = ConfigDict(extra="forbid")


class DropoutConfig(Strict):
    placement: Literal["none", "after_pool", "head", "everywhere"] = "none"
    rate: float = Field(0.0, ge=0.0, lt=1.0)


class CNNConfig(Strict):
    """A plain conv net: ``depth`` conv blocks split over up to three stages, each ending in a 2x2 max-pool;
    the width doubles at every stage. Global average pooling, then an optional hidden layer."""

    name: Literal["cnn"] = "cnn"
    depth: int = Field(4, ge=1, le=12)
    width: int = Field(32, ge=4, le=512)
    kernel_size: Literal[1, 3, 5, 7] = 3
    batchnorm: Literal["none", "before_activation", "after_activation"] = "before_activation"
    dropout: DropoutConfig = DropoutConfig()
    activation: Literal["relu", "leaky_relu", "gelu"] = "relu"
    head_width: int = Field(0, ge=0, le=4096)


# One entry per model family; ``hpo.models`` registers a builder under the same name.
MODEL_CONFIGS: dict[str, type[Strict]] = {"cnn": CNNConfig}
ModelConfig = CNNConfig


class OptimizerConfig(Strict):
    name: Literal["sgd", "adam", "adamw"] = "sgd"
    lr: float = Field(0.05, gt=0.0, le=10.0)
    weight_decay: float = Field(5e-4, ge=0.0, le=1.0)
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    nesterov: bool = True


class ScheduleConfig(Strict):
    """Learning-rate schedule over the trial's epochs, stepped every batch."""

    name: Literal["constant", "cosine", "step", "onecycle"] = "onecycle"
    warmup_fraction: float = Field(0.2, ge=0.0, lt=1.0)
    step_every: int = Field(3, ge=1)
    gamma: float = Field(0.2, gt=0.0, le=1.0)


class AugmentConfig(Strict):
    """Each augmentation is applied to a sample with its probability, on whole batches."""

    hflip: float = probability()
    translate: float = probability()
    translate_px: int = Field(2, ge=1, le=8)
    rotate: float = probability()
    rotate_degrees: float = Field(10.0, gt=0.0, le=180.0)


class EarlyStoppingConfig(Strict):
    patience: int | None = Field(None, ge=1)
    min_delta: float = Field(0.0, ge=0.0)


class TrialConfig(Strict):
    model: ModelConfig = CNNConfig()
    optimizer: OptimizerConfig = OptimizerConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    augment: AugmentConfig = AugmentConfig()
    batch_size: int = Field(128, ge=2, le=8192)
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)
    early_stopping: EarlyStoppingConfig = EarlyStoppingConfig()
