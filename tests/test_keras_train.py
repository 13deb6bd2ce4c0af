"""The generated Keras train.py, run as a user runs it: compiled from tiny specs, in subprocesses.

CPU only. Runs are shared by module-scoped fixtures (each costs ~10-20 s: TensorFlow start-up,
tracing, then a few dozen steps), so the whole file stays within its time budget.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import ROOT

from effspec.cli import main

V1 = ROOT / "tests" / "data" / "keras_v1_tiny.yaml"  # MBConv + SE, 32 px, batch 16
V2 = ROOT / "tests" / "data" / "keras_v2_tiny.yaml"  # Fused-MBConv + progressive 24..40 px
# One intra-op thread per process: two runs overlap on this 2-core machine, and the tiny
# models gain nothing from splitting each op.
ENV = {
    **os.environ,
    **{"TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": "", "PYTHONHASHSEED": "0"},
    **{"TF_NUM_INTRAOP_THREADS": "1", "OMP_NUM_THREADS": "1"},
}

# A small fixed synthetic set (16 images = one global batch) seen 6 times per epoch.
FIXED_BATCH = ["--synthetic-train-size", "16", "--synthetic-val-size", "8", "--steps-per-epoch", "6", "--epochs", "3"]
RECIPE = ["--warmup-epochs", "0", "--lr-per-256", "0.5", "--deterministic", "--verbose", "2"]
RESUME_STEPS = 18  # 3 epochs x 6 steps

# MirroredStrategy over 2 logical CPUs vs one device, same global batch of 16, 4 steps. Sync BN
# makes the batch statistics global in both; dropout and drop path are off (their masks are
# drawn per replica). The all-reduce sums the replicas' gradients in another order than one
# device sums its batch: float32 round-off, measured at most 3.6e-7 on any weight after 6 steps.
MIRRORED = [
    *("--synthetic-train-size", "32", "--synthetic-val-size", "8", "--steps-per-epoch", "4", "--epochs", "1"),
    *("--dropout", "0", "--drop-path-rate", "0", "--ema-decay", "0", "--sync-bn"),
    *("--warmup-epochs", "0", "--lr-per-256", "0.5", "--deterministic", "--verbose", "2"),
]
MIRRORED_ATOL = 1e-5


@pytest.fixture(scope="module")
def scripts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("keras-train")
    assert main(["compile", str(V1), str(V2), "--backend", "keras", "-o", str(out)]) == 0
    return {"v1": out / "keras" / "keras_v1_tiny" / "train.py", "v2": out / "keras" / "keras_v2_tiny" / "train.py"}


class Train:
    """train.py running in the background: runs overlap (TensorFlow tracing is mostly one core)."""

    def __init__(self, script: Path, *flags: str, log: Path) -> None:
        self.log = log
        with open(log, "w") as out:
            self.process = subprocess.Popen([sys.executable, str(script), *flags], env=ENV, stdout=out, stderr=out)

    def wait(self, expect: int = 0) -> str:
        """Its output (stdout and stderr) once it has exited with `expect`."""
        code = self.process.wait(timeout=300)
        output = self.log.read_text()
        assert code == expect, output[-4000:]
        return output


def train(script: Path, *flags: str, log: Path, expect: int = 0) -> str:
    return Train(script, *flags, log=log).wait(expect)


def weights(path: Path) -> dict[str, np.ndarray]:
    """Every array of a Keras .weights.h5 file, by its path inside the file."""
    arrays: dict[str, np.ndarray] = {}
    with h5py.File(path, "r") as file:
        file.visititems(lambda name, item: arrays.update({name: item[()]}) if isinstance(item, h5py.Dataset) else None)
    return arrays


def metrics(run: Path) -> list[dict[str, str]]:
    with open(run / "metrics.csv", newline="") as file:
        return list(csv.DictReader(file))


def run_log(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


def checkpoint_step(run: Path) -> int:
    try:
        return json.loads((run / "checkpoint" / "checkpoint.json").read_text())["step"]
    except (FileNotFoundError, json.JSONDecodeError):
        return 0


@pytest.fixture(scope="module")
def uninterrupted(scripts: dict[str, Path], progressive: Train, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """(The progressive run is started first, so that it overlaps this one and the resumed one.)"""
    run = tmp_path_factory.mktemp("uninterrupted")
    flags = [*FIXED_BATCH, *RECIPE, "--checkpoint-every", "2", "--output", str(run)]
    train(scripts["v1"], *flags, log=run.parent / "uninterrupted.log")
    return run


@pytest.fixture(scope="module")
def resumed(scripts: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    """The same run SIGKILLed once a mid-epoch checkpoint exists, then restarted with --resume."""
    run = tmp_path_factory.mktemp("resumed")
    flags = [*FIXED_BATCH, *RECIPE, "--checkpoint-every", "2", "--output", str(run)]
    process = subprocess.Popen(
        [sys.executable, str(scripts["v1"]), *flags], env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 240
    while checkpoint_step(run) < 8 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL, "the run ended before it could be interrupted"
    killed_at = checkpoint_step(run)
    assert 8 <= killed_at < RESUME_STEPS
    train(scripts["v1"], *flags, "--resume", log=run.parent / "resumed.log")
    return run, killed_at


def test_loss_goes_down_on_a_fixed_batch(uninterrupted: Path) -> None:
    rows = metrics(uninterrupted)
    losses = [float(row["loss"]) for row in rows]
    assert [int(row["step"]) for row in rows] == [6, 12, 18]
    # Epoch means of 6 steps each: ~2.1 -> ~0.7 (0.5 is the floor with label smoothing 0.1).
    assert losses[-1] < 0.5 * losses[0], losses
    # The last epoch's mean training accuracy: 0.885 on the shared synthetic images (backends/synthetic.py)
    assert float(rows[-1]["accuracy"]) >= 0.8


@pytest.mark.slow
def test_interrupted_run_resumes_to_the_same_weights(uninterrupted: Path, resumed: tuple[Path, int]) -> None:
    run, killed_at = resumed  # SIGKILLed after its checkpoint at step killed_at (8..17)
    assert json.loads((run / "summary.json").read_text())["steps"] == RESUME_STEPS
    assert checkpoint_step(run) == RESUME_STEPS
    assert sorted({int(row["epoch"]) for row in metrics(run)}) == [0, 1, 2]
    name = f"checkpoint/state-{RESUME_STEPS:09d}.weights.h5"  # model + optimizer + EMA
    for file in (name, "model.weights.h5"):
        expected, actual = weights(uninterrupted / file), weights(run / file)
        assert expected.keys() == actual.keys() and expected
        for key in expected:
            np.testing.assert_array_equal(actual[key], expected[key], err_msg=f"{file}: {key}, killed at {killed_at}")


@pytest.mark.slow
def test_mirrored_on_two_cpus_matches_one_device(scripts: dict[str, Path], tmp_path: Path) -> None:
    one = Train(
        scripts["v1"], *MIRRORED, "--strategy", "one", "--output", str(tmp_path / "one"), log=tmp_path / "one.log"
    )
    two = Train(
        scripts["v1"],
        *MIRRORED,
        *("--strategy", "mirrored", "--cpu-devices", "2", "--output", str(tmp_path / "two")),
        log=tmp_path / "two.log",
    )
    assert "trained 4 steps" in one.wait() and "trained 4 steps" in two.wait()
    expected, actual = weights(tmp_path / "one" / "model.weights.h5"), weights(tmp_path / "two" / "model.weights.h5")
    assert expected.keys() == actual.keys()
    worst = max(float(np.max(np.abs(actual[key] - expected[key]))) for key in expected)
    assert worst <= MIRRORED_ATOL, worst
    # Batch-norm moving variances start at 1: after 4 steps each holds (synchronized) batch
    # statistics, so the comparison above is not between untouched initial values.
    variances = [expected[key] for key in expected if "batch_norm" in key and key.endswith("vars/3")]
    assert variances and min(float(np.max(np.abs(var - 1))) for var in variances) > 100 * MIRRORED_ATOL


def _png(path: Path, pixels: np.ndarray) -> None:
    """A minimal RGB PNG writer (no imaging library needed)."""
    height, width, _ = pixels.shape
    rows = b"".join(b"\x00" + pixels[y].tobytes() for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")
    )


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 classes of PNGs of assorted sizes: 8 per class in train/, 2 in val/."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for split, count in (("train", 8), ("val", 2)):
        for label, name in enumerate(("cat", "dog", "fox")):
            (root / split / name).mkdir(parents=True)
            for index in range(count):
                height, width = rng.integers(28, 60, size=2)
                pixels = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8) // 2 + 40 * label
                _png(root / split / name / f"{index}.png", pixels.astype(np.uint8))
    return root


@pytest.fixture(scope="module")
def progressive(scripts: dict[str, Path], image_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Train:
    """V2 spec, progressive learning over 3 epochs (one per stage), on the PNG folder."""
    run = tmp_path_factory.mktemp("progressive")
    flags = ["--data", str(image_folder), "--epochs", "3", "--steps-per-epoch", "2", "--verbose", "2"]
    flags += ["--grad-checkpointing"]  # recomputed activations: runs the same
    flags += ["--output", str(run)]
    return Train(scripts["v2"], *flags, log=run.parent / "progressive.log")


@pytest.fixture(scope="module")
def progressive_run(progressive: Train) -> Path:
    progressive.wait()
    return Path(progressive.process.args[-1])


def test_image_folder_trains_and_validates(progressive_run: Path) -> None:
    rows = metrics(progressive_run)
    assert len(rows) == 3
    assert all(np.isfinite(float(row[key])) for row in rows for key in ("loss", "val_loss", "val_accuracy"))
    assert [int(row["step"]) for row in rows] == [2, 4, 6]
    assert (progressive_run / "model.weights.h5").is_file()
    log = (progressive_run.parent / "progressive.log").read_text()
    assert "Epoch 2/3" in log and "Epoch 3/3" in log and "Epoch 1/1" not in log  # the run's epoch of its total


def test_progressive_stages_change_what_the_model_sees(progressive_run: Path) -> None:
    log = run_log(progressive_run)
    assert [entry["batch_shape"] for entry in log] == [[8, size, size, 3] for size in (24, 32, 40)]
    assert [entry["dropout"] for entry in log] == pytest.approx([0.05, 0.125, 0.2])
    assert [entry["mixup_alpha"] for entry in log] == pytest.approx([0.0, 0.15, 0.3])
    assert [entry["randaugment_magnitude"] for entry in log] == pytest.approx([4, 7, 10])


@pytest.mark.slow
def test_bad_data_dir_and_incompatible_checkpoint_exit_2(
    scripts: dict[str, Path], uninterrupted: Path, tmp_path: Path
) -> None:
    missing = Train(
        scripts["v1"], "--data", str(tmp_path / "nowhere"), "--output", str(tmp_path / "a"), log=tmp_path / "a.log"
    )
    other_spec = Train(scripts["v2"], "--resume", "--output", str(uninterrupted), log=tmp_path / "b.log")
    last = missing.wait(expect=2).strip().splitlines()[-1]
    assert last.startswith("train.py: error: --data ") and "no such directory" in last, last
    last = other_spec.wait(expect=2).strip().splitlines()[-1]
    assert "incompatible checkpoint" in last and "spec_sha256" in last, last
