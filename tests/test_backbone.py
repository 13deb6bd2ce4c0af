"""Backbone mode (docs/backbone.md): ``build_model(features_only=True, out_indices, output_stride)``.

timm is the oracle. For a spec with a timm counterpart, at output stride 32, 16 and 8, our
``feature_info`` (channels and reductions) equals timm's ``features_only=True, output_stride=N``
model's, and with the same weights (timm's random ones, with randomized batch-norm statistics, moved
by effspec's timm importer, ``effspec.weights.structural.map_checkpoint``, and loaded as a
classification checkpoint into our backbone) every map equals timm's within 1e-4 relative, at an odd
and an even input size. The default run checks one spec per rule set; ``EFFSPEC_ALL_BACKBONES=1``
checks all 39 shipped specs with a timm counterpart.

Maps are compared in float64 (both models cast): random weights with random batch-norm statistics
make the deep models' activations grow to 1e5 (B7, V2-S/M/L), where float32 rounding alone differs by
more than 1e-4 between two runs of the same function; in float64 every map agrees to 1e-8 or better.
The default set is well conditioned, and is held to 1e-4 in float32 too.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from reference import FAMILIES, REFERENCE
from torch_helpers import randomize_batch_norm

from effspec.emit.pipeline import build
from effspec.support.vision import import_timm

torch = pytest.importorskip("torch")
timm = import_timm()  # effspec.support.vision: as the product imports it (a failure fails, never skips)

from effspec.weights.files import Checkpoint  # noqa: E402
from effspec.weights.generated import load_model_module  # noqa: E402
from effspec.weights.structural import map_checkpoint  # noqa: E402


def _timm_name(spec: str) -> str:
    """EfficientNet B0..B7 and V2 are timm's TF ports (tf_efficientnet_b0, tf_efficientnetv2_s)."""
    return FAMILIES[spec][0] if spec in FAMILIES else "tf_" + spec.replace("-", "_")


#: Every shipped spec with a timm counterpart (39: 15 EfficientNet / V2 + 24 family members).
TIMM_SPECS = {spec: _timm_name(spec) for spec in sorted({*REFERENCE, *FAMILIES})}

#: One spec per rule set: V1 (SE, SAME), V2 (fused blocks), Lite (no SE, relu6, fixed stem and head),
#: EdgeTPU (fused expansion_in), MobileNetV3-Small (stem level, head conv as the last level, hard
#: swish), MixNet (mixed kernels, each dilated), MobileNetV2 (symmetric padding), FBNet.
DEFAULT = (
    "efficientnet-b0",
    "efficientnetv2-b0",
    "efficientnet-lite0",
    "efficientnet-edgetpu-s",
    "mobilenetv3-small-100",
    "mixnet-s",
    "mobilenetv2-100",
    "fbnet-c",
)
CHECKED = sorted(TIMM_SPECS) if os.environ.get("EFFSPEC_ALL_BACKBONES") == "1" else DEFAULT
OUTPUT_STRIDES = (32, 16, 8)
SIZES = (97, 64)  # one odd, one even: TF SAME pads differently at each
RTOL = 1e-4  # max |ours - timm| / max |timm| per map, float32, eval mode


def imported_state(model, theirs: torch.nn.Module) -> dict[str, torch.Tensor]:
    """timm's state dict mapped onto the spec's canonical names by effspec's structural importer."""
    tensors = {key: value.detach().numpy().copy() for key, value in theirs.state_dict().items()}
    checkpoint = Checkpoint(path=Path("timm-state-dict"), tensors=tensors, module_order=True)
    mapping = map_checkpoint(model, checkpoint, "timm")
    return {name: torch.from_numpy(np.ascontiguousarray(array)) for name, array in mapping.state.items()}


def _worst(ours: torch.nn.Module, theirs: torch.nn.Module, images: list, dtype: torch.dtype) -> float:
    """Max relative error (max |ours - timm| / max |timm|) of any map at any of the sizes."""
    worst = 0.0
    for x in images:
        with torch.no_grad():
            expected, got = theirs.to(dtype)(x.to(dtype)), ours.to(dtype)(x.to(dtype))
        assert len(got) == len(expected)
        for a, b in zip(got, expected, strict=True):
            assert a.shape == b.shape, (tuple(a.shape), tuple(b.shape))
            worst = max(worst, ((a - b).abs().max() / b.abs().max()).item())
    return worst


