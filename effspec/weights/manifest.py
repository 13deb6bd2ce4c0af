"""The weight manifest: every parameter and buffer of a model, derived from the IR's ``model.layers``.

This is the layer naming every weight path shares with the IR: the generated torch ``state_dict``,
the generated Keras layers, the structural importers (timm, torchvision, keras.applications) and the
exporters all address tensors through it.

One entry per tensor: its canonical name (the torch ``state_dict`` key: IR layer name + suffix), its
kind, its canonical shape, and where each backend keeps it. The canonical layout is channels-first
(conv ``(out, in / groups, kh, kw)``, dense ``(out, in)``), which is also torch's; every other
layout is a transpose of it, looked up by kind in ``KERAS_AXES``. The converter is generic over this
table: nothing in it knows a model.

Pure Python: no numpy, torch or TensorFlow here.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

from effspec.core import ir

Kind = Literal[
    "conv_kernel",
    "depthwise_kernel",
    "dense_kernel",
    "bias",
    "bn_gamma",
    "bn_beta",
    "bn_mean",
    "bn_variance",
    "bn_count",
]

#: Keras array = canonical array transposed by these axes; kinds not listed keep their layout.
KERAS_AXES: dict[str, tuple[int, ...]] = {
    "conv_kernel": (2, 3, 1, 0),  # (out, in, kh, kw) -> (kh, kw, in, out)
    "depthwise_kernel": (2, 3, 0, 1),  # (channels, 1, kh, kw) -> (kh, kw, channels, multiplier 1)
    "dense_kernel": (1, 0),  # (out, in) -> (in, out)
}

#: Kinds a training step changes by gradient (the rest are statistics or counters).
TRAINABLE_KINDS = frozenset({"conv_kernel", "depthwise_kernel", "dense_kernel", "bias", "bn_gamma", "bn_beta"})


def inverse_axes(axes: tuple[int, ...]) -> tuple[int, ...]:
    """The permutation that undoes ``axes``."""
    inverse = [0] * len(axes)
    for position, axis in enumerate(axes):
        inverse[axis] = position
    return tuple(inverse)


@dataclass(frozen=True)
class KerasSlot:
    """Where Keras keeps a tensor: ``layer.get_weights()[index]`` of the layer named ``layer``."""

    layer: str
    variable: str  # Keras' own variable name, for messages
    index: int
    shape: tuple[int, ...]
    axes: tuple[int, ...] | None  # keras = canonical.transpose(axes); None: same layout

    @property
    def name(self) -> str:
        return f"{self.layer}/{self.variable}"


@dataclass(frozen=True)
class Entry:
    """One parameter or buffer."""

    name: str  # canonical name == torch state_dict key
    layer: str  # the IR layer it belongs to
    section: str  # where it reports: "stem", "blocks.<stage>" or "head" (head conv and classifier)
    kind: Kind
    shape: tuple[int, ...]  # canonical (== torch) shape
    keras: KerasSlot | None  # None: Keras has no counterpart (torch's num_batches_tracked)

    @property
    def torch_name(self) -> str:
        return self.name

    @property
    def trainable(self) -> bool:
        return self.kind in TRAINABLE_KINDS


@dataclass(frozen=True)
class Manifest:
    python_name: str  # the model's Python name (ir.Model.python_name)
    entries: tuple[Entry, ...]

    def __iter__(self) -> Iterator[Entry]:
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def torch_names(self) -> tuple[str, ...]:
        return tuple(entry.name for entry in self.entries)

    @property
    def keras_layers(self) -> dict[str, tuple[Entry, ...]]:
        """Keras layer name -> its entries in ``get_weights()`` order."""
        layers: dict[str, list[Entry]] = {}
        for entry in self.entries:
            if entry.keras is not None:
                layers.setdefault(entry.keras.layer, []).append(entry)
        return {name: tuple(sorted(group, key=lambda e: e.keras.index)) for name, group in layers.items()}


def layer_entries(layer: ir.Layer, section: str) -> tuple[Entry, ...]:
    """The tensors of one IR layer, in torch registration order (parameters, then buffers)."""

    def entry(suffix: str, kind: Kind, shape: tuple[int, ...], variable: str | None = None, index: int = 0) -> Entry:
        keras = None
        if variable is not None:
            axes = KERAS_AXES.get(kind)
            keras_shape = tuple(shape[axis] for axis in axes) if axes else shape
            keras = KerasSlot(ir.flat_name(layer.name), variable, index, keras_shape, axes)
        return Entry(f"{layer.name}.{suffix}", layer.name, section, kind, shape, keras)

    channels = layer.out_channels
    if layer.kind == "batch_norm":
        return (
            entry("weight", "bn_gamma", (channels,), "gamma", 0),
            entry("bias", "bn_beta", (channels,), "beta", 1),
            entry("running_mean", "bn_mean", (channels,), "moving_mean", 2),
            entry("running_var", "bn_variance", (channels,), "moving_variance", 3),
            entry("num_batches_tracked", "bn_count", ()),  # torch only
        )
    if layer.kind == "linear":
        weight = entry("weight", "dense_kernel", (channels, layer.in_channels), "kernel")
    elif layer.kind == "depthwise_conv":
        if layer.in_channels != channels:
            raise ValueError(f"{layer.name}: depthwise conv with a channel multiplier is not supported")
        weight = entry("weight", "depthwise_kernel", (channels, 1, layer.kernel, layer.kernel), "kernel")
    else:
        weight = entry(
            "weight", "conv_kernel", (channels, layer.in_channels // layer.groups, layer.kernel, layer.kernel), "kernel"
        )
    if layer.bias:
        return (weight, entry("bias", "bias", (channels,), "bias", 1))
    return (weight,)


def section_of(layer_name: str) -> str:
    """The report row a layer belongs to, from its canonical name alone: "stem", "blocks.<stage>" or
    "head" (head conv and classifier)."""
    parts = layer_name.split(".")
    if parts[0] == "stem":
        return "stem"
    if parts[0] == "blocks" and len(parts) > 1:
        return f"blocks.{parts[1]}"
    return "head"


def sections(model: ir.Model) -> tuple[tuple[str, tuple[ir.Layer, ...]], ...]:
    """(row name, layers) in forward order: the stem, each stage, the head (conv and classifier).

    Read from ``model.layers`` (names only), so it follows whatever the IR's layer list holds."""
    rows: dict[str, list[ir.Layer]] = {}
    for layer in model.layers:
        rows.setdefault(section_of(layer.name), []).append(layer)
    return tuple((name, tuple(layers)) for name, layers in rows.items())


def build_manifest(model: ir.Model) -> Manifest:
    """Every tensor of ``model`` in forward order (the order of ``model.layers``)."""
    entries = tuple(entry for layer in model.layers for entry in layer_entries(layer, section_of(layer.name)))
    return Manifest(model.python_name, entries)
