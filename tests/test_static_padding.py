"""Static TF SAME padding: the compiler fixes every strided SAME conv's padding at the spec's
resolution (``ir.SamePadding``); the generated torch model runs it as fixed padding there and works it
out per call at every other size. Both give the same outputs, and exports at a fixed size carry no
shape arithmetic."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from effspec.core import ir
from effspec.emit.pipeline import build

torch = pytest.importorskip("torch")

from effspec.weights.generated import load_model_module  # noqa: E402

TINY = "tests/data/export-tiny.yaml"  # resolution 33; SAME padding; MBConv, Fused-MBConv, SE; kernels 3 and 5
SHAPE_OPS = {"Shape", "Gather", "Div", "Floor", "Ceil", "Cast", "Sub", "Neg", "Unsqueeze", "Slice", "Pad", "Max"}


def _tf_same_total(size: int, kernel: int, stride: int, dilation: int) -> int:
    """TensorFlow's documented SAME rule, written independently: output ceil(size / stride) windows."""
    out = (size + stride - 1) // stride
    span = (kernel - 1) * dilation + 1
    return max(0, (out - 1) * stride + span - size)


@pytest.mark.parametrize("stride", [1, 2, 3])
@pytest.mark.parametrize("kernel", [1, 3, 5, 7])
def test_tf_same_padding_rule(kernel: int, stride: int) -> None:
    for dilation in (1, 2, 3) if stride == 1 else (1,):
        for size in range(1, 40):
            before, after = ir.tf_same_padding(size, kernel, stride, dilation)
            assert before + after == _tf_same_total(size, kernel, stride, dilation)
            assert after - before in (0, 1)  # the odd pixel after, as TensorFlow
            assert (size + before + after - ((kernel - 1) * dilation + 1)) // stride + 1 == -(-size // stride)


def test_resolve_padding_decides_per_conv_at_the_nominal_size() -> None:
    assert ir.resolve_padding("same", 3, 2, 224) == ir.SamePadding(224, 0, 1)  # asymmetric
    assert ir.resolve_padding("same", 5, 2, 75) == ir.SamePadding(75, 2, 2)  # symmetric at an odd size
    assert ir.resolve_padding("same", 5, 1, 75) == 2 and ir.resolve_padding("same", 3, 1, 8, dilation=4) == 4
    assert ir.resolve_padding("same", 1, 2, 224) == 0 and ir.resolve_padding("symmetric", 5, 2, 224) == 2
    with pytest.raises(ValueError, match="cannot dilate"):
        ir.resolve_padding("same", 3, 2, 224, dilation=2)
    model = build("specs/efficientnet-b3.yaml").model  # 300 -> 150 -> 75 -> 38 -> 19: both kinds
    decided = {layer.name: layer.padding for layer in model.layers if isinstance(layer.padding, ir.SamePadding)}
    assert decided == {
        "stem.conv": ir.SamePadding(300, 0, 1),
        "blocks.1.0.depthwise.conv": ir.SamePadding(150, 0, 1),
        "blocks.2.0.depthwise.conv": ir.SamePadding(75, 2, 2),
        "blocks.3.0.depthwise.conv": ir.SamePadding(38, 0, 1),
        "blocks.5.0.depthwise.conv": ir.SamePadding(19, 2, 2),
    }


def _net(resolution: int | None, state: dict | None = None):
    model = build(TINY, resolution).model
    net = load_model_module(model, "torch").build_model().eval()
    if state is not None:
        net.load_state_dict(state)
    return model, net


def _randomize_batch_norms(net) -> None:
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.copy_(torch.rand(module.running_mean.shape, generator=generator) - 0.5)
                module.running_var.copy_(torch.rand(module.running_var.shape, generator=generator) + 0.5)


def test_static_padding_equals_per_call_at_nominal_odd_and_even_sizes() -> None:
    torch.manual_seed(0)
    nominal_ir, nominal = _net(None)
    _randomize_batch_norms(nominal)
    state = nominal.state_dict()
    # The tiny spec at 33 (every strided map odd: symmetric, in the conv's own padding), and lowered at
    # 34, 40 (asymmetric and symmetric convs) and 64 (every one asymmetric: an explicit pad).
    nets = {33: nominal, **{size: _net(size, state)[1] for size in (34, 40, 64)}}
    convs = {size: [m for m in net.modules() if type(m).__name__ == "Conv2dSame"] for size, net in nets.items()}
    assert all(len(found) == 4 for found in convs.values())
    assert not any(conv.asymmetric for conv in convs[33]) and all(conv.asymmetric for conv in convs[64])
    assert {conv.asymmetric for conv in convs[40]} == {True, False}
    assert [conv.size for conv in convs[33]] == [
        layer.padding.size for layer in nominal_ir.layers if isinstance(layer.padding, ir.SamePadding)
    ]
    for size in (33, 34, 40, 64, 65):
        x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(size))
        with torch.no_grad():
            outputs = {at: net(x) for at, net in nets.items()}  # static where at == size, per call elsewhere
        reference = outputs.pop(33)
        for at, output in outputs.items():
            assert torch.allclose(output, reference, rtol=1e-5, atol=1e-5), (size, at)


