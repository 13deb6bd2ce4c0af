"""Import the code a backend generates for a model, without writing into the user's tree.

Both backends name their file ``model.py``, so each is imported by path under its own module name.
The files live in a private temporary directory for the life of the process (tracebacks and
``inspect`` read them from there).
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path
from types import ModuleType
from typing import Any

from effspec.core import ir
from effspec.emit.modules import import_file
from effspec.emit.pipeline import emit, write_outputs
from effspec.support.errors import UsageError

_ROOT: Path | None = None
_LOADED: dict[tuple[str, int, str], ModuleType] = {}


def _root() -> Path:
    global _ROOT
    if _ROOT is None:
        _ROOT = Path(tempfile.mkdtemp(prefix="effspec-generated-"))
        atexit.register(shutil.rmtree, _ROOT, ignore_errors=True)
    return _ROOT


def load_model_module(model: ir.Model, backend: str) -> ModuleType:
    """The generated ``model.py`` of ``backend`` for ``model``, imported (once per spec hash, resolution
    and backend)."""
    key = (model.spec_sha256, model.resolution, backend)
    if key in _LOADED:
        return _LOADED[key]
    outputs = emit(model, [backend])
    if "model.py" not in outputs[f"{backend}/{model.python_name}"]:
        raise UsageError(f"backend {backend!r} does not emit a model.py")
    directory = _root() / f"{len(_LOADED)}"
    (target,) = write_outputs(outputs, directory)
    module_name = f"_effspec_generated_{backend}_{model.python_name}_{model.spec_sha256[:12]}_{model.resolution}"
    try:
        module = import_file(target / "model.py", module_name)
    except ImportError as exc:
        raise UsageError(str(exc)) from None
    _LOADED[key] = module
    return module


def keras_backbone(module: ModuleType, model: Any, output_stride: int, input_shape: tuple | None = None) -> Any:
    """The generated backbone (all levels) at ``output_stride`` with ``model``'s weights, layer by name
    (``model``: the generated keras.Model; Keras is imported by the generated module, not here)."""
    backbone = module.build_model(
        drop_path_rate=0.0, features_only=True, output_stride=output_stride, input_shape=input_shape
    )
    for layer in backbone.layers:
        if layer.weights:
            layer.set_weights(model.get_layer(layer.name).get_weights())
    return backbone
