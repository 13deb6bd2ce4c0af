"""Shared rendering for backends: a strict Jinja2 environment and safe literal filters.

Templates only print. Anything that came from a spec reaches generated code through ``py``
(a Python literal built by ``repr``), never pasted as source, so a spec cannot inject code.

Templates are compiled in memory on every run, never loaded from a bytecode cache: compiled
templates are code, and a cache directory is a place where another program could plant some.
"""

from __future__ import annotations

import math
from pathlib import Path

import jinja2

from effspec import __version__


def py_literal(value: object) -> str:
    """A Python literal for str/int/float/bool/None/tuples of those; anything else is a bug."""
    if value is None or isinstance(value, bool | int):
        return repr(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"cannot emit non-finite float {value!r}")
        return repr(value)
    if isinstance(value, str):
        return _string_literal(value)
    if isinstance(value, tuple | list):
        items = ", ".join(py_literal(item) for item in value)
        return f"({items},)" if len(value) == 1 else f"({items})"
    raise TypeError(f"cannot emit a literal for {type(value).__name__}")


def _string_literal(value: str) -> str:
    """``repr`` with the quotes ruff format picks: double, unless the text holds more ``"`` than ``'``."""
    quote = "'" if value.count('"') > value.count("'") else '"'
    return quote + "".join(_escaped(ch, quote) for ch in value) + quote


def _escaped(ch: str, quote: str) -> str:
    if ch == quote:
        return "\\" + ch
    if ch in "'\"":
        return ch
    return repr(ch)[1:-1]  # repr's own escapes: backslash, control and non-printable characters


def comment_text(value: str) -> str:
    """Text safe inside a ``#`` comment: one line, printable characters only."""
    return "".join(ch if ch.isprintable() else " " for ch in value.replace("\n", " ").replace("\r", " "))


def environment(template_dir: Path) -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(template_dir)),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,
    )
    env.filters["py"] = py_literal
    env.filters["comment"] = comment_text
    env.globals["effspec_version"] = __version__
    return env
