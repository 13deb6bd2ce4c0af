"""`effspec convert-weights`: every source, one flow.

torch <-> keras moves the generated models' own weights (names from the manifest). keras-applications,
timm and torchvision import foreign checkpoints: keras.applications pairs Keras layers in order; timm
and torchvision go through the structural mapping, then the source's conventions are compared with the
spec (a difference is an error unless ``--force``), the converted model is verified against the source
model where the source framework imports, and only then is OUT written (atomically).
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's start-up chatter is not our output

from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import numpy as np

from effspec.core import ir
from effspec.emit.pipeline import build
from effspec.support.errors import CheckFailed, UsageError
from effspec.weights.convert import (
    ConversionError,
    keras_layer_weights,
    keras_to_torch,
    set_keras_weights,
    torch_to_keras,
)
from effspec.weights.files import (
    check_hdf5,
    check_keras_path,
    check_output,
    check_torch_path,
    load_keras_file,
    load_torch_file,
    read_checkpoint,
    save_keras_file,
    save_torch_file,
)
from effspec.weights.generated import load_model_module
from effspec.weights.manifest import Manifest, build_manifest
from effspec.weights.sources import timm as timm_source
from effspec.weights.sources import torchvision as torchvision_source
from effspec.weights.sources.base import differences

if TYPE_CHECKING:
    import keras

STRUCTURAL_SOURCES: dict[str, ModuleType] = {"timm": timm_source, "torchvision": torchvision_source}
SOURCES = ("torch", "keras", "keras-applications", *STRUCTURAL_SOURCES)
#: --verify fails above this relative error (max |converted - source| / max |source|)
VERIFY_TOLERANCE = 1e-4


@dataclass(frozen=True)
class Options:
    application: str | None = None  # keras-applications: the class
    model: str | None = None  # timm / torchvision: the source model name
    force: bool = False  # convert although conventions differ or are unknown
    verify: bool | None = None  # None: where the source framework imports
    in_channels: int | None = None
    verify_sizes: tuple[int, int] | None = None  # (even, odd); default from the spec's resolution


@dataclass(frozen=True)
class VerifyRow:
    what: str
    size: int
    max_abs: float
    rel: float

    def line(self) -> str:
        return f"verify {self.what} at {self.size}x{self.size}: max abs {self.max_abs:.2e}, rel {self.rel:.2e}"


def keras_model(spec_model: ir.Model) -> keras.Model:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return load_model_module(spec_model, "keras").build_model(dropout=0.0, drop_path_rate=0.0)


def _torch_model(spec_model: ir.Model, state: dict[str, np.ndarray] | None = None):
    import torch

    torch.manual_seed(0)  # fresh layers (a classifier the checkpoint lacks) initialize reproducibly
    net = load_model_module(spec_model, "torch").build_model(dropout=0.0, drop_path_rate=0.0)
    if state is not None:
        net.load_state_dict({name: torch.from_numpy(np.array(array)) for name, array in state.items()})
    return net.eval()


def _check_target(target: str, output: Path) -> None:
    (check_keras_path if target == "keras" else check_torch_path)(output)
    check_output(output)


def write_state(spec_model: ir.Model, manifest: Manifest, state: dict[str, np.ndarray], target: str, output: Path):
    """Write a canonical torch state as ``target``'s file (atomically)."""
    if target == "torch":
        save_torch_file(state, output)
        return None
    net = keras_model(spec_model)
    set_keras_weights(manifest, net, torch_to_keras(manifest, state))
    save_keras_file(net, output)
    return net