def test_training_pads_explicitly_with_the_same_outputs_and_gradients() -> None:
    """Under autograd the per-call path pads the input (a sliced conv output slows the backward); in
    inference it slices. Both compute the same function, and the gradients agree between the static
    padding (nominal size) and the per-call padding of a model lowered for another size."""
    torch.manual_seed(0)
    _, nominal = _net(None)
    _randomize_batch_norms(nominal)
    state = nominal.state_dict()
    others = {size: _net(size, state)[1] for size in (34, 64)}
    for size in (33, 34, 40, 64):
        x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(size))
        with torch.no_grad():
            sliced = nominal(x)
        gradients = []
        for net in (nominal, *others.values()):
            leaf = x.clone().requires_grad_(True)
            output = net(leaf)
            assert torch.allclose(output, sliced, rtol=1e-5, atol=1e-5), size
            output.square().sum().backward()
            gradients.append(leaf.grad)
        for gradient in gradients[1:]:
            assert torch.allclose(gradient, gradients[0], rtol=1e-4, atol=1e-5), size


def test_static_padding_scripted() -> None:
    """TorchScript (scripted: both branches compiled) runs the static and the per-call path alike."""
    torch.manual_seed(0)
    _, net = _net(40)
    scripted = torch.jit.script(net)
    for size in (40, 41):
        x = torch.randn(1, 3, size, size)
        with torch.no_grad():
            assert torch.allclose(scripted(x), net(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("resolution", [None, 40])
def test_onnx_at_a_fixed_size_has_no_pad_arithmetic(tmp_path: Path, capsys, resolution: int | None) -> None:
    onnx = pytest.importorskip("onnx")
    onnxruntime = pytest.importorskip("onnxruntime")
    from effspec.cli import main

    torch.manual_seed(0)
    _, nominal = _net(None)
    _randomize_batch_norms(nominal)
    weights = tmp_path / "tiny.pt"
    torch.save(nominal.state_dict(), weights)
    out = tmp_path / "tiny.onnx"
    extra = ["--resolution", str(resolution)] if resolution else []
    args = ["export", TINY, "--format", "onnx", "-o", str(out), "--batch", "dynamic", "--weights", str(weights)]
    assert main([*args, *extra]) == 0
    printed = capsys.readouterr().out
    size = resolution or 33
    assert f"TF SAME padding static at {size}x{size} in 4 strided convs" in printed
    graph = onnx.load(str(out)).graph
    ops = Counter(node.op_type for node in graph.node)
    assert not set(ops) & SHAPE_OPS, ops  # no shape arithmetic, no Pad: SAME is each Conv's own pads
    assert "BatchNormalization" not in ops and "Identity" not in ops  # folded, removed
    pads = [
        list(attribute.ints)
        for node in graph.node
        if node.op_type == "Conv"
        for attribute in node.attribute
        if attribute.name == "pads"
    ]
    asymmetric = [p for p in pads if p[:2] != p[2:]]
    assert len(asymmetric) == (3 if resolution == 40 else 0)  # the strided convs see 40, 20, 10 (even), then 5 (odd)
    # The file against the nominal torch model running its per-call padding at this size.
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    images = np.random.default_rng(3).standard_normal((3, 3, size, size)).astype(np.float32)
    with torch.no_grad():
        expected = nominal(torch.from_numpy(images)).numpy()
    (logits,) = session.run(None, {session.get_inputs()[0].name: images})
    assert np.max(np.abs(logits - expected)) <= 1e-4 * np.max(np.abs(expected))


def test_keras_same_is_the_compilers_padding() -> None:
    """Keras' "same" (what the Keras model prints for SamePadding) pads exactly as ir.tf_same_padding says."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    keras = pytest.importorskip("keras")
    rng = np.random.default_rng(0)
    for kernel in (3, 5):
        same = keras.layers.DepthwiseConv2D(kernel, 2, padding="same", use_bias=False)
        valid = keras.layers.DepthwiseConv2D(kernel, 2, padding="valid", use_bias=False)
        for size in (9, 10, 33, 34):
            x = rng.standard_normal((1, size, size, 2)).astype("float32")
            ours = same(x)
            if not valid.built:
                valid.build((None, None, None, 2))
            valid.set_weights(same.get_weights())
            before, after = ir.tf_same_padding(size, kernel, 2)
            padded = keras.layers.ZeroPadding2D(((before, after), (before, after)))(x)
            theirs = valid(padded)
            np.testing.assert_allclose(keras.ops.convert_to_numpy(ours), keras.ops.convert_to_numpy(theirs), atol=1e-5)
