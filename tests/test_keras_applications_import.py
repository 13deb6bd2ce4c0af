"""`effspec convert-weights --from keras-applications`: keras.applications EfficientNet weights in the
generated models.

No ImageNet checkpoint can be downloaded here, so each test builds the keras.applications model with
weights=None, gives every batch norm non-trivial statistics, writes the weights file the way Keras 2
wrote the published checkpoints (legacy HDF5) or the Keras 3 way, converts it, and runs the same
pixels through keras.applications and through the generated torch or Keras model.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
keras = pytest.importorskip("keras")
h5py = pytest.importorskip("h5py")

from effspec.cli import main  # noqa: E402
from effspec.emit.pipeline import build  # noqa: E402
from effspec.weights.generated import load_model_module  # noqa: E402

RESOLUTION = 96


def _application(name: str, include_top: bool = True):
    keras.utils.set_random_seed(3)
    application = getattr(keras.applications, name)(
        weights=None, include_top=include_top, classifier_activation=None, input_shape=(RESOLUTION, RESOLUTION, 3)
    )
    rng = np.random.default_rng(4)
    for layer in application.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            gamma, beta, mean, variance = (w.shape for w in layer.get_weights())
            arrays = [rng.uniform(0.5, 1.5, gamma), rng.normal(0, 0.1, beta), rng.normal(0, 0.1, mean)]
            layer.set_weights([a.astype("float32") for a in (*arrays, rng.uniform(0.5, 1.5, variance))])
    return application


def _save_legacy_h5(application, path: Path) -> None:
    """The layout of the published keras.applications checkpoints (Keras 2 HDF5, layers in order)."""
    from keras.src.legacy.saving import legacy_h5_format

    with h5py.File(path, "w") as handle:
        legacy_h5_format.save_weights_to_hdf5_group(handle, application)


def _torch_model(spec: str, weights: Path, include_preprocessing: bool):
    module = load_model_module(build(spec).model, "torch")
    net = module.build_model(include_preprocessing=include_preprocessing).eval()
    net.load_state_dict(torch.load(weights, weights_only=True))
    return net


def _pixels() -> np.ndarray:
    return np.random.default_rng(5).uniform(0, 255, (2, RESOLUTION, RESOLUTION, 3)).astype("float32")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("spec", "application", "same_normalization"),
    [
        ("efficientnet-b0", "EfficientNetB0", False),  # weights=None: x / 255 and an unadapted Normalization
        ("efficientnetv2-b0", "EfficientNetV2B0", True),  # its preprocessing is ImageNet MEAN/STD, as the spec's
    ],
)
def test_published_layout_imports_into_torch_with_equal_logits(
    spec: str, application: str, same_normalization: bool, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = _application(application)
    _save_legacy_h5(source, tmp_path / "published.h5")
    out = tmp_path / "imported.pt"
    command = ["convert-weights", f"specs/{spec}.yaml", "--from", "keras-applications", "--to", "torch"]
    assert main([*command, str(tmp_path / "published.h5"), str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"imported keras.applications {application}: the 1000-class classifier too" in printed
    if same_normalization:
        assert "normalizes its input with this spec's MEAN/STD" in printed
    else:
        assert "p * (1, 1, 1) + (0, 0, 0)" in printed
    pixels = _pixels()
    expected = np.asarray(source(pixels, training=False))
    net = _torch_model(f"specs/{spec}.yaml", out, include_preprocessing=same_normalization)
    with torch.no_grad():
        got = net(torch.from_numpy(pixels / 255.0).permute(0, 3, 1, 2).float())
    assert np.abs(got.numpy() - expected).max() <= 1e-5 * np.abs(expected).max()  # seen: ~1e-6


@pytest.mark.slow
def test_keras3_file_without_top_imports_into_keras_for_fine_tuning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A 10-class B0 variant (no application is named like it) takes a notop file via --application."""
    spec = tmp_path / "b0-ten-classes.yaml"
    base = os.path.relpath(Path.cwd() / "specs" / "efficientnet-b0.yaml", tmp_path)
    spec.write_text(f"extends: {base}\nname: b0-ten-classes\nhead: {{num_classes: 10}}\n")
    source = _application("EfficientNetB0", include_top=False)
    source.save_weights(tmp_path / "notop.weights.h5")
    out = tmp_path / "imported.weights.h5"
    command = [
        "convert-weights",
        str(spec),
        "--from",
        "keras-applications",
        "--to",
        "keras",
        str(tmp_path / "notop.weights.h5"),
        str(out),
    ]
    assert main(command) == 2  # no application is named b0-ten-classes
    assert "pass --application NAME" in capsys.readouterr().err
    assert main([*command, "--application", "EfficientNetB0"]) == 0
    assert "all but the classifier, which keeps its fresh initialization (10 classes)" in capsys.readouterr().out
    module = load_model_module(build(spec).model, "keras")
    ours = module.build_model(input_shape=(RESOLUTION, RESOLUTION, 3))
    ours.load_weights(out)
    pixels = _pixels()
    expected = np.asarray(source(pixels, training=False))  # the head's feature maps
    features = np.asarray(keras.Model(ours.input, ours.get_layer("head_act").output)(pixels / 255.0, training=False))
    assert features.shape == expected.shape == (2, 3, 3, 1280)
    assert np.abs(features - expected).max() <= 1e-5 * np.abs(expected).max()


@pytest.mark.slow
def test_a_spec_that_differs_names_the_first_layer_that_does_not_fit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = _application("EfficientNetB0")
    source.save_weights(tmp_path / "b0.weights.h5")
    command = ["convert-weights", "specs/efficientnet-b1.yaml", "--from", "keras-applications", "--to", "torch"]
    assert (
        main([*command, "--application", "EfficientNetB0", str(tmp_path / "b0.weights.h5"), str(tmp_path / "x.pt")])
        == 2
    )
    assert "does not match keras.applications EfficientNetB0" in capsys.readouterr().err
    assert main([*command, str(tmp_path / "b0.weights.h5"), str(tmp_path / "x.pt")]) == 2  # B1 file expected
    assert "not a keras.applications EfficientNetB1 weights file" in capsys.readouterr().err
    assert not (tmp_path / "x.pt").exists()
    assert main([*command, "--application", "ResNet50", str(tmp_path / "b0.weights.h5"), str(tmp_path / "x.pt")]) == 2
    assert "Known applications are: EfficientNetB0" in capsys.readouterr().err


@pytest.mark.slow
def test_the_imagenet_checkpoints_std_as_variance_quirk_is_reported_as_the_spec_normalization(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The published V1 checkpoints store std (not std^2) as the Normalization variance; keras.applications
    compensates only for weights="imagenet". Such a file still means this spec's (p - mean) / std."""
    source = _application("EfficientNetB0")
    normalization = next(layer for layer in source.layers if isinstance(layer, keras.layers.Normalization))
    mean, variance, count = normalization.get_weights()
    normalization.set_weights(
        [
            np.array([0.485, 0.456, 0.406], "float32").reshape(mean.shape),
            np.array([0.229, 0.224, 0.225], "float32").reshape(variance.shape),
            count,
        ]
    )
    _save_legacy_h5(source, tmp_path / "imagenet-like.h5")
    assert (
        main(
            [
                "convert-weights",
                "specs/efficientnet-b0.yaml",
                "--from",
                "keras-applications",
                "--to",
                "torch",
                str(tmp_path / "imagenet-like.h5"),
                str(tmp_path / "b0.pt"),
            ]
        )
        == 0
    )
    assert "normalizes its input with this spec's MEAN/STD" in capsys.readouterr().out
