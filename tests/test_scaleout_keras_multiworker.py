"""TensorFlow multi-worker training (issue 24): two `effspec train --backend keras` worker processes on
localhost with TF_CONFIG (MultiWorkerMirroredStrategy over gRPC, as two machines run it) train to
the weights of one process on the same global batch; only the chief writes checkpoints, logs and
weights; a worker killed mid-run makes the other exit 1 with a one-line message, not hang.

As the MirroredStrategy test: sync BN on, dropout, drop path and EMA off (masks are drawn per
replica); only float summation order differs (measured 1.2e-7 after 4 steps). Tolerance 1e-5.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, free_port, h5_arrays

if not os.environ.get("EFFSPEC_SCALEOUT"):  # minutes of CPU: .ci/run runs it after the main suite
    pytest.skip("set EFFSPEC_SCALEOUT=1 to run the scale-out tests", allow_module_level=True)
pytest.importorskip("tensorflow")
pytest.importorskip("h5py")

SPEC = ROOT / "tests" / "data" / "keras_v1_tiny.yaml"  # MBConv + SE, 32 px, batch 16
FLAGS = [
    *("--data", "synthetic", "--synthetic-train-size", "32", "--synthetic-val-size", "8", "--epochs", "1"),
    *("--dropout", "0", "--drop-path-rate", "0", "--ema-decay", "0", "--sync-bn", "--warmup-epochs", "0"),
    *("--lr-per-256", "0.5", "--deterministic", "--verbose", "2", "--no-tensorboard"),
]
ATOL = 1e-5
WRITTEN = ("checkpoint", "metrics.csv", "log.jsonl", "model.weights.h5", "summary.json", "tensorboard")


def start(output: Path, *flags: str, tf_config: dict | None = None) -> subprocess.Popen:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": "", "PYTHONWARNINGS": "ignore"}
    env.update({"OMP_NUM_THREADS": "1", "TF_NUM_INTRAOP_THREADS": "1", "KERAS_BACKEND": "tensorflow"})
    env.pop("TF_CONFIG", None)
    if tf_config is not None:
        env["TF_CONFIG"] = json.dumps(tf_config)
    command = [sys.executable, "-m", "effspec.cli", "train", str(SPEC), "--backend", "keras", *FLAGS, *flags]
    # Output to a file, not a pipe: a worker blocked on a full pipe would stall the other's collectives.
    with open(output.parent / f"{output.name}.log", "w") as log:
        return subprocess.Popen([*command, "--output", str(output)], env=env, cwd=ROOT, stdout=log, stderr=log)


def workers(root: Path, *flags: str) -> list[subprocess.Popen]:
    """Worker 0 (the chief: no "chief" task in the cluster) and worker 1, each with its own --output."""
    cluster = {"worker": [f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"]}
    return [
        start(
            root / f"worker{index}", *flags, tf_config={"cluster": cluster, "task": {"type": "worker", "index": index}}
        )
        for index in (0, 1)
    ]


def finish(process: subprocess.Popen, expect: int = 0) -> str:
    try:
        process.wait(timeout=300)
    finally:
        process.kill()
    output = process.args[process.args.index("--output") + 1]
    out = Path(f"{output}.log").read_text()
    assert process.returncode == expect, out[-4000:]
    return out


def test_two_workers_match_one_process_and_only_the_chief_writes(tmp_path: Path) -> None:
    steps = ("--steps-per-epoch", "4")
    one = start(tmp_path / "one", *steps, "--strategy", "one")
    chief, other = workers(tmp_path, *steps)
    for process in (chief, other, one):
        assert "trained 4 steps" in finish(process)
    for name in WRITTEN[:-1]:
        assert (tmp_path / "worker0" / name).exists(), name
    assert not [name for name in WRITTEN if (tmp_path / "worker1" / name).exists()]
    name = "checkpoint/state-000000004.weights.h5"  # weights and RMSProp slots
    for file in ("model.weights.h5", name):
        expected, actual = h5_arrays(tmp_path / "one" / file), h5_arrays(tmp_path / "worker0" / file)
        assert expected.keys() == actual.keys() and expected
        worst = max(float(np.max(np.abs(actual[key] - expected[key]), initial=0.0)) for key in expected)
        assert worst <= ATOL, (file, worst)
    final = h5_arrays(tmp_path / "one" / "model.weights.h5")
    moved = [float(np.max(np.abs(v - 1))) for k, v in final.items() if "batch_norm" in k and k.endswith("vars/3")]
    assert moved and max(moved) > 100 * ATOL  # batch-norm variances (initially 1) really moved


def test_a_killed_worker_stops_the_run_with_a_clear_message(tmp_path: Path) -> None:
    chief, other = workers(tmp_path, "--steps-per-epoch", "400", "--checkpoint-every", "2")
    record = tmp_path / "worker0" / "checkpoint" / "checkpoint.json"
    deadline = time.monotonic() + 240
    try:  # kill worker 1 once the run is training (the chief has written a checkpoint)
        while not record.is_file():
            assert chief.poll() is None and other.poll() is None, "a worker ended before training"
            assert time.monotonic() < deadline, "no checkpoint in time"
            time.sleep(0.2)
    finally:
        other.send_signal(signal.SIGKILL)
        other.wait()
    killed_at = time.monotonic()
    out = finish(chief, expect=1)  # within finish()'s timeout: it does not hang
    lines = [line for line in out.splitlines() if "error:" in line]
    assert lines and "a worker of this multi-worker run stopped" in lines[-1], out[-3000:]
    assert "--resume" in lines[-1] and "Traceback" not in out
    assert time.monotonic() - killed_at < 120
    assert json.loads(record.read_text())["step"] < 400
