"""Read YAML into plain Python data while remembering where every value came from.

PyYAML's composer gives nodes with marks; we build dicts/lists ourselves so that duplicate keys are
errors and every field path maps to a file:line:column.

Spec files are untrusted input, so reading is bounded: only regular files of at most
``MAX_SPEC_BYTES`` (256 KiB) are read (a FIFO, a device such as ``/dev/zero``, a directory or a symlink loop is
an error at once, never a hang), aliases may not expand the document past ``MAX_VALUES`` values
(the "billion laughs" attack), nesting stops at ``MAX_DEPTH``, and YAML merge keys (``<<``) are an
error: ``extends`` is the one way to inherit.
"""

from __future__ import annotations

import errno
import os
import re
import stat
from pathlib import Path
from typing import Any

import yaml
import yaml.constructor

from effspec.support.errors import Location, SpecError, format_path
from effspec.support.paths import describe_mode

FieldPath = tuple[Any, ...]
Positions = dict[FieldPath, Location]

MAX_SPEC_BYTES = 256 << 10  # 256 KiB: the largest shipped spec is ~3 KB
MAX_VALUES = 20_000  # values after alias expansion; the largest shipped spec has ~200
MAX_DEPTH = 32  # nesting of mappings and lists; specs use 4


class _Constructor(yaml.constructor.SafeConstructor):
    pass


_SCALAR_TAGS = {f"tag:yaml.org,2002:{name}" for name in ("str", "int", "float", "bool", "null")} | {"!"}
_COLLECTION_TAGS = {"tag:yaml.org,2002:map", "tag:yaml.org,2002:seq"}
_MERGE_TAG = "tag:yaml.org,2002:merge"
_IMPLICIT_TAGS = {"tag:yaml.org,2002:timestamp", "tag:yaml.org,2002:binary"}


# YAML 1.2's core-schema float (without .inf/.nan): PyYAML resolves by YAML 1.1, whose floats need a
# dot, so a plain `1e-3` or `1E5` would be the string '1e-3'. Plain scalars of this form are floats;
# quoted ones stay strings (libyaml marks plain style "", PyYAML None).
_FLOAT_12 = re.compile(r"[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?")
_STR_TAG = "tag:yaml.org,2002:str"

_FastLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when available: ~10x faster parsing


def _location(file: str, node: yaml.Node) -> Location:
    return Location(file, node.start_mark.line + 1, node.start_mark.column + 1)


