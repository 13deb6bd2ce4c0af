"""Bounds on the scaled model, checked after scaling and BEFORE lowering builds anything.

The schema bounds each field on its own (``effspec/schema.py``); a spec can still combine legal
values into a network nobody can build (``depth: 64`` on ``repeats: 1000``, ``width: 64`` on
16,384 channels). These checks cost O(stages): they compute the scaled block counts, channel
widths and an estimate of the parameter count from the spec alone, and raise a SpecError naming
the field (with its file:line:column) that crosses a limit, so the pipeline never lowers a
billion blocks.
"""

from __future__ import annotations

from effspec.errors import SpecError
from effspec.loader import LoadedSpec
from effspec.scaling import Multipliers, round_channels, stage_repeats

MAX_BLOCKS = 1000  # scaled blocks in the whole network (EfficientNetV2-L has 79)
MAX_CHANNELS = 65_536  # any scaled width, expanded widths included (B7's widest is 3,840)
MAX_RESOLUTION = 8192  # scaled input resolution (B7: 600)
MAX_PARAMS = 4_000_000_000  # estimated weights (V2-L: 118 million)


def _fail(loaded: LoadedSpec, path: tuple[object, ...], text: str, message: str) -> SpecError:
    return SpecError(message, loaded.locate(path), text)


def check_limits(loaded: LoadedSpec, scaled: Multipliers) -> None:
    """Raise SpecError when the scaled model would exceed a limit; otherwise return quickly."""
    spec = loaded.spec
    defaults = spec.defaults
    scaling_path: tuple[object, ...] = ("scaling",)
    if spec.scaling is not None:
        field = "phi" if spec.scaling.method == "compound" else "resolution"
        scaling_path = ("scaling", field)
    if not 1 <= scaled.resolution <= MAX_RESOLUTION:
        raise _fail(
            loaded,
            scaling_path,
            ".".join(map(str, scaling_path)),
            f"expected a scaled resolution between 1 and {MAX_RESOLUTION}, found {scaled.resolution:,}",
        )

    def channels(count: int) -> int:
        return round_channels(count, scaled.width, defaults.channel_divisor, defaults.round_limit)

    def check_width(value: int, path: tuple[object, ...], text: str, what: str) -> None:
        if value > MAX_CHANNELS:
            raise _fail(loaded, path, text, f"expected at most {MAX_CHANNELS:,} {what} after scaling, found {value:,}")

    in_channels = channels(spec.stem.channels)
    check_width(in_channels, ("stem", "channels"), "stem.channels", "channels")
    params = spec.input.channels * in_channels * spec.stem.kernel**2
    blocks = 0
    for index, stage in enumerate(spec.stages):
        where = ("stages", index)
        repeats = stage_repeats(stage, scaled.depth, defaults.repeat_rounding)
        blocks += repeats
        if blocks > MAX_BLOCKS:
            raise _fail(
                loaded,
                (*where, "repeats"),
                f"stages[{index}].repeats",
                f"expected at most {MAX_BLOCKS:,} blocks in all after scaling (depth {scaled.depth:g}), "
                f"found {blocks:,} by this stage",
            )
        out_channels = channels(stage.channels)
        check_width(out_channels, (*where, "channels"), f"stages[{index}].channels", "channels")
        for block in range(repeats):
            block_in = in_channels if block == 0 else out_channels
            mid = block_in * stage.expansion
            check_width(mid, (*where, "expansion"), f"stages[{index}].expansion", "expanded channels")
            kernel_area = max(stage.kernel if isinstance(stage.kernel, tuple) else (stage.kernel,)) ** 2
            if stage.block == "mbconv":
                params += block_in * mid + mid * kernel_area + mid * out_channels
            else:
                params += block_in * mid * kernel_area + mid * out_channels
            params += 2 * block_in * mid  # squeeze-and-excite, at most
            if params > MAX_PARAMS:
                raise _fail(
                    loaded,
                    (*where, "channels"),
                    f"stages[{index}]",
                    f"expected at most {MAX_PARAMS:,} parameters, found more by this stage "
                    f"({out_channels:,} channels, expansion {stage.expansion}, {repeats:,} blocks)",
                )
        in_channels = out_channels
    head = channels(spec.head.channels)
    check_width(head, ("head", "channels"), "head.channels", "channels")
    params += in_channels * head + head * spec.head.num_classes
    if params > MAX_PARAMS:
        raise _fail(
            loaded,
            ("head", "num_classes"),
            "head",
            f"expected at most {MAX_PARAMS:,} parameters, found about {params:,} with the head "
            f"({head:,} channels, {spec.head.num_classes:,} classes)",
        )
    progressive = spec.training.progressive
    if progressive is not None:
        for end in ("start", "end"):
            size = getattr(progressive.image_size, end)
            if size > MAX_RESOLUTION:
                path = ("training", "progressive", "image_size", end)
                raise _fail(
                    loaded,
                    path,
                    f"training.progressive.image_size.{end}",
                    f"expected an image size of at most {MAX_RESOLUTION}, found {size:g}",
                )
