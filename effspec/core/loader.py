"""Load a spec: read YAML, resolve ``extends`` (mappings merge deeply, lists replace), validate.

Two steps: ``resolve`` reads every file of the extends chain once (no pydantic involved) and
``validate`` checks the merged data.

``extends`` names a path relative to the file that contains it; ``..`` is allowed (a shared base in
a parent directory), absolute paths are not. A bare name (``extends: efficientnet-b0``: no slash,
no ``.yaml``) names a spec shipped with effspec, unless a file of that name exists beside the spec.
Each file is read with the same bounds as the spec itself (a regular file, at most 256 KiB), the
chain may be at most ``MAX_EXTENDS`` files long, and cycles are errors.

Positions are kept per file: a merged value remembers the file, line and column it was written at,
and which spec inherited it, so an error in an inherited value names both. Validation reports every
error of a spec (up to ``MAX_ERRORS``), one line each.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import math
import os
import re
import types
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from effspec.core.yamlsource import FieldPath, Positions, parse_yaml, read_source
from effspec.support.errors import Location, SpecError, SpecErrors, format_path
from effspec.support.paths import display_path, safe_resolve, shipped_spec, shipped_spec_names

if TYPE_CHECKING:
    from effspec.core.schema import CompoundScaling, ExplicitScaling, Spec

MAX_EXTENDS = 16
MAX_ERRORS = 20  # validation errors reported per file; more are counted on one last line

_SHIPPED_NAME = re.compile(r"[a-z0-9][a-z0-9._-]*")  # no slash: a name, not a path


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
        raise SpecError(
            f"expected a relative path or a shipped spec name, found {_describe(base_ref)}", where, "extends"
        )
    if "\0" in base_ref:
        raise SpecError("expected a relative path string, found a NUL character", where, "extends")
    if Path(base_ref).is_absolute():
        raise SpecError(f"expected a relative path (to this file's directory), found {base_ref!r}", where, "extends")
    base_path = path.parent / base_ref
    if not os.path.lexists(base_path):
        base_path = _shipped_base(base_ref, base_path, where)
    if safe_resolve(base_path) in (*(safe_resolve(p) for p in chain), safe_resolve(path)):
        cycle = " -> ".join(display_path(p) for p in (*chain, path, base_path))
        raise SpecError(f"extends cycle: {cycle}", where, "extends")
    if len(chain) + 1 >= MAX_EXTENDS:
        raise SpecError(f"expected an extends chain of at most {MAX_EXTENDS} files, found more", where, "extends")
    try:
        base_data, base_positions = _resolve(base_path, (*chain, path), sources)
    except SpecError as exc:
        if exc.location is None or exc.location.line != 1 or exc.location.column != 1 or exc.path:
            raise
        # The base itself cannot be read (a FIFO, a device, too big...): say so at the extends line.
        raise SpecError(f"base spec {display_path(base_path)}: {exc.message}", where, "extends") from None
    # A value this file inherits keeps its base's file:line:column and learns which file inherited it,
    # so that an error in it names both (the outermost file wins along a chain).
    merged_positions = {
        p: dataclasses.replace(loc, inherited_by=display) for p, loc in base_positions.items() if not _replaced(p, data)
    }
    merged_positions.update(positions)
    return _merge(base_data, data), merged_positions


def _nearest(word: str, choices: list[str], n: int, cutoff: float = 0.6) -> list[str]:
    """The ``n`` choices most like ``word`` (difflib's ratio, at least ``cutoff``); ties in order."""
    scored = []
    for index, choice in enumerate(choices):
        ratio = difflib.SequenceMatcher(None, word, choice).ratio()
        if ratio >= cutoff:
            scored.append((-ratio, index, choice))
    return [choice for _, _, choice in sorted(scored)[:n]]


def _shipped_base(base_ref: str, base_path: Path, where: Location) -> Path:
    """``extends: efficientnet-b0``: the shipped spec of that name (no file of that name is beside the spec)."""
    names = shipped_spec_names()
    is_name = _SHIPPED_NAME.fullmatch(base_ref) and not base_ref.endswith((".yaml", ".yml"))
    if not is_name:
        hint = ""
        stem = base_ref[: -len(".yaml")] if base_ref.endswith(".yaml") else ""
        if stem in names:
            hint = f" (to inherit the spec shipped with effspec, write 'extends: {stem}')"
        raise SpecError(f"base spec not found: expected a file at {display_path(base_path)}{hint}", where, "extends")
    shipped = shipped_spec(base_ref)
    if shipped is None:
        if not names:
            raise SpecError(
                f"base spec not found: expected a file at {display_path(base_path)} "
                "(this installation of effspec ships no specs)",
                where,
                "extends",
            )
        nearest = _nearest(base_ref, names, 3, cutoff=0.5)
        listed = [*nearest, *(name for name in names if name not in nearest)]
        guess = f"did you mean {nearest[0]}? " if nearest else ""
        raise SpecError(
            f"expected a relative path or the name of a shipped spec, found {base_ref!r} "
            f"(no file {display_path(base_path)}); {guess}shipped specs: {', '.join(listed)}",
            where,
            "extends",
        )
    return shipped


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
        message = _unknown_key(str(loc[-1]), tuple(error["loc"])[:-1])
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


def _section_model(loc: tuple[Any, ...]) -> Any:
    """The pydantic model of the section at pydantic's (raw) error location ``loc``, or None."""
    import typing

    from pydantic import BaseModel

    from effspec.core.schema import Spec

    def unwrap(tp: Any, tag: Any = None) -> Any:
        while True:
            origin = typing.get_origin(tp)
            if origin is typing.Annotated:
                tp = typing.get_args(tp)[0]
            elif origin is typing.Union or isinstance(tp, types.UnionType):
                members = [m for m in typing.get_args(tp) if m is not type(None)]
                if len(members) > 1 and tag is not None:  # a discriminated union: pydantic names the member
                    members = [m for m in members if _method_of(m) == tag] or members
                tp = members[0]
            else:
                return tp

    current: Any = Spec
    for part in loc:
        current = unwrap(current, part)
        if isinstance(current, type) and issubclass(current, BaseModel):
            if part in current.model_fields:
                current = current.model_fields[part].annotation
            elif _method_of(current) != part:  # the union tag itself ('compound') names this model
                return None
        elif isinstance(part, int) and typing.get_origin(current) in (list, tuple):
            current = typing.get_args(current)[0]
        else:
            return None
    current = unwrap(current)
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _method_of(model: Any) -> Any:
    import typing

    fields = getattr(model, "model_fields", {})
    if "method" not in fields:
        return None
    args = typing.get_args(fields["method"].annotation)
    return args[0] if args else None


def _unknown_key(key: str, section_loc: tuple[Any, ...]) -> str:
    """ "unknown key 'se_ration'; did you mean se_ratio? (keys here: ...)" for a key the schema lacks."""
    message = f"unknown key {_describe(key)}"
    model = _section_model(section_loc)
    if model is None:
        return message
    keys = list(model.model_fields)
    nearest = _nearest(key, keys, 1)
    if nearest:
        message += f"; did you mean {nearest[0]}?"
    else:
        from effspec.core.schema import CompoundScaling, ExplicitScaling

        for other in (CompoundScaling, ExplicitScaling):
            if model in (CompoundScaling, ExplicitScaling) and other is not model and key in other.model_fields:
                message += f"; {key} is a key of method: {_method_of(other)}"
    return f"{message} (valid keys here: {', '.join(keys)})"


def _union_member(loc: tuple[Any, ...], positions: Positions) -> tuple[tuple[Any, ...], Any] | None:
    """(the location of the union value, the member pydantic tried) when ``loc`` runs through one
    member of a plain union (``kernel``: an integer or a list), else None."""
    path: tuple[Any, ...] = ()
    for index, part in enumerate(loc):
        if isinstance(part, str) and (*path, part) not in positions and part not in ("compound", "explicit"):
            if not part.isidentifier():  # 'constrained-int', 'tuple[constrained-int, ...]'
                return loc[:index], part
        path = (*path, part)
    return None


def _select_union_errors(errors: list[Any], positions: Positions) -> list[Any]:
    """pydantic reports a value that fits no member of a union once per member; keep the member the
    value's type fits (``kernel: [3, 0]`` is a list: report its item, not "expected an integer")."""
    members: dict[tuple[Any, ...], list[Any]] = {}
    mismatched: set[tuple[Any, ...]] = set()  # (*union location, member): the value is not of its type
    found_by_error = []
    for error in errors:
        loc = tuple(error["loc"])
        found = _union_member(loc, positions)
        found_by_error.append(found)
        if found is not None:
            tried = members.setdefault(found[0], [])
            if found[1] not in tried:
                tried.append(found[1])
            if len(loc) == len(found[0]) + 1 and error["type"].endswith("_type") and error["type"] in _EXPECTED_TYPE:
                mismatched.add(loc)
    chosen = {
        where: next((m for m in tried if (*where, m) not in mismatched), tried[0]) for where, tried in members.items()
    }
    return [
        error
        for error, found in zip(errors, found_by_error, strict=True)
        if found is None or chosen[found[0]] == found[1]
    ]


def _spec_errors(errors: list[Any], positions: Positions) -> tuple[list[SpecError], int]:
    """The first ``MAX_ERRORS`` validation errors in file order, once per field, most specific first,
    and how many there are in all. Messages are built only for those shown (a hostile spec may hold
    thousands of unknown keys)."""
    by_path: dict[tuple[Any, ...], Any] = {}
    for error in _select_union_errors(errors, positions):
        by_path.setdefault(_field_path(tuple(error["loc"]), positions), error)
    # A value with an error inside it (kernel[1]) needs no second line about the whole (kernel).
    ancestors = {path[:end] for path in by_path for end in range(len(path))}
    kept = [(path, error) for path, error in by_path.items() if not path or path not in ancestors]

    def order(item: tuple[tuple[Any, ...], Any]) -> tuple[int, int, int]:
        loc = locate(positions, item[0])
        if loc is None:
            return (2, 0, 0)
        return (1 if loc.inherited_by else 0, loc.line, loc.column)

    kept.sort(key=order)
    return [_pydantic_error(error, positions) for _, error in kept[:MAX_ERRORS]], len(kept)


def validate(resolved: Resolved) -> LoadedSpec:
    """Validate a resolved spec with pydantic. Raises SpecError with file:line:column (SpecErrors,
    one line per error, when there are several)."""
    import pydantic  # here, not at import: resolve() alone never needs it

    from effspec.core.schema import Spec

    try:
        spec = Spec.model_validate(resolved.data)
    except pydantic.ValidationError as exc:
        errors, total = _spec_errors(exc.errors(), resolved.positions)
        if total == 1:
            raise errors[0] from None
        raise SpecErrors(errors, total) from None
    return LoadedSpec(spec, resolved.display, _sha256(spec), resolved.positions)


def _sha256(spec: Spec) -> str:
    canonical = json.dumps(spec.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def with_scaling(loaded: LoadedSpec, scaling: CompoundScaling | ExplicitScaling) -> LoadedSpec:
    """``loaded`` with its ``scaling`` section replaced (what `effspec scale` and `effspec search` try):
    the sha256 is the new spec's own; positions and path stay the base's (the new section has no file)."""
    spec = loaded.spec.model_copy(update={"scaling": scaling})
    return LoadedSpec(spec, loaded.path, _sha256(spec), loaded.positions)


def load_spec(path: str | Path) -> LoadedSpec:
    """Read, resolve and validate one spec file. Raises SpecError with file:line:column."""
    return validate(resolve(path))


def spec_files(path: Path) -> list[Path]:
    """The files a spec is read from: itself and every base of its extends chain."""
    return [Path(source) for source, _ in resolve(path).sources]
