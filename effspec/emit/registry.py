"""Emitter registry: backends register an emitter (IR -> files).

A lookup of an unknown backend fails with the list of known ones (as jax's lowering
rules do), never with a KeyError.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from effspec.core import ir
from effspec.support.errors import UsageError

#: Backend packages shipped with effspec (``backends/<name>`` installed as ``effspec.backends.<name>``).
BUILTIN_BACKENDS = ("torch", "keras")

Emitter = Callable[[ir.Model], Mapping[str, str]]


@dataclass(frozen=True)
class Backend:
    name: str
    description: str
    emit: Emitter  # IR -> {relative file name: text}


_REGISTRY: dict[str, Backend] = {}


def register_backend(backend: Backend) -> Backend:
    _REGISTRY[backend.name] = backend
    return backend


def _load_builtins() -> None:
    for name in BUILTIN_BACKENDS:
        if name not in _REGISTRY:
            try:
                importlib.import_module(f"effspec.backends.{name}")
            except ModuleNotFoundError as exc:
                if exc.name not in ("effspec.backends", f"effspec.backends.{name}"):
                    raise


def available_backends() -> list[str]:
    _load_builtins()
    return sorted(_REGISTRY)


def get_backend(name: str) -> Backend:
    _load_builtins()
    if name not in _REGISTRY:
        known = ", ".join(sorted(_REGISTRY)) or "(none registered yet)"
        raise UsageError(f"unknown backend {name!r}. Known backends are: {known}")
    return _REGISTRY[name]
