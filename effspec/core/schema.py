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

from effspec.core.ir import BlockKind, Padding
from effspec.core.limits import MAX_CLASSES, MAX_RESOLUTION  # one owner: the limits

Activation = Literal["swish", "silu", "relu", "relu6", "gelu", "hard_swish", "hard_sigmoid", "mish"]
Gate = Literal["sigmoid", "hard_sigmoid"]

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

# Bounds on what a spec may ask for before scaling; effspec/core/limits.py bounds the scaled model.
MAX_KERNEL = 31
MAX_INPUT_CHANNELS = 64
MAX_CHANNELS = 16384
MAX_REPEATS = 1000
MAX_EXPANSION = 64
MAX_PHI = 30.0
MAX_COEFFICIENT = 4.0  # alpha, beta, gamma
MAX_MULTIPLIER = 64.0  # explicit width and depth
MAX_PROGRESSIVE_STAGES = 100


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True, allow_inf_nan=False)


def _odd_kernel(value: int | tuple[int, ...]) -> int | tuple[int, ...]:
    for kernel in value if isinstance(value, tuple) else (value,):
        if kernel % 2 == 0:
            raise ValueError(f"expected an odd kernel size, found {kernel}")
    return value


#: One kernel size, or several for a mixed depthwise conv (MixNet): the channels are split into as
#: many groups as kernels (docs/spec.md states the split).
KernelSize = Annotated[int, Field(gt=0, le=MAX_KERNEL, strict=True)]
Kernel = KernelSize | Annotated[tuple[KernelSize, ...], Field(min_length=2, max_length=8)]
Expansion = Annotated[float, Field(gt=0, le=MAX_EXPANSION, strict=True)]
Groups = Annotated[int, Field(gt=0, le=MAX_CHANNELS, strict=True)]


class Input(_Section):
    """The nominal input image (before scaling) and its normalization constants."""

    resolution: PositiveInt = Field(224, le=MAX_RESOLUTION, description="base input resolution in pixels (square)")
    channels: PositiveInt = Field(3, le=MAX_INPUT_CHANNELS, description="input image channels (3 = RGB, 1 = grayscale)")
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
    eps: PositiveFloat = Field(
        1e-3, description="added to the variance: 1e-3 for the TF family, 1e-5 for torchvision/timm"
    )
    momentum: float = Field(0.99, gt=0, lt=1, strict=True, description="running-average decay, TF/Keras convention")


class SqueezeExcite(_Section):
    """How every squeeze-and-excitation is built (how wide it is: ``se_ratio``)."""

    gate: Gate = Field("sigmoid", description="the function that turns the expanded squeeze into a 0..1 gate")
    activation: Activation | None = Field(
        None, description="between the reduce and expand convs; default: the block's activation"
    )
    width_from: Literal["input", "expanded"] = Field(
        "input",
        description="squeeze width = se_ratio x the block's input channels (EfficientNet) or x its expanded "
        "channels (MobileNetV3)",
    )
    divisor: PositiveInt = Field(
        1,
        le=MAX_CHANNELS,
        description="1: max(1, int(width)); otherwise round the width to a multiple of this, as channels are "
        "rounded (nearest multiple, never below it, plus one more when that loses over 10%)",
    )


class Defaults(_Section):
    """Settings every block inherits unless its stage overrides them."""

    activation: Activation = Field("swish", description="of every conv-bn-act and squeeze-excite")
    batch_norm: BatchNorm = Field(BatchNorm(), description="every batch norm's eps and running-average decay")
    padding: Padding = Field("same", description="same: TensorFlow SAME; symmetric: (kernel - 1) // 2 per side")
    se_ratio: Fraction = Field(0.25, description="squeeze-excite width ratio of MBConv blocks (0 = no SE)")
    squeeze_excite: SqueezeExcite = Field(
        SqueezeExcite(), description="how every squeeze-excite is built (gate, width)"
    )
    drop_path_rate: Fraction = Field(0.2, description="stochastic depth: block i of N gets rate * i / N")
    channel_divisor: PositiveInt = Field(8, le=MAX_CHANNELS, description="every scaled width is a multiple of this")
    round_limit: float = Field(0.9, ge=0, lt=1, strict=True, description="the 10% rule: 0.9 for V1, 0 disables it (V2)")
    repeat_rounding: Literal["ceil", "round"] = Field(
        "ceil", description="scaled repeats: ceil(depth x repeats) (EfficientNet) or round() (ties to even; TinyNet)"
    )


