"""Image files as users' folders hold them, good and damaged (issue 18 item 3 / issue 19)."""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def bomb_png(width: int = 50_000, height: int = 50_000) -> bytes:
    """A valid PNG header claiming width x height pixels, with a tiny compressed stream."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", zlib.compress(b"\0" * 1024))
        + _png_chunk(b"IEND", b"")
    )


def odd_images(folder: Path, seed: int = 0) -> dict[str, str]:
    """Every kind of file the decoding policy names, in ``folder``: name -> "ok" (decodes, to RGB)
    or "bad" (does not decode). Returns the expectation per file name (str, surrogate-escaped)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rgb = rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)
    good = Image.fromarray(rgb)
    expected: dict[str, str] = {}

    def save(name: str, image: Image.Image, kind: str = "ok", **options) -> None:
        image.save(folder / name, **options)
        expected[name] = kind

    save("plain.png", good)
    save("plain.jpg", good, quality=90)
    save("gray.png", good.convert("L"))
    save("gray.jpg", good.convert("L"))
    save("cmyk.jpg", good.convert("CMYK"))
    save("deep16.png", Image.fromarray((rng.integers(0, 65536, (20, 24))).astype(np.uint16)))
    palette = good.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    save("palette_alpha.png", palette, transparency=0)
    save("rgba.png", good.convert("RGBA"))
    jpeg = (folder / "plain.jpg").read_bytes()
    png = (folder / "plain.png").read_bytes()
    for name, data in (
        ("broken.jpg", b"\xff\xd8\xff\xe0" + bytes(rng.integers(0, 256, 400, dtype=np.uint8))),
        ("truncated.jpg", jpeg[: len(jpeg) // 3]),
        ("truncated.png", png[: len(png) // 2]),
        ("empty.png", b""),
        ("bomb.png", bomb_png()),
    ):
        (folder / name).write_bytes(data)
        expected[name] = "bad"
    latin1 = os.fsdecode(b"caf\xe9 \xe0 la cr\xe8me.png")  # not UTF-8: a Latin-1 name
    (folder / latin1).write_bytes(png)
    expected[latin1] = "ok"
    return expected
