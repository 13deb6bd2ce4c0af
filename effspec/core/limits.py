"""Bounds on the scaled model, checked after scaling and BEFORE lowering builds anything.

The schema bounds each field on its own (``effspec/core/schema.py``); a spec can still combine legal
values into a network nobody can build (``depth: 64`` on ``repeats: 1000``, ``width: 64`` on
16,384 channels). These checks cost O(stages): they compute the scaled block counts, channel
widths and an estimate of the parameter count from the spec alone, and raise a SpecError naming
the field (with its file:line:column) that crosses a limit, so the pipeline never lowers a
billion blocks.

The same bounds apply to sizes given on command lines (``--train-resolution``, ``--num-classes``,
``--seed``, ``--batch-size``, search grids): ``check_*`` below are called by every command that
builds a model or reads data, before anything is allocated, and fail with the same kind of
message ("expected at most ..., found ...") and exit 2.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from effspec.support.errors import SpecError, UsageError

if TYPE_CHECKING:
    from effspec.core.loader import LoadedSpec
    from effspec.core.scaling import Multipliers

MAX_BLOCKS = 1000  # scaled blocks in the whole network (EfficientNetV2-L has 79)
MAX_CHANNELS = 65_536  # any scaled width, expanded widths included (B7's widest is 3,840)
MAX_RESOLUTION = 8192  # any input resolution, scaled or given as a flag (B7: 600); the schema's bound too
MAX_CLASSES = 100_000  # classifier outputs; the schema's bound too
MAX_PARAMS = 4_000_000_000  # estimated weights (V2-L: 118 million)
MAX_SEED = 2**32 - 1  # numpy's and Keras's seeds are 32-bit
MAX_BATCH = 65_536  # images in one batch
MAX_BATCH_PIXELS = 2**31  # batch x resolution^2 of one batch (2 G pixels: 24 GB as float32 RGB)
MAX_GRID_POINTS = 1_000_000  # (alpha, beta, gamma) points a search enumerates


def _fail(loaded: LoadedSpec, path: tuple[object, ...], text: str, message: str) -> SpecError:
    return SpecError(message, loaded.locate(path), text)


def check_limits(loaded: LoadedSpec, scaled: Multipliers) -> None:
    """Raise SpecError when the scaled model would exceed a limit; otherwise return quickly."""
    from effspec.core.scaling import round_channels, stage_repeats

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


# ---- sizes on command lines ----------------------------------------------------------------------


def check_size(flag: str, value: float, what: str, high: int, low: int = 1) -> None:
    """``low <= value <= high`` (an integer), else UsageError: ``FLAG: expected WHAT of at most HIGH, found VALUE``."""
    if isinstance(value, float) and not value.is_integer():
        raise UsageError(f"{flag}: expected {what} (a whole number), found {value:g}")
    if not low <= value <= high:  # also rejects nan
        bound = f"at least {low:,}" if value < low else f"at most {high:,}"
        shown = f"{value:,}" if abs(value) < 10**30 else f"{value:.3g}"
        raise UsageError(f"{flag}: expected {what} of {bound}, found {shown}")


def check_resolution(flag: str, value: float) -> None:
    check_size(flag, value, "a resolution", MAX_RESOLUTION)


def check_classes(flag: str, value: float) -> None:
    check_size(flag, value, "a class count", MAX_CLASSES)


def check_seed(flag: str, value: float) -> None:
    check_size(flag, value, "a seed", MAX_SEED, low=0)


def check_batch(flag: str, batch: float, resolution: int | None = None) -> None:
    """A batch size, and (with ``resolution``) the pixels of one batch of that size."""
    check_size(flag, batch, "a batch size", MAX_BATCH)
    if resolution is not None and batch * resolution * resolution > MAX_BATCH_PIXELS:
        raise UsageError(
            f"{flag}: expected at most {MAX_BATCH_PIXELS:,} pixels in one batch, found {batch * resolution**2:,} "
            f"({batch} images at {resolution}x{resolution})"
        )


def check_grid(flag: str, counts: dict[str, int]) -> None:
    """The product of a search grid's axes, before any point is enumerated."""
    total = 1
    for count in counts.values():
        total *= count
    if total > MAX_GRID_POINTS:
        shape = " x ".join(f"{count:,} {name}" for name, count in counts.items())
        raise UsageError(f"{flag}: expected at most {MAX_GRID_POINTS:,} grid points, found {total:,} ({shape})")


#: Command-line flags (argparse destinations) that size what a command allocates, by kind.
_RESOLUTIONS = ("resolution", "train_resolution", "eval_resolution", "image_size")
_CLASSES = ("num_classes",)
_SEEDS = ("seed",)
_BATCHES = ("batch", "batch_size")


def check_args(args: object) -> None:
    """Every sizing flag of any command (effspec's subcommands, the generated train.py) within the
    bounds above: called once, after parsing and before any work."""

    def flag(name: str) -> str:
        return "--" + name.replace("_", "-")

    def value(name: str) -> float | None:
        found = getattr(args, name, None)
        return found if isinstance(found, int | float) and not isinstance(found, bool) else None

    largest = None
    for name in _RESOLUTIONS:
        if (size := value(name)) is not None:
            check_resolution(flag(name), size)
            largest = max(largest or 0, int(size))
    for name in _CLASSES:
        if (count := value(name)) is not None:
            check_classes(flag(name), count)
    for name in _SEEDS:
        if (seed := value(name)) is not None:
            check_seed(flag(name), seed)
    for name in _BATCHES:
        if (batch := value(name)) is not None:
            check_batch(flag(name), batch, largest)  # type: ignore[arg-type]
