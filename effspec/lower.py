"""Lowering: a validated, scaled spec -> the fully resolved IR (``effspec.ir.Model``)."""

from __future__ import annotations

from effspec import ir
from effspec.loader import LoadedSpec
from effspec.scaling import Multipliers, drop_path_rates, round_channels, round_repeats
from effspec.schema import Spec, Training


def _conv_bn_act(
    name: str,
    in_channels: int,
    out_channels: int,
    kernel: int,
    stride: int,
    padding: ir.Padding,
    activation: str | None,
    input_shape: ir.Shape,
    groups: int = 1,
) -> ir.ConvBnAct:
    """conv -> BN -> activation; ``groups == in_channels == out_channels`` makes it depthwise."""
    out_size = ir.Shape(
        out_channels, ir.same_output_size(input_shape.height, stride), ir.same_output_size(input_shape.width, stride)
    )
    depthwise = groups > 1 and groups == in_channels == out_channels
    conv = ir.Layer(
        f"{name}.conv",
        "depthwise_conv" if depthwise else "conv",
        in_channels,
        out_channels,
        out_size,
        kernel=kernel,
        stride=stride,
        groups=groups,
        padding=ir.resolve_padding(padding, kernel, stride),
    )
    bn = ir.Layer(f"{name}.bn", "batch_norm", out_channels, out_channels, out_size)
    return ir.ConvBnAct(name, conv, bn, activation)


def _squeeze_excite(name: str, channels: int, se_channels: int, activation: str) -> ir.SqueezeExcite:
    """Squeeze-excite gating ``channels`` through a ``se_channels`` bottleneck (1x1 convs with bias)."""
    return ir.SqueezeExcite(
        name,
        channels,
        se_channels,
        activation,
        "sigmoid",
        ir.Layer(f"{name}.reduce", "conv", channels, se_channels, ir.Shape(se_channels, 1, 1), bias=True),
        ir.Layer(f"{name}.expand", "conv", se_channels, channels, ir.Shape(channels, 1, 1), bias=True),
    )


def _block(
    spec: Spec,
    stage_index: int,
    index: int,
    global_index: int,
    in_channels: int,
    out_channels: int,
    drop_path_rate: float,
    input_shape: ir.Shape,
) -> ir.Block:
    """Every rule of a block, in one place.

    - The stage's stride sits on its first block; a block adds its input back (``residual``) when
      its stride is 1 and its input and output widths agree.
    - MBConv: 1x1 expand (absent at expansion 1) -> k x k depthwise (the stride) -> SE -> 1x1 project.
    - Fused-MBConv: k x k expand conv (the stride) -> SE -> 1x1 project; at expansion 1 the k x k conv
      goes straight to the output width, keeps its activation, and there is no project conv.
    - SE squeezes to ``max(1, int(block input width * se_ratio))`` and gates the width of the conv
      before it. Fused-MBConv has no SE unless its stage sets ``se_ratio``.
    """
    stage = spec.stages[stage_index]
    name = f"blocks.{stage_index}.{index}"
    stride = stage.stride if index == 0 else 1
    activation = stage.activation or spec.defaults.activation
    padding = spec.defaults.padding
    se_ratio = stage.se_ratio if stage.se_ratio is not None else spec.defaults.se_ratio
    if stage.block == "fused_mbconv" and stage.se_ratio is None:
        se_ratio = 0.0  # Fused-MBConv has no SE unless the stage asks for it
    se_channels = max(1, int(in_channels * se_ratio)) if se_ratio > 0 else 0
    shape = input_shape
    expand = depthwise = project = None
    if stage.block == "mbconv":
        mid = in_channels * stage.expansion
        if stage.expansion != 1:
            expand = _conv_bn_act(f"{name}.expand", in_channels, mid, 1, 1, padding, activation, shape)
        depthwise = _conv_bn_act(
            f"{name}.depthwise", mid, mid, stage.kernel, stride, padding, activation, shape, groups=mid
        )
        shape = depthwise.bn.output
    else:
        mid = in_channels * stage.expansion if stage.expansion != 1 else out_channels
        expand = _conv_bn_act(f"{name}.expand", in_channels, mid, stage.kernel, stride, padding, activation, shape)
        shape = expand.bn.output
    se = _squeeze_excite(f"{name}.se", mid, se_channels, activation) if se_channels else None
    if stage.block == "mbconv" or stage.expansion != 1:
        project = _conv_bn_act(f"{name}.project", mid, out_channels, 1, 1, padding, None, shape)
        shape = project.bn.output
    return ir.Block(
        name=name,
        stage=stage_index,
        index=index,
        global_index=global_index,
        kind=stage.block,
        in_channels=in_channels,
        mid_channels=mid,
        out_channels=out_channels,
        expansion=stage.expansion,
        kernel=stage.kernel,
        stride=stride,
        residual=stride == 1 and in_channels == out_channels,
        drop_path_rate=drop_path_rate,
        input=input_shape,
        output=shape,
        expand=expand,
        depthwise=depthwise,
        se=se,
        project=project,
    )


