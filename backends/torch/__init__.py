"""The torch backend: IR -> a standalone PyTorch ``nn.Module`` (``model.py``) importable with torch alone."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from effspec.core import ir
from effspec.emit.registry import Backend, register_backend
from effspec.emit.render import environment

from .context import model_context
from .train_context import train_context

TEMPLATE_DIR = Path(__file__).parent / "templates"

#: Output file -> the template that renders it (each gets the same context).
TEMPLATES = {"model.py": "model.py.j2", "train.py": "train.py.j2"}


def emit(model: ir.Model) -> Mapping[str, str]:
    env = environment(TEMPLATE_DIR)
    context = {
        **model_context(model),
        "train": train_context(model),  # train.py.j2 reads only this
        "model": model,
    }
    return {name: env.get_template(template).render(**context) for name, template in TEMPLATES.items()}


BACKEND = register_backend(
    Backend(
        name="torch",
        description="PyTorch nn.Module (torch only; TF-SAME padding, BN folding, scriptable and exportable)",
        emit=emit,
    )
)
