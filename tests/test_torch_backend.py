"""The torch backend: generated PyTorch models against the IR, docs/reference.md and TensorFlow's SAME.

The models under test are the checked-in generated/torch/ (tests/test_golden.py proves them current;
it also lints them and checks determinism for both backends). Parameter counts, state_dict names
and MACs use models built on the meta device (shapes only), so all specs fit the budget; numerics
run on real models at small resolutions and on a tiny spec written here.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
from conftest import ROOT, SPECS, load_generated, stage_sizes
from effspec.backends.torch.context import ACTIVATIONS
from reference import REFERENCE
from torch_helpers import count_macs, randomize_batch_norm

from effspec import __version__
from effspec.core import ir
from effspec.emit.modules import import_file
from effspec.emit.pipeline import build, compile_specs

torch = pytest.importorskip("torch")
nn = torch.nn

SPEC_IDS = [spec.stem for spec in SPECS]
RUFF = str(Path(sys.executable).with_name("ruff"))
FOLD_ATOL = 1e-5  # the bound for BN folding (float32 logits of order 1)
TF_ATOL = 1e-5  # one float32 conv, torch vs TensorFlow, inputs and weights of order 1

# A tiny network that uses every code path: Fused-MBConv with expansion 1 (+ SE) and 4, MBConv
# with expansion 1 and 4, k=3 and k=5 strided convs, three activations, non-ImageNet mean/std.
TINY_SPEC = """\
name: torch-backend-tiny
description: Tiny mixed network for the torch backend tests.
input: {resolution: 40, channels: 3, mean: [0.5, 0.4, 0.3], std: [0.2, 0.25, 0.3]}
defaults:
  activation: swish
  batch_norm: {eps: 0.001, momentum: 0.99}
  padding: same
  se_ratio: 0.25
  drop_path_rate: 0.2
  channel_divisor: 8
  round_limit: 0.0
stem: {channels: 16, kernel: 3, stride: 2}
stages:
  - {block: fused_mbconv, repeats: 2, kernel: 3, stride: 1, expansion: 1, channels: 16, se_ratio: 0.25}
  - {block: fused_mbconv, repeats: 1, kernel: 3, stride: 2, expansion: 4, channels: 24}
  - {block: mbconv, repeats: 1, kernel: 5, stride: 2, expansion: 1, channels: 24, activation: hard_swish}
  - {block: mbconv, repeats: 2, kernel: 3, stride: 2, expansion: 4, channels: 32, activation: gelu}
