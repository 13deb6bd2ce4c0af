"""torch multi-node (issue 24): `torchrun --nnodes 2 --nproc-per-node 1` with a c10d rendezvous, as
two machines run it (two launcher processes, here both on localhost; the first hosts the
rendezvous store, as --rdzv-endpoint's machine would), trains `effspec train --backend torch` to the
weights of one process on the same global batch.

As tests/test_torch_train.py's 2-process DDP test: --sync-bn, dropout and drop path off (each
process draws its own masks); only float summation order differs. Tolerance 1e-5 absolute.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, free_port

torch = pytest.importorskip("torch")
from torch_helpers import worst_difference  # noqa: E402

SPEC = ROOT / "tests" / "data" / "torch_v1_tiny.yaml"  # MBConv + SE, 32 px
TORCHRUN = str(Path(sys.executable).with_name("torchrun"))
RECIPE = [
    *("--data", "synthetic", "--synthetic-train-size", "64", "--synthetic-val-size", "16", "--workers", "0"),
    *("--batch-size", "16", "--epochs", "2", "--dropout", "0", "--drop-path-rate", "0", "--lr-per-256", "0.2"),
    *("--sync-bn", "--no-tensorboard", "--log-every", "1"),
]
ATOL = 1e-5


def environment() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", "CUDA_VISIBLE_DEVICES": ""}


def train_command(output: Path) -> list[str]:
    return ["-m", "effspec.cli", "train", str(SPEC), "--backend", "torch", *RECIPE, "--output", str(output)]


def start(command: list[str], log: Path) -> subprocess.Popen:
    """Output to a file, not a pipe: a process blocked on a full pipe would stall the other's collectives."""
    with open(log, "w") as out:
        return subprocess.Popen(command, env=environment(), cwd=ROOT, stdout=out, stderr=out)


def wait_all(processes: list[subprocess.Popen], timeout: float = 300) -> None:
    """Wait until all have exited 0 (any still running after `timeout` is killed)."""
    try:
        for process in processes:
            process.wait(timeout=timeout)
    finally:
        for process in processes:
            process.kill()
    for process in processes:
        log = Path(process.args[-1]).with_suffix(".log")  # the command's last argument: its --output
        assert process.returncode == 0, f"{process.args} exited {process.returncode}:\n{log.read_text()[-4000:]}"


def checkpoint(output: Path) -> dict:
    return torch.load(output / "checkpoint.pt", map_location="cpu", weights_only=True)


@pytest.mark.slow
def test_two_nodes_match_one_process(tmp_path: Path) -> None:
    endpoint = f"127.0.0.1:{free_port()}"
    single = start([sys.executable, *train_command(tmp_path / "one")], tmp_path / "one.log")
    nodes = []
    for host in (1, 0):  # the second machine may start first: it waits for the rendezvous host
        launcher = [
            TORCHRUN, "--nnodes", "2", "--nproc-per-node", "1", "--rdzv-backend", "c10d",
            "--rdzv-endpoint", endpoint, "--rdzv-id", "effspec-two-nodes",
            "--rdzv-conf", f"is_host={host},join_timeout=120", "--max-restarts", "0",
        ]  # fmt: skip
        output = tmp_path / f"node{host}"  # each machine its own disk; global rank 0 writes
        nodes.append(start([*launcher, *train_command(output)], tmp_path / f"node{host}.log"))
    wait_all([single, *nodes])
    [written] = [path for path in (tmp_path / "node0", tmp_path / "node1") if (path / "checkpoint.pt").exists()]
    one, two = checkpoint(tmp_path / "one"), checkpoint(written)
    assert (one["world_size"], two["world_size"]) == (1, 2)
    assert one["position"] == two["position"] == {"epoch": 2, "step": 0, "global_step": 8}
    worst, diff = worst_difference(one["model"], two["model"])
    assert diff < ATOL, f"{worst} differs by {diff:.3g}"
    moved = max(state["momentum_buffer"].abs().max().item() for state in one["optimizer"]["state"].values())
    assert moved > 1e-4  # the runs really trained