class Stem(_Section):
    """The first conv-bn-act."""

    channels: PositiveInt = Field(32, le=MAX_CHANNELS, description="output width (scaled by width unless fixed)")
    kernel: PositiveInt = Field(3, le=MAX_KERNEL, description="odd kernel size of the stem conv")
    stride: Stride = Field(2, description="stride of the stem conv: 1 or 2")
    activation: Activation | None = Field(None, description="default: defaults.activation")
    scale_width: bool = Field(True, description="false: the stem keeps `channels` at every width (Lite, TinyNet)")

    _kernel = field_validator("kernel")(_odd_kernel)


class BlockOverride(_Section):
    """Fields that one block of a stage sets differently from its stage (None: the stage's value)."""

    kernel: Kernel | None = Field(None, description="this block's kernel size (or sizes); default: the stage's")
    expansion: Expansion | None = Field(None, description="this block's expansion ratio; default: the stage's")
    expansion_in: PositiveInt | None = Field(
        None, le=MAX_CHANNELS, description="this block's expanded base width (scaled); default: the stage's"
    )
    se_ratio: Fraction | None = Field(
        None, description="this block's squeeze-excite ratio (0 = no SE); default: the stage's"
    )
    activation: Activation | None = Field(None, description="this block's activation; default: the stage's")
    expand_conv: bool | None = Field(None, description="keep the 1x1 expand conv at expansion 1; default: the stage's")
    expand_groups: Groups | None = Field(None, description="groups of this block's expand conv; default: the stage's")
    project_groups: Groups | None = Field(None, description="groups of this block's project conv; default: the stage's")
    residual: bool | None = Field(None, description="false: no skip connection in this block; default: the stage's")

    _kernel = field_validator("kernel")(_odd_kernel)


class Stage(_Section):
    """``repeats`` blocks of one kind; the first has ``stride``, all output ``channels``."""

    block: BlockKind = Field(
        description="mbconv (1x1 expand, depthwise, project) or fused_mbconv (k x k expand, project)"
    )
    repeats: PositiveInt = Field(le=MAX_REPEATS, description="block count before depth scaling")
    kernel: Kernel = Field(description="odd kernel size; a list splits a depthwise conv across kernels (MixNet)")
    stride: Stride = Field(description="stride of the stage's first block: 1 or 2 (the others use 1)")
    expansion: Expansion = Field(
        description="expanded width = round(expansion x block input channels) to the channel divisor"
    )
    channels: PositiveInt = Field(le=MAX_CHANNELS, description="output width before width scaling")
    se_ratio: Fraction | None = Field(None, description="overrides defaults.se_ratio (0 = no SE)")
    activation: Activation | None = Field(None, description="overrides defaults.activation")
    expansion_in: PositiveInt | None = Field(
        None, le=MAX_CHANNELS, description="expand this width (scaled like channels) instead of the block input"
    )
    expand_conv: bool | None = Field(
        None, description="MBConv: true keeps the 1x1 expand conv at expansion 1 (FBNet); default: only when != 1"
    )
    expand_groups: Groups = Field(1, description="groups of the expand conv (MixNet: 2)")
    project_groups: Groups = Field(1, description="groups of the 1x1 project conv (MixNet: 2)")
    residual: bool | None = Field(
        None, description="false: never add the input back (noskip); default: when stride 1 and widths agree"
    )
    scale_depth: bool = Field(True, description="false: repeats stay as written at every depth (Lite's first/last)")
    blocks: list[BlockOverride] = Field(
        default_factory=list, max_length=MAX_REPEATS, description="entry j overrides fields of block j of the stage"
    )

    _kernel = field_validator("kernel")(_odd_kernel)