def agreement(spec: str) -> list[tuple[int, bool, float, float]]:
    """Per output stride: feature_info equal to timm's, and the max relative error of any map at
    either size in float32 and in float64."""
    model = build(f"specs/{spec}.yaml").model
    module = load_model_module(model, "torch")
    torch.manual_seed(0)
    theirs = timm.create_model(TIMM_SPECS[spec], pretrained=False).eval()
    randomize_batch_norm(theirs, seed=1)
    state = imported_state(model, theirs)
    timm_state = theirs.state_dict()
    generator = torch.Generator().manual_seed(2)
    images = [torch.randn(2, 3, size, size, generator=generator) for size in SIZES]
    results = []
    for output_stride in OUTPUT_STRIDES:
        features = timm.create_model(
            TIMM_SPECS[spec], pretrained=False, features_only=True, output_stride=output_stride
        ).eval()
        features.load_state_dict({key: timm_state[key] for key in features.state_dict()})
        ours = module.build_model(features_only=True, output_stride=output_stride).eval()
        ours.load_state_dict(state)  # the classification checkpoint: later layers unused
        info = [(level.channels, level.reduction) for level in ours.feature_info]
        same = info == list(zip(features.feature_info.channels(), features.feature_info.reduction(), strict=True))
        worst32 = _worst(ours, features, images, torch.float32)
        results.append((output_stride, same, worst32, _worst(ours, features, images, torch.float64)))
    return results


@pytest.mark.parametrize("spec", CHECKED)
def test_feature_maps_equal_timm_at_every_output_stride(spec: str) -> None:
    for output_stride, same, worst32, worst64 in agreement(spec):
        where = f"{spec} vs {TIMM_SPECS[spec]} at output stride {output_stride}"
        assert same, f"{where}: feature_info differs from timm's"
        assert worst64 <= RTOL, f"{where}: {worst64:.2e} in float64"
        assert spec not in DEFAULT or worst32 <= RTOL, f"{where}: {worst32:.2e} in float32"


def test_every_spec_with_a_timm_counterpart_is_listed() -> None:
    assert len(TIMM_SPECS) == 39
    assert set(DEFAULT) <= set(TIMM_SPECS)


def test_levels_and_defaults_as_timm_documents_them() -> None:
    b0 = load_model_module(build("specs/efficientnet-b0.yaml").model, "torch")
    assert [level.channels for level in b0.feature_info()] == [16, 24, 40, 112, 320]
    assert [level.reduction for level in b0.feature_info(output_stride=16)] == [2, 4, 8, 16, 16]
    assert [level.name for level in b0.FEATURE_LEVELS] == ["P1", "P2", "P3", "P4", "P5"]
    large = load_model_module(build("specs/mobilenetv3-large-100.yaml").model, "torch")
    assert (large.FEATURE_LEVELS[-1].module, large.FEATURE_LEVELS[-1].channels) == ("head", 960)


def test_backbone_keeps_only_what_its_levels_need_and_loads_a_classifier_checkpoint() -> None:
    module = load_model_module(build("specs/efficientnet-b0.yaml").model, "torch")
    classifier = module.build_model().eval()
    backbone = module.build_model(features_only=True, out_indices=(1, 2)).eval()
    assert [level.name for level in backbone.feature_info] == ["P2", "P3"]
    assert len(backbone.blocks) == 3 and not hasattr(backbone, "classifier")
    backbone.load_state_dict(classifier.state_dict())  # strict: every backbone tensor filled
    assert torch.equal(backbone.blocks[2][1].depthwise.conv.weight, classifier.blocks[2][1].depthwise.conv.weight)
    with pytest.raises(RuntimeError, match="Unexpected"):
        backbone.load_state_dict({**classifier.state_dict(), "stray.weight": torch.zeros(1)})
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        stages = classifier.forward_stages(x)
        maps = backbone(x)
    assert torch.equal(maps[0], stages[2]) and torch.equal(maps[1], stages[3])
    scripted = torch.jit.script(backbone)
    assert all(torch.allclose(a, b) for a, b in zip(scripted(x), maps, strict=True))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"output_stride": 4}, "expected an output_stride of 32, 16, 8, found 4"),
        ({"out_indices": (2, 1)}, r"expected out_indices increasing in 0..4, found \(2, 1\)"),
        ({"out_indices": (5,)}, "expected out_indices increasing"),
        ({"out_indices": ()}, "expected out_indices increasing"),
    ],
)
def test_bad_backbone_arguments_are_clear_errors(kwargs: dict, message: str) -> None:
    module = load_model_module(build("specs/efficientnet-b0.yaml").model, "torch")
    with pytest.raises(ValueError, match=message):
        module.build_model(features_only=True, **kwargs)


