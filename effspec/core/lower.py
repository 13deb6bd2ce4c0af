"""Lowering: a validated, scaled spec -> the fully resolved IR (``effspec.core.ir.Model``).

Every rule that decides a layer lives here, once: widths and their rounding, which convs a block
has, squeeze-excite widths, residuals, padding, groups, drop-path rates. Backends, the analysis,
``effspec info`` and the weight manifest only read the result. docs/spec.md states these rules.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

from effspec.core import ir
from effspec.core.loader import LoadedSpec
from effspec.core.scaling import Multipliers, depth_fractions, drop_path_rate, round_channels, stage_repeats
from effspec.core.schema import BlockOverride, Spec, Stage, Training
from effspec.support.errors import SpecError


def split_channels(channels: int, parts: int) -> tuple[int, ...]:
    """Channels of a mixed conv's groups: equal parts, the remainder on the first (MixNet)."""
    sizes = [channels // parts] * parts
    sizes[0] += channels - sum(sizes)
    return tuple(sizes)


def _output_shape(channels: int, input_shape: ir.Shape, stride: int) -> ir.Shape:
    return ir.Shape(
        channels, ir.same_output_size(input_shape.height, stride), ir.same_output_size(input_shape.width, stride)
    )


def _square(shape: ir.Shape) -> int:
    """The side of a square map (every map is: the resolution is one number)."""
    if shape.height != shape.width:
        raise AssertionError(f"expected a square map, found {shape.height}x{shape.width}")
    return shape.height


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
    dilation: int = 1,
) -> ir.ConvBnAct:
    """conv -> BN -> activation; ``groups == in_channels == out_channels`` makes it depthwise."""
    if in_channels % groups or out_channels % groups:
        raise ValueError(
            f"expected groups that divide both widths, found {groups} groups for {in_channels} -> "
            f"{out_channels} channels in {name}"
        )
    out_size = _output_shape(out_channels, input_shape, stride)
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
        padding=ir.resolve_padding(padding, kernel, stride, _square(input_shape), dilation),
        dilation=dilation,
    )
    bn = ir.Layer(f"{name}.bn", "batch_norm", out_channels, out_channels, out_size)
    return ir.ConvBnAct(name, (conv,), bn, activation)


def _mixed_depthwise(
    name: str,
    channels: int,
    kernels: tuple[int, ...],
    stride: int,
    padding: ir.Padding,
    activation: str | None,
    input_shape: ir.Shape,
    dilation: int = 1,
) -> ir.ConvBnAct:
    """A depthwise conv whose channels are split across several kernel sizes, then one BN."""
    if channels < len(kernels):
        raise ValueError(f"{name}: {channels} channels cannot be split across {len(kernels)} kernels")
    out_size = _output_shape(channels, input_shape, stride)
    convs = tuple(
        ir.Layer(
            f"{name}.conv.{index}",
            "depthwise_conv",
            part,
            part,
            _output_shape(part, input_shape, stride),
            kernel=kernel,
            stride=stride,
            groups=part,
            padding=ir.resolve_padding(padding, kernel, stride, _square(input_shape), dilation),
            dilation=dilation,
        )
        for index, (part, kernel) in enumerate(zip(split_channels(channels, len(kernels)), kernels, strict=True))
    )
    bn = ir.Layer(f"{name}.bn", "batch_norm", channels, channels, out_size)
    return ir.ConvBnAct(name, convs, bn, activation)


@dataclass(frozen=True)
class BlockFields:
    """A stage's fields with one block's overrides applied (``stages[i].blocks[j]``)."""

    kernel: int | tuple[int, ...]
    expansion: float
    expansion_in: int | None
    se_ratio: float | None
    activation: str | None
    expand_conv: bool | None
    expand_groups: int
    project_groups: int
    residual: bool | None

    @staticmethod
    def of(stage: Stage, override: BlockOverride | None) -> BlockFields:
        fields = {name: getattr(stage, name) for name in BlockFields.__dataclass_fields__}
        if override is not None:
            fields.update({name: value for name, value in override if value is not None})
        return BlockFields(**fields)


