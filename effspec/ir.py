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
class Layer:
    """One parameterized primitive. ``output`` is at the spec's nominal resolution."""

    name: str
    kind: LayerKind
    in_channels: int
    out_channels: int
    output: Shape
    kernel: int = 1
    stride: int = 1
    bias: bool = False
    padding: Padding = "same"

    @property
    def groups(self) -> int:
        return self.in_channels if self.kind == "depthwise_conv" else 1

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

    @property
    def needs_dynamic_padding(self) -> bool:
        """TF-SAME on a strided k>1 conv pads by input-size parity: it must be computed per call."""
        return self.padding == "same" and self.stride > 1 and self.kernel > 1

    @property
    def static_padding(self) -> int:
        """Padding on every side when it does not depend on the input size."""
        return (self.kernel - 1) // 2


@dataclass(frozen=True)
class ConvBnAct:
    """conv -> batch norm -> optional activation; ``name`` prefixes ``.conv`` and ``.bn``."""

    name: str
    conv: Layer
    bn: Layer
    activation: str | None

    @property
    def layers(self) -> tuple[Layer, ...]:
        return (self.conv, self.bn)


@dataclass(frozen=True)
class SqueezeExcite:
    name: str
    channels: int  # the gated (expanded) channels
    se_channels: int  # squeeze width = block input channels * se_ratio
    activation: str
    reduce: Layer
    expand: Layer

    @property
    def layers(self) -> tuple[Layer, ...]:
        return (self.reduce, self.expand)


@dataclass(frozen=True)
class Block:
    """One MBConv or Fused-MBConv block, fully resolved."""

    name: str  # canonical, e.g. "blocks.3.1"
    stage: int
    index: int  # within its stage
    global_index: int
    kind: BlockKind
    in_channels: int
    mid_channels: int
    out_channels: int
    se_channels: int  # 0 when the block has no SE
    expansion: int
    kernel: int
    stride: int
    padding: Padding
    activation: str
    residual: bool
    drop_path_rate: float
    input: Shape
    output: Shape
    expand: ConvBnAct | None  # mbconv 1x1 expansion, or fused k x k conv (the only conv when expansion 1)
    depthwise: ConvBnAct | None  # mbconv only
    se: SqueezeExcite | None
    project: ConvBnAct | None  # absent on a fused block with expansion 1

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
class Head:
    conv: ConvBnAct  # named "head"
    classifier: Layer  # named "classifier"
    dropout: float
    num_classes: int

    @property
    def layers(self) -> tuple[Layer, ...]:
        return (*self.conv.layers, self.classifier)


@dataclass(frozen=True)
class BatchNormSettings:
    eps: float
    momentum: float  # running-average decay (TF/Keras convention)

    @property
    def torch_momentum(self) -> float:
        return round(1.0 - self.momentum, 10)


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
    progressive: tuple[ProgressiveStage, ...]  # empty when progressive learning is off


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

    @property
    def model_name(self) -> str:
        """Python identifier / directory name: the spec name with '-' turned into '_'."""
        return self.name.replace("-", "_")

    @property
    def blocks(self) -> tuple[Block, ...]:
        return tuple(block for stage in self.stages for block in stage.blocks)

    @property
    def layers(self) -> tuple[Layer, ...]:
        return (*self.stem.layers, *(layer for block in self.blocks for layer in block.layers), *self.head.layers)

    @property
    def num_features(self) -> int:
        return self.head.conv.conv.out_channels

    @property
    def params(self) -> int:
        return sum(layer.params for layer in self.layers)

    @property
    def macs(self) -> int:
        return sum(layer.macs for layer in self.layers)
