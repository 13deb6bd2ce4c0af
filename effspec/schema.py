"""The spec language: pydantic v2 models, one per YAML section. Unknown keys are errors.

Conventions stated once here and converted per backend:
- ``batch_norm.momentum`` is the decay of the running average (TF/Keras convention):
  ``running = momentum * running + (1 - momentum) * batch``. torch's momentum is ``1 - momentum``.
- ``padding: same`` is TensorFlow's SAME (asymmetric on stride 2, depends on input size);
  ``padding: symmetric`` pads ``(kernel - 1) // 2`` on every side.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationInfo, field_validator

Activation = Literal["swish", "silu", "relu", "relu6", "gelu", "hard_swish"]
Padding = Literal["same", "symmetric"]
BlockKind = Literal["mbconv", "fused_mbconv"]

# Strict: ``true``, ``1.0`` and ``"1"`` are not integers, ``"1.5"`` and ``true`` are not numbers.
# Non-finite floats (.inf, .nan) are rejected for every field (``allow_inf_nan`` below).
PositiveInt = Annotated[int, Field(gt=0, strict=True)]
PositiveFloat = Annotated[float, Field(gt=0, strict=True)]
Fraction = Annotated[float, Field(ge=0, lt=1, strict=True)]
Number = Annotated[float, Field(strict=True)]


def _exact_int(value: Any) -> Any:
    if type(value) is not int:  # Literal[1, 2] alone would take True and 1.0
        shown = str(value).lower() if isinstance(value, bool) else repr(value)
        raise ValueError(f"expected 1 or 2, found {shown}")
    return value


Stride = Annotated[Literal[1, 2], BeforeValidator(_exact_int)]

# Bounds on what a spec may ask for before scaling; effspec/limits.py bounds the scaled model.
MAX_KERNEL = 31
MAX_RESOLUTION = 8192
MAX_INPUT_CHANNELS = 64
MAX_CHANNELS = 16384
MAX_REPEATS = 1000
MAX_EXPANSION = 64
MAX_CLASSES = 100_000
MAX_PHI = 30.0
MAX_COEFFICIENT = 4.0  # alpha, beta, gamma
MAX_MULTIPLIER = 64.0  # explicit width and depth
MAX_PROGRESSIVE_STAGES = 100


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True, allow_inf_nan=False)


def _odd_kernel(value: int) -> int:
    if value % 2 == 0:
        raise ValueError(f"expected an odd kernel size, found {value}")
    return value


class Input(_Section):
    """The nominal input image (before scaling) and its normalization constants."""

    resolution: PositiveInt = Field(224, le=MAX_RESOLUTION, description="base input resolution in pixels (square)")
    channels: PositiveInt = Field(3, le=MAX_INPUT_CHANNELS)
    mean: tuple[Number, ...] = Field((0.485, 0.456, 0.406), description="per-channel mean of 0..1 pixels")
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
    momentum: float = Field(0.99, gt=0, lt=1, strict=True, description="running-average decay, TF/Keras convention")


class Defaults(_Section):
    """Settings every block inherits unless its stage overrides them."""

    activation: Activation = "swish"
    batch_norm: BatchNorm = BatchNorm()
    padding: Padding = "same"
    se_ratio: Fraction = 0.25
    drop_path_rate: Fraction = 0.2
    channel_divisor: PositiveInt = Field(8, le=MAX_CHANNELS)
    round_limit: float = Field(0.9, ge=0, lt=1, strict=True, description="the 10% rule: 0.9 for V1, 0 disables it (V2)")


class Stem(_Section):
    channels: PositiveInt = Field(32, le=MAX_CHANNELS)
    kernel: PositiveInt = Field(3, le=MAX_KERNEL)
    stride: Stride = 2

    _kernel = field_validator("kernel")(_odd_kernel)


class Stage(_Section):
    block: BlockKind
    repeats: PositiveInt = Field(le=MAX_REPEATS)
    kernel: PositiveInt = Field(le=MAX_KERNEL)
    stride: Stride
    expansion: PositiveInt = Field(le=MAX_EXPANSION)
    channels: PositiveInt = Field(le=MAX_CHANNELS)
    se_ratio: Fraction | None = Field(None, description="overrides defaults.se_ratio (0 = no SE)")
    activation: Activation | None = Field(None, description="overrides defaults.activation")

    _kernel = field_validator("kernel")(_odd_kernel)


class Head(_Section):
    channels: PositiveInt = Field(1280, le=MAX_CHANNELS, description="1x1 conv width before pooling (scaled by width)")
    dropout: Fraction = 0.2
    num_classes: PositiveInt = Field(1000, le=MAX_CLASSES)


class CompoundScaling(_Section):
    """EfficientNet's compound rule: depth alpha^phi, width beta^phi, resolution gamma^phi."""

    method: Literal["compound"]
    phi: float = Field(ge=0, le=MAX_PHI, strict=True)
    alpha: float = Field(1.2, ge=1, le=MAX_COEFFICIENT, strict=True)
    beta: float = Field(1.1, ge=1, le=MAX_COEFFICIENT, strict=True)
    gamma: float = Field(1.15, ge=1, le=MAX_COEFFICIENT, strict=True)
    resolution_divisor: PositiveInt = Field(
        1, le=MAX_RESOLUTION, description="round the scaled resolution to a multiple of this"
    )
    dropout: Fraction | None = None
    drop_path_rate: Fraction | None = None