def _squeeze_excite(
    spec: Spec, name: str, channels: int, in_channels: int, ratio: float, activation: str
) -> ir.SqueezeExcite:
    """SE gating ``channels`` through ``ratio`` x the block input (or x ``channels``: ``width_from``)."""
    settings = spec.defaults.squeeze_excite
    base = in_channels if settings.width_from == "input" else channels
    if settings.divisor == 1:
        se_channels = max(1, int(base * ratio))
    else:
        se_channels = round_channels(base * ratio, 1.0, settings.divisor, spec.defaults.round_limit)
    act = settings.activation or activation
    return ir.SqueezeExcite(
        name,
        channels,
        se_channels,
        act,
        settings.gate,
        ir.Layer(f"{name}.reduce", "conv", channels, se_channels, ir.Shape(se_channels, 1, 1), bias=True),
        ir.Layer(f"{name}.expand", "conv", se_channels, channels, ir.Shape(channels, 1, 1), bias=True),
    )


def _block(
    spec: Spec,
    scaled: Multipliers,
    stage_index: int,
    index: int,
    global_index: int,
    in_channels: int,
    out_channels: int,
    depth_fraction: float,
    input_shape: ir.Shape,
    stride: int,
    dilation: int,
) -> ir.Block:
    """Every rule of a block, in one place.

    - ``stride`` and ``dilation`` are the block's k x k conv's (``_body`` decides them: the stage's
      stride on its first block, or 1 and a dilation below the nominal output stride); a block adds
      its input back (``residual``) when its stride is 1 and its input and output widths agree,
      unless the spec says ``residual: false``.
    - The expanded width is ``expansion`` x the block input (or x the scaled ``expansion_in``),
      rounded to the channel divisor as every width is (an exact multiple stays as it is).
    - MBConv: 1x1 expand (absent at expansion 1 unless ``expand_conv``) -> k x k depthwise (the
      stride; several kernels split its channels) -> SE -> 1x1 project.
    - Fused-MBConv: k x k expand conv (the stride) -> SE -> 1x1 project; at expansion 1 the k x k conv
      goes straight to the output width, keeps its activation, and there is no project conv.
    - SE width: ``se_ratio`` x the block input (or x the expanded width), see ``_squeeze_excite``.
      Fused-MBConv has no SE unless its stage (or block) sets ``se_ratio``.
    """
    stage = spec.stages[stage_index]
    fields = BlockFields.of(stage, stage.blocks[index] if index < len(stage.blocks) else None)
    d = spec.defaults
    name = f"blocks.{stage_index}.{index}"
    activation = fields.activation or d.activation
    padding = d.padding
    se_ratio = fields.se_ratio if fields.se_ratio is not None else d.se_ratio
    if stage.block == "fused_mbconv" and fields.se_ratio is None:
        se_ratio = 0.0  # Fused-MBConv has no SE unless the stage asks for it
    expand_from = in_channels
    if fields.expansion_in is not None:
        expand_from = round_channels(fields.expansion_in, scaled.width, d.channel_divisor, d.round_limit)
    mid = round_channels(expand_from * fields.expansion, 1.0, d.channel_divisor, d.round_limit)
    fused_direct = stage.block == "fused_mbconv" and fields.expansion == 1 and fields.expansion_in is None
    kernels = fields.kernel if isinstance(fields.kernel, tuple) else (fields.kernel,)
    shape = input_shape
    expand = depthwise = project = None
    if stage.block == "mbconv":
        has_expand = fields.expand_conv if fields.expand_conv is not None else fields.expansion != 1
        if not has_expand:
            mid = in_channels  # no expand conv: the depthwise conv runs on the block input
        else:
            expand = _conv_bn_act(
                f"{name}.expand", in_channels, mid, 1, 1, padding, activation, shape, fields.expand_groups
            )
        if len(kernels) > 1:
            depthwise = _mixed_depthwise(
                f"{name}.depthwise", mid, kernels, stride, padding, activation, shape, dilation
            )
        else:
            depthwise = _conv_bn_act(
                f"{name}.depthwise", mid, mid, kernels[0], stride, padding, activation, shape, mid, dilation
            )
        shape = depthwise.bn.output
    else:
        if len(kernels) > 1:
            raise ValueError(f"expected one kernel size for a fused_mbconv block, found {list(kernels)} in {name}")
        if fused_direct:
            mid = out_channels  # the k x k conv goes straight to the output width
        expand = _conv_bn_act(
            f"{name}.expand",
            in_channels,
            mid,
            kernels[0],
            stride,
            padding,
            activation,
            shape,
            fields.expand_groups,
            dilation,
        )
        shape = expand.bn.output
    se = None
    if se_ratio > 0:
        se = _squeeze_excite(spec, f"{name}.se", mid, in_channels, se_ratio, activation)
    if not fused_direct:
        project = _conv_bn_act(
            f"{name}.project", mid, out_channels, 1, 1, padding, None, shape, groups=fields.project_groups
        )
        shape = project.bn.output
    residual = stride == 1 and in_channels == out_channels and fields.residual is not False
    return ir.Block(
        name=name,
        stage=stage_index,
        index=index,
        global_index=global_index,
        kind=stage.block,
        in_channels=in_channels,
        mid_channels=mid,
        out_channels=out_channels,
        expansion=fields.expansion,
        kernels=kernels,
        stride=stride,
        residual=residual,
        depth_fraction=depth_fraction,
        drop_path_rate=drop_path_rate(scaled.drop_path_rate, depth_fraction),
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
    # Every other field is the spec's value, under the same name (tests/test_train_runtime.py pins that).
    values = {"train_resolution": train_resolution, "eval_resolution": scaled.resolution, "progressive": stages}
    for item in fields(ir.TrainingPlan):
        if item.name not in values:
            values[item.name] = getattr(training, item.name)
    return ir.TrainingPlan(**values)


def stem_channels(spec: Spec, scaled: Multipliers) -> int:
    """The stem's width: scaled and rounded like every width, unless ``stem.scale_width`` is false."""
    d = spec.defaults
    if not spec.stem.scale_width:
        return spec.stem.channels
    return round_channels(spec.stem.channels, scaled.width, d.channel_divisor, d.round_limit)


def head_channels(spec: Spec, scaled: Multipliers) -> int:
    """The head conv's width (0: none): scaled unless fixed, and at least ``min_channels``."""
    d, head = spec.defaults, spec.head
    if head.channels == 0 or not head.scale_width:
        return head.channels
    channels = round_channels(head.channels, scaled.width, d.channel_divisor, d.round_limit)
    return max(channels, head.min_channels or 0)


@dataclass(frozen=True)
class _BodyOutput:
    """The stem's, a stage's or a body head conv's output: where a feature level can be."""

    module: str
    stages: int
    channels: int
    reduction: int
    output: ir.Shape


def _body(
    loaded: LoadedSpec, scaled: Multipliers, stem: ir.ConvBnAct, output_stride: int | None
) -> tuple[tuple[ir.Stage, ...], list[_BodyOutput]]:
    """The stages after ``stem``, and the stem's and every stage's output.

    The stride of a stage sits on its first block. ``output_stride`` (None: the model's own) caps the
    total stride as timm does: a strided block that would take it past ``output_stride`` runs at
    stride 1 with the dilation so far, and the blocks after it dilate by the stride given up."""
    spec = loaded.spec
    d = spec.defaults
    repeats = [stage_repeats(stage, scaled.depth, d.repeat_rounding) for stage in spec.stages]
    fractions = depth_fractions(sum(repeats))
    reduction, dilation = stem.stride, 1
    body = [_BodyOutput("stem", 0, stem.out_channels, reduction, stem.bn.output)]
    stages: list[ir.Stage] = []
    in_channels, shape, global_index = stem.out_channels, stem.bn.output, 0
    for stage_index, stage in enumerate(spec.stages):
        blocks = []
        out_channels = round_channels(stage.channels, scaled.width, d.channel_divisor, d.round_limit)
        for index in range(repeats[stage_index]):
            stride = stage.stride if index == 0 else 1
            next_dilation = dilation
            if stride > 1 and output_stride is not None and reduction * stride > output_stride:
                stride, next_dilation = 1, dilation * stride
            reduction *= stride
            try:
                block = _block(
                    spec,
                    scaled,
                    stage_index,
                    index,
                    global_index,
                    in_channels,
                    out_channels,
                    fractions[global_index],
                    shape,
                    stride,
                    dilation,
                )
            except ValueError as exc:  # a rule the scaled widths break: name the stage in the user's file
                raise SpecError(str(exc), loaded.locate(("stages", stage_index)), f"stages[{stage_index}]") from None
            blocks.append(block)
            in_channels, shape, global_index, dilation = out_channels, block.output, global_index + 1, next_dilation
        stages.append(ir.Stage(stage_index, stage.block, tuple(blocks)))
        body.append(_BodyOutput(f"blocks.{stage_index}", stage_index + 1, out_channels, reduction, shape))
    return tuple(stages), body


def _feature_levels(body: list[_BodyOutput]) -> tuple[ir.FeatureLevel, ...]:
    """The last body output at each reduction, named P{log2 reduction} (timm's and keras-hub's levels)."""
    picked = [out for i, out in enumerate(body) if i + 1 == len(body) or body[i + 1].reduction != out.reduction]
    return tuple(
        ir.FeatureLevel(
            index, f"P{out.reduction.bit_length() - 1}", out.module, out.stages, out.channels, out.reduction, out.output
        )
        for index, out in enumerate(picked)
    )


def _wiring(a: ir.ConvBnAct | ir.SqueezeExcite | None, b: ir.ConvBnAct | ir.SqueezeExcite | None) -> bool:
    """Whether two parts differ in anything but their output sizes."""
    if a is None or b is None:
        return a is not b
    return [replace(layer, output=None) for layer in a.layers] != [replace(layer, output=None) for layer in b.layers]


def _output_stride(
    loaded: LoadedSpec,
    scaled: Multipliers,
    stem: ir.ConvBnAct,
    nominal: tuple[ir.Stage, ...],
    nominal_body: list[_BodyOutput],
    output_stride: int,
) -> ir.OutputStride:
    """The model at ``output_stride``: the convs that differ from the nominal ones, and the levels'
    reductions there. Only a block's k x k conv can differ (its stride, dilation and padding)."""
    stages, body = _body(loaded, scaled, stem, output_stride)
    reduction = {out.module: out.reduction for out in body}
    reduction["head"] = body[-1].reduction
    convs = []
    for before_stage, stage in zip(nominal, stages, strict=True):
        for before, block in zip(before_stage.blocks, stage.blocks, strict=True):
            changed = [part for part in ("expand", "depthwise") if _wiring(getattr(before, part), getattr(block, part))]
            if _wiring(before.project, block.project) or _wiring(before.se, block.se) or len(changed) > 1:
                raise AssertionError(f"{block.name}: only the k x k conv may change with the output stride")
            if changed:
                part = changed[0]
                convs.append(ir.DilatedConv(block.stage, block.index, part, getattr(block, part), block.residual))
            elif before.residual != block.residual:
                raise AssertionError(f"{block.name}: the residual changed but not the conv")
    levels = _feature_levels(nominal_body)
    return ir.OutputStride(output_stride, tuple(reduction[level.module] for level in levels), tuple(convs))


def lower(loaded: LoadedSpec, scaled: Multipliers) -> ir.Model:
    """Resolve every channel count, repeat, stride, padding, drop-path rate and shape."""
    spec = loaded.spec
    d = spec.defaults
    input_shape = ir.Shape(spec.input.channels, scaled.resolution, scaled.resolution)
    stem = _conv_bn_act(
        "stem",
        spec.input.channels,
        stem_channels(spec, scaled),
        spec.stem.kernel,
        spec.stem.stride,
        d.padding,
        spec.stem.activation or d.activation,
        input_shape,
    )
    stages, body = _body(loaded, scaled, stem, None)
    in_channels, shape = stages[-1].blocks[-1].out_channels, stages[-1].output
    head_conv = None
    features = in_channels
    if spec.head.channels:
        head_conv = _conv_bn_act(
            "head",
            in_channels,
            head_channels(spec, scaled),
            1,
            1,
            d.padding,
            spec.head.activation or d.activation,
            shape,
        )
        features = head_conv.out_channels
        if spec.head.pooled_conv is not None:  # MobileNetV3: the conv before pooling ends the body
            body.append(_BodyOutput("head", len(stages), head_conv.out_channels, body[-1].reduction, shape))
    pooled_conv = None
    if spec.head.pooled_conv is not None:
        width = spec.head.pooled_conv.channels
        pooled_conv = ir.PooledConv(
            ir.Layer("pooled_conv", "conv", features, width, ir.Shape(width, 1, 1), bias=True),
            spec.head.pooled_conv.activation or d.activation,
        )
        features = width
    classifier = ir.Layer(
        "classifier",
        "linear",
        features,
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
        head=ir.Head(head_conv, pooled_conv, classifier, scaled.dropout, spec.head.num_classes),
        training=_training_plan(spec.training, scaled),
        features=_feature_levels(body),
        output_strides=tuple(
            _output_stride(loaded, scaled, stem, stages, body, output_stride) for output_stride in ir.OUTPUT_STRIDES
        ),
    )
