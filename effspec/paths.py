"""How spec files are named in messages, headers and cache keys."""

from __future__ import annotations

import os
from pathlib import Path


def safe_resolve(path: Path) -> Path:
    """``path.resolve()``, or the absolute path when it cannot be resolved (a symlink loop, a bad name)."""
    try:
        return path.resolve()
    except (OSError, RuntimeError, ValueError):
        return Path(os.path.abspath(path))


def display_path(path: Path) -> str:
    """Relative to the working directory when under it, else as given; posix separators."""
    if path.is_absolute():
        try:
            return safe_resolve(path).relative_to(safe_resolve(Path.cwd())).as_posix()
        except (ValueError, OSError):
            return path.as_posix()
    return Path(os.path.normpath(path)).as_posix()