head: {channels: 64, dropout: 0.2, num_classes: 10}
"""

# A description that would break naive templating: quotes, a docstring terminator, code, newlines.
HOSTILE_DESCRIPTION = (
    "\"\"\" + __import__('os').system('echo pwned') + '''\n"
    "# fmt: on\n\\x00 {{ jinja }} {% raw %} " + "very long words " * 12 + "x" * 120
)


@pytest.fixture(scope="module")
def generated() -> Path:
    return ROOT / "generated" / "torch"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[ModuleType, ir.Model]:
    root = tmp_path_factory.mktemp("torch_tiny")
    spec = root / "tiny.yaml"
    spec.write_text(TINY_SPEC, encoding="utf-8")
    compile_specs([spec], ["torch"], root / "out")
    module = import_file(root / "out" / "torch" / "torch_backend_tiny" / "model.py", "torch_generated_tiny")
    return module, build(spec).model


def ir_model(spec_name: str) -> ir.Model:
    return build(f"specs/{spec_name}.yaml").model


def meta_model(module: ModuleType) -> nn.Module:
    with torch.device("meta"):
        return module.build_model().eval()


def expected_state_dict(model: ir.Model) -> dict[str, tuple[int, ...]]:
    """The torch state_dict keys and shapes the IR's canonical layer names promise."""
    expected: dict[str, tuple[int, ...]] = {}
    for layer in model.layers:
        k, c_in, c_out = layer.kernel, layer.in_channels, layer.out_channels
        if layer.kind == "batch_norm":
            for key in ("weight", "bias", "running_mean", "running_var"):
                expected[f"{layer.name}.{key}"] = (c_out,)
            expected[f"{layer.name}.num_batches_tracked"] = ()
            continue
        if layer.kind == "linear":
            expected[f"{layer.name}.weight"] = (c_out, c_in)
        else:
            expected[f"{layer.name}.weight"] = (c_out, c_in // layer.groups, k, k)
        if layer.bias:
            expected[f"{layer.name}.bias"] = (c_out,)
    return expected


# --- counts and names, every spec ---------------------------------------------------------------


@pytest.mark.parametrize("spec_name", SPEC_IDS)
def test_params_state_dict_and_macs_match_ir(generated: Path, spec_name: str) -> None:
    module = load_generated(generated, spec_name)
    model_ir = ir_model(spec_name)
    model = meta_model(module)
    params = sum(p.numel() for p in model.parameters())
    assert params == model_ir.params == module.PARAMS
    shapes = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    assert shapes == expected_state_dict(model_ir)
    x = torch.empty(1, 3, module.RESOLUTION, module.RESOLUTION, device="meta")
    assert count_macs(model, x) == build(f"specs/{spec_name}.yaml").report.total.macs == module.MACS
    if spec_name in REFERENCE:
        assert (params, module.MACS) == REFERENCE[spec_name]


@pytest.mark.parametrize("spec_name", ["efficientnet-b0", "efficientnetv2-s", "custom-phi2-relu"])
def test_batch_norm_settings_and_activations_follow_the_spec(generated: Path, spec_name: str) -> None:
    module = load_generated(generated, spec_name)
    model_ir = ir_model(spec_name)
    model = meta_model(module)
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(norms) == sum(layer.kind == "batch_norm" for layer in model_ir.layers)
    for norm in norms:
        assert norm.eps == model_ir.batch_norm.eps
        assert norm.momentum == pytest.approx(1 - model_ir.batch_norm.momentum)
    activation_types = {type(m) for m in model.modules() if isinstance(m, nn.SiLU | nn.ReLU6 | nn.ReLU)}
    assert activation_types == ({nn.ReLU6} if spec_name == "custom-phi2-relu" else {nn.SiLU})
    # Every conv is built exactly as the IR resolved it: kernel, stride, groups, padding.
    for layer in model_ir.layers:
        if layer.kind not in ("conv", "depthwise_conv"):
            continue
        conv = model.get_submodule(layer.name)
        assert (conv.kernel_size, conv.stride, conv.groups) == ((layer.kernel,) * 2, (layer.stride,) * 2, layer.groups)
        if isinstance(layer.padding, ir.SamePadding):
            assert isinstance(conv, module.Conv2dSame), layer.name
            assert conv.size == layer.padding.size and conv.asymmetric != layer.padding.symmetric, layer.name
            assert conv.padding == ((layer.padding.before,) * 2 if layer.padding.symmetric else (0, 0)), layer.name
        else:
            assert type(conv) is nn.Conv2d and conv.padding == (layer.padding,) * 2, layer.name


# --- forward and backward -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec_name", "sizes"),
    [
        ("efficientnet-b0", [(224, 224), (193, 193), (256, 256), (65, 64)]),
        ("efficientnetv2-b0", [(224, 224), (65, 64)]),
        ("efficientnetv2-s", [(65, 64)]),
        ("custom-phi2-relu", [(64, 65)]),
    ],
)
def test_forward_shapes(generated: Path, spec_name: str, sizes: list[tuple[int, int]]) -> None:
    module = load_generated(generated, spec_name)
    model_ir = ir_model(spec_name)
    torch.manual_seed(0)
    model = module.build_model(num_classes=7).eval()
    for height, width in sizes:
        x = torch.randn(1, 3, height, width)
        with torch.no_grad():
            maps = model.forward_stages(x)
            features = model.head(maps[-1])  # forward_features, without running the stages twice
            logits = model.forward_head(features)
            pooled = model.forward_head(features, pre_logits=True)
        heights, widths = stage_sizes(model_ir, height), stage_sizes(model_ir, width)
        assert [tuple(t.shape) for t in maps] == [
            (1, info.channels, h, w) for info, h, w in zip(module.FEATURE_INFO, heights, widths, strict=True)
        ]
        assert [info.channels for info in module.FEATURE_INFO] == [model_ir.stem.conv.out_channels] + [
            stage.output.channels for stage in model_ir.stages
        ]
        for info, h in zip(module.FEATURE_INFO, heights, strict=True):
            assert h == math.ceil(height / info.reduction)
        assert tuple(features.shape) == (1, model_ir.num_features, heights[-1], widths[-1])
        assert tuple(pooled.shape) == (1, model_ir.num_features)
        assert tuple(logits.shape) == (1, 7)
        assert torch.isfinite(logits).all()
        if (height, width) == (model_ir.resolution, model_ir.resolution):
            assert [tuple(t.shape[1:]) for t in maps] == [
                (s.channels, s.height, s.width)
                for s in [model_ir.stem.conv.output, *(st.output for st in model_ir.stages)]
            ]