#: Keras equals torch level by level (``effspec check --features``): B0 and V2-B0 by default, every
#: EfficientNet and V2 spec at output stride 16 and 8 with EFFSPEC_ALL_BACKBONES=1.
KERAS_CHECKED = (
    [(spec, stride) for spec in sorted(REFERENCE) for stride in (16, 8)]
    if os.environ.get("EFFSPEC_ALL_BACKBONES") == "1"
    else [("efficientnet-b0", 8), ("efficientnetv2-b0", 16)]
)


@pytest.mark.parametrize(("spec", "output_stride"), KERAS_CHECKED)
def test_keras_backbone_equals_torch_through_effspec_check(spec: str, output_stride: int) -> None:
    from effspec.equivalence.check import Settings, run_check

    settings = Settings(resolution=64, batch=1, seed=0, features=True, output_stride=output_stride)
    result = run_check(f"specs/{spec}.yaml", settings)
    assert [row.name.split()[0] for row in result.rows] == ["P1", "P2", "P3", "P4", "P5"]
    assert result.ok, [(row.name, row.keras_error, row.budget) for row in result.failures]


def test_keras_backbone_loads_the_classification_weights_file(tmp_path: Path) -> None:
    keras = pytest.importorskip("keras")
    module = load_model_module(build("specs/mobilenetv3-small-100.yaml").model, "keras")
    classifier = module.build_model()
    classifier.save_weights(tmp_path / "classifier.weights.h5")
    backbone = module.build_model(features_only=True, out_indices=(0, 2, 4), output_stride=16)
    assert backbone.output_names == ["P1", "P3", "P5"]
    assert [(level.module, level.channels, level.reduction) for level in backbone.feature_info] == [
        ("stem", 16, 2),
        ("blocks.1", 24, 8),
        ("head", 576, 16),
    ]
    backbone.load_weights(tmp_path / "classifier.weights.h5")
    for layer in (layer for layer in backbone.layers if layer.weights):
        for ours, theirs in zip(layer.weights, classifier.get_layer(layer.name).weights, strict=True):
            assert np.array_equal(keras.ops.convert_to_numpy(ours), keras.ops.convert_to_numpy(theirs))
    maps = backbone(np.zeros((1, 64, 64, 3), np.float32))
    assert [tuple(m.shape) for m in maps] == [(1, 32, 32, 16), (1, 8, 8, 24), (1, 4, 4, 576)]


def test_info_prints_the_level_table(capsys: pytest.CaptureFixture[str]) -> None:
    from effspec.cli import main

    assert main(["info", "specs/mobilenetv3-large-100.yaml", "--features", "--output-stride", "16"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "backbone at output stride 16" in lines[0] and "3 convs dilated" in lines[0]
    assert lines[-1].split() == ["4", "P5", "head", "960", "16", "14x14"]
    assert main(["info", "specs/efficientnet-b0.yaml", "--features", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [(row["channels"], row["reduction"]) for row in data["features"]] == [
        (16, 2),
        (24, 4),
        (40, 8),
        (112, 16),
        (320, 32),
    ]
    assert main(["info", "specs/efficientnet-b0.yaml", "--output-stride", "8"]) == 2
    assert "add --features" in capsys.readouterr().err


def test_export_features_writes_a_self_checked_onnx_with_level_names(tmp_path: Path) -> None:
    onnxruntime = pytest.importorskip("onnxruntime")
    from effspec.cli import main

    out = tmp_path / "backbone.onnx"
    args = ["export", "specs/mobilenetv3-small-100.yaml", "--features", "--output-stride", "8"]
    assert main([*args, "--format", "onnx", "--resolution", "64", "--batch", "dynamic", "-o", str(out)]) == 0
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [output.name for output in session.get_outputs()] == ["P1", "P2", "P3", "P4", "P5"]
    maps = session.run(None, {"images": np.zeros((3, 3, 64, 64), np.float32)})
    assert [m.shape for m in maps] == [(3, 16, 32, 32), (3, 16, 16, 16), (3, 24, 8, 8), (3, 48, 8, 8), (3, 576, 8, 8)]
    assert main([*args, "--format", "tflite", "-o", str(tmp_path / "b.tflite")]) == 2
