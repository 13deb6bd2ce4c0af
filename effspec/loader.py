"""Load a spec: read YAML, resolve ``extends`` (mappings merge deeply, lists replace), validate.

Two steps, so that the build cache can key on exactly the bytes the build parses: ``resolve`` reads
every file of the extends chain once (no pydantic involved) and ``validate`` checks the merged data.

``extends`` names a path relative to the file that contains it; ``..`` is allowed (a shared base in
a parent directory), absolute paths are not. Each file is read with the same bounds as the spec
itself (a regular file, at most 256 KiB), the chain may be at most ``MAX_EXTENDS`` files long, and
cycles are errors.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from effspec.errors import Location, SpecError, format_path
from effspec.paths import display_path, safe_resolve
from effspec.yamlsource import FieldPath, Positions, parse_yaml, read_source

if TYPE_CHECKING:
    from effspec.schema import Spec

MAX_EXTENDS = 16


@dataclass(frozen=True)
class LoadedSpec:
    """A validated spec plus what backends print about its origin."""

    spec: Spec
    path: str  # as displayed: relative to the working directory when possible, posix separators
    sha256: str  # of the resolved spec (after extends), canonical JSON
    positions: Positions

    def locate(self, path: FieldPath) -> Location | None:
        return locate(self.positions, path)


def locate(positions: Positions, path: FieldPath) -> Location | None:
    """The location of the longest prefix of ``path`` that the source defines."""
    for end in range(len(path), -1, -1):
        if path[:end] in positions:
            return positions[path[:end]]
    return None


def _merge(base: Any, override: Any) -> Any:
    if isinstance(base, dict) and isinstance(override, dict):
        merged = dict(base)
        for key, value in override.items():
            merged[key] = _merge(base[key], value) if key in base else value
        return merged
    return override


@dataclass(frozen=True)
class Resolved:
    """A spec with its extends chain merged, before validation, and the exact bytes of every file read."""

    path: Path
    display: str
    data: dict[str, Any]
    positions: Positions
    sources: tuple[tuple[str, bytes], ...]  # (resolved path, bytes) of the spec and each base, in order


def resolve(path: str | Path) -> Resolved:
    """Read the spec and every file it extends, once each, and merge them (no validation yet)."""
    path = Path(path)
    sources: list[tuple[str, bytes]] = []
    data, positions = _resolve(path, (), sources)
    return Resolved(path, display_path(path), data, positions, tuple(sources))


def _resolve(path: Path, chain: tuple[Path, ...], sources: list[tuple[str, bytes]]) -> tuple[dict[str, Any], Positions]:
    display = display_path(path)
    raw = read_source(path, display)
    sources.append((str(safe_resolve(path)), raw))
    data, positions = parse_yaml(raw, display)
    base_ref = data.pop("extends", None)
    if base_ref is None:
        return data, positions
    where = positions[("extends",)]
    if not isinstance(base_ref, str) or not base_ref:
        raise SpecError(f"expected a relative path string, found {_describe(base_ref)}", where, "extends")
    if "\0" in base_ref:
        raise SpecError("expected a relative path string, found a NUL character", where, "extends")
    if Path(base_ref).is_absolute():
        raise SpecError(f"expected a relative path (to this file's directory), found {base_ref!r}", where, "extends")
    base_path = path.parent / base_ref
    if safe_resolve(base_path) in (*(safe_resolve(p) for p in chain), safe_resolve(path)):
        cycle = " -> ".join(display_path(p) for p in (*chain, path, base_path))
        raise SpecError(f"extends cycle: {cycle}", where, "extends")
    if len(chain) + 1 >= MAX_EXTENDS:
        raise SpecError(f"expected an extends chain of at most {MAX_EXTENDS} files, found more", where, "extends")
    if not os.path.lexists(base_path):
        raise SpecError(f"base spec not found: expected a file at {display_path(base_path)}", where, "extends")
    try:
        base_data, base_positions = _resolve(base_path, (*chain, path), sources)
    except SpecError as exc:
        if exc.location is None or exc.location.line != 1 or exc.location.column != 1 or exc.path:
            raise
        # The base itself cannot be read (a FIFO, a device, too big...): say so at the extends line.
        raise SpecError(f"base spec {display_path(base_path)}: {exc.message}", where, "extends") from None
    merged_positions = {p: loc for p, loc in base_positions.items() if not _replaced(p, data)}
    merged_positions.update(positions)
    return _merge(base_data, data), merged_positions


def _replaced(path: FieldPath, override: dict[str, Any]) -> bool:
    """True when ``override`` sets the value at ``path`` or at a scalar/list above it (lists replace)."""
    node: Any = override
    for part in path:
        if not isinstance(node, dict):
            return True
        if part not in node:
            return False
        node = node[part]
    return True


def _describe(value: Any) -> str:
    text = repr(value) if isinstance(value, str) else _yaml_text(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _yaml_text(value: Any) -> str:
    """A value as YAML would spell it (``.inf``, not JSON's ``Infinity``), JSON-like otherwise."""
    if isinstance(value, float) and not math.isfinite(value):
        return ".nan" if math.isnan(value) else (".inf" if value > 0 else "-.inf")
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_yaml_text(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(str(k))}: {_yaml_text(v)}" for k, v in value.items()) + "}"
    return json.dumps(value, default=str)


