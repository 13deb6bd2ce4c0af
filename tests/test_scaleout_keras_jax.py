"""The Keras trainer on Keras' JAX backend (issue 24): `effspec train --backend keras` with
KERAS_BACKEND=jax, data parallel through keras.distribution.DataParallel over 4 virtual CPU devices
(XLA_FLAGS=--xla_force_host_platform_device_count=4), stopped and resumed from its checkpoint,
ends with the weights of one device trained straight through.

The whole recipe is on (RMSProp, EMA, dropout, drop path, label smoothing): under DataParallel JAX
runs one SPMD program over the global batch, so batch-norm statistics and the dropout / drop-path
masks are the global batch's, as on one device. Only float summation order differs (measured
2.4e-7 on any weight or optimizer slot after 6 steps); tolerance 1e-5.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, h5_arrays

if not os.environ.get("EFFSPEC_SCALEOUT"):  # minutes of CPU: .ci/run runs it after the main suite
    pytest.skip("set EFFSPEC_SCALEOUT=1 to run the scale-out tests", allow_module_level=True)
pytest.importorskip("jax")
pytest.importorskip("h5py")

SPEC = ROOT / "tests" / "data" / "keras_v1_tiny.yaml"  # MBConv + SE, 32 px
STEPS = 6
FLAGS = [
    *("--data", "synthetic", "--synthetic-train-size", "32", "--synthetic-val-size", "8"),
    *("--batch-size", "16", "--steps-per-epoch", "3", "--epochs", "2", "--checkpoint-every", "3"),
    *("--warmup-epochs", "0", "--lr-per-256", "0.5", "--deterministic", "--verbose", "2", "--no-tensorboard"),
]
ATOL = 1e-5
FOUR_DEVICES = "--xla_force_host_platform_device_count=4"


def environment(**extra: str) -> dict[str, str]:
    env = {**os.environ, "KERAS_BACKEND": "jax", "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
    env.update({"OMP_NUM_THREADS": "1", "TF_NUM_INTRAOP_THREADS": "1", "PYTHONWARNINGS": "ignore"})
    return {**env, **extra}


def start(output: Path, *flags: str, **env: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "effspec.cli", "train", str(SPEC), "--backend", "keras", *FLAGS, *flags]
    log = open(output.with_suffix(".log"), "w")  # noqa: SIM115 - closed by finish()
    process = subprocess.Popen(
        [*command, "--output", str(output)], env=environment(**env), stdout=log, stderr=subprocess.STDOUT, cwd=ROOT
    )
    process.log = log  # type: ignore[attr-defined]
    return process


def finish(process: subprocess.Popen, output: Path) -> str:
    try:
        code = process.wait(timeout=600)
    finally:
        process.kill()
        process.log.close()  # type: ignore[attr-defined]
    text = output.with_suffix(".log").read_text()
    assert code == 0, text[-4000:]
    return text


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, str]]:
    root = tmp_path_factory.mktemp("keras-jax")
    one, four = root / "one", root / "four"
    first = start(one, "--strategy", "one")
    stopped = start(four, "--max-steps", "3", XLA_FLAGS=FOUR_DEVICES)
    logs = {"one": finish(first, one), "stopped": finish(stopped, four)}
    logs["resumed"] = finish(start(four, "--resume", XLA_FLAGS=FOUR_DEVICES), four)
    return {"one": (one, logs["one"]), "four": (four, logs["stopped"] + logs["resumed"])}


def test_runs_on_jax_with_data_parallel_over_all_local_devices(runs: dict[str, tuple[Path, str]]) -> None:
    one, one_log = runs["one"]
    four, four_log = runs["four"]
    assert "keras (jax): data parallel over 1 cpu device" in one_log
    assert four_log.count("keras (jax): data parallel over 4 cpu devices") == 2
    assert "trained 3 steps" in four_log and f"trained {STEPS} steps" in four_log
    for run in (one, four):
        assert (run / "model.weights.h5").is_file() and (run / "summary.json").is_file()
        assert len((run / "metrics.csv").read_text().splitlines()) == 1 + 2  # header + one row per epoch


def test_four_devices_resumed_equal_one_device(runs: dict[str, tuple[Path, str]]) -> None:
    """Final weights (the EMA) and the whole checkpoint (weights, RMSProp slots, the average)."""
    one, four = runs["one"][0], runs["four"][0]
    name = f"checkpoint/state-{STEPS:09d}.weights.h5"
    for file in ("model.weights.h5", name):
        expected, actual = h5_arrays(one / file), h5_arrays(four / file)
        assert expected.keys() == actual.keys() and expected
        worst = max(float(np.max(np.abs(actual[key] - expected[key]), initial=0.0)) for key in expected)
        assert worst <= ATOL, (file, worst)
    # Not just equal initial weights: batch-norm moving variances (initially 1) really moved.
    final = h5_arrays(one / "model.weights.h5")
    moved = [
        float(np.max(np.abs(value - 1)))
        for key, value in final.items()
        if "batch_norm" in key and key.endswith("vars/3")
    ]
    assert moved and max(moved) > 100 * ATOL
