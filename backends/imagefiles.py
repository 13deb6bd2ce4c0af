"""The image-folder listing both trainers share: ``DIR/<class>/<image>``, checked up front.

Policy (the same in both backends): a file that is empty, or whose first bytes are not a JPEG,
PNG, GIF, BMP or WebP header, or whose name has another extension, is skipped and counted (one
``note:`` line per split naming the first one); a class folder left with no image is an error, as
is a split with no class folder. Files are read through ``FileSystem`` so the Keras trainer can
list ``gs://`` buckets with ``tf.io.gfile``. No framework is imported here.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

from .recipe import TrainingError

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
