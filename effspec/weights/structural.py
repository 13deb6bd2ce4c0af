"""Map a foreign checkpoint onto a spec by structure: one mapping for every torch-side source.

The IR's layer list (``model.layers``, in forward order) is one side; the checkpoint's parameterized
modules are the other. A module is the key prefix its tensors share (``blocks.1.0.conv_dw.weight`` ->
``blocks.1.0.conv_dw``); its kind follows from its tensors alone (``running_mean``: batch norm, a 4-d
``weight``: conv, a 2-d ``weight``: linear). No source or model is named here: a new source only says
how to identify the model it came from and what conventions it was trained with.

Order: a pickled state dict is in its writer's module order, so module i must fit layer i (the
first misfit is exactly where the architectures part). safetensors files are sorted by name, which
loses the order of sibling modules (``bn1`` sorts before ``conv_stem``); there each layer takes, of
the unused modules whose kind and every tensor shape fit, the one nearest the previous layer's module
in the module tree (then the shallowest, then natural name order: ``blocks.2`` before ``blocks.10``),
and no module may be left over. ``--verify`` then proves the pairing layer by layer.

The classifier is special in one way: a checkpoint with another class count (or none) leaves the
spec's classifier to the caller (fresh initialization, with a note).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from effspec.core import ir
from effspec.weights.convert import ConversionError
from effspec.weights.files import Checkpoint
from effspec.weights.manifest import Entry, build_manifest

_BN_SUFFIXES = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
_KIND_WORDS = {"conv": "conv", "depthwise_conv": "conv", "batch_norm": "batch norm", "linear": "linear"}


@dataclass
class Module:
    """One parameterized module of a checkpoint."""

    name: str
    tensors: dict[str, np.ndarray]  # suffix -> array
    position: int

    @property
    def kind(self) -> str:
        if "running_mean" in self.tensors:
            return "batch norm"
        weight = self.tensors.get("weight")
        if weight is not None and weight.ndim == 4:
            return "conv"
        if weight is not None and weight.ndim == 2:
            return "linear"
        return "unknown"

    def describe(self) -> str:
        order = {suffix: index for index, suffix in enumerate(_BN_SUFFIXES)}
        suffixes = sorted(self.tensors, key=lambda suffix: order.get(suffix, len(order)))
        shapes = ", ".join(f"{suffix} {_shape(self.tensors[suffix].shape)}" for suffix in suffixes)
        return f"{self.name} ({self.kind}: {shapes})"


@dataclass
class Mapping:
    """The result: canonical (torch) state entries from the checkpoint, and what was left to the caller."""

    state: dict[str, np.ndarray]  # canonical name -> array, every entry the checkpoint supplied
    pairs: list[tuple[str, str]]  # (IR layer, checkpoint module)
    fresh: list[str] = field(default_factory=list)  # IR layers the checkpoint does not supply (classifier)
    notes: list[str] = field(default_factory=list)
    checkpoint_classes: int | None = None  # out features of the checkpoint's classifier (None: no classifier)
    stem_module: str | None = None  # the checkpoint module that filled the first conv


def _shape(shape: tuple[int, ...]) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ")" if len(shape) != 1 else f"({shape[0]},)"


def natural_key(name: str) -> tuple:
    """``blocks.2.0`` before ``blocks.10.0``: digit runs compare as numbers."""
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"[.]", name))


def modules_of(checkpoint: Checkpoint) -> list[Module]:
    """The checkpoint's modules, in module order (pickles) or natural name order (safetensors)."""
    modules: dict[str, Module] = {}
    for position, (key, array) in enumerate(checkpoint.tensors.items()):
        prefix, _, suffix = key.rpartition(".")
        if not prefix:
            prefix, suffix = key, ""
        module = modules.setdefault(prefix, Module(prefix, {}, position))
        module.tensors[suffix] = array
    ordered = list(modules.values())
    if not checkpoint.module_order:
        ordered.sort(key=lambda module: natural_key(module.name))
    return ordered


def _expected(entries: list[Entry]) -> dict[str, tuple[int, ...]]:
    return {entry.name.rpartition(".")[2]: entry.shape for entry in entries}


def _describe_expected(layer: ir.Layer, entries: list[Entry]) -> str:
    shapes = ", ".join(f"{suffix} {_shape(shape)}" for suffix, shape in _expected(entries).items())
    return f"{layer.name} ({_KIND_WORDS[layer.kind]}: {shapes})"


