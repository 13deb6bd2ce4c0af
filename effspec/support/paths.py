"""How spec files are named in messages, headers and cache keys."""

from __future__ import annotations

import os
import stat
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


# `extends: efficientnet-b0` names a spec shipped with effspec: a wheel carries them as package data
# (effspec/specs/), a source checkout or an editable install has them in specs/ beside the package.
_SPECS_MARKER = "effspec.schema.json"  # so that another project's specs/ directory is never taken for ours


def shipped_specs_dir() -> Path | None:
    """The directory of the specs shipped with effspec, or None when this installation has none."""
    package = Path(__file__).resolve().parent.parent  # effspec/ (this file is effspec/support/paths.py)
    for candidate in (package / "specs", package.parent / "specs"):
        if (candidate / _SPECS_MARKER).is_file():
            return candidate
    return None


def shipped_spec_names() -> list[str]:
    """The names ``extends`` accepts without a path (``efficientnet-b0``), sorted."""
    directory = shipped_specs_dir()
    if directory is None:
        return []
    return sorted(path.stem for path in directory.glob("*.yaml") if path.is_file())


def shipped_spec(name: str) -> Path | None:
    """The file of the shipped spec ``name``, or None. Only listed names match (no path is built from input)."""
    directory = shipped_specs_dir()
    if directory is None or name not in shipped_spec_names():
        return None
    return directory / f"{name}.yaml"


#: What each kind of file is called in messages, in the order they are tested.
_FILE_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISREG, "a regular file"),
)


def describe_mode(mode: int) -> str:
    """'a directory', 'a FIFO', ... for a file that is not a regular file."""
    return next((name for test, name in _FILE_KINDS if test(mode)), "not a regular file")
