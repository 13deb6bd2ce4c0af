"""The IR: frozen, fully resolved nodes. Nothing backend-specific, no callables, no dicts of Any.

Canonical names are the interface between backends: a layer named ``blocks.3.1.depthwise.conv`` is
the torch attribute path ``blocks[3][1].depthwise.conv`` and the Keras layer
``blocks_3_1_depthwise_conv``. Every parameterized layer of a model appears once as a ``Layer``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

LayerKind = Literal["conv", "depthwise_conv", "batch_norm", "linear"]
BlockKind = Literal["mbconv", "fused_mbconv"]
Padding = Literal["same", "symmetric"]


@dataclass(frozen=True)
class Shape:
    """Channels x height x width of one image (batch excluded)."""

    channels: int
    height: int
    width: int

    @property
    def elements(self) -> int:
        return self.channels * self.height * self.width


def same_output_size(size: int, stride: int) -> int:
    """TF-SAME output size: ceil(size / stride). Symmetric (k-1)//2 padding gives the same for odd k."""
    return -(-size // stride)


@dataclass(frozen=True)
class SamePadding:
    """TensorFlow SAME on a strided conv, where the padding depends on the input size: at ``size``
    (the conv's input height and width at the spec's resolution) it pads ``before`` pixels at the
    top and left and ``after`` at the bottom and right. Backends print it: fixed padding at that
    size (the conv's own when symmetric), worked out per call at any other size."""

    size: int
    before: int
    after: int

    @property
    def symmetric(self) -> bool:
        return self.before == self.after


#: How a conv pads: a fixed number of pixels on every side, or TensorFlow SAME on a strided conv
#: (``SamePadding``). Lowering decides it once per conv (``resolve_padding``); backends print it.
ConvPadding = int | SamePadding


def tf_same_padding(size: int, kernel: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """(before, after): TensorFlow SAME padding of one axis of ``size`` pixels, the odd pixel after.
    The one copy of this arithmetic in effspec (the generated torch code carries its own for sizes
    only known at run time). The dilated kernel spans dilation x (k - 1) + 1 pixels."""
    span = dilation * (kernel - 1) + 1
    total = max((same_output_size(size, stride) - 1) * stride + span - size, 0)
    return total // 2, total - total // 2


def resolve_padding(mode: Padding, kernel: int, stride: int, size: int, dilation: int = 1) -> ConvPadding:
    """The one padding rule, for a conv whose input is ``size`` x ``size`` at the spec's resolution.
    ``symmetric``: dilation x (k - 1) // 2 per side. ``same`` (TF SAME): at stride 1 the same fixed
    padding (odd kernels, any dilation: SAME is symmetric there, whatever the size); on a strided
    k > 1 conv, ``SamePadding`` at ``size`` (never dilated: a conv dilates only once the strides
    before it were turned to 1)."""
    if mode == "symmetric" or kernel == 1:
        return dilation * (kernel - 1) // 2
    before, after = tf_same_padding(size, kernel, stride, dilation)
    if stride == 1:
        return before  # == after: odd kernel, stride 1
    if dilation != 1:
        raise ValueError(f"a strided conv cannot dilate (stride {stride}, dilation {dilation})")
    return SamePadding(size, before, after)


def flat_name(name: str) -> str:
    """A canonical name as one identifier (``blocks.3.1.se`` -> ``blocks_3_1_se``): Keras layer names."""
    return name.replace(".", "_")


@dataclass(frozen=True)
class Layer:
    """One parameterized primitive, fully resolved. ``output`` is at the spec's nominal resolution."""

    name: str
    kind: LayerKind
    in_channels: int
    out_channels: int
    output: Shape
    kernel: int = 1
    stride: int = 1
    groups: int = 1  # in_channels for a depthwise conv
    bias: bool = False
    padding: ConvPadding = 0
    dilation: int = 1  # > 1 only in a backbone below its nominal output stride (``OutputStride``)

    @property
    def params(self) -> int:
        if self.kind == "batch_norm":
            return 2 * self.out_channels  # gamma, beta (moving statistics are buffers)
        weights = self.out_channels * (self.in_channels // self.groups) * self.kernel * self.kernel
        return weights + (self.out_channels if self.bias else 0)

    @property
    def buffers(self) -> int:
        return 2 * self.out_channels if self.kind == "batch_norm" else 0

    @property
    def macs(self) -> int:
        if self.kind == "batch_norm":
            return 0
        return self.output.elements * self.kernel * self.kernel * (self.in_channels // self.groups)


@dataclass(frozen=True)
class ConvBnAct:
    """conv -> batch norm -> optional activation; ``name`` prefixes ``.conv`` and ``.bn``.

    Usually one conv (``{name}.conv``). A mixed depthwise conv (MixNet) has several, named
    ``{name}.conv.0``, ``.conv.1``...: each takes its share of the channels with its own kernel, and
    their outputs are concatenated before the one batch norm."""

    name: str
    convs: tuple[Layer, ...]
    bn: Layer
    activation: str | None

    @property
    def conv(self) -> Layer:
        """The conv of a plain (not mixed) conv-bn-act."""
        if len(self.convs) != 1:
            raise ValueError(f"{self.name} is a mixed conv of {len(self.convs)} kernels")
        return self.convs[0]

    @property
    def mixed(self) -> bool:
        return len(self.convs) > 1

    @property
    def in_channels(self) -> int:
        return sum(conv.in_channels for conv in self.convs)

    @property
    def out_channels(self) -> int:
        return self.bn.out_channels

    @property
    def stride(self) -> int:
        return self.convs[0].stride

    @property
    def dilation(self) -> int:
        return self.convs[0].dilation

    @property
    def layers(self) -> tuple[Layer, ...]:
        return (*self.convs, self.bn)


@dataclass(frozen=True)
class SqueezeExcite:
    """Global average pool -> ``reduce`` (1x1 conv, bias) -> activation -> ``expand`` -> gate x."""

    name: str
    channels: int  # the gated channels (the output of the conv before it)
    se_channels: int  # squeeze width
    activation: str
    gate: str  # "sigmoid"
    reduce: Layer
    expand: Layer

    @property
    def layers(self) -> tuple[Layer, ...]:
        return (self.reduce, self.expand)


@dataclass(frozen=True)
class Block:
    """One MBConv or Fused-MBConv block, fully resolved: its parts run in the order
    expand -> depthwise -> se -> project, then the residual add when ``residual``."""

    name: str  # canonical, e.g. "blocks.3.1"
    stage: int
    index: int  # within its stage
    global_index: int
    kind: BlockKind
    in_channels: int
    mid_channels: int  # the width inside the block (after expand, before project)
    out_channels: int
    expansion: float
    kernels: tuple[int, ...]  # the depthwise (or fused) kernel; several for a mixed depthwise conv
    stride: int
    residual: bool
    depth_fraction: float  # global_index / the model's block count (core.scaling.depth_fractions)
    drop_path_rate: float  # the model's drop_path_rate x depth_fraction (core.scaling.drop_path_rate)
    input: Shape
    output: Shape
    expand: ConvBnAct | None  # mbconv 1x1 expansion, or fused k x k conv (the only conv when expansion 1)
    depthwise: ConvBnAct | None  # mbconv only
    se: SqueezeExcite | None
    project: ConvBnAct | None  # absent on a fused block with expansion 1

    @property
    def kernel(self) -> int:
        """The largest kernel (what decides how small a map the block can take)."""
        return max(self.kernels)

    @property
    def se_channels(self) -> int:
        return self.se.se_channels if self.se is not None else 0

    @property
    def parts(self) -> tuple[ConvBnAct | SqueezeExcite, ...]:
        """The sub-modules in forward order."""
        return tuple(part for part in (self.expand, self.depthwise, self.se, self.project) if part is not None)

    @property
    def layers(self) -> tuple[Layer, ...]:
        return tuple(layer for part in self.parts for layer in part.layers)


@dataclass(frozen=True)
class Stage:
    index: int
    kind: BlockKind
    blocks: tuple[Block, ...]

    @property
    def output(self) -> Shape:
        return self.blocks[-1].output


@dataclass(frozen=True)
class PooledConv:
    """A 1x1 conv with bias (no batch norm) on the pooled features, then ``activation``."""

    conv: Layer  # named "pooled_conv"
    activation: str | None


@dataclass(frozen=True)
class Head:
    """[conv-bn-act "head"] -> global average pool -> [pooled conv] -> dropout -> classifier."""

    conv: ConvBnAct | None  # named "head"; None: the last stage feeds the pool
    pooled_conv: PooledConv | None
    classifier: Layer  # named "classifier"
    dropout: float
    num_classes: int

    @property
    def layers(self) -> tuple[Layer, ...]:
        conv = self.conv.layers if self.conv is not None else ()
        pooled = (self.pooled_conv.conv,) if self.pooled_conv is not None else ()
        return (*conv, *pooled, self.classifier)


#: The output strides a backbone can be built at (timm's ``output_stride``; 32 is every shipped
#: spec's own total stride).
OUTPUT_STRIDES = (32, 16, 8)


@dataclass(frozen=True)
class FeatureLevel:
    """One map of the backbone (``build_model(features_only=True)``): the last body output at one
    nominal reduction, as timm's ``features_only`` models pick them. The body is the stem, the
    stages and, when the head has a pooled conv (MobileNetV3), the head conv: there the conv after
    pooling is the head and the conv before it the last layer of the body, as in timm."""

    index: int  # position in ``Model.features`` (timm's ``out_indices`` index)
    name: str  # "P1".."P5" for reductions 2..32: keras-hub's pyramid names, P{log2 reduction}
    module: str  # the canonical module whose output it is: "stem", "blocks.2" (a stage) or "head"
    stages: int  # how many stages ran to make it (0: the stem's output)
    channels: int
    reduction: int  # input size / map size (ceil) at the model's own strides
    output: Shape  # at the nominal resolution


@dataclass(frozen=True)
class DilatedConv:
    """A block's k x k conv below the nominal output stride: at stride 1, dilated, repadded."""

    stage: int
    block: int  # within its stage: the conv is ``blocks.{stage}.{block}.{part}``
    part: Literal["expand", "depthwise"]
    conv: ConvBnAct  # the conv-bn-act as it runs there (same weights, same names)
    residual: bool  # the block's residual add there (stride 1 and equal widths, unless noskip)


@dataclass(frozen=True)
class OutputStride:
    """The model at one output stride (timm's rule): a stride-2 conv that would take the total
    stride past ``output_stride`` runs at stride 1 with the dilation so far, and every later k x k
    conv dilates by the strides given up. ``convs`` lists the convs that differ from the nominal
    model (nothing else does); ``reductions`` are the feature levels' reductions there."""

    output_stride: int
    reductions: tuple[int, ...]  # one per ``Model.features`` entry
    convs: tuple[DilatedConv, ...]


@dataclass(frozen=True)
class BatchNormSettings:
    eps: float
    momentum: float  # running-average decay (TF/Keras convention)


@dataclass(frozen=True)
class ProgressiveStage:
    image_size: int
    randaugment_magnitude: float
    mixup_alpha: float
    dropout: float


@dataclass(frozen=True)
class TrainingPlan:
    optimizer: str
    lr_per_256: float
    batch_size: int
    schedule: str
    decay_rate: float
    decay_epochs: float
    warmup_epochs: float
    epochs: int
    weight_decay: float
    label_smoothing: float
    ema_decay: float
    augmentation: str
    randaugment_magnitude: float
    mixup_alpha: float
    train_resolution: int
    eval_resolution: int
    crop_fraction: float
    progressive: tuple[ProgressiveStage, ...] = ()  # empty when progressive learning is off


@dataclass(frozen=True)
class Model:
    """A whole network, resolved at ``resolution``."""

    name: str  # spec name, e.g. "efficientnet-b0"
    description: str
    spec_path: str
    spec_sha256: str
    width: float
    depth: float
    resolution: int
    input: Shape
    mean: tuple[float, ...]
    std: tuple[float, ...]
    batch_norm: BatchNormSettings
    padding: Padding
    drop_path_rate: float
    stem: ConvBnAct
    stages: tuple[Stage, ...]
    head: Head
    training: TrainingPlan
    features: tuple[FeatureLevel, ...]  # the backbone's levels, shallowest first
    output_strides: tuple[OutputStride, ...]  # one per ``OUTPUT_STRIDES`` entry, in that order

    def at_output_stride(self, output_stride: int) -> OutputStride:
        for plan in self.output_strides:
            if plan.output_stride == output_stride:
                return plan
        known = ", ".join(str(plan.output_stride) for plan in self.output_strides)
        raise ValueError(f"expected an output stride of {known}, found {output_stride}")

    @property
    def python_name(self) -> str:
        """The spec name as a Python identifier ('-' -> '_'): output directory, Keras model name."""
        return self.name.replace("-", "_")

    @property
    def blocks(self) -> tuple[Block, ...]:
        return tuple(block for stage in self.stages for block in stage.blocks)

    @property
    def layers(self) -> tuple[Layer, ...]:
        return (*self.stem.layers, *(layer for block in self.blocks for layer in block.layers), *self.head.layers)

    @property
    def num_features(self) -> int:
        """The width the classifier reads."""
        return self.head.classifier.in_channels

    @property
    def params(self) -> int:
        return sum(layer.params for layer in self.layers)

    @property
    def macs(self) -> int:
        return sum(layer.macs for layer in self.layers)