def _fits(module: Module, layer: ir.Layer, entries: list[Entry], adapt_stem: bool) -> bool:
    if module.kind != _KIND_WORDS[layer.kind]:
        return False
    expected = _expected(entries)
    found = {suffix: tuple(array.shape) for suffix, array in module.tensors.items()}
    if layer.kind == "batch_norm":  # the counter is optional (timm strips it from some files)
        found.pop("num_batches_tracked", None)
        expected.pop("num_batches_tracked", None)
    if set(found) != set(expected):
        return False
    for suffix, shape in expected.items():
        have = found[suffix]
        if adapt_stem and suffix == "weight" and len(shape) == 4 and len(have) == 4:
            if have[0] == shape[0] and have[2:] == shape[2:]:
                continue  # input channels adapted by the caller's rule
        if have != shape:
            return False
    return True


def _merged_groups(layer: ir.Layer, entries: list[Entry], candidates: list[Module]) -> Module | None:
    """A grouped conv kept as one conv per group (timm's MixedConv2d for MixNet's split 1x1 convs:
    ``conv_pw.0``, ``conv_pw.1``): the first ``layer.groups`` candidates, siblings named ``.0``,
    ``.1``, ..., concatenated along the output channels, when that fits ``layer``; else None."""
    groups = layer.groups
    if layer.kind != "conv" or groups < 2 or len(candidates) < groups:
        return None
    parts = candidates[:groups]
    parent = parts[0].name.rpartition(".")[0]
    if any(part.name != f"{parent}.{index}" or set(part.tensors) != {"weight"} for index, part in enumerate(parts)):
        return None
    if len({part.tensors["weight"].shape for part in parts}) != 1:  # a mixed kernel conv, not equal groups
        return None
    merged = Module(parent, {"weight": np.concatenate([part.tensors["weight"] for part in parts])}, parts[0].position)
    return merged if _fits(merged, layer, entries, adapt_stem=False) else None


def _closeness(previous: str, module: Module) -> tuple:
    """Sort key among modules that fit a layer: the one nearest the previous choice in the module tree
    (longest shared prefix), then the shallowest, then natural name order. A stem's batch norm ``bn1``
    thus follows ``conv_stem`` rather than ``blocks.0.0.bn1``; ``blocks.4.1`` follows ``blocks.4.0``."""
    mine, theirs = previous.split("."), module.name.split(".")
    shared = 0
    for a, b in zip(mine, theirs, strict=False):
        if a != b:
            break
        shared += 1
    return (-shared, len(theirs), natural_key(module.name))


def adapt_input_channels(weight: np.ndarray, channels: int) -> np.ndarray:
    """A stem kernel (O, I, k, k) for ``channels`` inputs, the way timm adapts pretrained stems: one
    channel sums the source channels; more repeat them and scale by I / channels to keep the output
    scale (for inputs whose channels look alike)."""
    have = weight.shape[1]
    if channels == have:
        return weight
    if channels == 1:
        return weight.sum(axis=1, keepdims=True)
    repeats = math.ceil(channels / have)
    return np.tile(weight, (1, repeats, 1, 1))[:, :channels] * (have / channels)