_EXPECTED_TYPE = {
    "int_parsing": "an integer",
    "int_type": "an integer",
    "int_from_float": "a whole number",
    "float_parsing": "a number",
    "float_type": "a number",
    "string_type": "a string",
    "bool_parsing": "true or false",
    "bool_type": "true or false",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
    "dict_type": "a mapping",
    "list_type": "a list",
    "tuple_type": "a list",
    "finite_number": "a finite number",
}


def _field_path(loc: tuple[Any, ...], positions: Positions) -> tuple[Any, ...]:
    """pydantic's error location without the union members it names (``compound``,
    ``constrained-int``, ``tuple[...]``): a part that is not a key the YAML defines is dropped when
    it is a discriminator tag or not an identifier."""
    path: tuple[Any, ...] = ()
    for part in loc:
        if isinstance(part, str) and (*path, part) not in positions:
            if part in ("compound", "explicit") or not part.isidentifier():
                continue
        path = (*path, part)
    return path


def _pydantic_error(error: Any, positions: Positions) -> SpecError:
    loc = _field_path(tuple(error["loc"]), positions)
    kind = error["type"]
    found = error.get("input")
    ctx = error.get("ctx") or {}
    if kind == "extra_forbidden":
        message = f"unknown key {_describe(str(loc[-1]))}"
    elif kind == "missing":
        message = "required field is missing"
    elif kind == "union_tag_invalid" or kind == "union_tag_not_found":
        message = f"expected method 'compound' or 'explicit', found {_describe(ctx.get('tag', found))}"
        loc = (*loc, "method")
    elif kind == "literal_error":
        message = f"expected {ctx.get('expected')}, found {_describe(found)}"
    elif kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        bound = {
            "greater_than": "> {gt}",
            "greater_than_equal": ">= {ge}",
            "less_than": "< {lt}",
            "less_than_equal": "<= {le}",
        }
        limits = {key: f"{value:g}" for key, value in ctx.items()}
        message = f"expected a value {bound[kind].format(**limits)}, found {_describe(found)}"
    elif kind in _EXPECTED_TYPE:
        message = f"expected {_EXPECTED_TYPE[kind]}, found {_describe(found)}"
    elif kind == "value_error":
        message = str(ctx.get("error", error["msg"]))
    elif kind == "string_pattern_mismatch":
        message = f"expected lowercase letters, digits and single dashes (e.g. 'my-net-b0'), found {_describe(found)}"
    elif kind == "too_short":
        message = f"expected at least {ctx.get('min_length')} item(s), found {ctx.get('actual_length')}"
    else:
        message = f"{error['msg'][0].lower()}{error['msg'][1:]}, found {_describe(found)}"
    return SpecError(message, locate(positions, loc), format_path(loc))


def validate(resolved: Resolved) -> LoadedSpec:
    """Validate a resolved spec with pydantic. Raises SpecError with file:line:column."""
    import pydantic  # here, not at import: resolve() and a build-cache hit never need it

    from effspec.schema import Spec

    try:
        spec = Spec.model_validate(resolved.data)
    except pydantic.ValidationError as exc:
        raise _pydantic_error(exc.errors()[0], resolved.positions) from None
    canonical = json.dumps(spec.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    digest = hashlib.sha256(canonical.encode("utf-8")).hexdigest()
    return LoadedSpec(spec, resolved.display, digest, resolved.positions)


def load_spec(path: str | Path) -> LoadedSpec:
    """Read, resolve and validate one spec file. Raises SpecError with file:line:column."""
    return validate(resolve(path))
