"""Both trainers on the same small real image set: scikit-learn's digits (1,797 8x8 scans shipped
inside the package, nothing downloaded), written as an image folder of 32 px RGB PNGs with an
80/20 split, trained from the tiny V2 spec with its recipe (augmentation and progressive learning
off), evaluated with the weight average (EMA) as both trainers do by default.

What it shows: the EMA means the same in both backends (same warmup rule, weights and batch-norm
statistics averaged, evaluation on the average), so both reach validation top-1 far above chance
(10%) and within MARGIN points of each other. Run as a script for the longer table in the report:
``python tests/test_train_real_data.py OUT_DIR [EPOCHS]``.
"""

from __future__ import annotations

import csv
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
SPEC = ROOT / "tests" / "data" / "torch_v2_tiny.yaml"
# Short enough for the suite (2 cores): 24 px (the scans are 8x8), global batch 32, a higher peak
# rate than the spec's 0.016 per 256 so that 4 epochs (176 steps) suffice; the same flags in both
# backends. One seed is too noisy at 4 epochs (the curves climb steeply there): EMA top-1 torch
# 82.8 / Keras 77.5 with seed 0, 75.0 / 79.4 with seed 1, so the test averages SEEDS: 78.9 vs 78.5
# (after the fixes of docs/equivalence.md, which has the table; at 12 epochs seed 0 gives 90.6 vs 90.8).
FLAGS = [
    *("--augmentation", "none", "--no-progressive", "--train-resolution", "24", "--eval-resolution", "24"),
    *("--batch-size", "32", "--lr-per-256", "0.128", "--warmup-epochs", "1", "--no-tensorboard", "--seed", "0"),
]
EPOCHS = 4
SEEDS = ("0", "1")  # each backend's final EMA top-1 is averaged over these
CHANCE = 10.0
FLOOR = 60.0  # validation top-1 (%) each backend must reach with its EMA weights
MARGIN = 3.0  # points between the two backends' final EMA top-1, averaged over SEEDS
ENV = {
    **os.environ,
    **{"TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": "", "PYTHONHASHSEED": "0", "PYTHONWARNINGS": "ignore"},
    **{"TF_NUM_INTRAOP_THREADS": "1", "TF_NUM_INTEROP_THREADS": "2", "OMP_NUM_THREADS": "1"},
}


def write_digits(root: Path) -> Path:
    """root/{train,val}/<digit>/<index>.png: 32x32 RGB, 80/20 split in a seeded random order."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    order = np.random.default_rng(0).permutation(len(digits.target))
    cut = int(0.8 * len(order))
    for position, index in enumerate(order):
        split = "train" if position < cut else "val"
        folder = root / split / str(digits.target[index])
        folder.mkdir(parents=True, exist_ok=True)
        pixels = (digits.images[index] * (255.0 / 16.0)).astype(np.uint8)
        image = Image.fromarray(pixels, mode="L").resize((32, 32), Image.Resampling.BILINEAR).convert("RGB")
        image.save(folder / f"{index}.png")
    return root


# `effspec train` as users run it: the product imports torchvision through effspec.support.vision.
EFFSPEC = "import sys; from effspec.cli import main; sys.exit(main(sys.argv[1:]))"


def start(
    backend: str, data: Path, output: Path, epochs: int, *extra: str, flags: list[str] = FLAGS
) -> subprocess.Popen:
    command = [sys.executable, "-c", EFFSPEC, "train", str(SPEC), "--backend", backend]
    command += ["--data", str(data), "--epochs", str(epochs), *flags, "--output", str(output), *extra]
    command += ["--workers", "0"] if backend == "torch" else ["--verbose", "0", "--deterministic"]
    log = open(output.parent / f"{output.name}.log", "w")  # noqa: SIM115 (closed with the process)
    return subprocess.Popen(command, env=ENV, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)


def top1(backend: str, output: Path) -> list[float]:
    """Validation top-1 (%) per epoch, from each trainer's metrics.csv."""
    with open(output / "metrics.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    if backend == "torch":
        return [float(row["val_top1"]) for row in rows]
    return [100.0 * float(row["val_accuracy"]) for row in rows]


def finish(process: subprocess.Popen, output: Path) -> None:
    code = process.wait(timeout=600)
    log = (output.parent / f"{output.name}.log").read_text()
    assert code == 0, log[-3000:]


def skip_unless_installed() -> None:
    """Skip when what the runs need is missing (not imported here: the runs are subprocesses)."""
    for module in ("sklearn", "torch", "tensorflow", "PIL"):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} is not installed")


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    skip_unless_installed()
    return write_digits(tmp_path_factory.mktemp("digits"))


@pytest.mark.slow
@pytest.mark.skipif(
    not os.environ.get("EFFSPEC_TRAIN_DIGITS"),
    reason="four 4-epoch trainings (2 backends x 2 seeds), 3-4 minutes on 2 idle cores: .ci/run runs it "
    "after the suite with EFFSPEC_TRAIN_DIGITS=1",
)
def test_both_backends_learn_real_digits_to_the_same_accuracy(digits: Path, tmp_path: Path) -> None:
    runs = {(backend, seed): tmp_path / f"{backend}-{seed}" for backend in ("torch", "keras") for seed in SEEDS}
    processes = {
        (backend, seed): start(backend, digits, output, EPOCHS, flags=[*FLAGS[:-1], seed])
        for (backend, seed), output in runs.items()
    }
    for key, process in processes.items():
        finish(process, runs[key])
    curves = {key: top1(key[0], output) for key, output in runs.items()}
    for key, curve in curves.items():
        assert len(curve) == EPOCHS, (key, curve)
        assert curve[-1] >= FLOOR, f"{key}: EMA validation top-1 per epoch {curve}"
        assert max(curve) > 3 * CHANCE
    final = {backend: np.mean([curves[(backend, seed)][-1] for seed in SEEDS]) for backend in ("torch", "keras")}
    gap = abs(final["torch"] - final["keras"])
    assert gap <= MARGIN, f"mean EMA top-1 over seeds {SEEDS} differs by {gap:.1f} points: {final}, {curves}"


#: The issue's setting for the table: the spec's recipe as it is (48 px, batch 8, lr 0.016 per
#: 256, EMA 0.999), augmentation and progressive learning off.
RECIPE_DEFAULTS = ["--augmentation", "none", "--no-progressive", "--no-tensorboard", "--seed", "0"]


def table(out: Path, epochs: int) -> None:
    """backend x EMA on/off -> validation top-1 at the first, middle and last epoch (each backend
    pair runs side by side)."""
    data = out / "digits"
    if not data.exists():
        write_digits(data)
    outputs = {}
    for ema in ("0.999", "0"):
        started = {}
        for backend in ("torch", "keras"):
            output = out / f"{backend}-ema{ema}"
            outputs[(backend, ema)] = output
            started[backend] = start(backend, data, output, epochs, "--ema-decay", ema, flags=RECIPE_DEFAULTS)
        for backend, process in started.items():
            finish(process, outputs[(backend, ema)])
    middle = (epochs + 1) // 2
    print(f"| backend | --ema-decay | val top-1 epoch 1 | epoch {middle} | epoch {epochs} |")
    print("|---|---|---|---|---|")
    for (backend, ema), output in outputs.items():
        curve = top1(backend, output)
        print(f"| {backend} | {ema} | {curve[0]:.1f} | {curve[middle - 1]:.1f} | {curve[-1]:.1f} |")


if __name__ == "__main__":
    table(Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 12)
