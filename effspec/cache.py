"""A build cache: the verified IR and analysis of a spec, keyed by the exact bytes of its files.

Validation with pydantic costs more start-up time than everything else in a CLI run, so a spec whose
files (itself and every spec it ``extends``) are byte-identical to a previous successful build is
served from the cache, as a compiler's object cache would. Failed builds are never cached, so bad
input always gets the full validator's error. ``EFFSPEC_CACHE_DIR`` moves the cache; ``off``
disables it.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import tempfile
from pathlib import Path
from typing import Any

import yaml

from effspec import __version__

_FastLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_MAX_CHAIN = 32


def cache_dir() -> Path | None:
    configured = os.environ.get("EFFSPEC_CACHE_DIR")
    if configured is not None:
        return None if configured.lower() in ("", "off", "0", "none") else Path(configured)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "effspec"


def _code_stamp() -> str:
    """Size and mtime of every module of the compiler: an edited effspec (an editable install, a
    development checkout) never gets an IR built by its older self, even under the same version."""
    package = Path(__file__).parent
    stamps = []
    for module in sorted(package.glob("*.py")):
        stat = module.stat()
        stamps.append(f"{module.name}:{stat.st_size}:{stat.st_mtime_ns}")
    return ";".join(stamps)


def _key(path: Path, display: str) -> str | None:
    """sha256 over effspec's version and code stamp, the displayed path and every file of the extends chain."""
    digest = hashlib.sha256(f"{__version__}\0{_code_stamp()}\0{display}\0{os.getcwd()}\0".encode())
    current = path
    for _ in range(_MAX_CHAIN):
        try:
            data = current.read_bytes()
            parsed = yaml.load(data, Loader=_FastLoader)
        except (OSError, yaml.YAMLError):
            return None
        digest.update(str(current.resolve()).encode() + b"\0" + data + b"\0")
        base = parsed.get("extends") if isinstance(parsed, dict) else None
        if base is None:
            return digest.hexdigest()
        if not isinstance(base, str):
            return None
        current = current.parent / base
    return None  # a chain this long is probably a cycle: let the loader report it


def lookup(path: Path, display: str) -> tuple[str | None, Any]:
    """(key, cached value or None)."""
    directory = cache_dir()
    key = _key(path, display) if directory else None
    if directory is None or key is None:
        return None, None
    try:
        with open(directory / f"{key}.pickle", "rb") as handle:
            return key, pickle.load(handle)
    except (OSError, pickle.UnpicklingError, EOFError, AttributeError, ImportError, TypeError):
        return key, None


def store(key: str | None, value: Any) -> None:
    directory = cache_dir()
    if directory is None or key is None:
        return
    try:
        directory.mkdir(parents=True, exist_ok=True)
        handle, temp = tempfile.mkstemp(dir=directory, suffix=".tmp")
        with os.fdopen(handle, "wb") as out:
            pickle.dump(value, out, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(temp, directory / f"{key}.pickle")
    except OSError:
        pass  # a read-only or full cache directory only costs speed