def _linspace(start: float, end: float, count: int) -> list[float]:
    if count == 1:
        return [end]
    return [start + (end - start) * i / (count - 1) for i in range(count)]


def _training_plan(training: Training, scaled: Multipliers) -> ir.TrainingPlan:
    train_resolution = training.train_resolution or scaled.resolution
    stages: tuple[ir.ProgressiveStage, ...] = ()
    if training.progressive is not None:
        p = training.progressive
        sizes = _linspace(p.image_size.start, p.image_size.end, p.stages)
        stages = tuple(
            ir.ProgressiveStage(int(round(size)), round(magnitude, 6), round(mixup, 6), round(dropout, 6))
            for size, magnitude, mixup, dropout in zip(
                sizes,
                _linspace(p.randaugment_magnitude.start, p.randaugment_magnitude.end, p.stages),
                _linspace(p.mixup_alpha.start, p.mixup_alpha.end, p.stages),
                _linspace(p.dropout.start, p.dropout.end, p.stages),
                strict=True,
            )
        )
    return ir.TrainingPlan(
        optimizer=training.optimizer,
        lr_per_256=training.lr_per_256,
        batch_size=training.batch_size,
        schedule=training.schedule,
        decay_rate=training.decay_rate,
        decay_epochs=training.decay_epochs,
        warmup_epochs=training.warmup_epochs,
        epochs=training.epochs,
        weight_decay=training.weight_decay,
        label_smoothing=training.label_smoothing,
        ema_decay=training.ema_decay,
        augmentation=training.augmentation,
        randaugment_magnitude=training.randaugment_magnitude,
        mixup_alpha=training.mixup_alpha,
        train_resolution=train_resolution,
        eval_resolution=scaled.resolution,
        crop_fraction=training.crop_fraction,
        progressive=stages,
    )


def lower(loaded: LoadedSpec, scaled: Multipliers) -> ir.Model:
    """Resolve every channel count, repeat, stride, padding, drop-path rate and shape."""
    spec = loaded.spec
    d = spec.defaults

    def channels(c: int) -> int:
        return round_channels(c, scaled.width, d.channel_divisor, d.round_limit)

    input_shape = ir.Shape(spec.input.channels, scaled.resolution, scaled.resolution)
    stem = _conv_bn_act(
        "stem",
        spec.input.channels,
        channels(spec.stem.channels),
        spec.stem.kernel,
        spec.stem.stride,
        d.padding,
        d.activation,
        input_shape,
    )
    repeats = [round_repeats(stage.repeats, scaled.depth) for stage in spec.stages]
    rates = drop_path_rates(scaled.drop_path_rate, sum(repeats))
    stages: list[ir.Stage] = []
    in_channels, shape, global_index = stem.conv.out_channels, stem.bn.output, 0
    for stage_index, stage in enumerate(spec.stages):
        blocks = []
        out_channels = channels(stage.channels)
        for index in range(repeats[stage_index]):
            block = _block(
                spec, stage_index, index, global_index, in_channels, out_channels, rates[global_index], shape
            )
            blocks.append(block)
            in_channels, shape, global_index = out_channels, block.output, global_index + 1
        stages.append(ir.Stage(stage_index, stage.block, tuple(blocks)))
    head_conv = _conv_bn_act("head", in_channels, channels(spec.head.channels), 1, 1, d.padding, d.activation, shape)
    classifier = ir.Layer(
        "classifier",
        "linear",
        head_conv.conv.out_channels,
        spec.head.num_classes,
        ir.Shape(spec.head.num_classes, 1, 1),
        bias=True,
    )
    return ir.Model(
        name=spec.name,
        description=spec.description,
        spec_path=loaded.path,
        spec_sha256=loaded.sha256,
        width=scaled.width,
        depth=scaled.depth,
        resolution=scaled.resolution,
        input=input_shape,
        mean=spec.input.mean,
        std=spec.input.std,
        batch_norm=ir.BatchNormSettings(d.batch_norm.eps, d.batch_norm.momentum),
        padding=d.padding,
        drop_path_rate=scaled.drop_path_rate,
        stem=stem,
        stages=tuple(stages),
        head=ir.Head(head_conv, classifier, scaled.dropout, spec.head.num_classes),
        training=_training_plan(spec.training, scaled),
    )