def convert_file(
    spec: str | Path,
    source: str,
    target: str,
    input_path: Path,
    output_path: Path,
    application: str | None = None,
    options: Options | None = None,
) -> tuple[Path, tuple[str, ...]]:
    """Convert ``input_path`` (weights of ``source``) for ``spec`` into ``output_path`` (weights of ``target``).

    Returns the written path and notes for the user (what was imported, what input it expects)."""
    options = options or Options(application=application)
    if application and not options.application:
        options = Options(**{**options.__dict__, "application": application})
    if source == target:
        raise UsageError(f"--from and --to are both {source}: nothing to convert")
    _check_target(target, output_path)
    model = build(spec).model
    manifest = build_manifest(model)
    if source in STRUCTURAL_SOURCES:
        return output_path, import_structural(
            model, manifest, STRUCTURAL_SOURCES[source], target, input_path, output_path, options
        )
    if source == "keras-applications":
        return output_path, _import_keras_application(model, manifest, target, input_path, output_path, options)
    if (source, target) == ("torch", "keras"):
        layers = torch_to_keras(manifest, load_torch_file(input_path))  # every check before Keras loads
        net = keras_model(model)
        set_keras_weights(manifest, net, layers)
        save_keras_file(net, output_path)
    elif (source, target) == ("keras", "torch"):
        check_keras_path(input_path)
        check_hdf5(input_path)
        net = keras_model(model)
        save_torch_file(keras_to_torch(manifest, load_keras_file(net, input_path)), output_path)
    else:
        raise UsageError(f"cannot convert from {source} to {target}")
    return output_path, ()


def _import_keras_application(
    model: ir.Model, manifest: Manifest, target: str, input_path: Path, output_path: Path, options: Options
) -> tuple[str, ...]:
    net, notes, _ = _application_model(model, manifest, input_path, options.application)
    if target == "keras":
        save_keras_file(net, output_path)
    else:
        save_torch_file(keras_to_torch(manifest, keras_layer_weights(net)), output_path)
    return notes


def _application_model(
    model: ir.Model, manifest: Manifest, input_path: Path, application: str | None
) -> tuple[keras.Model, tuple[str, ...], tuple[str, ...]]:
    """The generated Keras model holding a keras.applications file's weights, the notes, and the layers
    the file did not supply (the classifier, unless it had the 1000-class top and the spec 1000 classes)."""
    from effspec.weights.sources.keras_applications import import_application, preprocessing_note

    if input_path.suffix == ".h5":
        check_hdf5(input_path)
    net = keras_model(model)
    imported = import_application(model, net, input_path, application)
    set_keras_weights(manifest, net, imported.layers)
    classifier = (
        "the 1000-class classifier too"
        if imported.top
        else f"all but the classifier, which keeps its fresh initialization ({model.head.num_classes} classes)"
    )
    notes = (f"imported keras.applications {imported.application}: {classifier}", preprocessing_note(model, imported))
    return net, notes, () if imported.top else (model.head.classifier.name,)


def import_application_state(
    model: ir.Model, input_path: Path, application: str | None
) -> tuple[dict[str, np.ndarray], tuple[str, ...], tuple[str, ...]]:
    """A keras.applications file as the canonical state: (state, notes, layers it did not supply)."""
    manifest = build_manifest(model)
    net, notes, fresh = _application_model(model, manifest, input_path, application)
    return keras_to_torch(manifest, keras_layer_weights(net)), notes, fresh


def import_structural(
    model: ir.Model,
    manifest: Manifest,
    source: ModuleType,
    target: str,
    input_path: Path,
    output_path: Path,
    options: Options,
) -> tuple[str, ...]:
    state, notes, _, keras_net = structural_state(model, manifest, source, input_path, options, target)
    if target == "torch":
        save_torch_file(state, output_path)
    else:
        save_keras_file(keras_net, output_path)
    return notes


