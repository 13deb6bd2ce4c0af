"""The compiler pipeline, one pure pass per line: load -> validate -> scale -> lower -> verify -> analyze -> emit."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from effspec.core import ir
from effspec.core.analysis import Report, analyze
from effspec.emit.registry import get_backend
from effspec.support import output
from effspec.support.errors import SpecError, UsageError
from effspec.support.paths import safe_resolve


@dataclass(frozen=True)
class Compiled:
    model: ir.Model
    report: Report
    warnings: tuple[str, ...]


def build(path: str | Path, resolution: int | None = None) -> Compiled:
    """The compiled spec; ``resolution`` lowers it at another input size than the spec's (export at
    a fixed size: every shape and TF SAME padding resolved there)."""
    from effspec.core.loader import resolve  # pydantic-free: reads the spec and its bases once each

    if not str(path):
        raise UsageError("expected a spec file path, found an empty string")
    resolved = resolve(path)  # bounded reads, YAML (positions kept), `extends` merged
    # Imported here: pydantic dominates start-up, and `effspec --help` does not need it.
    from effspec.core.limits import check_limits
    from effspec.core.loader import validate
    from effspec.core.lower import lower
    from effspec.core.scaling import resolve_multipliers, scaling_warnings
    from effspec.core.verify import verify

    loaded = validate(resolved)  # pydantic: types, ranges, unknown keys
    scaled = resolve_multipliers(loaded.spec)  # compound (alpha^phi...) or explicit multipliers
    if resolution is not None:
        scaled = replace(scaled, resolution=resolution)
    check_limits(loaded, scaled)  # bounded blocks, channels, resolution, parameters: before building anything
    model = lower(loaded, scaled)  # every channel, repeat, stride, padding and shape resolved
    model = verify(model, loaded)  # invariants the schema cannot express (spatial collapse, names)
    report = analyze(model)  # params, MACs, activation memory per node
    warnings = tuple(f"{loaded.path}: warning: {text}" for text in scaling_warnings(loaded.spec))
    return Compiled(model, report, warnings)


def spec_inputs(path: str | Path) -> list[Path]:
    """The files a spec is read from (itself and every base in its extends chain): never an output."""
    from effspec.core.loader import resolve

    return [Path(source) for source, _ in resolve(path).sources]


def emit(model: ir.Model, backends: Sequence[str]) -> dict[str, dict[str, str]]:
    """{"<backend>/<python_name>": {file name: text}} for every requested backend."""
    return {f"{name}/{model.python_name}": dict(get_backend(name).emit(model)) for name in backends}


def write_outputs(outputs: dict[str, dict[str, str]], out_dir: Path) -> list[Path]:
    """Write each model directory's files, all or none, each atomically (effspec.support.output owns how)."""
    return output.write_tree(outputs, out_dir)


def compile_specs(paths: Iterable[str | Path], backends: Sequence[str], out_dir: Path) -> tuple[list[Path], list[str]]:
    """Build and emit everything in memory first, so a bad spec leaves nothing written."""
    outputs: dict[str, dict[str, str]] = {}
    warnings: list[str] = []
    sources: dict[str, tuple[str, str]] = {}  # python_name -> (spec path, its resolved path)
    for path in paths:
        compiled = build(path)
        model = compiled.model
        resolved = str(safe_resolve(Path(path)))
        if model.python_name in sources:
            first, first_resolved = sources[model.python_name]
            if first_resolved == resolved:
                continue  # the same file named twice
            raise _duplicate_name(Path(path), model.name, first)
        sources[model.python_name] = (model.spec_path, resolved)
        warnings.extend(compiled.warnings)
        outputs.update(emit(model, backends))
    return write_outputs(outputs, out_dir), warnings


def _duplicate_name(path: Path, name: str, first: str) -> SpecError:
    from effspec.core.loader import resolve

    where = resolve(path).positions.get(("name",))
    return SpecError(
        f"{first} is also named {name!r}: both would write the same model directory (rename one)", where, "name"
    )
