"""The keras backend: generated Keras 3 models against the IR, docs/reference.md and keras.applications.

The models under test are the checked-in generated/keras/ (tests/test_golden.py proves them current,
lints them and checks determinism across processes). Models are built once per module; parameter counts use small symbolic inputs (counts do not depend
on resolution) and deferred variable initialization, so all 16 specs fit the time budget.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
from conftest import ROOT, SPECS, load_generated, stage_sizes
from effspec.backends.keras.context import ACTIVATIONS
from reference import REFERENCE

from effspec.core import ir
from effspec.emit.pipeline import build, compile_specs

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
keras = pytest.importorskip("keras")
np = pytest.importorskip("numpy")
tf = pytest.importorskip("tensorflow")  # GradientTape only; generated code never uses tf.*

SPEC_IDS = [spec.stem for spec in SPECS]
ATOL_PREPROCESSING = 1e-4  # (x - mean) / std folded into Normalization vs done by hand, float32


@pytest.fixture(scope="module")
def generated() -> Path:
    return ROOT / "generated" / "keras"


def ir_model(spec_name: str) -> ir.Model:
    return build(f"specs/{spec_name}.yaml").model


def expected_weight_shapes(layer: ir.Layer) -> list[tuple[int, ...]]:
    k = layer.kernel
    if layer.kind == "conv":
        kernel = (k, k, layer.in_channels // layer.groups, layer.out_channels)
        return [kernel] + ([(layer.out_channels,)] if layer.bias else [])
    if layer.kind == "depthwise_conv":
        return [(k, k, layer.in_channels, 1)]
    if layer.kind == "batch_norm":
        return [(layer.out_channels,)] * 2  # gamma, beta (trainable)
    return [(layer.in_channels, layer.out_channels), (layer.out_channels,)]  # linear


# ---------------------------------------------------------------- parameter counts and names


@pytest.mark.parametrize("spec_name", SPEC_IDS)
def test_trainable_params_and_layer_names_match_the_ir(generated: Path, spec_name: str) -> None:
    module = load_generated(generated, spec_name)
    model_ir = ir_model(spec_name)
    with keras.StatelessScope():  # defer random init: only shapes are needed here
        model = module.build_model(input_shape=(32, 32, 3))
    trainable = sum(math.prod(v.shape) for v in model.trainable_weights)
    assert trainable == model_ir.params == module.PARAMS
    if spec_name in REFERENCE:
        assert trainable == REFERENCE[spec_name][0]
    non_trainable = sum(math.prod(v.shape) for v in model.non_trainable_weights)
    assert non_trainable == sum(layer.buffers for layer in model_ir.layers)  # BN moving mean/variance

    # Every IR layer is a Keras layer named canonical.replace(".", "_"), with the IR's shapes, and
    # nothing else holds weights: this is the interface the weight converter relies on.
    weighted = {layer.name: layer for layer in model.layers if layer.weights}
    assert set(weighted) == {ir.flat_name(layer.name) for layer in model_ir.layers}
    kinds = {
        "conv": keras.layers.Conv2D,
        "depthwise_conv": keras.layers.DepthwiseConv2D,
        "batch_norm": module.BatchNorm,  # BatchNormalization, moving its variance as torch does
        "linear": keras.layers.Dense,
    }
    assert issubclass(module.BatchNorm, keras.layers.BatchNormalization)
    for layer_ir in model_ir.layers:
        layer = weighted[ir.flat_name(layer_ir.name)]
        assert type(layer) is kinds[layer_ir.kind], layer_ir.name
        shapes = [tuple(v.shape) for v in layer.trainable_weights]
        assert shapes == expected_weight_shapes(layer_ir), layer_ir.name
        if layer_ir.kind in ("conv", "depthwise_conv"):
            assert layer.strides == (layer_ir.stride, layer_ir.stride), layer_ir.name
            # Keras' "same" is TF SAME (and (k - 1) // 2 at stride 1); a fixed padding on a strided
            # conv is an explicit ZeroPadding2D before a "valid" conv.
            fixed_strided = not isinstance(layer_ir.padding, ir.SamePadding) and layer_ir.stride > 1
            if layer_ir.kernel > 1:  # a 1x1 conv pads nothing either way
                assert layer.padding == ("valid" if fixed_strided else "same"), layer_ir.name
            if fixed_strided and layer_ir.padding:
                pad = model.get_layer(ir.flat_name(layer_ir.name) + "_pad")
                assert pad.padding == ((layer_ir.padding,) * 2,) * 2, layer_ir.name
            if layer_ir.kind == "conv":
                assert layer.groups == layer_ir.groups, layer_ir.name
        if layer_ir.kind == "batch_norm":
            assert (layer.momentum, layer.epsilon) == (model_ir.batch_norm.momentum, model_ir.batch_norm.eps)
    for name in (*module.STAGE_OUTPUTS, module.FEATURES_OUTPUT):
        model.get_layer(name)  # raises if missing
    assert len(module.STAGE_OUTPUTS) == len(model_ir.stages) + 1
    keras.backend.clear_session()


def test_b0_equals_keras_applications_in_count_and_outputs(generated: Path) -> None:
    """Same trainable count; with the same weights, the same logits (TF SAME = its padding at 224).

    keras.applications' B0 with weights=None scales by 1/255 and then applies an identity (not
    adapted) Normalization, so it gets raw 0..255 pixels and ours gets them divided by 255.
    """
    module = load_generated(generated, "efficientnet-b0")
    ours = module.build_model(input_shape=(224, 224, 3))
    reference = keras.applications.EfficientNetB0(weights=None, classifier_activation=None)
    count = sum(math.prod(v.shape) for v in ours.trainable_weights)
    assert count == sum(math.prod(v.shape) for v in reference.trainable_weights) == 5_288_548

    # Both list their weighted layers in forward order: pair them, randomize BN, copy ours over.
    reference_layers = [layer for layer in reference.layers if layer.weights and layer.name != "normalization"]
    our_layers = [layer for layer in ours.layers if layer.weights]
    assert len(reference_layers) == len(our_layers)
    rng = np.random.default_rng(5)
    for theirs, mine in zip(reference_layers, our_layers, strict=True):
        weights = mine.get_weights()
        if isinstance(mine, keras.layers.BatchNormalization):
            gamma, beta, mean, variance = (w.shape for w in weights)
            weights = [rng.uniform(0.5, 1.5, gamma), rng.normal(0, 0.1, beta), rng.normal(0, 0.1, mean)]
            weights.append(rng.uniform(0.5, 1.5, variance))
            weights = [w.astype("float32") for w in weights]
            mine.set_weights(weights)
        assert [w.shape for w in theirs.get_weights()] == [w.shape for w in weights], (theirs.name, mine.name)
        theirs.set_weights(weights)
    pixels = rng.uniform(0, 255, size=(2, 224, 224, 3)).astype("float32")
    expected = np.asarray(reference(pixels, training=False))
    got = np.asarray(ours(pixels / 255.0, training=False))
    np.testing.assert_allclose(got, expected, atol=1e-5 * np.abs(expected).max(), rtol=0)  # seen: 1e-6


# ---------------------------------------------------------------- forward, features, gradients


@pytest.fixture(scope="module")
def b0(generated: Path) -> tuple[ModuleType, keras.Model]:
    """B0 as the spec says (drop rates included), any input size."""
    module = load_generated(generated, "efficientnet-b0")
    keras.utils.set_random_seed(0)
    return module, module.build_model()


_TEN_CLASS: dict[str, keras.Model] = {}


def ten_class_model(module: ModuleType) -> keras.Model:
    """A 10-class model without dropout (deterministic in training mode), shared by the tests below."""
    if module.SPEC_NAME not in _TEN_CLASS:
        keras.utils.set_random_seed(1)
        _TEN_CLASS[module.SPEC_NAME] = module.build_model(num_classes=10, dropout=0.0, drop_path_rate=0.0)
    return _TEN_CLASS[module.SPEC_NAME]


def test_forward_at_nominal_size_with_stage_features(b0: tuple[ModuleType, keras.Model]) -> None:
    module, model = b0
    model_ir = ir_model("efficientnet-b0")
    x = np.random.default_rng(0).normal(size=(2, module.RESOLUTION, module.RESOLUTION, 3)).astype("float32")
    logits = model(x, training=False)
    assert tuple(logits.shape) == (2, module.NUM_CLASSES)
    assert np.isfinite(logits).all() and float(np.std(logits)) > 0
    features = module.build_feature_extractor(model)(x, training=False)
    expected = [model_ir.stem.bn.output] + [stage.output for stage in model_ir.stages]
    assert len(features) == len(expected) + 1
    for got, shape in zip(features, expected, strict=False):
        assert tuple(got.shape) == (2, shape.height, shape.width, shape.channels)
    assert tuple(features[-1].shape) == (2, 7, 7, model_ir.num_features)


@pytest.mark.parametrize(
    ("spec_name", "sizes"),
    [("efficientnet-b0", (33, 64)), ("efficientnetv2-b0", (47, 70)), ("custom-phi2-relu", (41, 58))],
)
def test_forward_at_odd_and_even_sizes(generated: Path, spec_name: str, sizes: tuple[int, ...]) -> None:
    """input_shape=None takes any size; every stage has the TF-SAME (= ceil) size; logits finite."""
    module = load_generated(generated, spec_name)
    model_ir = ir_model(spec_name)
    model = ten_class_model(module)
    extractor = module.build_feature_extractor(model)
    assert model.input_shape == (None, None, None, 3)
    for size in sizes:
        x = np.random.default_rng(size).normal(size=(1, size, size, 3)).astype("float32")
        *features, logits = extractor(x, training=False) + [model(x, training=False)]
        assert tuple(logits.shape) == (1, 10) and np.isfinite(logits).all()
        expected = stage_sizes(model_ir, size)
        for got, expected_size in zip(features[:-1], expected, strict=True):
            assert tuple(got.shape[1:3]) == (expected_size, expected_size), (spec_name, size)
        assert tuple(features[-1].shape[1:3]) == (expected[-1], expected[-1])


@pytest.mark.parametrize("spec_name", ["efficientnet-b0", "efficientnetv2-b0", "custom-phi2-relu"])
def test_gradients_reach_every_trainable_weight(generated: Path, spec_name: str) -> None:
    module = load_generated(generated, spec_name)
    model = ten_class_model(module)
    x = np.random.default_rng(1).normal(size=(2, 64, 64, 3)).astype("float32")
    labels = np.array([3, 7])
    with tf.GradientTape() as tape:
        logits = model(x, training=True)
        loss = keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True)
        loss = keras.ops.mean(loss)
    grads = tape.gradient(loss, model.trainable_weights)
    assert len(grads) == len(model.trainable_weights) > 0
    for weight, grad in zip(model.trainable_weights, grads, strict=True):
        assert grad is not None, weight.path
        grad = np.asarray(grad)
        assert np.isfinite(grad).all(), weight.path
        assert np.abs(grad).max() > 0, weight.path  # connected to the loss


def test_stochastic_depth_and_dropout_only_in_training(b0: tuple[ModuleType, keras.Model]) -> None:
    module, spec_rates = b0
    model_ir = ir_model("efficientnet-b0")
    rescaled = module.build_model(drop_path_rate=0.5, dropout=0.3, input_shape=(32, 32, 3))
    total = len(model_ir.blocks)
    for block in model_ir.blocks:
        name = f"{ir.flat_name(block.name)}_drop_path"
        if not block.residual or block.drop_path_rate == 0:
            assert name not in {layer.name for layer in spec_rates.layers}
            continue
        layer = spec_rates.get_layer(name)
        assert layer.rate == pytest.approx(block.drop_path_rate)
        assert layer.noise_shape == (None, 1, 1, 1)  # one draw per sample
        assert rescaled.get_layer(name).rate == pytest.approx(0.5 * block.global_index / total)
    assert spec_rates.get_layer("head_dropout").rate == pytest.approx(model_ir.head.dropout)
    assert rescaled.get_layer("head_dropout").rate == pytest.approx(0.3)

    x = np.random.default_rng(2).normal(size=(4, 32, 32, 3)).astype("float32")
    eval_a, eval_b = rescaled(x, training=False), rescaled(x, training=False)
    np.testing.assert_array_equal(eval_a, eval_b)
    train_a, train_b = rescaled(x, training=True), rescaled(x, training=True)
    assert not np.array_equal(train_a, train_b)  # drop-path and dropout masks differ per call


def test_initialization_follows_the_tf_reference(b0: tuple[ModuleType, keras.Model]) -> None:
    _, model = b0
    head = np.asarray(model.get_layer("head_conv").kernel)  # 1x1, fan_out = 1280
    assert np.std(head) == pytest.approx(math.sqrt(2 / 1280), rel=0.05)
    depthwise = np.asarray(model.get_layer("blocks_5_0_depthwise_conv").kernel)  # 5x5, one group
    assert depthwise.shape == (5, 5, 672, 1)
    assert np.std(depthwise) == pytest.approx(math.sqrt(2 / 25), rel=0.05)
    dense = model.get_layer("classifier")
    bound = 1 / math.sqrt(1000)
    kernel = np.asarray(dense.kernel)
    assert np.abs(kernel).max() <= bound and np.abs(kernel).max() > 0.99 * bound
    assert not np.asarray(dense.bias).any()
    assert not np.array_equal(  # a fresh initializer per layer: no two kernels alike
        np.asarray(model.get_layer("blocks_1_1_expand_conv").kernel),
        np.asarray(model.get_layer("blocks_2_1_expand_conv").kernel)[:, :, :24, :144],
    )


def test_include_preprocessing_normalizes_raw_pixels(b0: tuple[ModuleType, keras.Model]) -> None:
    module, model = b0
    with_preprocessing = module.build_model(include_preprocessing=True)
    for layer in model.layers:
        if layer.weights:
            with_preprocessing.get_layer(layer.name).set_weights(layer.get_weights())
    raw = np.random.default_rng(3).uniform(size=(2, 48, 48, 3)).astype("float32")
    normalized = (raw - np.array(module.MEAN, "float32")) / np.array(module.STD, "float32")
    np.testing.assert_allclose(
        with_preprocessing(raw, training=False), model(normalized, training=False), atol=ATOL_PREPROCESSING, rtol=0
    )


# ---------------------------------------------------------------- serialization


def test_keras_file_and_weights_round_trip_exactly(b0: tuple[ModuleType, keras.Model], tmp_path: Path) -> None:
    module, model = b0
    x = np.random.default_rng(4).normal(size=(2, 40, 40, 3)).astype("float32")
    expected = np.asarray(model(x, training=False))

    model.save(tmp_path / "b0.keras")
    loaded = keras.models.load_model(tmp_path / "b0.keras")
    np.testing.assert_array_equal(np.asarray(loaded(x, training=False)), expected)
    assert [layer.name for layer in loaded.layers] == [layer.name for layer in model.layers]
    module.build_feature_extractor(loaded)  # names survive: the converter can still find stages

    model.save_weights(tmp_path / "b0.weights.h5")
    fresh = module.build_model()
    assert not np.array_equal(np.asarray(fresh(x, training=False)), expected)
    fresh.load_weights(tmp_path / "b0.weights.h5")
    np.testing.assert_array_equal(np.asarray(fresh(x, training=False)), expected)


# ---------------------------------------------------------------- generated source


def test_generated_module_imports_with_keras_alone(generated: Path) -> None:
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); import model\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'effspec', 'jinja2', 'pydantic'))\n"
        "assert not bad, bad\n"
        "assert model.DESCRIPTION.startswith('EfficientNet-B0'), model.DESCRIPTION\n"
        "print(model.SPEC_NAME, model.RESOLUTION, model.STAGE_OUTPUTS[-1])\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(generated / "efficientnet_b0")],
        capture_output=True,
        text=True,
        cwd="/",
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[-3:] == ["efficientnet-b0", "224", "blocks_6_0_project_bn"]


def test_a_long_free_text_description_stays_a_formatted_string(tmp_path: Path) -> None:
    text = (ROOT / "specs" / "efficientnet-b0.yaml").read_text()
    description = 'It\'s a "long" description; ' * 12 + "end."
    spec = tmp_path / "long.yaml"
    spec.write_text(
        text.replace("name: efficientnet-b0", "name: long-description").replace(
            "description: EfficientNet-B0, the baseline found by neural architecture search (paper Table 1).",
            "description: " + repr(description).replace("\\'", "''"),
        )
    )
    compile_specs([spec], ["keras"], tmp_path / "out")
    path = tmp_path / "out" / "keras" / "long_description" / "model.py"
    namespace: dict[str, object] = {}
    source = path.read_text()
    description_block = source[source.index("DESCRIPTION = ") : source.index("RESOLUTION = ")]
    exec(description_block, namespace)  # only the constant: no keras needed
    assert namespace["DESCRIPTION"] == description
    fmt = subprocess.run(
        [sys.executable, "-m", "ruff", "format", "--isolated", "--check", str(path)], capture_output=True, text=True
    )
    assert fmt.returncode == 0, fmt.stdout + fmt.stderr


def test_every_spec_activation_maps_to_the_same_function_as_torch() -> None:
    """The torch definitions (nn.SiLU, ReLU, ReLU6, exact GELU, Hardswish, Hardsigmoid, Mish,
    Sigmoid) in NumPy."""
    from math import erf

    x = np.linspace(-7, 7, 281).astype("float64")
    torch_definitions = {
        "swish": x / (1 + np.exp(-x)),
        "silu": x / (1 + np.exp(-x)),
        "relu": np.maximum(x, 0),
        "relu6": np.clip(x, 0, 6),
        "gelu": 0.5 * x * (1 + np.vectorize(erf)(x / math.sqrt(2))),
        "hard_swish": x * np.clip(x + 3, 0, 6) / 6,
        "hard_sigmoid": np.clip(x + 3, 0, 6) / 6,
        "mish": x * np.tanh(np.log1p(np.exp(x))),
        "sigmoid": 1 / (1 + np.exp(-x)),
    }
    assert set(torch_definitions) == set(ACTIVATIONS)
    for name, expected in torch_definitions.items():
        got = np.asarray(keras.activations.get(ACTIVATIONS[name])(x.astype("float32")))
        np.testing.assert_allclose(got, expected, atol=1e-5, rtol=1e-5, err_msg=name)