def read_source(path: Path, file: str) -> bytes:
    """The bytes of a spec file: a regular file of at most MAX_SPEC_BYTES, read once, never blocking.

    Opened with O_NONBLOCK so that a FIFO does not wait for a writer; the type and size are checked
    on the open descriptor (no race between a check and the read)."""
    where = Location(file, 1, 1)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise SpecError("file not found", where) from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise SpecError("cannot read file: too many levels of symbolic links (a symlink loop?)", where) from None
        raise SpecError(f"cannot read file: {exc.strerror or exc}", where) from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise SpecError(f"expected a regular file, found {describe_mode(info.st_mode)}", where)
        if info.st_size > MAX_SPEC_BYTES:
            raise SpecError(f"expected a spec of at most {MAX_SPEC_BYTES:,} bytes, found {info.st_size:,}", where)
        chunks, size = [], 0
        while size <= MAX_SPEC_BYTES:
            chunk = os.read(fd, MAX_SPEC_BYTES + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > MAX_SPEC_BYTES:  # grew while we read it
            raise SpecError(f"expected a spec of at most {MAX_SPEC_BYTES:,} bytes, found more", where)
        return b"".join(chunks)
    except OSError as exc:
        raise SpecError(f"cannot read file: {exc.strerror or exc}", where) from None
    finally:
        os.close(fd)


class _Builder:
    """Nodes -> plain data, counting every value built (an alias counts each time it is used)."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.positions: Positions = {}
        self.values = 0

    def build(self, node: yaml.Node, path: FieldPath) -> Any:
        file = self.file
        self.values += 1
        if self.values > MAX_VALUES:
            raise SpecError(
                f"expected at most {MAX_VALUES:,} values in a spec, found more (too large, or aliases expanding)",
                _location(file, node),
                format_path(path),
            )
        if len(path) > MAX_DEPTH:
            raise SpecError(f"expected at most {MAX_DEPTH} levels of nesting", _location(file, node), format_path(path))
        self.positions[path] = _location(file, node)
        if isinstance(node, yaml.CollectionNode) and node.tag not in _COLLECTION_TAGS:
            raise SpecError(
                f"custom YAML tags are not allowed, found {node.tag!r}", _location(file, node), format_path(path)
            )
        if isinstance(node, yaml.MappingNode):
            result: dict[str, Any] = {}
            for key_node, value_node in node.value:
                if not isinstance(key_node, yaml.ScalarNode):
                    raise SpecError(
                        "expected a plain key, found a complex key", _location(file, key_node), format_path(path)
                    )
                if key_node.tag == _MERGE_TAG:
                    raise SpecError(
                        "YAML merge keys (<<) are not supported: write the keys out, or inherit with 'extends'",
                        _location(file, key_node),
                        format_path(path),
                    )
                if key_node.tag not in _SCALAR_TAGS:
                    raise SpecError(
                        f"custom YAML tags are not allowed, found {key_node.tag!r}",
                        _location(file, key_node),
                        format_path(path),
                    )
                key = _Constructor().construct_object(key_node)
                if not isinstance(key, str):
                    raise SpecError(
                        f"expected a string key, found {key!r}", _location(file, key_node), format_path(path)
                    )
                if key in result:
                    first = self.positions[(*path, key)]
                    raise SpecError(
                        f"duplicate key {key!r} (first defined at line {first.line})",
                        _location(file, key_node),
                        format_path((*path, key)),
                    )
                result[key] = self.build(value_node, (*path, key))
                self.positions[(*path, key)] = _location(file, value_node)
            return result
        if isinstance(node, yaml.SequenceNode):
            return [self.build(item, (*path, i)) for i, item in enumerate(node.value)]
        if node.tag == _STR_TAG and not node.style and _FLOAT_12.fullmatch(node.value):
            return float(node.value)
        if node.tag in _SCALAR_TAGS:
            try:
                return _Constructor().construct_object(node)
            except (yaml.YAMLError, ValueError, OverflowError) as exc:
                problem = getattr(exc, "problem", None) or exc
                raise SpecError(f"cannot read value: {problem}", _location(file, node), format_path(path)) from None
        kind = node.tag.rsplit(":", 1)[-1]
        if node.tag in _IMPLICIT_TAGS:
            raise SpecError(
                f"expected a string, number, true/false or null, found a YAML {kind} (quote it to make a string)",
                _location(file, node),
                format_path(path),
            )
        raise SpecError(
            f"custom YAML tags are not allowed, found {node.tag!r}", _location(file, node), format_path(path)
        )


def parse_yaml(data: bytes, file: str) -> tuple[Any, Positions]:
    """Parse one YAML document (bytes as read by read_source) into plain data plus field positions."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError(f"cannot read file: not UTF-8 text (byte {exc.start})", Location(file, 1, 1)) from None
    try:
        nodes = list(yaml.compose_all(text, Loader=_FastLoader))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = Location(file, mark.line + 1, mark.column + 1) if mark else Location(file, 1, 1)
        problem = " ".join(str(exc.problem or exc.context).split())
        raise SpecError(f"YAML syntax error: {problem}", where) from None
    except (yaml.YAMLError, RecursionError, ValueError) as exc:
        problem = " ".join(str(exc).split())
        raise SpecError(f"YAML syntax error: {problem}", Location(file, 1, 1)) from None
    if len(nodes) != 1 or nodes[0] is None:
        found = "an empty document" if not nodes or nodes[0] is None else f"{len(nodes)} documents"
        raise SpecError(f"expected one YAML document with a mapping, found {found}", Location(file, 1, 1))
    builder = _Builder(file)
    result = builder.build(nodes[0], ())
    if not isinstance(result, dict):
        raise SpecError(f"expected a mapping at the top level, found {type(result).__name__}", builder.positions[()])
    return result, builder.positions


def read_yaml(path: Path, display: str | None = None) -> tuple[Any, Positions]:
    """Read (bounded) and parse one YAML file into plain data plus a map from field path to location."""
    file = display or str(path)
    return parse_yaml(read_source(path, file), file)