class PooledConv(_Section):
    """A 1x1 conv with bias and no batch norm after global pooling (MobileNetV3's head)."""

    channels: PositiveInt = Field(le=MAX_CHANNELS, description="not scaled by width")
    activation: Activation | None = Field(None, description="default: defaults.activation")


class Head(_Section):
    """Head conv-bn-act -> global average pool -> (pooled conv) -> dropout -> classifier."""

    channels: int = Field(
        1280, ge=0, le=MAX_CHANNELS, strict=True, description="1x1 conv width before pooling; 0 = no head conv"
    )
    scale_width: bool = Field(True, description="false: the head conv keeps `channels` at every width")
    min_channels: PositiveInt | None = Field(
        None, le=MAX_CHANNELS, description="the scaled head width is at least this (MobileNetV2, TinyNet)"
    )
    activation: Activation | None = Field(None, description="of the head conv; default: defaults.activation")
    pooled_conv: PooledConv | None = Field(None, description="a 1x1 conv after pooling (MobileNetV3); default: none")
    dropout: Fraction = Field(0.2, description="before the classifier")
    num_classes: PositiveInt = Field(1000, le=MAX_CLASSES, description="outputs of the linear classifier")


class CompoundScaling(_Section):
    """EfficientNet's compound rule: depth alpha^phi, width beta^phi, resolution gamma^phi."""

    method: Literal["compound"] = Field(description="compound: multipliers from phi, alpha, beta, gamma")
    phi: float = Field(ge=-MAX_PHI, le=MAX_PHI, strict=True, description="may be negative: a smaller model")
    alpha: float = Field(1.2, ge=1, le=MAX_COEFFICIENT, strict=True, description="depth multiplier = alpha^phi")
    beta: float = Field(1.1, ge=1, le=MAX_COEFFICIENT, strict=True, description="width multiplier = beta^phi")
    gamma: float = Field(
        1.15, ge=1, le=MAX_COEFFICIENT, strict=True, description="resolution = input.resolution x gamma^phi"
    )
    resolution_divisor: PositiveInt = Field(
        1, le=MAX_RESOLUTION, description="round the scaled resolution to a multiple of this"
    )
    dropout: Fraction | None = Field(None, description="replaces head.dropout for this member")
    drop_path_rate: Fraction | None = Field(None, description="replaces defaults.drop_path_rate for this member")


class ExplicitScaling(_Section):
    """Hand-picked multipliers, as the official B1..B7 and V2-B1..B3 use."""

    method: Literal["explicit"] = Field(description="explicit: width, depth and resolution as written")
    width: PositiveFloat = Field(1.0, le=MAX_MULTIPLIER, description="width multiplier of every scaled channel count")
    depth: PositiveFloat = Field(1.0, le=MAX_MULTIPLIER, description="depth multiplier of every stage's repeats")
    resolution: PositiveInt | None = Field(
        None, le=MAX_RESOLUTION, description="absolute input resolution; default input.resolution"
    )
    dropout: Fraction | None = Field(None, description="replaces head.dropout for this member")
    drop_path_rate: Fraction | None = Field(None, description="replaces defaults.drop_path_rate for this member")


Scaling = Annotated[CompoundScaling | ExplicitScaling, Field(discriminator="method")]


class Range(_Section):
    """A value that moves linearly from ``start`` to ``end`` across progressive-learning stages."""

    start: float = Field(ge=0, strict=True, description="value in the first progressive stage")
    end: float = Field(ge=0, strict=True, description="value in the last progressive stage")


