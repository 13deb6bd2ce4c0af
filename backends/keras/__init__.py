"""The keras backend: IR -> a standalone Keras 3 functional model (``model.py``)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from effspec.core import ir
from effspec.emit.registry import Backend, register_backend
from effspec.emit.render import environment

from ..common import recipe_context
from .context import model_context

TEMPLATE_DIR = Path(__file__).parent / "templates"

#: Output file -> the template that renders it (each gets the same context).
TEMPLATES = {"model.py": "model.py.j2", "train.py": "train.py.j2"}


def emit(model: ir.Model) -> Mapping[str, str]:
    env = environment(TEMPLATE_DIR)
    context = {
        **model_context(model),
        "train": recipe_context(model),
        "model": model,
    }
    return {name: env.get_template(template).render(**context) for name, template in TEMPLATES.items()}


BACKEND = register_backend(
    Backend(
        name="keras",
        description="Keras 3 functional model (keras.layers / keras.ops only; TensorFlow or JAX backend)",
        emit=emit,
    )
)
