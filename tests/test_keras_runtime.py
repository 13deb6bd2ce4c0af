"""The Keras trainer's parts on their own, in this process: the schedule against the torch
trainer's, the weight average's rule (the same as torch's), and the hardened data and file path
(bad input exits 2 with one line; what a killed run leaves is cleaned up on --resume)."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from conftest import OUT_OF_RANGE, ROOT

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
keras = pytest.importorskip("keras")
tf = pytest.importorskip("tensorflow")
torch = pytest.importorskip("torch")

from effspec.backends.keras.runtime.optim import RMSpropTF, WarmupThenDecay  # noqa: E402
from effspec.backends.torch.runtime.optim import LrSchedule, ema_decay_at  # noqa: E402

from effspec.cli import main as effspec  # noqa: E402

V1 = ROOT / "tests" / "data" / "keras_v1_tiny.yaml"
QUIET = ["--no-tensorboard", "--verbose", "0", "--synthetic-train-size", "16", "--synthetic-val-size", "8"]


@pytest.fixture(scope="module")
def trainer(tmp_path_factory: pytest.TempPathFactory) -> ModuleType:
    out = tmp_path_factory.mktemp("keras-runtime")
    assert effspec(["compile", str(V1), "--backend", "keras", "-o", str(out)]) == 0
    path = out / "keras" / "keras_v1_tiny" / "train.py"
    spec = importlib.util.spec_from_file_location("keras_v1_tiny_train", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)
    sys.modules.pop(module.net.__name__, None)


def run(trainer: ModuleType, *flags: str) -> int:
    with tf.device("/CPU:0"):
        return trainer.main([*QUIET, *flags])


@pytest.mark.parametrize("kind", ["exponential", "cosine"])
def test_schedule_matches_the_torch_trainer(kind: str) -> None:
    settings = {"warmup_steps": 5, "decay_steps": 7, "decay_rate": 0.5, "total_steps": 40}
    keras_schedule = WarmupThenDecay(peak=0.2, kind=kind, **settings)
    torch_schedule = LrSchedule(base_lr=0.2, kind=kind, **settings)
    for step in range(45):
        assert float(keras_schedule(step)) == pytest.approx(torch_schedule.lr_at(step), rel=1e-5, abs=1e-7), (
            step
        )  # float32


def test_weight_average_rule_covers_batch_norm_statistics() -> None:
    """Update n uses ema_decay_at(decay, n), like the torch trainer; moving means and variances are
    averaged with the weights; swapping twice restores the model."""
    inputs = keras.Input((4, 4, 3))
    outputs = keras.layers.BatchNormalization()(keras.layers.Conv2D(2, 3)(inputs))
    model = keras.Model(inputs, outputs)
    optimizer = RMSpropTF(0.1)
    optimizer.track_average(model, 0.9)
    optimizer.build(model.trainable_variables)
    assert len(optimizer.averages) == len(model.trainable_variables) + 2  # + moving mean and variance
    expected = None
    rng = np.random.default_rng(0)
    for update in range(1, 8):
        for variable in optimizer.averaged:
            variable.assign(rng.normal(size=variable.shape).astype("float32"))
        optimizer.iterations.assign(update)
        optimizer.update_average()
        current = [v.numpy() for v in optimizer.averaged]
        decay = ema_decay_at(0.9, update)
        expected = (
            current
            if expected is None
            else [decay * e + (1 - decay) * c for e, c in zip(expected, current, strict=True)]
        )
        for average, value in zip(optimizer.averages, expected, strict=True):
            np.testing.assert_allclose(average.numpy(), value, rtol=1e-5, atol=1e-6)
    before = [v.numpy() for v in optimizer.averaged]
    optimizer.swap_average()
    np.testing.assert_allclose(optimizer.averaged[-1].numpy(), expected[-1], rtol=1e-5)  # the moving variance too
    optimizer.swap_average()
    for variable, value in zip(optimizer.averaged, before, strict=True):
        np.testing.assert_array_equal(variable.numpy(), value)


def _png(path: Path, seed: int) -> None:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(20, 24, 3), dtype=np.uint8)
    path.write_bytes(tf.io.encode_png(pixels).numpy())


def test_bad_input_exits_2_with_one_line(
    trainer: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def error(*flags: str) -> str:
        capsys.readouterr()
        assert run(trainer, *flags) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and ": error: " in lines[0], lines
        return lines[0]

    out = str(tmp_path / "out")
    for flag, value in OUT_OF_RANGE:
        assert f"{flag} must be" in error(flag, value, "--output", out)
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert "is a file, not a directory" in error("--output", str(blocker))
    assert "cannot create it" in error("--output", str(blocker / "below"))

    root = tmp_path / "images"
    for split in ("train", "val"):
        for name in ("cat", "dog"):
            (root / split / name).mkdir(parents=True)
            _png(root / split / name / "0.png", 0)
    (root / "train" / "owl").mkdir()
    (root / "train" / "owl" / "zero.jpg").write_bytes(b"")
    assert "train/owl: empty class folder" in error("--data", str(root), "--output", out)

    forged = tmp_path / "forged" / "checkpoint"
    forged.mkdir(parents=True)
    (forged / "checkpoint.json").write_text("{not json")
    assert "is not a checkpoint record" in error("--output", str(forged.parent), "--resume")
    (forged / "checkpoint.json").write_text(json.dumps({"weights": "../../etc/passwd", "step": 1, "seeds": []}))
    assert "incompatible checkpoint" in error("--output", str(forged.parent), "--resume")


@pytest.mark.slow
def test_image_folder_skips_bad_files_and_resume_cleans_up(
    trainer: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Empty, corrupt and non-image files are skipped and counted; a forged weights file is refused;
    a resumed run removes the temporary files a killed one left."""
    root = tmp_path / "images"
    for split, count in (("train", 4), ("val", 1)):
        for label, name in enumerate(("cat", "dog")):
            (root / split / name).mkdir(parents=True)
            for index in range(count):
                _png(root / split / name / f"{index}.png", 10 * label + index)
    (root / "train" / "cat" / "empty.png").write_bytes(b"")
    (root / "train" / "dog" / "corrupt.jpg").write_bytes(b"\x00\x01 not a jpeg")
    (root / "train" / "dog" / "notes.txt").write_text("hello")
    run_dir = tmp_path / "run"
    flags = ["--data", str(root), "--batch-size", "4", "--epochs", "2", "--output", str(run_dir)]
    capsys.readouterr()
    assert run(trainer, *flags, "--max-steps", "1") == 0
    assert "skipped 3 file(s) that are empty or not images" in capsys.readouterr().err
    checkpoint = run_dir / "checkpoint"
    (checkpoint / ".tmp-state-000000002.weights.h5").write_bytes(b"half")
    (checkpoint / "checkpoint.json.tmp").write_text("{")
    assert run(trainer, *flags, "--resume") == 0
    assert sorted(path.name for path in checkpoint.iterdir()) == ["checkpoint.json", "state-000000004.weights.h5"]
    (checkpoint / "state-000000004.weights.h5").write_bytes(b"forged, not HDF5")
    capsys.readouterr()
    assert run(trainer, *flags, "--resume") == 2
    assert "incompatible checkpoint" in capsys.readouterr().err