class Progressive(_Section):
    """EfficientNetV2 progressive learning: image size and regularization grow stage by stage."""

    stages: PositiveInt = Field(
        4, le=MAX_PROGRESSIVE_STAGES, description="number of progressive stages the epochs are split into"
    )
    image_size: Range = Field(description="training image size in pixels, first to last stage")
    randaugment_magnitude: Range = Field(description="RandAugment magnitude, first to last stage")
    mixup_alpha: Range = Field(description="mixup alpha (0 = no mixup), first to last stage")
    dropout: Range = Field(description="head dropout rate, first to last stage")


class Training(_Section):
    """Recipe defaults the training entrypoints read (the TF reference recipe by default)."""

    optimizer: Literal["rmsprop", "sgd", "adamw"] = Field(
        "rmsprop", description="rmsprop (TensorFlow's RMSProp, the EfficientNet recipe), sgd or adamw"
    )
    lr_per_256: PositiveFloat = Field(0.016, description="learning rate for a global batch of 256, scaled linearly")
    batch_size: PositiveInt = Field(256, le=1 << 24, description="global batch size")
    schedule: Literal["exponential", "cosine"] = Field(
        "exponential",
        description="learning-rate decay after warmup: exponential (x decay_rate every decay_epochs) or cosine",
    )
    decay_rate: PositiveFloat = Field(
        0.97, description="exponential schedule: the rate is multiplied by this every decay_epochs"
    )
    decay_epochs: PositiveFloat = Field(2.4, description="exponential schedule: epochs between two decays")
    warmup_epochs: float = Field(5, ge=0, strict=True, description="linear learning-rate warmup from 0 (0 = none)")
    epochs: PositiveInt = Field(350, le=100_000, description="training epochs")
    weight_decay: float = Field(1e-5, ge=0, strict=True, description="L2 weight decay (0 = none)")
    label_smoothing: Fraction = Field(0.1, description="label smoothing of the cross-entropy loss (0 = none)")
    ema_decay: float = Field(
        0.9999, ge=0, lt=1, strict=True, description="decay of the exponential moving average of weights (0 = off)"
    )
    augmentation: Literal["autoaugment", "randaugment", "none"] = Field(
        "autoaugment", description="training-image augmentation policy"
    )
    randaugment_magnitude: float = Field(10, ge=0, strict=True, description="RandAugment magnitude")
    mixup_alpha: float = Field(0, ge=0, strict=True, description="mixup Beta(alpha, alpha) parameter (0 = no mixup)")
    train_resolution: PositiveInt | None = Field(None, le=MAX_RESOLUTION, description="default: the scaled resolution")
    crop_fraction: float = Field(
        0.875, gt=0, le=1, strict=True, description="eval center crop: resize to res/crop, crop res"
    )
    progressive: Progressive | None = Field(
        None, description="EfficientNetV2 progressive learning; default: none (one stage)"
    )


class Spec(_Section):
    """A model family member: architecture, scaling and training recipe."""

    name: str = Field(pattern=r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$", max_length=64, description="lowercase-with-dashes")
    description: str = Field("", max_length=2000, description="free text, emitted only as an escaped string")
    extends: str | None = Field(
        None,
        description="a spec this one inherits from: a path relative to this file, or the name of a spec "
        "shipped with effspec (efficientnet-b0); mappings merge deeply, lists replace",
    )
    input: Input = Field(Input(), description="the nominal input image and its normalization")
    defaults: Defaults = Field(Defaults(), description="settings every block inherits")
    stem: Stem = Field(Stem(), description="the first conv-bn-act")
    stages: list[Stage] = Field(min_length=1, description="the stages in order; each is repeats blocks of one kind")
    head: Head = Field(Head(), description="head conv, pooling, dropout and classifier")
    scaling: Scaling | None = Field(
        None, description="compound or explicit multipliers; default: none (width, depth 1)"
    )
    training: Training = Field(Training(), description="the recipe the generated train.py defaults to")