def map_checkpoint(
    model: ir.Model,
    checkpoint: Checkpoint,
    source: str,
    in_channels: int | None = None,
    describe_source: Callable[[], str] | None = None,
) -> Mapping:
    """Pair every IR layer with a checkpoint module, kind and shapes checked; the first misfit is an error
    naming the layer (expected) and the module (found), and nothing is returned."""
    manifest = build_manifest(model)
    by_layer: dict[str, list[Entry]] = {}
    for entry in manifest:
        by_layer.setdefault(entry.layer, []).append(entry)
    layers = list(model.layers)
    modules = modules_of(checkpoint)
    path = checkpoint.path
    what = describe_source() if describe_source else f"{source} checkpoint"
    unused = list(modules)
    result = Mapping(state={}, pairs=[])
    first_conv = next((layer.name for layer in layers if layer.kind in ("conv", "depthwise_conv")), None)
    last = layers[-1]
    previous = ""

    def misfit(layer: ir.Layer, found: Module | None) -> ConversionError:
        expected = _describe_expected(layer, by_layer[layer.name])
        if found is None:
            return ConversionError(
                f"{path}: {what} does not fit {model.name}: {expected} has no counterpart (the checkpoint ends)"
            )
        return ConversionError(
            f"{path}: {what} does not fit {model.name}: expected {expected}, found {found.describe()}"
        )

    for layer in layers:
        entries = by_layer[layer.name]
        adapt = layer.name == first_conv and in_channels is not None
        if layer is last and layer.kind == "linear":
            try:
                chosen = _take_classifier(layer, entries, unused, checkpoint.module_order, result)
            except ConversionError as exc:
                raise ConversionError(f"{path}: {what} does not fit {model.name}: {exc}") from exc
            if chosen is None:
                continue
        elif checkpoint.module_order:
            chosen = unused[0] if unused else None
            if chosen is not None and not _fits(chosen, layer, entries, adapt):
                chosen = _merged_groups(layer, entries, unused) or chosen
            if chosen is None or not _fits(chosen, layer, entries, adapt):
                raise misfit(layer, chosen)
        else:
            fitting = [m for m in unused if _fits(m, layer, entries, adapt)]
            if layer.groups > 1:  # a grouped conv may be kept as one conv per group: those compete too
                starts = [i for i, module in enumerate(unused) if module.name.endswith(".0")]
                runs = (_merged_groups(layer, entries, unused[i:]) for i in starts)
                fitting += [merged for merged in runs if merged is not None]
            if not fitting:
                raise misfit(layer, min(unused, key=lambda m: _closeness(previous, m)) if unused else None)
            chosen = min(fitting, key=lambda m: _closeness(previous, m))
        if chosen in unused:
            unused.remove(chosen)
        else:  # a grouped conv merged from one module per group
            merged_names = {f"{chosen.name}.{index}" for index in range(layer.groups)}
            unused[:] = [module for module in unused if module.name not in merged_names]
        previous = chosen.name
        result.pairs.append((layer.name, chosen.name))
        for entry in entries:
            suffix = entry.name.rpartition(".")[2]
            array = chosen.tensors.get(suffix)
            if array is None:  # a batch-norm counter the file did not keep
                array = np.zeros((), dtype=np.int64)
            if adapt and suffix == "weight":
                array = adapt_input_channels(array, entry.shape[1])
                if array.shape[1] != chosen.tensors["weight"].shape[1]:
                    result.notes.append(
                        f"stem {chosen.name}: {chosen.tensors['weight'].shape[1]} input channels adapted to "
                        f"{entry.shape[1]} ({'summed' if entry.shape[1] == 1 else 'repeated and rescaled'})"
                    )
                result.stem_module = chosen.name
            elif layer.name == first_conv:
                result.stem_module = chosen.name
            if entry.kind == "bn_count":  # 0-d, as torch keeps it (ascontiguousarray would make it 1-d)
                result.state[entry.name] = np.array(array, dtype=np.int64).reshape(())
            else:
                result.state[entry.name] = np.ascontiguousarray(array)
    if unused:
        extra = unused[0]
        raise ConversionError(
            f"{path}: {what} does not fit {model.name}: {len(unused)} checkpoint module(s) left over after every "
            f"layer was filled, first {extra.describe()}"
        )
    return result


def _take_classifier(
    layer: ir.Layer, entries: list[Entry], unused: list[Module], module_order: bool, result: Mapping
) -> Module | None:
    """The checkpoint's classifier if it fits; with another class count or none, None (fresh init)."""
    candidates = [m for m in unused if m.kind == "linear"]
    if module_order and unused and unused[0].kind != "linear":
        candidates = []
    if not candidates:
        result.fresh.append(layer.name)
        result.notes.append(
            f"the checkpoint has no classifier: {layer.name} ({layer.out_channels} classes) keeps its fresh "
            "initialization"
        )
        return None
    module = candidates[0]
    weight = module.tensors.get("weight")
    result.checkpoint_classes = int(weight.shape[0])
    if _fits(module, layer, entries, False):
        return module
    if weight.shape[1] != layer.in_channels:
        raise ConversionError(f"expected {_describe_expected(layer, entries)}, found {module.describe()}")
    unused.remove(module)
    result.fresh.append(layer.name)
    result.notes.append(
        f"the checkpoint's classifier has {weight.shape[0]} classes, the spec {layer.out_channels}: {layer.name} keeps "
        "its fresh initialization (fine-tune it)"
    )
    return None
