"""One converter for every model, driven by the manifest: torch ``state_dict`` <-> Keras layer weights.

It works on numpy arrays (``torch_to_keras`` / ``keras_to_torch``) and on built Keras models
(``set_keras_weights`` / ``keras_layer_weights``); ``files`` reads and writes the files. Transposes
are exact, so a round trip returns bit-identical tensors. torch's ``num_batches_tracked`` has no Keras
counterpart: it is dropped on the way to Keras and written as 0 on the way back (generated torch
models always set a BN momentum, so torch never reads it).

Every mismatch is a ``ConversionError`` that names the parameter.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from effspec.support.errors import UsageError
from effspec.weights.manifest import Entry, Manifest, inverse_axes

if TYPE_CHECKING:
    import keras

_LISTED = 5  # names shown in a "missing"/"unexpected" message


class ConversionError(UsageError):
    """Weights that do not fit the spec's manifest (exit code 2)."""


def _names(names: Sequence[str]) -> str:
    shown = ", ".join(names[:_LISTED])
    return shown + (f" (and {len(names) - _LISTED} more)" if len(names) > _LISTED else "")


def _check_names(expected: Sequence[str], found: Sequence[str], what: str, python_name: str) -> None:
    found_set, expected_set = set(found), set(expected)
    missing = [name for name in expected if name not in found_set]
    unexpected = [name for name in found if name not in expected_set]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)}: {_names(missing)}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)}: {_names(unexpected)}")
        raise ConversionError(f"{what} do not match the {python_name} manifest: {'; '.join(parts)}")


def _check_shape(name: str, expected: tuple[int, ...], array: np.ndarray, where: str) -> None:
    if tuple(array.shape) != expected:
        raise ConversionError(f"{name}: {where} shape {tuple(array.shape)} does not match expected {expected}")


def to_keras_array(entry: Entry, array: np.ndarray) -> np.ndarray:
    axes = entry.keras.axes
    return np.ascontiguousarray(np.transpose(array, axes)) if axes else np.array(array)


def from_keras_array(entry: Entry, array: np.ndarray) -> np.ndarray:
    axes = entry.keras.axes
    return np.ascontiguousarray(np.transpose(array, inverse_axes(axes))) if axes else np.array(array)


def torch_to_keras(manifest: Manifest, state: Mapping[str, np.ndarray]) -> dict[str, list[np.ndarray]]:
    """A torch state dict (numpy arrays) -> {Keras layer name: weights in ``get_weights()`` order}."""
    if state and len(set(manifest.torch_names) & set(state)) < len(manifest) // 2:
        raise ConversionError(
            f"torch state_dict keys are not {manifest.python_name} names (first: {next(iter(state))}, expected "
            f"{manifest.torch_names[0]}): a checkpoint of another library? try --from timm or --from torchvision"
        )
    _check_names(manifest.torch_names, list(state), "torch state_dict keys", manifest.python_name)
    layers: dict[str, list[np.ndarray]] = {}
    for layer, entries in manifest.keras_layers.items():
        arrays = []
        for entry in entries:
            _check_shape(entry.name, entry.shape, state[entry.name], "torch")
            arrays.append(to_keras_array(entry, state[entry.name]))
        layers[layer] = arrays
    return layers


def keras_to_torch(manifest: Manifest, layers: Mapping[str, Sequence[np.ndarray]]) -> dict[str, np.ndarray]:
    """{Keras layer name: weights} -> a torch state dict (numpy arrays) in manifest order."""
    expected = manifest.keras_layers
    _check_names(list(expected), list(layers), "Keras layers with weights", manifest.python_name)
    converted: dict[str, np.ndarray] = {}
    for layer, entries in expected.items():
        weights = layers[layer]
        if len(weights) != len(entries):
            variables = ", ".join(entry.keras.variable for entry in entries)
            raise ConversionError(
                f"{layer}: Keras layer has {len(weights)} weights, expected {len(entries)} ({variables})"
            )
        for entry in entries:
            array = np.asarray(weights[entry.keras.index])
            _check_shape(entry.keras.name, entry.keras.shape, array, "Keras")
            converted[entry.name] = from_keras_array(entry, array)
    for entry in manifest:
        if entry.keras is None:  # torch-only counter
            converted[entry.name] = np.zeros(entry.shape, dtype=np.int64)
    return {entry.name: converted[entry.name] for entry in manifest}


# Keras models -----------------------------------------------------------------------------------


def keras_layer_weights(model: keras.Model) -> dict[str, list[np.ndarray]]:
    """{layer name: get_weights()} for every Keras layer that holds weights."""
    return {layer.name: layer.get_weights() for layer in model.layers if layer.weights}


def set_keras_weights(manifest: Manifest, model: keras.Model, layers: Mapping[str, Sequence[np.ndarray]]) -> None:
    """Assign converted weights; the model must hold exactly the manifest's layers."""
    present = {layer.name: layer for layer in model.layers if layer.weights}
    _check_names(list(manifest.keras_layers), list(present), "layers of the generated Keras model", model.name)
    for name, weights in layers.items():
        layer = present[name]
        for variable, array in zip(layer.weights, weights, strict=True):
            if tuple(variable.shape) != tuple(array.shape):
                raise ConversionError(f"{variable.path}: Keras variable shape {tuple(variable.shape)} != {array.shape}")
        layer.set_weights(list(weights))
