"""The image-folder listing both trainers share: ``DIR/<class>/<image>``, checked up front.

Policy (the same in both backends): a file that is empty, or whose first bytes are not a JPEG,
PNG, GIF, BMP or WebP header, or whose name has another extension, is skipped and counted (one
``note:`` line per split naming the first one); a class folder left with no image is an error, as
is a split with no class folder. Files are read through ``FileSystem`` so the Keras trainer can
list ``gs://`` buckets with ``tf.io.gfile``. No framework is imported here.

Decoding (``open_image``; both trainers and ``effspec export --calibration DIR``): every image is
decoded by Pillow and converted to 8-bit RGB (or L) the same way: CMYK JPEGs, grayscale, 16-bit
PNGs (scaled to 8 bits, not clipped), palette PNGs with transparency (through RGBA) and images with
alpha all decode. A file that does not decode (truncated JPEG or PNG behind a valid header, a
header claiming more than ``MAX_PIXELS`` pixels: no decompression bomb is inflated) raises
``Undecodable``; the trainers then use the next image of the list and print one ``note:`` line
naming the file (once per process), export skips it with the same line. Never a traceback.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from effspec.support.errors import TrainingError

MAX_PIXELS = 10_000 * 10_000  # a larger header is refused before any pixel is inflated

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp")


def image_kind(head: bytes) -> str | None:
    """The format whose signature ``head`` (the first 12 bytes) starts with, if any."""
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if head.startswith(b"BM"):
        return "bmp"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    return None


@dataclass(frozen=True)
class FileSystem:
    """The four file operations the listing needs (local by default)."""

    listdir: Callable[[str], list[str]] = os.listdir
    isdir: Callable[[str], bool] = os.path.isdir
    head: Callable[[str], bytes] = lambda path: _local_head(path)


def _local_head(path: str) -> bytes:
    with open(path, "rb") as handle:
        return handle.read(12)


LOCAL = FileSystem()


@dataclass(frozen=True)
class Listing:
    classes: tuple[str, ...]
    samples: tuple[tuple[str, int], ...]  # (path, label), in class then file-name order
    skipped: tuple[str, ...]  # files that are empty, not images, or unreadable

    def note(self, directory: str) -> str | None:
        if not self.skipped:
            return None
        return (
            f"note: {directory}: skipped {len(self.skipped)} file(s) that are empty or not images "
            f"(first: {self.skipped[0]})"
        )


def list_split(directory: str, classes: tuple[str, ...] | None = None, fs: FileSystem = LOCAL) -> Listing:
    """``directory/<class>/<image>``: classes sorted by name (or ``classes``, train's), labels their index."""
    directory = directory.rstrip("/")
    if not fs.isdir(directory):
        raise TrainingError(f"{directory}: no such directory (expected <class>/<image> folders)")
    found = sorted(name.rstrip("/") for name in fs.listdir(directory) if fs.isdir(f"{directory}/{name.rstrip('/')}"))
    if not found:
        raise TrainingError(f"{directory}: no class folders (expected {directory}/<class>/<image>)")
    classes = classes or tuple(found)
    unknown = sorted(set(found) - set(classes))
    if unknown:
        raise TrainingError(f"{directory}: class folders not in train/: {', '.join(unknown)}")
    samples: list[tuple[str, int]] = []
    skipped: list[str] = []
    for name in found:
        folder = f"{directory}/{name}"
        kept = 0
        for file in sorted(fs.listdir(folder)):
            path = f"{folder}/{file}"
            if fs.isdir(path):
                continue
            if file.lower().endswith(IMAGE_EXTENSIONS) and _readable(path, fs):
                samples.append((path, classes.index(name)))
                kept += 1
            else:
                skipped.append(path)
        if not kept:
            raise TrainingError(f"{folder}: empty class folder (no JPEG, PNG, GIF, BMP or WebP image)")
    return Listing(tuple(classes), tuple(samples), tuple(skipped))


def _readable(path: str, fs: FileSystem) -> bool:
    try:
        return image_kind(fs.head(path)) is not None
    except OSError:
        return False


class Undecodable(ValueError):
    """An image file that passed the listing's header check but does not decode."""


def open_image(data: bytes, mode: str = "RGB") -> Any:
    """``data`` (a whole image file) as an 8-bit Pillow image in ``mode`` ("RGB" or "L"), or
    Undecodable naming why. Pillow is imported here, on first use."""
    import io
    import warnings

    from PIL import Image

    if not data:
        raise Undecodable("empty file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow's own bomb warning: the limit below decides
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > MAX_PIXELS:
                raise Undecodable(f"{width}x{height} pixels, more than {MAX_PIXELS:,}")
            image.load()
            if image.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16-bit grayscale: keep the top 8 bits
                import numpy as np

                pixels = np.asarray(image, dtype=np.int64)
                scale = 256 if image.mode != "I" or pixels.max(initial=0) > 255 else 1
                image = Image.fromarray(np.clip(pixels // scale, 0, 255).astype(np.uint8), mode="L")
            elif image.mode == "P" and "transparency" in image.info:
                image = image.convert("RGBA")
            return image.convert(mode)
    except Undecodable:
        raise
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as exc:
        reason = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
        raise Undecodable(reason) from None


_REPORTED: set[str] = set()


def report_undecodable(path: str, reason: object, instead: str = "using the next image") -> None:
    """One ``note:`` line per file and process (an epoch meets the same file again)."""
    import sys

    if path not in _REPORTED:
        _REPORTED.add(path)
        print(f"note: {path}: cannot decode ({reason}); {instead}", file=sys.stderr)


def first_decodable(
    samples: Sequence[tuple[str, int]], index: int, read: Callable[[str], bytes], mode: str = "RGB"
) -> tuple[Any, int]:
    """Sample ``index`` decoded, or the next one that decodes (with its label): the policy of both
    trainers for a file that does not decode."""
    for offset in range(len(samples)):
        path, label = samples[(index + offset) % len(samples)]
        try:
            return open_image(read(path), mode), label
        except (Undecodable, OSError) as exc:
            report_undecodable(path, exc.strerror if isinstance(exc, OSError) and exc.strerror else exc)
    raise TrainingError("no image of the folder decodes")


def read_local(path: str) -> bytes:
    with open(path, "rb") as handle:
        return handle.read()
