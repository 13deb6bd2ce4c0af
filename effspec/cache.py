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
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

from effspec import __version__

FORMAT = 3  # bump when the entry layout changes (the code stamp covers IR changes)
MAX_ENTRY_BYTES = 16 << 20  # the largest model the limits allow (1,000 blocks) takes ~2.3 MB
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
        text = "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in str(directory))
        print(f"effspec: note: not using the build cache {text}: {why}", file=sys.stderr)


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


_SHARED = "$shared"  # stands for the entry's one shared object (the model, also held by the report)


def encode(value: Any, shared: object = None) -> Any:
    if shared is not None and value is shared:
        return {_SHARED: True}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: encode(getattr(value, f.name), shared) for f in dataclasses.fields(value) if f.init}
    if isinstance(value, tuple | list):
        return [encode(item, shared) for item in value]
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float) and math.isfinite(value):
        return value
    raise TypeError(f"cannot cache a {type(value).__name__}")


class _Decoding:
    shared: object = None  # the already decoded shared object while an entry's value is decoded


def decode(tp: Any, data: Any, shared: object = None) -> Any:
    """Rebuild a value of type ``tp`` from JSON data (checked against the annotations), or raise _Mismatch."""
    previous, _Decoding.shared = _Decoding.shared, shared
    try:
        return _decoder(tp)(data)
    finally:
        _Decoding.shared = previous


@functools.cache
def _decoder(tp: Any) -> Callable[[Any], Any]:
    """A decoding function per type, built once from its annotations."""
    origin = typing.get_origin(tp)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        hints = typing.get_type_hints(tp)
        fields = [(f.name, _decoder(hints[f.name])) for f in dataclasses.fields(tp) if f.init]
        names = {name for name, _ in fields}

        def dataclass_value(data: Any) -> Any:
            if type(data) is not dict:
                raise _Mismatch(tp.__name__)
            if data.keys() != names:
                if data == {_SHARED: True} and isinstance(_Decoding.shared, tp):
                    return _Decoding.shared
                raise _Mismatch(tp.__name__)
            return tp(**{name: decode_field(data[name]) for name, decode_field in fields})

        return dataclass_value
    if origin is Literal:
        options = typing.get_args(tp)

        def literal_value(data: Any) -> Any:
            for option in options:
                if type(option) is type(data) and option == data:
                    return option
            raise _Mismatch(f"{data!r} not in {tp}")

        return literal_value
    if origin is Union or origin is types.UnionType:
        alternatives = [_decoder(option) for option in typing.get_args(tp)]

        def union_value(data: Any) -> Any:
            for alternative in alternatives:
                try:
                    return alternative(data)
                except _Mismatch:
                    continue
            raise _Mismatch(str(tp))

        return union_value
    if origin is tuple:
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            item = _decoder(args[0])

            def tuple_value(data: Any) -> Any:
                if type(data) is not list:
                    raise _Mismatch("tuple")
                return tuple(item(value) for value in data)

            return tuple_value
        items = [_decoder(arg) for arg in args]

        def fixed_tuple_value(data: Any) -> Any:
            if type(data) is not list or len(data) != len(items):
                raise _Mismatch("tuple")
            return tuple(decode_item(value) for decode_item, value in zip(items, data, strict=True))

        return fixed_tuple_value
    if tp is type(None) or tp is None:
        return _exact(type(None))
    if tp in (bool, str, int):
        return _exact(tp)
    if tp is float:

        def float_value(data: Any) -> float:
            if type(data) not in (int, float) or not math.isfinite(data):
                raise _Mismatch("float")
            return float(data)

        return float_value

    def unsupported(data: Any) -> Any:
        raise _Mismatch(f"unsupported type {tp!r}")

    return unsupported


def _exact(kind: type) -> Callable[[Any], Any]:
    def exact_value(data: Any) -> Any:
        if type(data) is not kind:  # no bool for int, no int for str
            raise _Mismatch(kind.__name__)
        return data

    return exact_value


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


def lookup(key: str, kind: type[T], display: str, name: object, shared_kind: type | None = None) -> T | None:
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
        shared = decode(shared_kind, entry.get("shared")) if shared_kind is not None else None
        value = decode(kind, entry.get("value"), shared)
    except (ValueError, TypeError, RecursionError, _Mismatch):
        return None  # corrupt or foreign: rebuilt, then overwritten by store()
    return value


def store(key: str, value: Any, display: str, name: str, shared: object = None) -> None:
    """Write an entry atomically (temp file + rename); any failure only costs speed. ``shared``, an
    object that ``value`` holds in several places, is stored once."""
    directory = usable_dir(create=True)
    if directory is None:
        return
    try:
        encoded = encode(value, shared)
        encoded_shared = encode(shared) if shared is not None else None
        decoded_shared = decode(type(shared), encoded_shared) if shared is not None else None
        if decode(type(value), encoded, decoded_shared) != value:  # keep only what reads back exactly
            return
        entry = {"format": FORMAT, "key": key, "display": display, "name": name, "value": encoded}
        if shared is not None:
            entry["shared"] = encoded_shared
        text = json.dumps(
            entry,
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
