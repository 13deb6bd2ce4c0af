"""`effspec convert-weights --from timm|torchvision`: real peers, no downloads.

Each peer model is built by timm or torchvision with random weights and randomized batch-norm
statistics, saved the way checkpoints are published (safetensors, .bin, .pth, nested under
state_dict / state_dict_ema / model), converted, and the converted model's logits compared with the
peer's at an odd input size. Mismatched conventions, another architecture and unknown models exit 2
with one line and write nothing; a wrong pairing is caught by --verify (exit 1).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from effspec.support.vision import import_timm, import_torchvision  # noqa: E402

timm = import_timm()  # effspec.support.vision: as the product imports them (a failure fails, never skips)
torchvision = import_torchvision()
keras = pytest.importorskip("keras")
pytest.importorskip("safetensors")

from safetensors.torch import save_file  # noqa: E402

from effspec.cli import main  # noqa: E402
from effspec.emit.pipeline import build  # noqa: E402
from effspec.weights import structural  # noqa: E402
from effspec.weights.generated import load_model_module  # noqa: E402

B0 = "specs/efficientnet-b0.yaml"
B0_SYMMETRIC = "tests/data/efficientnet-b0-symmetric.yaml"
V2_B0 = "specs/efficientnetv2-b0.yaml"
V2_S_SYMMETRIC = "tests/data/torchvision-efficientnetv2-s.yaml"
SIZE = 65  # odd: TF SAME pads stride-2 convs asymmetrically here
VERIFY = ["--verify-size", "48"]


def _randomize(net):
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                for tensor, low, high in (
                    (module.weight, 0.5, 1.5),
                    (module.bias, -0.2, 0.2),
                    (module.running_mean, -0.2, 0.2),
                    (module.running_var, 0.5, 2.0),
                ):
                    tensor.copy_(torch.rand(tensor.shape, generator=generator) * (high - low) + low)
    return net.eval()


def _peer(source: str, name: str, **kwargs):
    torch.manual_seed(0)
    if source == "timm":
        return _randomize(timm.create_model(name, pretrained=False, **kwargs))
    return _randomize(torchvision.models.get_model(name, weights=None, **kwargs))


def _save(state: dict, path: Path, nest: str | None = None) -> Path:
    if path.suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save({nest: state, "epoch": 10} if nest else state, path)
    return path


@pytest.fixture(scope="module")
def peers(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """(source, model) -> (peer model, folder with its files)."""
    return {}


def _peer_files(peers: dict, tmp_path_factory, source: str, name: str):
    key = (source, name)
    if key not in peers:
        net = _peer(source, name)
        folder = tmp_path_factory.mktemp(f"{source}-{name}")
        state = net.state_dict()
        _save(state, folder / "model.safetensors")
        _save(state, folder / "pytorch_model.bin")
        for nest in ("state_dict", "state_dict_ema", "model"):
            _save(state, folder / f"{nest}.pth", nest)
        torch.save(state, folder / "legacy.pth", _use_new_zipfile_serialization=False)  # torch < 1.6 files
        peers[key] = (net, folder)
    return peers[key]


def _convert(spec: str, source: str, target: str, weights: Path, out: Path, *extra: str) -> int:
    return main(["convert-weights", spec, "--from", source, "--to", target, str(weights), str(out), *VERIFY, *extra])


def _images(channels: int = 3, size: int = SIZE) -> np.ndarray:
    return np.random.default_rng(7).standard_normal((2, channels, size, size)).astype(np.float32)


def _ours(spec: str, target: str, out: Path, images: np.ndarray) -> np.ndarray:
    model = build(spec).model
    if target == "torch":
        net = load_model_module(model, "torch").build_model(dropout=0.0, drop_path_rate=0.0).eval()
        net.load_state_dict(torch.load(out, weights_only=True))
        with torch.no_grad():
            return net(torch.from_numpy(images)).numpy()
    net = load_model_module(model, "keras").build_model(dropout=0.0, drop_path_rate=0.0)
    net.load_weights(str(out))
    return keras.ops.convert_to_numpy(net(np.ascontiguousarray(images.transpose(0, 2, 3, 1)), training=False))


def _relative(ours: np.ndarray, theirs: np.ndarray) -> float:
    return float(np.max(np.abs(ours - theirs)) / np.max(np.abs(theirs)))


CASES = [
    # source, peer model, spec, file, target
    ("timm", "tf_efficientnet_b0", B0, "model.safetensors", "torch"),
    ("timm", "tf_efficientnet_b0", B0, "state_dict_ema.pth", "keras"),
    ("timm", "efficientnet_b0", B0_SYMMETRIC, "legacy.pth", "torch"),
    ("timm", "tf_efficientnetv2_b0", V2_B0, "model.safetensors", "torch"),
    # MixNet keeps each grouped 1x1 conv as one conv per group: they concatenate into ours
    ("timm", "tf_mixnet_s", "specs/mixnet-s.yaml", "model.safetensors", "torch"),
    ("timm", "tf_mixnet_s", "specs/mixnet-s.yaml", "pytorch_model.bin", "torch"),
    ("torchvision", "efficientnet_b0", B0_SYMMETRIC, "model.safetensors", "torch"),
    ("torchvision", "efficientnet_b0", B0_SYMMETRIC, "model.pth", "torch"),
    ("torchvision", "efficientnet_v2_s", V2_S_SYMMETRIC, "pytorch_model.bin", "torch"),
]


@pytest.mark.parametrize(("source", "name", "spec", "file", "target"), CASES, ids=lambda v: str(v).split("/")[-1])
def test_import_gives_the_peers_logits(
    source, name, spec, file, target, peers, tmp_path_factory, tmp_path, capsys: pytest.CaptureFixture[str]
) -> None:
    net, folder = _peer_files(peers, tmp_path_factory, source, name)
    out = tmp_path / ("out.pt" if target == "torch" else "out.weights.h5")
    assert _convert(spec, source, target, folder / file, out, "--model", name) == 0
    printed = capsys.readouterr().out
    assert f"imported {source} {name}" in printed
    assert "expects: normalize (p - mean) / std with mean [0.485, 0.456, 0.406]" in printed
    assert "center-crop" in printed
    assert printed.count("note: verify") >= 4  # layer inputs and logits at an even and an odd size
    images = _images()
    with torch.no_grad():
        theirs = net(torch.from_numpy(images)).numpy()
    error = _relative(_ours(spec, target, out, images), theirs)
    print(f"{source} {name} {file} -> {target}: max rel error {error:.2e}")
    assert error < 1e-5


def test_timm_model_is_found_in_the_checkpoint_config_or_path(peers, tmp_path_factory, tmp_path, capsys) -> None:
    net, folder = _peer_files(peers, tmp_path_factory, "timm", "tf_efficientnet_b0")
    hub = tmp_path / "models--timm--tf_efficientnet_b0.ns_jft_in1k" / "snapshots" / "0123"
    hub.mkdir(parents=True)
    (hub / "model.safetensors").write_bytes((folder / "model.safetensors").read_bytes())
    assert _convert(B0, "timm", "torch", hub / "model.safetensors", tmp_path / "a.pt", "--no-verify") == 0
    assert "identified by the file path" in capsys.readouterr().out
    checkpoint = tmp_path / "checkpoint.pth.tar"
    torch.save({"arch": "tf_efficientnet_b0", "state_dict": net.state_dict(), "epoch": 3}, checkpoint)
    assert _convert(B0, "timm", "torch", checkpoint, tmp_path / "b.pt", "--no-verify") == 0
    assert "identified by the checkpoint's arch entry" in capsys.readouterr().out


def _one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_mismatched_conventions_exit_2_naming_the_spec_fields(peers, tmp_path_factory, tmp_path, capsys) -> None:
    _, folder = _peer_files(peers, tmp_path_factory, "timm", "efficientnet_b0")
    out = tmp_path / "out.pt"
    assert _convert(B0, "timm", "torch", folder / "model.safetensors", out, "--model", "efficientnet_b0") == 2
    err = _one_line_error(capsys)
    assert "padding symmetric (spec: same)" in err and "batch-norm eps 1e-05 (spec: 0.001)" in err
    assert "defaults: {padding: symmetric, batch_norm: {eps: 1.0e-5}}" in err
    assert not out.exists()
    # the other way round, and torchvision's V1 eps
    _, folder = _peer_files(peers, tmp_path_factory, "timm", "tf_efficientnet_b0")
    assert (
        _convert(B0_SYMMETRIC, "timm", "torch", folder / "model.safetensors", out, "--model", "tf_efficientnet_b0") == 2
    )
    assert "defaults: {padding: same, batch_norm: {eps: 1.0e-3}}" in _one_line_error(capsys)
    _, folder = _peer_files(peers, tmp_path_factory, "torchvision", "efficientnet_b0")
    assert _convert(B0, "torchvision", "keras", folder / "model.pth", tmp_path / "o.weights.h5") == 2
    assert "batch_norm: {eps: 1.0e-5}" in _one_line_error(capsys)
    assert list(tmp_path.iterdir()) == []


def test_force_converts_and_verify_shows_the_difference(peers, tmp_path_factory, tmp_path, capsys) -> None:
    _, folder = _peer_files(peers, tmp_path_factory, "timm", "efficientnet_b0")
    out = tmp_path / "out.pt"
    args = ("--model", "efficientnet_b0", "--force")
    assert _convert(B0, "timm", "torch", folder / "pytorch_model.bin", out, *args) == 0
    printed = capsys.readouterr().out
    assert "--force: timm efficientnet_b0 differs from the spec in padding symmetric" in printed
    assert "convention difference accepted with --force" in printed
    assert out.exists()


def test_unknown_model_exits_2_unless_named(peers, tmp_path_factory, tmp_path, capsys) -> None:
    _, folder = _peer_files(peers, tmp_path_factory, "timm", "tf_efficientnet_b0")
    assert _convert(B0, "timm", "torch", folder / "pytorch_model.bin", tmp_path / "o.pt") == 2
    assert "cannot tell which timm model wrote this file" in _one_line_error(capsys)


@pytest.mark.parametrize("file", ["pytorch_model.bin", "model.safetensors"])
def test_another_architecture_names_the_first_misfit(file, peers, tmp_path_factory, tmp_path, capsys) -> None:
    _, folder = _peer_files(peers, tmp_path_factory, "timm", "tf_efficientnetv2_b0")
    out = tmp_path / "out.pt"
    assert _convert(B0, "timm", "torch", folder / file, out, "--model", "tf_efficientnetv2_b0") == 2
    err = _one_line_error(capsys)
    assert "does not fit efficientnet-b0: expected blocks.0.0.depthwise.conv (conv: weight (32, 1, 3, 3)), found" in err
    assert not out.exists()


def test_another_class_count_keeps_a_fresh_classifier(peers, tmp_path_factory, tmp_path, capsys) -> None:
    spec = "tests/data/efficientnet-b0-10-classes.yaml"
    net, folder = _peer_files(peers, tmp_path_factory, "timm", "tf_efficientnet_b0")
    out = tmp_path / "out.pt"
    assert _convert(spec, "timm", "torch", folder / "model.safetensors", out, "--model", "tf_efficientnet_b0") == 0
    printed = capsys.readouterr().out
    assert "classifier has 1000 classes, the spec 10: classifier keeps its fresh initialization" in printed
    state = torch.load(out, weights_only=True)
    assert state["classifier.weight"].shape == (10, 1280)
    assert state["stem.bn.num_batches_tracked"].shape == ()  # as torch keeps it (effspec check reads it back)
    assert torch.equal(state["head.conv.weight"], net.state_dict()["conv_head.weight"])


def test_in_channels_1_sums_the_stem(peers, tmp_path_factory, tmp_path, capsys) -> None:
    spec = "tests/data/efficientnet-b0-gray.yaml"
    net, folder = _peer_files(peers, tmp_path_factory, "timm", "tf_efficientnet_b0")
    out = tmp_path / "out.pt"
    args = ("--model", "tf_efficientnet_b0", "--in-channels", "1", "--force")  # --force: the mean/std differ
    assert _convert(spec, "timm", "torch", folder / "model.safetensors", out, *args) == 0
    assert "3 input channels adapted to 1 (summed)" in capsys.readouterr().out
    gray = _images(channels=1)
    with torch.no_grad():
        theirs = net(torch.from_numpy(np.repeat(gray, 3, axis=1))).numpy()
    assert _relative(_ours(spec, "torch", out, gray), theirs) < 1e-5
    assert _convert(B0, "timm", "torch", folder / "model.safetensors", out, "--in-channels", "1") == 2
    assert "the spec's input has 3 channels" in _one_line_error(capsys)


def test_verify_catches_a_wrong_pairing_and_writes_nothing(
    peers, tmp_path_factory, tmp_path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Natural name order alone pairs the stem's batch norm with blocks.0.0.bn1 (same shape): the
    logits of a random net barely move, the layer inputs do."""
    monkeypatch.setattr(structural, "_closeness", lambda previous, module: structural.natural_key(module.name))
    _, folder = _peer_files(peers, tmp_path_factory, "timm", "tf_efficientnet_b0")
    out = tmp_path / "out.pt"
    out.write_bytes(b"the user's file")
    assert _convert(B0, "timm", "torch", folder / "model.safetensors", out, "--model", "tf_efficientnet_b0") == 1
    assert "converted model differs from the source" in capsys.readouterr().err
    assert out.read_bytes() == b"the user's file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.pt"]


def test_adapting_the_stem_to_more_channels_repeats_and_rescales() -> None:
    weight = np.arange(2 * 3 * 3 * 3, dtype=np.float32).reshape(2, 3, 3, 3)
    four = structural.adapt_input_channels(weight, 4)
    assert four.shape == (2, 4, 3, 3)
    np.testing.assert_allclose(four[:, :3], weight * 0.75)
    np.testing.assert_allclose(four[:, 3], weight[:, 0] * 0.75)
    np.testing.assert_allclose(structural.adapt_input_channels(weight, 1)[:, 0], weight.sum(axis=1))