def structural_state(
    model: ir.Model, manifest: Manifest, source: ModuleType, input_path: Path, options: Options, target: str
) -> tuple[dict[str, np.ndarray], tuple[str, ...], tuple[str, ...], keras.Model | None]:
    """A timm / torchvision checkpoint as the canonical state: (state, notes, the layers it did not
    supply (a fresh classifier), the Keras model holding it when ``target`` is keras). Identified,
    conventions-checked and verified as ``convert-weights`` does; ``--init`` reads through it too."""
    from effspec.weights.structural import map_checkpoint

    in_channels = options.in_channels
    if in_channels is not None and in_channels != model.input.channels:
        raise UsageError(
            f"--in-channels {in_channels}: the spec's input has {model.input.channels} channels; set "
            f"input: {{channels: {in_channels}, mean: [...], std: [...]}} in the spec (one value per channel)"
        )
    checkpoint = read_checkpoint(input_path)
    name, how = source.identify(model, checkpoint, options.model)
    label = f"{source.NAME} {name}" if name else f"{source.NAME} checkpoint"
    mapping = map_checkpoint(model, checkpoint, source.NAME, in_channels, lambda: label)
    notes: list[str] = []
    if checkpoint.key:
        others = f" (also present: {', '.join(checkpoint.other_keys)})" if checkpoint.other_keys else ""
        notes.append(f"weights from the checkpoint's {checkpoint.key!r} entry{others}")
    if name is None:
        if not options.force:
            raise ConversionError(
                f"{input_path}: cannot tell which {source.NAME} model wrote this file, so not its padding, "
                f"batch-norm eps or preprocessing: pass --model NAME (e.g. {source.EXAMPLE}), or --force"
            )
        notes.append(f"unknown {source.NAME} model: conventions not checked (--force), not verified")
    else:
        conventions = source.conventions(name, checkpoint)
        differ, fields = differences(model, conventions)
        if differ and not options.force:
            raise ConversionError(
                f"{input_path}: {conventions.model} (from {how}) was trained with {', '.join(differ)}: set "
                f"{'; '.join(fields)} in the spec, or pass --force"
            )
        if differ:
            notes.append(f"--force: {conventions.model} differs from the spec in {', '.join(differ)}")
        notes.append(f"imported {conventions.model} (identified by {how}): {len(mapping.pairs)} layers mapped")
        notes.append(conventions.preprocessing())
    notes.extend(mapping.notes)
    # the canonical state: mapped tensors, the rest (a fresh classifier) from the generated model's init
    net = _torch_model(model)
    fresh = {key: value.detach().numpy().copy() for key, value in net.state_dict().items()}
    state = {entry.name: mapping.state.get(entry.name, fresh[entry.name]) for entry in manifest}
    converted = _torch_model(model, state)
    keras_net = None
    if target == "keras":
        keras_net = keras_model(model)
        set_keras_weights(manifest, keras_net, torch_to_keras(manifest, state))
    verify = options.verify
    differ_known = name is not None and bool(differences(model, source.conventions(name, checkpoint))[0])
    if verify is not False and name is not None:
        source_net = source.build(name, mapping.checkpoint_classes or 0, 3 if in_channels else model.input.channels)
        if source_net is None:
            if verify:
                raise UsageError(f"--verify: {source.NAME} does not import here")
            notes.append(f"{source.NAME} does not import here: not verified against the source model")
        else:
            rows = _verify(model, checkpoint, source_net, converted, keras_net, mapping, options)
            notes.extend(row.line() for row in rows)
            worst = max(rows, key=lambda row: row.rel)
            if worst.rel > VERIFY_TOLERANCE and not differ_known:
                for note in notes:
                    print(f"note: {note}")
                raise CheckFailed(
                    f"{label}: converted model differs from the source: {worst.what} at {worst.size}: rel error "
                    f"{worst.rel:.2e} > {VERIFY_TOLERANCE:g}; nothing written"
                )
            if worst.rel > VERIFY_TOLERANCE:
                notes.append("(the error above is the convention difference accepted with --force)")
    return state, tuple(notes), tuple(mapping.fresh), keras_net


