"""The spec language: pydantic v2 models, one per YAML section. Unknown keys are errors.

Conventions stated once here and converted per backend:
- ``batch_norm.momentum`` is the decay of the running average (TF/Keras convention):
  ``running = momentum * running + (1 - momentum) * batch``. torch's momentum is ``1 - momentum``.
- ``padding: same`` is TensorFlow's SAME (asymmetric on stride 2, depends on input size);
  ``padding: symmetric`` pads ``(kernel - 1) // 2`` on every side.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

Activation = Literal["swish", "silu", "relu", "relu6", "gelu", "hard_swish"]
Padding = Literal["same", "symmetric"]
BlockKind = Literal["mbconv", "fused_mbconv"]

PositiveInt = Annotated[int, Field(gt=0)]
PositiveFloat = Annotated[float, Field(gt=0)]
Fraction = Annotated[float, Field(ge=0, lt=1)]
Stride = Literal[1, 2]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)


def _odd_kernel(value: int) -> int:
    if value % 2 == 0:
        raise ValueError(f"expected an odd kernel size, found {value}")
    return value


class Input(_Section):
    """The nominal input image (before scaling) and its normalization constants."""

    resolution: PositiveInt = Field(224, description="base input resolution in pixels (square)")
    channels: PositiveInt = 3
    mean: tuple[float, ...] = Field((0.485, 0.456, 0.406), description="per-channel mean of 0..1 pixels")
    std: tuple[PositiveFloat, ...] = Field((0.229, 0.224, 0.225), description="per-channel std of 0..1 pixels")

    @field_validator("mean", "std")
    @classmethod
    def _one_per_channel(cls, value: tuple[float, ...], info: ValidationInfo) -> tuple[float, ...]:
        channels = info.data.get("channels", 3)
        if len(value) != channels:
            raise ValueError(f"expected {channels} values (one per input channel), found {len(value)}")
        return value


class BatchNorm(_Section):
    eps: PositiveFloat = 1e-3
    momentum: float = Field(0.99, gt=0, lt=1, description="running-average decay, TF/Keras convention")


class Defaults(_Section):
    """Settings every block inherits unless its stage overrides them."""

    activation: Activation = "swish"
    batch_norm: BatchNorm = BatchNorm()
    padding: Padding = "same"
    se_ratio: Fraction = 0.25
    drop_path_rate: Fraction = 0.2
    channel_divisor: PositiveInt = 8
    round_limit: float = Field(0.9, ge=0, lt=1, description="the 10% rule: 0.9 for V1, 0 disables it (V2)")


class Stem(_Section):
    channels: PositiveInt = 32
    kernel: PositiveInt = 3
    stride: Stride = 2

    _kernel = field_validator("kernel")(_odd_kernel)


class Stage(_Section):
    block: BlockKind
    repeats: PositiveInt
    kernel: PositiveInt
    stride: Stride
    expansion: PositiveInt
    channels: PositiveInt
    se_ratio: Fraction | None = Field(None, description="overrides defaults.se_ratio (0 = no SE)")
    activation: Activation | None = Field(None, description="overrides defaults.activation")

    _kernel = field_validator("kernel")(_odd_kernel)


class Head(_Section):
    channels: PositiveInt = Field(1280, description="1x1 conv width before pooling (scaled by width)")
    dropout: Fraction = 0.2
    num_classes: PositiveInt = 1000


class CompoundScaling(_Section):
    """EfficientNet's compound rule: depth alpha^phi, width beta^phi, resolution gamma^phi."""

    method: Literal["compound"]
    phi: float = Field(ge=0)
    alpha: float = Field(1.2, ge=1)
    beta: float = Field(1.1, ge=1)
    gamma: float = Field(1.15, ge=1)
    resolution_divisor: PositiveInt = Field(1, description="round the scaled resolution to a multiple of this")
    dropout: Fraction | None = None
    drop_path_rate: Fraction | None = None


class ExplicitScaling(_Section):
    """Hand-picked multipliers, as the official B1..B7 and V2-B1..B3 use."""

    method: Literal["explicit"]
    width: PositiveFloat = 1.0
    depth: PositiveFloat = 1.0
    resolution: PositiveInt | None = Field(None, description="absolute input resolution; default input.resolution")
    dropout: Fraction | None = None
    drop_path_rate: Fraction | None = None


Scaling = Annotated[CompoundScaling | ExplicitScaling, Field(discriminator="method")]


class Range(_Section):
    """A value that moves linearly from ``start`` to ``end`` across progressive-learning stages."""

    start: float = Field(ge=0)
    end: float = Field(ge=0)


class Progressive(_Section):
    """EfficientNetV2 progressive learning: image size and regularization grow stage by stage."""

    stages: PositiveInt = 4
    image_size: Range
    randaugment_magnitude: Range
    mixup_alpha: Range
    dropout: Range


class Training(_Section):
    """Recipe defaults the training entrypoints read (the TF reference recipe by default)."""

    optimizer: Literal["rmsprop", "sgd", "adamw"] = "rmsprop"
    lr_per_256: PositiveFloat = Field(0.016, description="learning rate for a global batch of 256, scaled linearly")
    batch_size: PositiveInt = Field(256, description="global batch size")
    schedule: Literal["exponential", "cosine"] = "exponential"
    decay_rate: PositiveFloat = 0.97
    decay_epochs: PositiveFloat = 2.4
    warmup_epochs: float = Field(5, ge=0)
    epochs: PositiveInt = 350
    weight_decay: float = Field(1e-5, ge=0)
    label_smoothing: Fraction = 0.1
    ema_decay: float = Field(0.9999, ge=0, lt=1)
    augmentation: Literal["autoaugment", "randaugment", "none"] = "autoaugment"
    randaugment_magnitude: float = Field(10, ge=0)
    mixup_alpha: float = Field(0, ge=0)
    train_resolution: PositiveInt | None = Field(None, description="default: the scaled resolution")
    crop_fraction: float = Field(0.875, gt=0, le=1, description="eval center crop: resize to res/crop, crop res")
    progressive: Progressive | None = None


class Spec(_Section):
    """A model family member: architecture, scaling and training recipe."""

    name: str = Field(pattern=r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$", max_length=64, description="lowercase-with-dashes")
    description: str = Field("", max_length=2000)
    extends: str | None = Field(None, description="relative path of a spec this one inherits from")
    input: Input = Input()
    defaults: Defaults = Defaults()
    stem: Stem = Stem()
    stages: list[Stage] = Field(min_length=1)
    head: Head = Head()
    scaling: Scaling | None = None
    training: Training = Training()
