"""The compiler pipeline, one pure pass per line: load -> validate -> scale -> lower -> verify -> analyze -> emit."""

from __future__ import annotations

import math
import os
import re
import secrets
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from effspec import cache, ir
from effspec.analysis import Report, analyze
from effspec.errors import OutputError, SpecError, UsageError
from effspec.paths import safe_resolve
from effspec.registry import get_backend
from effspec.yamlsource import describe_mode


@dataclass(frozen=True)
class Compiled:
    model: ir.Model
    report: Report
    warnings: tuple[str, ...]


def build(path: str | Path) -> Compiled:
    from effspec.loader import resolve  # pydantic-free: reads the spec and its bases once each

    if not str(path):
        raise UsageError("expected a spec file path, found an empty string")
    resolved = resolve(path)  # bounded reads, YAML (positions kept), `extends` merged
    name = resolved.data.get("name")
    key = cache.key_for(resolved.display, resolved.sources)  # the bytes just parsed, not a re-read
    cached = cache.lookup(key, Compiled, resolved.display, name, shared_kind=ir.Model)
    if cached is not None and _matches(cached, resolved.display, resolved.data):
        return cached
    # Imported here: pydantic dominates start-up, and a cache hit does not need it.
    from effspec.limits import check_limits
    from effspec.loader import validate
    from effspec.lower import lower
    from effspec.scaling import resolve_multipliers, scaling_warnings
    from effspec.verify import verify

    loaded = validate(resolved)  # pydantic: types, ranges, unknown keys
    scaled = resolve_multipliers(loaded.spec)  # compound (alpha^phi...) or explicit multipliers
    check_limits(loaded, scaled)  # bounded blocks, channels, resolution, parameters: before building anything
    model = lower(loaded, scaled)  # every channel, repeat, stride, padding and shape resolved
    model = verify(model, loaded)  # invariants the schema cannot express (spatial collapse, names)
    report = analyze(model)  # params, MACs, activation memory per node
    warnings = tuple(f"{loaded.path}: warning: {text}" for text in scaling_warnings(loaded.spec))
    compiled = Compiled(model, report, warnings)
    cache.store(key, compiled, resolved.display, loaded.spec.name, shared=model)
    return compiled


def _matches(compiled: Compiled, display: str, data: dict[str, Any]) -> bool:
    """Does a cache entry describe this spec? Its name, path and every stage's block kind, kernel,
    expansion, first stride and scaled block count must agree with the YAML just read (the fields a
    stage must spell out), so an entry built from another spec is never served."""
    model = compiled.model
    if model.name != data.get("name") or model.spec_path != display or compiled.report.model is not model:
        return False
    stages = data.get("stages")
    if not isinstance(stages, list) or len(stages) != len(model.stages):
        return False
    for stage, raw in zip(model.stages, stages, strict=True):
        if not isinstance(raw, dict) or not stage.blocks or stage.kind != raw.get("block"):
            return False
        repeats = raw.get("repeats")
        if type(repeats) is not int or len(stage.blocks) != math.ceil(model.depth * repeats):
            return False
        if stage.blocks[0].stride != raw.get("stride"):
            return False
        if any(b.kernel != raw.get("kernel") or b.expansion != raw.get("expansion") for b in stage.blocks):
            return False
    head = data.get("head")
    if isinstance(head, dict) and "num_classes" in head and head["num_classes"] != model.head.num_classes:
        return False
    return True


def emit(model: ir.Model, backends: Sequence[str]) -> dict[str, dict[str, str]]:
    """{"<backend>/<model_name>": {file name: text}} for every requested backend."""
    return {f"{name}/{model.model_name}": dict(get_backend(name).emit(model)) for name in backends}


_TEMP_SUFFIX = ".effspec-tmp"
_TEMP_NAME = re.compile(r"\.(?P<name>.+)\.(?P<pid>\d+)\.[0-9a-f]+" + re.escape(_TEMP_SUFFIX))
_LEGACY_STAGING = re.compile(r"\.(?P<name>[a-z0-9_]+)\.(old|[a-z0-9_]{8})")  # effspec <= 0.1's staging dirs


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # exists, but not ours to signal
    return True