@pytest.mark.parametrize(("spec_name", "size"), [("efficientnet-b0", 48), ("efficientnetv2-b0", 49), ("tiny", 41)])
def test_backward_gives_finite_gradients_for_every_parameter(
    generated: Path, tiny: tuple[ModuleType, ir.Model], spec_name: str, size: int
) -> None:
    module = tiny[0] if spec_name == "tiny" else load_generated(generated, spec_name)
    torch.manual_seed(0)
    model = module.build_model(num_classes=5, drop_path_rate=0.5).train()  # drop-path active
    loss = nn.functional.cross_entropy(model(torch.randn(2, 3, size, size)), torch.tensor([1, 3]))
    loss.backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None, name
        assert torch.isfinite(parameter.grad).all(), name
    assert any(p.grad.abs().sum() > 0 for p in model.parameters())


# --- padding against TensorFlow -----------------------------------------------------------------


@pytest.mark.parametrize("kernel", [3, 5])
@pytest.mark.parametrize("depthwise", [False, True])
def test_same_padding_matches_tensorflow(tiny: tuple[ModuleType, ir.Model], kernel: int, depthwise: bool) -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    tf = pytest.importorskip("tensorflow")
    module = tiny[0]
    channels = 4
    torch.manual_seed(kernel)
    groups = channels if depthwise else 1
    padding = module.SamePadding(1, 0, 0)  # compiled for 1x1 inputs: every size below runs per call
    config = module.ConvBnActConfig(channels, channels, kernel, 2, groups, depthwise, padding, None)
    block = module.ConvBnAct(config)
    block.bn = nn.Identity()  # compare the padded conv alone
    symmetric = module.ConvBnAct(module.replace(config, padding=(kernel - 1) // 2))
    symmetric.conv.weight = block.conv.weight
    symmetric.bn = nn.Identity()
    assert isinstance(block.conv, module.Conv2dSame) and not isinstance(symmetric.conv, module.Conv2dSame)
    weight = block.conv.weight.detach()
    if depthwise:
        tf_kernel = weight.permute(2, 3, 0, 1).numpy()  # (kh, kw, C, 1)
    else:
        tf_kernel = weight.permute(2, 3, 1, 0).numpy()  # (kh, kw, I, O)
    for height, width in [(9, 9), (10, 10), (17, 16), (32, 33)]:
        x = torch.randn(2, channels, height, width)
        with torch.no_grad():
            ours = block(x).permute(0, 2, 3, 1).numpy()
            theirs_symmetric = symmetric(x).permute(0, 2, 3, 1).numpy()
        x_tf = tf.constant(x.permute(0, 2, 3, 1).numpy())
        if depthwise:
            reference = tf.nn.depthwise_conv2d(x_tf, tf_kernel, [1, 2, 2, 1], padding="SAME").numpy()
        else:
            reference = tf.nn.conv2d(x_tf, tf_kernel, 2, padding="SAME").numpy()
        assert ours.shape == reference.shape == (2, math.ceil(height / 2), math.ceil(width / 2), channels)
        assert abs(ours - reference).max() <= TF_ATOL, (height, width)
        # Symmetric (k - 1) // 2 padding equals SAME only when both sizes are odd: the test can tell.
        symmetric_equal = abs(theirs_symmetric - reference).max() <= TF_ATOL
        assert symmetric_equal == (height % 2 == 1 and width % 2 == 1)


# --- inference helper, export paths ---------------------------------------------------------------


def test_fuse_for_inference_keeps_outputs_within_1e5(generated: Path) -> None:
    module = load_generated(generated, "efficientnet-b0")
    torch.manual_seed(0)
    model = module.build_model()
    randomize_batch_norm(model)
    model.eval()
    x = torch.randn(2, 3, 65, 64)
    with torch.no_grad():
        expected = model(x)
        stages = model.forward_stages(x)
    assert expected.abs().max() > 0.1  # logits of order 1: the bound is meaningful
    for channels_last in (True, False):
        fused = module.fuse_for_inference(model, channels_last=channels_last)
        assert not fused.training and isinstance(model.stem.bn, nn.BatchNorm2d)  # the original is untouched
        assert not any(isinstance(m, nn.BatchNorm2d) for m in fused.modules())
        assert all(m.bias is not None for m in fused.modules() if isinstance(m, nn.Conv2d))
        layout = torch.channels_last if channels_last else torch.contiguous_format
        assert fused.stem.conv.weight.is_contiguous(memory_format=layout)
        with torch.no_grad():
            got = fused(x.contiguous(memory_format=layout))
            got_stages = fused.forward_stages(x.contiguous(memory_format=layout))
        assert (got - expected).abs().max() <= FOLD_ATOL
        for ours, reference in zip(got_stages, stages, strict=True):
            assert (ours - reference).abs().max() <= FOLD_ATOL * max(1.0, reference.abs().max().item())


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit.script is deprecated, still supported
def test_torchscript_export_onnx_and_compile(tiny: tuple[ModuleType, ir.Model], tmp_path: Path) -> None:
    module = tiny[0]
    torch.manual_seed(0)
    model = module.build_model(include_preprocessing=True)
    randomize_batch_norm(model)
    model.eval()
    x = torch.rand(2, 3, 41, 40)
    with torch.no_grad():
        expected = model(x)
        scripted = torch.jit.script(model)
        assert (scripted(x) - expected).abs().max() <= 1e-6
        odd = torch.rand(1, 3, 33, 50)  # the scripted model pads per call at any size
        assert (scripted(odd) - model(odd)).abs().max() <= 1e-6
        stages = scripted.forward_stages(x)
        assert len(stages) == len(module.FEATURE_INFO)
        assert torch.equal(scripted.forward_features(x), model.head(stages[-1]))
        exported = torch.export.export(model, (x,))
        assert (exported.module()(x) - expected).abs().max() <= 1e-6
        compiled = torch.compile(model, fullgraph=True, backend="aot_eager")  # no graph breaks
        assert (compiled(x) - expected).abs().max() <= 1e-6

    onnx = pytest.importorskip("onnx")
    from onnx.reference import ReferenceEvaluator

    path = tmp_path / "tiny.onnx"
    torch.onnx.export(exported, (x,), str(path), dynamo=True, verbose=False)
    graph = onnx.load(str(path))
    onnx.checker.check_model(graph)
    session = ReferenceEvaluator(graph)
    (output,) = session.run(None, {session.input_names[0]: x.numpy()})
    assert abs(output - expected.numpy()).max() <= 1e-5


@pytest.mark.slow
@pytest.mark.skipif(
    os.environ.get("EFFSPEC_TORCH_INDUCTOR") != "1",
    reason="inductor C++ codegen takes 45-130 s on 2 shared cores; EFFSPEC_TORCH_INDUCTOR=1 runs it",
)
def test_torch_compile_inductor(tiny: tuple[ModuleType, ir.Model]) -> None:
    module = tiny[0]
    torch.manual_seed(0)
    model = module.build_model().eval()
    x = torch.randn(2, 3, 41, 40)
    compiled = torch.compile(model, fullgraph=True)
    with torch.no_grad():
        assert (compiled(x) - model(x)).abs().max() <= 1e-5


# --- build_model options ---------------------------------------------------------------------------


def test_build_model_options(generated: Path) -> None:
    module = load_generated(generated, "efficientnetv2-b0")
    model_ir = ir_model("efficientnetv2-b0")
    blocks = [block for stage in meta_model(module).blocks for block in stage]
    assert [b.drop_path.rate for b in blocks] == [block.drop_path_rate for block in model_ir.blocks]
    assert [b.residual for b in blocks] == [block.residual for block in model_ir.blocks]
    with torch.device("meta"):
        rescaled = module.build_model(num_classes=3, dropout=0.45, drop_path_rate=0.5)
    n = len(model_ir.blocks)
    rates = [b.drop_path.rate for stage in rescaled.blocks for b in stage]
    assert rates == pytest.approx([0.5 * i / n for i in range(n)])
    assert rescaled.dropout.p == 0.45 and rescaled.classifier.out_features == 3
    assert meta_model(module).dropout.p == model_ir.head.dropout


def test_include_preprocessing_takes_raw_pixels(tiny: tuple[ModuleType, ir.Model]) -> None:
    module, model_ir = tiny
    torch.manual_seed(0)
    plain = module.build_model().eval()
    with_preprocessing = module.build_model(include_preprocessing=True).eval()
    with_preprocessing.load_state_dict(plain.state_dict())  # the same keys: buffers are non-persistent
    assert set(plain.state_dict()) == set(with_preprocessing.state_dict())
    raw = torch.rand(2, 3, 40, 40)
    mean = torch.tensor(model_ir.mean).view(1, 3, 1, 1)
    std = torch.tensor(model_ir.std).view(1, 3, 1, 1)
    with torch.no_grad():
        assert (with_preprocessing(raw) - plain((raw - mean) / std)).abs().max() <= 1e-5
    assert module.MEAN == model_ir.mean and module.STD == model_ir.std


def test_drop_path_only_in_training(tiny: tuple[ModuleType, ir.Model]) -> None:
    drop = tiny[0].DropPath(0.5)
    x = torch.ones(4000, 2, 3, 3)
    drop.eval()
    assert torch.equal(drop(x), x)
    drop.train()
    torch.manual_seed(0)
    y = drop(x)
    per_sample = y.flatten(1)
    assert set(per_sample.unique().tolist()) == {0.0, 2.0}  # whole samples dropped, kept ones scaled
    assert (per_sample.min(1).values == per_sample.max(1).values).all()
    kept = (per_sample[:, 0] > 0).float().mean().item()
    assert abs(kept - 0.5) < 0.05


def test_initialization_follows_the_tf_reference(generated: Path) -> None:
    module = load_generated(generated, "efficientnet-b0")
    torch.manual_seed(0)
    model = module.build_model()
    head = model.head.conv.weight  # 1280 x 320 x 1 x 1: fan_out 1280
    assert head.std().item() == pytest.approx(math.sqrt(2 / 1280), rel=0.02)
    depthwise = model.blocks[5][1].depthwise.conv.weight  # 1152 x 1 x 5 x 5: fan_out 25 (one group)
    assert depthwise.std().item() == pytest.approx(math.sqrt(2 / 25), rel=0.05)
    bound = 1 / math.sqrt(1000)
    assert model.classifier.weight.abs().max().item() <= bound
    assert model.classifier.weight.abs().max().item() > 0.95 * bound
    assert not model.classifier.bias.any() and not model.blocks[1][0].se.reduce.bias.any()
    for norm in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
        assert torch.equal(norm.weight, torch.ones_like(norm.weight)) and not norm.bias.any()


# --- the generated text ----------------------------------------------------------------------------


def test_header_names_spec_and_hash_without_timestamp(generated: Path) -> None:
    text = (generated / "efficientnet_b0" / "model.py").read_text(encoding="utf-8")
    sha = ir_model("efficientnet-b0").spec_sha256  # of the resolved spec, canonical JSON
    assert text.splitlines()[:3] == [
        f"# Generated by effspec {__version__}. Do not edit: edit the spec and recompile.",
        "# Spec: specs/efficientnet-b0.yaml",
        f"# Spec sha256: {sha}",
    ]
    module = load_generated(generated, "efficientnet-b0")
    assert (module.SPEC_NAME, module.SPEC_PATH, module.SPEC_SHA256) == (
        "efficientnet-b0",
        "specs/efficientnet-b0.yaml",
        sha,
    )
    assert (module.RESOLUTION, module.NUM_CLASSES) == (224, 1000)
    assert not any(word in text for word in ("2025", "2026", "timestamp", "datetime"))


def test_generated_module_imports_with_torch_alone(generated: Path) -> None:
    probe = (
        "import sys, runpy; ns = runpy.run_path(sys.argv[1]); m = ns['build_model'](num_classes=2); "
        "banned = {'effspec', 'jinja2', 'yaml', 'pydantic', 'tensorflow', 'keras'} & set(sys.modules); "
        "assert not banned, banned; print(sum(p.numel() for p in m.parameters()))"
    )
    path = generated / "custom_phi2_relu" / "model.py"
    result = subprocess.run(
        [sys.executable, "-I", "-c", probe, str(path)], capture_output=True, text=True, cwd=path.parent
    )
    assert result.returncode == 0, result.stderr
    assert int(result.stdout) > 0


def test_hostile_description_is_only_data(tmp_path: Path) -> None:
    spec = tmp_path / "hostile.yaml"
    text = TINY_SPEC.replace("name: torch-backend-tiny", "name: hostile")
    text = text.replace(  # a JSON string is a YAML double-quoted scalar
        "description: Tiny mixed network for the torch backend tests.",
        f"description: {json.dumps(HOSTILE_DESCRIPTION)}",
    )
    spec.write_text(text, encoding="utf-8")
    model_ir = build(spec).model
    assert model_ir.description == HOSTILE_DESCRIPTION
    compile_specs([spec], ["torch"], tmp_path / "out")
    path = tmp_path / "out" / "torch" / "hostile" / "model.py"
    module = import_file(path, "torch_generated_hostile")
    assert module.DESCRIPTION == HOSTILE_DESCRIPTION
    result = subprocess.run([RUFF, "check", "--isolated", "--select", "E,F,W,I,B,UP", str(path)], capture_output=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_activation_table_covers_the_spec_language() -> None:
    from effspec.core.schema import Activation

    assert set(ACTIVATIONS) >= set(Activation.__args__)
