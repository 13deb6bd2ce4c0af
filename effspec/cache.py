"""A build cache: the verified IR and analysis of a spec as plain JSON data, keyed by the exact
bytes the build parsed.

Validation with pydantic costs about half of a cold CLI run, so a spec whose files (itself and
every spec it ``extends``) are byte-identical to a previous successful build is served from the
cache, as a compiler's object cache would. Failed builds are never cached, so bad input always gets
the full validator's error. ``EFFSPEC_CACHE_DIR`` moves the cache; ``off`` disables it.

Safety, since a cache is a place other programs can write to:

- Entries are JSON data decoded field by field against the IR's type annotations: nothing in a
  cache file can run code (no pickle, no compiled templates). A value of the wrong type, an
  unknown or missing field, a wrong format number: the entry is ignored and rebuilt.
- The key is a sha256 over the very bytes the loader read and parsed (read once: an edit during a
  build, or a FIFO, cannot serve one spec under another's key), plus effspec's version, a stamp of
  its modules, the displayed path and the working directory. An entry must repeat its key, the
  displayed path and the spec's ``name``, so an entry planted under another spec's key is refused.
- The directory is created 0700. A directory that is not owned by the user, or that group or others
  may write, is not used (one note on stderr). Entry files must be regular files owned by the user.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import os
import stat
import sys
import tempfile
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

from effspec import __version__

FORMAT = 2  # bump when the entry layout changes (the code stamp covers IR changes)
MAX_ENTRY_BYTES = 64 << 20
T = TypeVar("T")


def cache_dir() -> Path | None:
    configured = os.environ.get("EFFSPEC_CACHE_DIR")
    if configured is not None:
        return None if configured.lower() in ("", "off", "0", "none") else Path(configured)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "effspec"


_noted: set[str] = set()


def _note(directory: Path, why: str) -> None:
    if str(directory) not in _noted:
        _noted.add(str(directory))
        print(f"effspec: note: not using the build cache {directory}: {why}", file=sys.stderr)


def usable_dir(create: bool) -> Path | None:
    """The cache directory when it is safe to use: ours (owner) and not writable by group or others."""
    directory = cache_dir()
    if directory is None:
        return None
    try:
        if create:
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = os.stat(directory)
    except OSError:
        return None  # missing (on lookup) or not creatable: only costs speed
    if not stat.S_ISDIR(info.st_mode):
        _note(directory, "not a directory")
        return None
    if hasattr(os, "geteuid") and info.st_uid != os.geteuid():
        _note(directory, "owned by another user")
        return None
    if info.st_mode & 0o022:
        _note(directory, "writable by group or others (chmod 700 it to use it)")
        return None
    return directory


def _code_stamp() -> str:
    """Size and mtime of every module of the compiler: an edited effspec (an editable install, a
    development checkout) never gets an IR built by its older self, even under the same version."""
    package = Path(__file__).parent
    stamps = []
    for module in sorted(package.glob("*.py")):
        stat_ = module.stat()
        stamps.append(f"{module.name}:{stat_.st_size}:{stat_.st_mtime_ns}")
    return ";".join(stamps)


def key_for(display: str, sources: Sequence[tuple[str, bytes]]) -> str:
    """sha256 over the format, effspec's version and code stamp, the displayed path, the working
    directory and every (resolved path, bytes) the loader read, each length-prefixed."""
    try:
        cwd = os.getcwd()
    except OSError:
        cwd = "?"
    digest = hashlib.sha256()
    for part in (str(FORMAT), __version__, _code_stamp(), display, cwd):
        encoded = part.encode("utf-8", "surrogateescape")
        digest.update(f"{len(encoded)}:".encode() + encoded)
    for path, data in sources:
        encoded = path.encode("utf-8", "surrogateescape")
        digest.update(f"{len(encoded)}:".encode() + encoded + f"{len(data)}:".encode() + data)
    return digest.hexdigest()


# ---- the codec: frozen dataclasses <-> JSON data, checked against type annotations -------------


class _Mismatch(Exception):
    pass


def encode(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: encode(getattr(value, f.name)) for f in dataclasses.fields(value) if f.init}
    if isinstance(value, tuple | list):
        return [encode(item) for item in value]
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float) and math.isfinite(value):
        return value
    raise TypeError(f"cannot cache a {type(value).__name__}")


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def decode(tp: Any, data: Any) -> Any:
    """Rebuild a value of type ``tp`` from JSON data, or raise _Mismatch."""
    origin = typing.get_origin(tp)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        fields = [f for f in dataclasses.fields(tp) if f.init]
        if not isinstance(data, dict) or set(data) != {f.name for f in fields}:
            raise _Mismatch(tp.__name__)
        hints = _hints(tp)
        return tp(**{f.name: decode(hints[f.name], data[f.name]) for f in fields})
    if origin is Literal:
        for option in typing.get_args(tp):
            if type(option) is type(data) and option == data:
                return option
        raise _Mismatch(f"{data!r} not in {tp}")
    if origin is Union or origin is types.UnionType:
        for option in typing.get_args(tp):
            try:
                return decode(option, data)
            except _Mismatch:
                continue
        raise _Mismatch(str(tp))
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(data, list):
            raise _Mismatch("tuple")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(decode(args[0], item) for item in data)
        if len(args) != len(data):
            raise _Mismatch("tuple length")
        return tuple(decode(arg, item) for arg, item in zip(args, data, strict=True))
    if tp is type(None) or tp is None:
        if data is not None:
            raise _Mismatch("None")
        return None
    if tp is bool or tp is str:
        if type(data) is not tp:
            raise _Mismatch(tp.__name__)
        return data
    if tp is int:
        if type(data) is not int:
            raise _Mismatch("int")
        return data
    if tp is float:
        if type(data) not in (int, float) or not math.isfinite(data):
            raise _Mismatch("float")
        return float(data)
    raise _Mismatch(f"unsupported type {tp!r}")


# ---- entries ------------------------------------------------------------------------------------


def _read_entry(path: Path) -> bytes | None:
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except OSError:
        return None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_size > MAX_ENTRY_BYTES:
            return None
        if hasattr(os, "geteuid") and info.st_uid != os.geteuid():
            return None
        with os.fdopen(os.dup(fd), "rb") as handle:
            return handle.read(MAX_ENTRY_BYTES + 1)
    except OSError:
        return None
    finally:
        os.close(fd)


def lookup(key: str, kind: type[T], display: str, name: object) -> T | None:
    """The cached value for ``key``, when an entry exists, decodes, and matches the spec; else None."""
    directory = usable_dir(create=False)
    if directory is None:
        return None
    raw = _read_entry(directory / f"{key}.json")
    if raw is None or len(raw) > MAX_ENTRY_BYTES:
        return None
    try:
        entry = json.loads(raw)
        if not isinstance(entry, dict) or entry.get("format") != FORMAT or entry.get("key") != key:
            return None
        if entry.get("display") != display or entry.get("name") != name:
            return None
        value = decode(kind, entry.get("value"))
    except (ValueError, TypeError, RecursionError, _Mismatch):
        return None  # corrupt or foreign: rebuilt, then overwritten by store()
    return value


def store(key: str, value: Any, display: str, name: str) -> None:
    """Write an entry atomically (temp file + rename); any failure only costs speed."""
    directory = usable_dir(create=True)
    if directory is None:
        return
    try:
        encoded = encode(value)
        if decode(type(value), encoded) != value:  # only what reads back exactly is worth keeping
            return
        text = json.dumps(
            {"format": FORMAT, "key": key, "display": display, "name": name, "value": encoded},
            separators=(",", ":"),
            allow_nan=False,
        )
    except (TypeError, ValueError, _Mismatch, RecursionError):
        return
    temp = None
    try:
        handle, temp = tempfile.mkstemp(dir=directory, prefix=".entry-", suffix=".tmp")
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(text)
        os.replace(temp, directory / f"{key}.json")
        temp = None
    except OSError:
        pass
    finally:
        if temp is not None:
            try:
                os.unlink(temp)
            except OSError:
                pass