def _clean_stale(directory: Path, ours: set[str]) -> None:
    """Remove what a killed compile left: our temp files (whose process is gone), and the staging
    directories of older effspec versions when they hold nothing but files effspec writes."""
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return
    for entry in entries:
        try:
            match = _TEMP_NAME.fullmatch(entry.name)
            if match and entry.is_file(follow_symlinks=False) and not _alive(int(match["pid"])):
                os.unlink(entry.path)
                continue
            legacy = _LEGACY_STAGING.fullmatch(entry.name)
            if legacy and entry.is_dir(follow_symlinks=False):
                inside = os.listdir(entry.path)
                if all(name in ours and os.path.isfile(os.path.join(entry.path, name)) for name in inside):
                    for name in inside:
                        os.unlink(os.path.join(entry.path, name))
                    os.rmdir(entry.path)
        except OSError:
            continue  # another compile cleaned it first, or it is not ours to touch


def _write_file(target: Path, text: str) -> bool:
    """Replace ``target`` atomically (a temp file beside it, then a rename); False when unchanged."""
    data = text.encode("utf-8")
    try:
        if target.is_file() and not target.is_symlink() and target.read_bytes() == data:
            return False  # same bytes: keep the file (and its mtime) as it is
    except OSError:
        pass
    temp = target.with_name(f".{target.name}.{os.getpid()}.{secrets.token_hex(6)}{_TEMP_SUFFIX}")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(temp, flags, 0o666)  # the umask applies, as for any file a tool creates
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.replace(temp, target)
    except BaseException:
        try:
            os.unlink(temp)
        except OSError:
            pass
        raise
    return True


def _output_error(path: Path, exc: OSError) -> OutputError:
    reason = exc.strerror or str(exc)
    if isinstance(exc, NotADirectoryError | FileExistsError):
        reason = "a file is in the way of a directory"
    return OutputError(f"cannot write {path}: {reason}")


def write_outputs(outputs: dict[str, dict[str, str]], out_dir: Path) -> list[Path]:
    """Write each model directory's files, each atomically; leave every other file in it alone.

    A file is replaced by a rename, so there is never a moment when ``model.py`` is missing or half
    written, and two compiles of the same spec at once both succeed with the same files."""
    try:
        info = os.stat(out_dir)
    except FileNotFoundError:
        info = None
    except OSError as exc:
        raise _output_error(out_dir, exc) from None
    if info is not None and not stat.S_ISDIR(info.st_mode):
        raise OutputError(f"-o {out_dir}: expected a directory, found {describe_mode(info.st_mode)}")
    written = []
    for rel, files in sorted(outputs.items()):
        target = out_dir / rel
        try:
            target.mkdir(parents=True, exist_ok=True)  # mode 0o777 less the umask
        except OSError as exc:
            raise _output_error(target, exc) from None
        if not target.is_dir():
            raise OutputError(f"cannot write {target}: not a directory")
        _clean_stale(target, set(files))
        _clean_stale(target.parent, set(files))
        for name, text in sorted(files.items()):
            if Path(name).is_absolute() or ".." in Path(name).parts:
                raise RuntimeError(f"backend emitted a file outside its directory: {name!r}")
            path = target / name
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                _write_file(path, text)
            except OSError as exc:
                raise _output_error(path, exc) from None
        written.append(target)
    return written


def compile_specs(paths: Iterable[str | Path], backends: Sequence[str], out_dir: Path) -> tuple[list[Path], list[str]]:
    """Build and emit everything in memory first, so a bad spec leaves nothing written."""
    outputs: dict[str, dict[str, str]] = {}
    warnings: list[str] = []
    sources: dict[str, tuple[str, str]] = {}  # model_name -> (spec path, its resolved path)
    for path in paths:
        compiled = build(path)
        model = compiled.model
        resolved = str(safe_resolve(Path(path)))
        if model.model_name in sources:
            first, first_resolved = sources[model.model_name]
            if first_resolved == resolved:
                continue  # the same file named twice
            raise _duplicate_name(Path(path), model.name, first)
        sources[model.model_name] = (model.spec_path, resolved)
        warnings.extend(compiled.warnings)
        outputs.update(emit(model, backends))
    return write_outputs(outputs, out_dir), warnings


def _duplicate_name(path: Path, name: str, first: str) -> SpecError:
    from effspec.loader import resolve

    where = resolve(path).positions.get(("name",))
    return SpecError(
        f"{first} is also named {name!r}: both would write the same model directory (rename one)", where, "name"
    )
