"""`effspec check`: do the generated torch and Keras models compute the same function?

Both models are generated from the spec in memory, torch is initialized from the seed (with random
batch-norm statistics), its weights are converted to Keras through the manifest, and the same
seeded input runs through both. Every output is held to a budget derived from a float64 torch run
(see ``budget``). With ``train_step``, one SGD step runs in each backend from the same weights and
batch and the updates of every weight and batch-norm statistic are compared instead.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from effspec.core import ir
from effspec.emit.pipeline import build
from effspec.equivalence import keras_side, torch_side
from effspec.equivalence.budget import Row, compare
from effspec.equivalence.report import CheckResult
from effspec.support.errors import UsageError
from effspec.weights.convert import keras_layer_weights, keras_to_torch, set_keras_weights, torch_to_keras
from effspec.weights.files import KERAS_SUFFIX, load_keras_file, load_torch_file
from effspec.weights.generated import keras_backbone as build_keras_backbone
from effspec.weights.generated import load_model_module
from effspec.weights.manifest import Manifest, build_manifest, sections

LEARNING_RATE = 0.1  # large enough that an update is well above float32 rounding of the weights
STATISTIC_KINDS = ("bn_mean", "bn_variance")
CALIBRATION_BATCH = 4  # images the batch-norm running statistics are drawn around


@dataclass(frozen=True)
class Settings:
    resolution: int | None = None  # None: the spec's resolution
    batch: int = 2
    seed: int = 0
    train_step: bool = False
    weights: Path | None = None  # the user's weights (torch state_dict or Keras .weights.h5); None: seeded
    features: bool = False  # compare the backbones' feature levels (build_model(features_only=True))
    output_stride: int = 32  # the backbones' output stride (with ``features``)


def seeded_batch(seed: int, batch: int, resolution: int, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Standard-normal NCHW images (what normalized pixels look like) and uniform labels."""
    rng = np.random.default_rng(seed)
    images = rng.standard_normal((batch, 3, resolution, resolution)).astype(np.float32)
    return images, rng.integers(0, num_classes, size=batch).astype(np.int64)


def output_names(model: ir.Model) -> list[str]:
    return ["stem", *(f"blocks.{stage.index}" for stage in model.stages), "features", "logits"]


def _shape(array: np.ndarray) -> str:
    return "x".join(str(size) for size in array.shape)


def eval_rows(model: ir.Model, reference: list, torch32: list, keras32: list) -> list[Row]:
    names = output_names(model)
    for backend, outputs in (("torch", torch32), ("keras", keras32)):
        if len(outputs) != len(names):
            raise UsageError(f"the {backend} model returned {len(outputs)} outputs, expected {len(names)}: {names}")
    return [
        compare(name, _shape(ref), ref, t, k)
        for name, ref, t, k in zip(names, reference, torch32, keras32, strict=True)
    ]


def feature_rows(
    torch_module, keras_module, net, keras_model, images: np.ndarray, output_stride: int
) -> tuple[list[Row], str]:
    """Each feature level of both backbones, loaded with the classification models' weights."""
    backbone = torch_side.build_backbone(torch_module, torch_side.state_arrays(net), output_stride)
    keras_backbone = build_keras_backbone(keras_module, keras_model, output_stride)
    levels = backbone.feature_info
    reference = torch_side.feature_maps(torch_side.float64_twin(backbone), images)
    torch32 = torch_side.feature_maps(backbone, images)
    keras32 = keras_side.feature_maps(keras_backbone, images)
    rows = [
        compare(f"{level.name} {level.module}", _shape(ref), ref, t, k)
        for level, ref, t, k in zip(levels, reference, torch32, keras32, strict=True)
    ]
    reductions = ", ".join(str(level.reduction) for level in levels)
    return rows, f"backbone at output stride {output_stride}: levels at reductions {reductions}"


def train_rows(
    model: ir.Model,
    manifest: Manifest,
    before: Mapping[str, np.ndarray],
    reference: Mapping[str, np.ndarray],
    torch32: Mapping[str, np.ndarray],
    keras32: Mapping[str, np.ndarray],
) -> list[Row]:
    """Per section, the change of every weight, then of every running statistic."""
    rows = []
    for section, _layers in sections(model):
        entries = [entry for entry in manifest if entry.section == section]
        for label, group in (
            ("weights", [entry for entry in entries if entry.trainable]),
            ("bn stats", [entry for entry in entries if entry.kind in STATISTIC_KINDS]),
        ):
            if not group:
                continue

            def delta(after: Mapping[str, np.ndarray], group: list = group) -> np.ndarray:
                parts = [after[e.name].astype(np.float64) - before[e.name].astype(np.float64) for e in group]
                return np.concatenate([part.ravel() for part in parts])

            ref = delta(reference)
            rows.append(compare(f"{section} {label}", f"{ref.size} values", ref, delta(torch32), delta(keras32)))
    return rows