def _verify(
    model: ir.Model, checkpoint, source_net, converted, keras_net, mapping, options: Options
) -> list[VerifyRow]:
    """Source and converted models on seeded inputs at an even and an odd size.

    Logits alone prove little on random weights (a random deep net contracts errors: a wrong stem
    can leave the logits 1e-4 apart), so every mapped conv and linear layer's *input* is compared too,
    through the mapping's pairs (conv inputs are unpadded in every implementation)."""
    import torch

    _load_source(source_net, checkpoint)
    channels = model.input.channels
    if options.verify_sizes:
        sizes = options.verify_sizes
    else:
        even = max(32, min(model.resolution, 128) // 2 * 2)
        sizes = (even, even + 1)
    compare_logits = not mapping.fresh and mapping.checkpoint_classes is not None
    kinds = {layer.name: layer.kind for layer in model.layers}
    pairs = [
        (ours, theirs)
        for ours, theirs in mapping.pairs
        if kinds[ours] != "batch_norm" and not (options.in_channels and theirs == mapping.stem_module)
    ]
    rows = []
    generator = np.random.default_rng(0)
    for size in sizes:
        if options.in_channels and channels != 1:
            break  # repeat-and-rescale is not exact: nothing to compare against
        images = generator.standard_normal((2, channels, size, size)).astype(np.float32)
        source_input = np.repeat(images, 3, axis=1) if options.in_channels == 1 else images
        source_logits, source_inputs = _run_hooked(source_net, torch.from_numpy(source_input), [t for _, t in pairs])
        ours_logits, ours_inputs = _run_hooked(converted, torch.from_numpy(images), [o for o, _ in pairs])
        layer_rows = [_row(ours, size, ours_inputs[ours], source_inputs[theirs]) for ours, theirs in pairs]
        worst = max(layer_rows, key=lambda row: row.rel)
        rows.append(
            VerifyRow(f"torch: inputs of {len(layer_rows)} layers, worst {worst.what}", size, worst.max_abs, worst.rel)
        )
        if compare_logits:
            rows.append(_row("torch logits", size, ours_logits, source_logits))
        if keras_net is not None:
            keras_logits = _keras_logits(keras_net, images)
            reference = source_logits if compare_logits else ours_logits
            what = "keras logits" if compare_logits else "keras logits vs converted torch"
            rows.append(_row(what, size, keras_logits, reference))
    return rows


def _load_source(source_net, checkpoint) -> None:
    import torch

    state = {key: torch.from_numpy(np.array(value)) for key, value in checkpoint.tensors.items()}
    expected = source_net.state_dict()
    for key, value in expected.items():  # counters some files drop
        if key not in state and key.endswith("num_batches_tracked"):
            state[key] = value
    try:
        source_net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        raise ConversionError(
            f"{checkpoint.path}: does not load into the source model it claims to be: "
            f"{' '.join(line.strip() for line in first[:2])[:300]}"
        ) from exc
    source_net.eval()


def _run_hooked(net, x, names: list[str]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Logits and the input of each named submodule."""
    import torch

    captured: dict[str, np.ndarray] = {}
    hooks = []
    for name in names:

        def record(_module, inputs, name: str = name) -> None:
            captured.setdefault(name, inputs[0].detach().numpy().copy())

        hooks.append(net.get_submodule(name).register_forward_pre_hook(record))
    try:
        with torch.no_grad():
            output = net(x)
    finally:
        for hook in hooks:
            hook.remove()
    return output.numpy(), captured


def _row(what: str, size: int, value: np.ndarray, reference: np.ndarray) -> VerifyRow:
    value, reference = np.asarray(value, dtype=np.float64), np.asarray(reference, dtype=np.float64)
    if value.shape != reference.shape:
        raise ConversionError(f"verify: {what} shape {value.shape} does not match the source's {reference.shape}")
    for side, array in (("the source model", reference), ("the converted model", value)):
        if not np.isfinite(array).all():  # NaN compares as no error at all: never a pass
            raise ConversionError(
                f"verify: {what} at {size}x{size}: {side} computes NaN or infinite values "
                "(non-finite weights in the checkpoint?); nothing written"
            )
    max_abs = float(np.max(np.abs(value - reference)))
    scale = float(np.max(np.abs(reference))) or 1.0
    return VerifyRow(what, size, max_abs, max_abs / scale)


def _keras_logits(net, images: np.ndarray) -> np.ndarray:
    import keras

    return keras.ops.convert_to_numpy(net(np.ascontiguousarray(images.transpose(0, 2, 3, 1)), training=False))
