"""Weight files: torch ``state_dict`` (.pt/.pth/.bin via ``torch.save``, or .safetensors) and Keras
``.weights.h5``. Keras files are read and written through a built generated Keras model, so their h5
layout is exactly Keras' own. torch and Keras are imported inside the functions that need them.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from effspec.equivalence.convert import (
    ConversionError,
    keras_layer_weights,
    keras_to_torch,
    set_keras_weights,
    torch_to_keras,
)
from effspec.equivalence.generated import load_model_module
from effspec.equivalence.keras_applications import import_application, preprocessing_note
from effspec.equivalence.manifest import build_manifest
from effspec.errors import UsageError
from effspec.pipeline import build

if TYPE_CHECKING:
    import keras

TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors")
KERAS_SUFFIX = ".weights.h5"


def check_torch_path(path: Path) -> None:
    if path.suffix not in TORCH_SUFFIXES:
        raise UsageError(f"{path}: a torch weights file ends in {', '.join(TORCH_SUFFIXES)}")


def check_keras_path(path: Path) -> None:
    if not path.name.endswith(KERAS_SUFFIX):
        raise UsageError(f"{path}: a Keras weights file ends in {KERAS_SUFFIX}")


def _existing(path: Path) -> None:
    if not path.is_file():
        raise UsageError(f"{path}: no such file")


def _state_from_object(obj: Any, path: Path) -> Mapping[str, Any]:
    """A plain state dict, or the ``model`` state dict of a generated train.py checkpoint."""
    if isinstance(obj, Mapping) and isinstance(obj.get("model"), Mapping):
        obj = obj["model"]
    if not isinstance(obj, Mapping):
        raise ConversionError(f"{path}: expected a state_dict (names -> tensors), found {type(obj).__name__}")
    return obj


def load_torch_file(path: Path) -> dict[str, np.ndarray]:
    import torch

    check_torch_path(path)
    _existing(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = _state_from_object(torch.load(path, map_location="cpu", weights_only=True), path)
    except (RuntimeError, EOFError, OSError) as exc:  # the library's own message says what is wrong
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConversionError(f"{path}: cannot read torch weights: {first_line}") from exc
    arrays = {}
    for name, tensor in state.items():
        if not isinstance(tensor, torch.Tensor):
            raise ConversionError(f"{path}: {name} is a {type(tensor).__name__}, not a tensor")
        arrays[name] = tensor.detach().cpu().numpy()
    return arrays


def save_torch_file(state: Mapping[str, np.ndarray], path: Path) -> None:
    import torch

    check_torch_path(path)
    tensors = {name: torch.from_numpy(np.array(array, order="C")) for name, array in state.items()}  # keeps 0-d
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(tensors, str(path))
    else:
        torch.save(tensors, path)


def load_keras_file(model: keras.Model, path: Path) -> dict[str, list[np.ndarray]]:
    """Load ``path`` into a built generated model and read its layer weights back."""
    check_keras_path(path)
    _existing(path)
    try:
        model.load_weights(str(path))
    except ValueError as exc:  # Keras names the layer or variable that does not fit
        raise ConversionError(f"{path}: does not fit the generated {model.name} Keras model: {exc}") from exc
    return keras_layer_weights(model)


def save_keras_file(model: keras.Model, path: Path) -> None:
    check_keras_path(path)
    model.save_weights(str(path), overwrite=True)


def _keras_model(spec_model: Any) -> keras.Model:
    from effspec.equivalence import keras_side  # quiets TensorFlow before it loads

    return keras_side.build(load_model_module(spec_model, "keras"))


def convert_file(
    spec: str | Path, source: str, target: str, input_path: Path, output_path: Path, application: str | None = None
) -> tuple[Path, tuple[str, ...]]:
    """Convert ``input_path`` (weights of ``source``) for ``spec`` into ``output_path`` (weights of ``target``).

    Returns the written path and notes for the user (what was imported, what input it expects)."""
    model = build(spec).model
    manifest = build_manifest(model)
    notes: tuple[str, ...] = ()
    if source == "keras-applications":
        (check_keras_path if target == "keras" else check_torch_path)(output_path)
        keras_model = _keras_model(model)
        imported = import_application(model, keras_model, input_path, application)
        set_keras_weights(manifest, keras_model, imported.layers)
        if target == "keras":
            save_keras_file(keras_model, output_path)
        else:
            save_torch_file(keras_to_torch(manifest, keras_layer_weights(keras_model)), output_path)
        classifier = (
            "the 1000-class classifier too"
            if imported.top
            else f"all but the classifier, which keeps its fresh initialization ({model.head.num_classes} classes)"
        )
        notes = (
            f"imported keras.applications {imported.application}: {classifier}",
            preprocessing_note(model, imported),
        )
    elif (source, target) == ("torch", "keras"):
        check_keras_path(output_path)
        layers = torch_to_keras(manifest, load_torch_file(input_path))
        keras_model = _keras_model(model)
        set_keras_weights(manifest, keras_model, layers)
        save_keras_file(keras_model, output_path)
    elif (source, target) == ("keras", "torch"):
        check_torch_path(output_path)
        keras_model = _keras_model(model)
        save_torch_file(keras_to_torch(manifest, load_keras_file(keras_model, input_path)), output_path)
    else:
        raise UsageError(f"cannot convert from {source} to {target}; known: torch -> keras, keras -> torch")
    return output_path, notes