def _user_state(manifest: Manifest, keras_module, path: Path) -> dict[str, np.ndarray]:
    """A torch state dict from the user's file: a torch file as it is, a Keras file converted."""
    if path.name.endswith(KERAS_SUFFIX):
        return keras_to_torch(manifest, load_keras_file(keras_side.build(keras_module), path))
    state = load_torch_file(path)
    torch_to_keras(manifest, state)  # names and shapes checked against the spec, each misfit named
    return state


def run_check(spec: str | Path, settings: Settings) -> CheckResult:
    model = build(spec).model
    resolution = settings.resolution or model.resolution
    if resolution < 8 or settings.batch < 1:
        raise UsageError(
            f"need a resolution of at least 8 and a batch of at least 1, got {resolution} and {settings.batch}"
        )
    if settings.features and settings.train_step:
        raise UsageError("--features compares eval outputs: drop --train-step")
    if settings.output_stride != 32 and not settings.features:
        raise UsageError(f"--output-stride {settings.output_stride} applies to the backbone: add --features")
    model.at_output_stride(settings.output_stride)  # a known output stride, else a ValueError
    manifest = build_manifest(model)
    torch_module = load_model_module(model, "torch")
    keras_module = load_model_module(model, "keras")

    images, labels = seeded_batch(settings.seed, settings.batch, resolution, model.head.num_classes)
    if settings.weights is not None:
        net = torch_side.build_loaded(torch_module, _user_state(manifest, keras_module, settings.weights))
    else:
        calibration, _ = seeded_batch(settings.seed + 1, CALIBRATION_BATCH, resolution, 1)
        # The checked images are part of the calibration: each batch norm's statistics then sit near
        # what it sees on them, which keeps deep stacks (B7 at 64x64) well-conditioned instead of
        # amplifying float32 rounding by orders of magnitude.
        net = torch_side.build_seeded(torch_module, settings.seed, np.concatenate([calibration, images]))
    reference_net = torch_side.float64_twin(net)
    before = torch_side.state_arrays(net)
    keras_model = keras_side.build(keras_module)
    set_keras_weights(manifest, keras_model, torch_to_keras(manifest, before))

    notes: tuple[str, ...] = ()
    if settings.features:
        rows, note = feature_rows(torch_module, keras_module, net, keras_model, images, settings.output_stride)
        notes = (note,)
    elif not settings.train_step:
        rows = eval_rows(
            model,
            torch_side.eval_outputs(reference_net, images),
            torch_side.eval_outputs(net, images),
            keras_side.eval_outputs(keras_module, keras_model, images),
        )
    else:
        counts = torch_side.train_step(net, images, labels, LEARNING_RATE)
        torch_side.train_step(reference_net, images, labels, LEARNING_RATE)
        keras_side.train_step(keras_model, images, labels, LEARNING_RATE)
        keras_after = keras_to_torch(manifest, keras_layer_weights(keras_model))
        rows = train_rows(
            model,
            manifest,
            before,
            torch_side.state_arrays(reference_net),
            torch_side.state_arrays(net),
            keras_after,
        )
        notes = (
            f"one SGD step, lr {LEARNING_RATE}, no momentum or weight decay, dropout and drop-path off; "
            "rows compare the change of each tensor",
            f"running variances moved with the unbiased batch variance in both (n = batch x H x W per batch "
            f"norm, {min(counts.values())}..{max(counts.values())}); BN decay {model.batch_norm.momentum}",
        )
    if settings.weights is not None:
        notes = (f"weights from {settings.weights} (not seeded)", *notes)
    return CheckResult(
        spec=str(spec),
        spec_name=model.name,
        mode="train-step" if settings.train_step else "features" if settings.features else "eval",
        resolution=resolution,
        batch=settings.batch,
        seed=settings.seed,
        rows=tuple(rows),
        notes=notes,
    )
