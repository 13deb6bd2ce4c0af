"""The one way effspec imports generated model code: from a file by path, or from its text.

A generated ``model.py`` defines dataclasses, which look their module up in ``sys.modules`` while the
module executes, so the module is registered under its name first (and removed again if executing it
fails). Only code effspec itself generated is imported this way; nothing read from a spec, cache or
weights file is ever executed.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType


def _execute(module: ModuleType, run: Callable[[], object]) -> ModuleType:
    sys.modules[module.__name__] = module
    try:
        run()
    except BaseException:
        sys.modules.pop(module.__name__, None)
        raise
    return module


def import_file(path: Path, name: str) -> ModuleType:
    """Import the Python file at ``path`` as module ``name`` (whatever the working directory)."""
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    loader = spec.loader
    return _execute(module, lambda: loader.exec_module(module))


def import_source(source: str, name: str, filename: str) -> ModuleType:
    """Import generated code held in memory as module ``name``; ``filename`` names it in tracebacks."""
    module = ModuleType(name)
    module.__file__ = filename
    code = compile(source, filename, "exec")
    return _execute(module, lambda: exec(code, module.__dict__))  # effspec's own generated code