class ExplicitScaling(_Section):
    """Hand-picked multipliers, as the official B1..B7 and V2-B1..B3 use."""

    method: Literal["explicit"]
    width: PositiveFloat = Field(1.0, le=MAX_MULTIPLIER)
    depth: PositiveFloat = Field(1.0, le=MAX_MULTIPLIER)
    resolution: PositiveInt | None = Field(
        None, le=MAX_RESOLUTION, description="absolute input resolution; default input.resolution"
    )
    dropout: Fraction | None = None
    drop_path_rate: Fraction | None = None


Scaling = Annotated[CompoundScaling | ExplicitScaling, Field(discriminator="method")]


class Range(_Section):
    """A value that moves linearly from ``start`` to ``end`` across progressive-learning stages."""

    start: float = Field(ge=0, strict=True)
    end: float = Field(ge=0, strict=True)


class Progressive(_Section):
    """EfficientNetV2 progressive learning: image size and regularization grow stage by stage."""

    stages: PositiveInt = Field(4, le=MAX_PROGRESSIVE_STAGES)
    image_size: Range
    randaugment_magnitude: Range
    mixup_alpha: Range
    dropout: Range


class Training(_Section):
    """Recipe defaults the training entrypoints read (the TF reference recipe by default)."""

    optimizer: Literal["rmsprop", "sgd", "adamw"] = "rmsprop"
    lr_per_256: PositiveFloat = Field(0.016, description="learning rate for a global batch of 256, scaled linearly")
    batch_size: PositiveInt = Field(256, le=1 << 24, description="global batch size")
    schedule: Literal["exponential", "cosine"] = "exponential"
    decay_rate: PositiveFloat = 0.97
    decay_epochs: PositiveFloat = 2.4
    warmup_epochs: float = Field(5, ge=0, strict=True)
    epochs: PositiveInt = Field(350, le=100_000)
    weight_decay: float = Field(1e-5, ge=0, strict=True)
    label_smoothing: Fraction = 0.1
    ema_decay: float = Field(0.9999, ge=0, lt=1, strict=True)
    augmentation: Literal["autoaugment", "randaugment", "none"] = "autoaugment"
    randaugment_magnitude: float = Field(10, ge=0, strict=True)
    mixup_alpha: float = Field(0, ge=0, strict=True)
    train_resolution: PositiveInt | None = Field(None, le=MAX_RESOLUTION, description="default: the scaled resolution")
    crop_fraction: float = Field(
        0.875, gt=0, le=1, strict=True, description="eval center crop: resize to res/crop, crop res"
    )
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
