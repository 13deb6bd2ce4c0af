"""The compiler pipeline, one pure pass per line: load -> validate -> scale -> lower -> verify -> analyze -> emit."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from effspec import cache, ir
from effspec.analysis import Report, analyze
from effspec.paths import display_path
from effspec.registry import get_backend


@dataclass(frozen=True)
class Compiled:
    model: ir.Model
    report: Report
    warnings: tuple[str, ...]


def build(path: str | Path) -> Compiled:
    key, cached = cache.lookup(Path(path), display_path(Path(path)))  # same bytes as a past success?
    if isinstance(cached, Compiled):
        return cached
    # Imported here: pydantic dominates start-up, and a cache hit does not need it.
    from effspec.loader import load_spec
    from effspec.lower import lower
    from effspec.scaling import resolve_multipliers, scaling_warnings
    from effspec.verify import verify

    loaded = load_spec(path)  # read YAML (positions kept), resolve `extends`, validate with pydantic
    scaled = resolve_multipliers(loaded.spec)  # compound (alpha^phi...) or explicit multipliers
    model = lower(loaded, scaled)  # every channel, repeat, stride, padding and shape resolved
    model = verify(model, loaded)  # invariants the schema cannot express (spatial collapse, names)
    report = analyze(model)  # params, MACs, activation memory per node
    warnings = tuple(f"{loaded.path}: warning: {text}" for text in scaling_warnings(loaded.spec))
    compiled = Compiled(model, report, warnings)
    cache.store(key, compiled)
    return compiled


def emit(model: ir.Model, backends: Sequence[str]) -> dict[str, dict[str, str]]:
    """{"<backend>/<model_name>": {file name: text}} for every requested backend."""
    return {f"{name}/{model.model_name}": dict(get_backend(name).emit(model)) for name in backends}


def write_outputs(outputs: dict[str, dict[str, str]], out_dir: Path) -> list[Path]:
    """Write each model directory atomically: a temp dir next to it, then a rename into place."""
    written = []
    for rel, files in sorted(outputs.items()):
        target = out_dir / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        try:
            for name, text in sorted(files.items()):
                (staging / name).parent.mkdir(parents=True, exist_ok=True)
                (staging / name).write_text(text, encoding="utf-8", newline="\n")
            if target.exists():
                old = target.with_name(f".{target.name}.old")
                shutil.rmtree(old, ignore_errors=True)
                os.replace(target, old)
                os.replace(staging, target)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        written.append(target)
    return written


def compile_specs(paths: Iterable[str | Path], backends: Sequence[str], out_dir: Path) -> tuple[list[Path], list[str]]:
    """Build and emit everything in memory first, so a bad spec leaves nothing written."""
    outputs: dict[str, dict[str, str]] = {}
    warnings: list[str] = []
    for path in paths:
        compiled = build(path)
        warnings.extend(compiled.warnings)
        outputs.update(emit(compiled.model, backends))
    return write_outputs(outputs, out_dir), warnings
