"""Read YAML into plain Python data while remembering where every value came from.

PyYAML's composer gives nodes with marks; we build dicts/lists ourselves so that duplicate keys are
errors and every field path maps to a file:line:column.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
import yaml.constructor

from effspec.errors import Location, SpecError, format_path

FieldPath = tuple[Any, ...]
Positions = dict[FieldPath, Location]


class _Constructor(yaml.constructor.SafeConstructor):
    pass


_SCALAR_TAGS = {f"tag:yaml.org,2002:{name}" for name in ("str", "int", "float", "bool", "null")} | {"!"}


_FastLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when available: ~10x faster parsing


def _location(file: str, node: yaml.Node) -> Location:
    return Location(file, node.start_mark.line + 1, node.start_mark.column + 1)


def _build(node: yaml.Node, file: str, path: FieldPath, positions: Positions) -> Any:
    positions[path] = _location(file, node)
    if isinstance(node, yaml.MappingNode):
        result: dict[str, Any] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                raise SpecError(
                    "expected a plain key, found a complex key", _location(file, key_node), format_path(path)
                )
            key = _Constructor().construct_object(key_node)
            if not isinstance(key, str):
                raise SpecError(f"expected a string key, found {key!r}", _location(file, key_node), format_path(path))
            if key in result:
                first = positions[(*path, key)]
                raise SpecError(
                    f"duplicate key {key!r} (first defined at line {first.line})",
                    _location(file, key_node),
                    format_path((*path, key)),
                )
            result[key] = _build(value_node, file, (*path, key), positions)
            positions[(*path, key)] = _location(file, value_node)
        return result
    if isinstance(node, yaml.SequenceNode):
        return [_build(item, file, (*path, i), positions) for i, item in enumerate(node.value)]
    if node.tag in _SCALAR_TAGS:
        try:
            return _Constructor().construct_object(node)
        except yaml.YAMLError as exc:
            raise SpecError(
                f"cannot read value: {exc.problem or exc}", _location(file, node), format_path(path)
            ) from None
    raise SpecError(f"custom YAML tags are not allowed, found {node.tag!r}", _location(file, node), format_path(path))


def read_yaml(path: Path, display: str | None = None) -> tuple[Any, Positions]:
    """Parse one YAML file into plain data plus a map from field path to source location."""
    file = display or str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError("file not found", Location(file, 1, 1)) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(f"cannot read file: {exc}", Location(file, 1, 1)) from None
    try:
        nodes = list(yaml.compose_all(text, Loader=_FastLoader))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = Location(file, mark.line + 1, mark.column + 1) if mark else Location(file, 1, 1)
        raise SpecError(f"YAML syntax error: {exc.problem or exc.context}", where) from None
    except yaml.YAMLError as exc:
        raise SpecError(f"YAML syntax error: {exc}", Location(file, 1, 1)) from None
    if len(nodes) != 1 or nodes[0] is None:
        found = "an empty document" if not nodes or nodes[0] is None else f"{len(nodes)} documents"
        raise SpecError(f"expected one YAML document with a mapping, found {found}", Location(file, 1, 1))
    positions: Positions = {}
    data = _build(nodes[0], file, (), positions)
    if not isinstance(data, dict):
        raise SpecError(f"expected a mapping at the top level, found {type(data).__name__}", positions[()])
    return data, positions
