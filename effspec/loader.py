"""Load a spec: read YAML, resolve ``extends`` (mappings merge deeply, lists replace), validate."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydantic

from effspec.errors import Location, SpecError, format_path
from effspec.paths import display_path
from effspec.schema import Spec
from effspec.yamlsource import FieldPath, Positions, read_yaml


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


def _resolve(path: Path, chain: tuple[Path, ...]) -> tuple[dict[str, Any], Positions]:
    display = display_path(path)
    data, positions = read_yaml(path, display)
    base_ref = data.pop("extends", None)
    if base_ref is None:
        return data, positions
    where = positions[("extends",)]
    if not isinstance(base_ref, str) or not base_ref:
        raise SpecError(f"expected a relative path string, found {base_ref!r}", where, "extends")
    base_path = path.parent / base_ref
    if base_path.resolve() in (*(p.resolve() for p in chain), path.resolve()):
        cycle = " -> ".join(display_path(p) for p in (*chain, path, base_path))
        raise SpecError(f"extends cycle: {cycle}", where, "extends")
    if not base_path.is_file():
        raise SpecError(f"base spec not found: expected a file at {display_path(base_path)}", where, "extends")
    base_data, base_positions = _resolve(base_path, (*chain, path))
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
    text = json.dumps(value, default=str) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


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


def _pydantic_error(error: Any, positions: Positions) -> SpecError:
    loc = tuple(part for part in error["loc"] if not (isinstance(part, str) and part in ("compound", "explicit")))
    kind = error["type"]
    found = error.get("input")
    ctx = error.get("ctx") or {}
    if kind == "extra_forbidden":
        message = f"unknown key {loc[-1]!r}"
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


def load_spec(path: str | Path) -> LoadedSpec:
    """Read, resolve and validate one spec file. Raises SpecError with file:line:column."""
    path = Path(path)
    data, positions = _resolve(path, ())
    try:
        spec = Spec.model_validate(data)
    except pydantic.ValidationError as exc:
        raise _pydantic_error(exc.errors()[0], positions) from None
    canonical = json.dumps(spec.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    digest = hashlib.sha256(canonical.encode("utf-8")).hexdigest()
    return LoadedSpec(spec, display_path(path), digest, positions)
