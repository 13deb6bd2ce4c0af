"""Weights of ``keras.applications`` EfficientNets (the ImageNet checkpoints Keras users hold) moved
into the generated models.

keras.applications builds EfficientNet B0..B7 and V2 B0..B3/S/M/L with the same weighted layers,
in the same order, as the generated Keras model of the matching spec (TF-SAME padding, SE on the
block input width, the official width/depth table). The layers are paired in order and every pair
must agree in kind and in every weight shape, so a spec that does not match the application is an
error naming the first layer that differs, never a silent mis-assignment. Which application a spec
matches comes from its name (``efficientnet-b3`` -> ``EfficientNetB3``) or from ``--application``.

The application's own input preprocessing (Rescaling / Normalization layers inside its model) is
not a weight of the generated models: it is measured and reported, so the user knows what input
the imported weights expect.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from effspec.core import ir
from effspec.support.errors import UsageError
from effspec.weights.convert import ConversionError

APPLICATIONS = (
    *(f"EfficientNetB{i}" for i in range(8)),
    *(f"EfficientNetV2B{i}" for i in range(4)),
    "EfficientNetV2S",
    "EfficientNetV2M",
    "EfficientNetV2L",
)
IMAGENET_CLASSES = 1000
#: keras.applications' V1 ImageNet checkpoints store these std values as the Normalization *variance*
#: and compensate with an extra Rescaling only when built with weights="imagenet"
#: (tensorflow/tensorflow#49930); read from a file, the checkpoint still expects (p - mean) / std.
IMAGENET_STD = (0.229, 0.224, 0.225)
_PREPROCESSING = ("Rescaling", "Normalization")


@dataclass(frozen=True)
class Imported:
    layers: dict[str, list[np.ndarray]]  # generated Keras layer name -> weights, every layer of the model
    application: str
    top: bool  # the file held the 1000-class classifier and it was imported
    scale: tuple[float, ...]  # the application's preprocessing on 0..1 pixels: p * scale + offset
    offset: tuple[float, ...]


def application_for(model: ir.Model, requested: str | None) -> str:
    """The keras.applications class for ``model``: ``requested``, or the one its name spells."""
    if requested is not None:
        if requested not in APPLICATIONS:
            raise UsageError(f"unknown application {requested!r}. Known applications are: {', '.join(APPLICATIONS)}")
        return requested
    match = re.fullmatch(r"efficientnet(v2)?-(b[0-7]|s|m|l)", model.name)
    name = f"EfficientNet{'V2' if match and match.group(1) else ''}{match.group(2).upper()}" if match else ""
    if name not in APPLICATIONS:
        raise UsageError(
            f"{model.name}: no keras.applications model is named like this spec; pass --application NAME "
            f"({', '.join(APPLICATIONS)})"
        )
    return name


def _kind(layer) -> str:
    """The Keras layer class a layer is, or extends (the generated BatchNorm is a BatchNormalization)."""
    return next(cls.__name__ for cls in type(layer).__mro__ if cls.__module__.startswith("keras."))


def _describe(layer) -> str:
    shapes = ", ".join("x".join(str(d) for d in w.shape) for w in layer.weights)
    return f"{layer.name} ({type(layer).__name__}: {shapes})"


def _weighted(model, skip_last: bool) -> list:
    layers = [layer for layer in model.layers if layer.weights and type(layer).__name__ not in _PREPROCESSING]
    return layers[:-1] if skip_last else layers


def _load_application(name: str, path: Path):
    """The application with ``path`` loaded: with its classifier if the file has one, else without."""
    import keras

    builder = getattr(keras.applications, name)
    errors = []
    for top in (True, False):
        application = builder(weights=None, include_top=top, classifier_activation=None)
        try:
            application.load_weights(str(path))
        except (ValueError, KeyError, OSError) as exc:
            errors.append(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)
            continue
        return application, top
    raise ConversionError(f"{path}: not a keras.applications {name} weights file (with or without top): {errors[-1]}")


def _preprocessing(application) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel (scale, offset) that the application's preprocessing layers apply to 0..1 pixels."""
    import keras

    channels = application.input_shape[-1]
    x = np.stack([np.zeros(channels), np.full(channels, 255.0)]).reshape(1, 2, 1, channels).astype("float32")
    for layer in application.layers:
        if type(layer).__name__ in _PREPROCESSING:
            x = keras.ops.convert_to_numpy(layer(x))
            if type(layer).__name__ == "Normalization" and _stores_std_as_variance(layer):
                x = x / np.sqrt(np.array(IMAGENET_STD, dtype="float32"))  # what weights="imagenet" adds
        elif layer.weights:
            break  # the stem conv: preprocessing is over
    at_zero, at_one = x[0, 0, 0].astype(float), x[0, 1, 0].astype(float)
    return tuple((at_one - at_zero).tolist()), tuple(at_zero.tolist())


def _stores_std_as_variance(layer) -> bool:
    import keras

    variance = keras.ops.convert_to_numpy(layer.variance).reshape(-1)
    return variance.shape == (len(IMAGENET_STD),) and bool(np.allclose(variance, IMAGENET_STD, rtol=1e-4))


def import_application(model: ir.Model, generated, path: Path, requested: str | None) -> Imported:
    """Pair the application's weighted layers with the generated Keras model's and copy the weights."""
    name = application_for(model, requested)
    if not path.is_file():
        raise UsageError(f"{path}: no such file")
    if path.suffix != ".h5":
        raise UsageError(f"{path}: a keras.applications weights file ends in .h5 (or .weights.h5)")
    application, has_top = _load_application(name, path)
    top = has_top and model.head.num_classes == IMAGENET_CLASSES  # else the classifier keeps its fresh init
    theirs = _weighted(application, skip_last=has_top and not top)
    ours = _weighted(generated, skip_last=not top)
    if len(theirs) != len(ours):
        raise ConversionError(
            f"{model.name} does not match keras.applications {name}: {len(ours)} weighted layers against {len(theirs)}"
        )
    layers = {layer.name: layer.get_weights() for layer in generated.layers if layer.weights}
    for their_layer, our_layer in zip(theirs, ours, strict=True):
        weights = their_layer.get_weights()
        same_kind = _kind(their_layer) == _kind(our_layer)
        if not same_kind or [w.shape for w in weights] != [tuple(w.shape) for w in our_layer.weights]:
            raise ConversionError(
                f"{model.name} does not match keras.applications {name}: "
                f"{_describe(their_layer)} cannot fill {_describe(our_layer)}"
            )
        layers[our_layer.name] = weights
    scale, offset = _preprocessing(application)
    return Imported(layers=layers, application=name, top=top, scale=scale, offset=offset)


def preprocessing_note(model: ir.Model, imported: Imported) -> str:
    """Whether the application's input normalization is the spec's MEAN/STD, and what it is if not."""
    spec_scale = [1.0 / s for s in model.std]
    spec_offset = [-m / s for m, s in zip(model.mean, model.std, strict=True)]
    same = np.allclose(imported.scale, spec_scale, rtol=1e-3, atol=1e-6) and np.allclose(
        imported.offset, spec_offset, rtol=1e-3, atol=1e-4
    )
    if same:
        return f"{imported.application} normalizes its input with this spec's MEAN/STD: feed the usual inputs"
    scale = ", ".join(f"{v:.6g}" for v in imported.scale)
    offset = ", ".join(f"{v:.6g}" for v in imported.offset)
    return (
        f"{imported.application} does not normalize with this spec's MEAN/STD: its weights expect "
        f"pixels p in 0..1 mapped to p * ({scale}) + ({offset}) per channel"
    )
