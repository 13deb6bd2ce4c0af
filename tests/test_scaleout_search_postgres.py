"""`effspec search --storage postgresql+psycopg2://...` on a real PostgreSQL server (issue 24).

The server is pgserver's (PostgreSQL binaries in a wheel), started in a temporary folder and reached
over its Unix socket, as workers on other machines would reach a server over TCP. Two workers, each
with its own output folder (as on two machines), share one study: they run trials at the same time,
one is SIGKILLed while it trains, its trial is recorded failed (interrupted) and enqueued again, and
its rerun plus the surviving worker complete the study with no candidate run twice. results.csv and
best.yaml then hold what one worker alone computes for the same trials (a second database).
"""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT, communicate

if not os.environ.get("EFFSPEC_SCALEOUT"):  # minutes of CPU: .ci/run runs it after the main suite
    pytest.skip("set EFFSPEC_SCALEOUT=1 to run the scale-out tests", allow_module_level=True)
pytest.importorskip("torch")
optuna = pytest.importorskip("optuna")
pgserver = pytest.importorskip("pgserver")
pytest.importorskip("psycopg2")

TINY = ROOT / "tests" / "data" / "torch_v1_tiny.yaml"
STUDY = "effspec-search-torch-v1-tiny"
TRIALS = 3
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
# Per trial: what the trial computed (not when, where or by whom).
COMPARED = ("alpha", "beta", "gamma", "macs", "params", "resolution", "train_resolution", "val_top1", "val_loss")


@pytest.fixture(scope="module")
def postgres(tmp_path_factory: pytest.TempPathFactory):
    """A PostgreSQL server for this module, with one database per study; URL per database."""
    server = pgserver.get_server(tmp_path_factory.mktemp("pgdata"), cleanup_mode="delete")
    socket_dir = server.get_postmaster_info().socket_dir
    for name in ("shared", "single"):
        server.psql(f"CREATE DATABASE {name};")
    yield lambda name: f"postgresql+psycopg2://postgres@/{name}?host={socket_dir}"
    server.cleanup()


def command(out: Path, storage: str) -> list[str]:
    return [
        sys.executable, "-m", "effspec.cli", "search", str(TINY), "--data", "synthetic", "--trials", str(TRIALS),
        "--trial-steps", "3", "--batch-size", "8", "--device", "cpu", "-o", str(out), "--storage", storage,
    ]  # fmt: skip


def start(out: Path, storage: str) -> subprocess.Popen:
    return subprocess.Popen(
        command(out, storage), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV, cwd=ROOT
    )


def finish(process: subprocess.Popen) -> str:
    stdout, stderr = communicate(process, 300)
    assert process.returncode == 0, stderr[-4000:]
    return stdout


def trials(storage: str) -> list:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        return optuna.load_study(storage=storage, study_name=STUDY).get_trials()
    except KeyError:  # not created yet
        return []
    except Exception as exc:  # this poll raced the workers creating the schema (CREATE TYPE ...): poll again
        if type(exc).__name__ in ("IntegrityError", "OperationalError"):
            return []
        raise


def rows(out: Path) -> list[dict[str, str]]:
    with open(out / "results.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def computed(out: Path) -> dict[tuple[str, str, str], dict[str, str]]:
    complete = [row for row in rows(out) if row["state"] == "complete"]
    return {(r["alpha"], r["beta"], r["gamma"]): {key: r[key] for key in COMPARED} for r in complete}


def running_workers(storage: str) -> set[str]:
    return {t.user_attrs.get("worker", "") for t in trials(storage) if t.state.name == "RUNNING"}


def test_two_workers_on_postgresql_split_the_trials_survive_a_kill_and_match_one_worker(
    postgres, tmp_path: Path
) -> None:
    shared, single = postgres("shared"), postgres("single")
    alone = start(tmp_path / "alone", single)  # the reference: one worker, all trials
    first, second = start(tmp_path / "machine-a", shared), start(tmp_path / "machine-b", shared)
    deadline = time.monotonic() + 240
    try:  # kill the first worker while both train a trial of the same study at once
        while len(running := running_workers(shared)) < 2:
            assert first.poll() is None and second.poll() is None, "a worker ended before both trained at once"
            assert time.monotonic() < deadline, f"never two trials at once: {running}"
            time.sleep(0.2)
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    rerun = start(tmp_path / "machine-a", shared)
    second_out, rerun_out = finish(second), finish(rerun)
    finish(alone)

    done = [t for t in trials(shared) if t.state.name == "COMPLETE"]
    failed = [t for t in trials(shared) if t.state.name == "FAIL"]
    assert len(done) == TRIALS and len({tuple(sorted(t.params.items())) for t in done}) == TRIALS  # none twice
    assert len(failed) == 1 and failed[0].user_attrs["error"].startswith("interrupted")
    assert f":{first.pid}:" in failed[0].user_attrs["worker"]  # the killed worker's trial, recorded failed
    assert any(f":{second.pid}:" in t.user_attrs["worker"] for t in done)
    assert {t.params["alpha"] for t in done} >= {failed[0].params["alpha"]}  # ... and completed by another
    assert "trial(s) run by this worker" in second_out and "trial(s) run by this worker" in rerun_out

    # A worker writes results.csv from the study as it sees it when it runs out of trials (one that
    # finished first may miss a trial another still trained). Run again once all are done, it runs
    # nothing and writes the whole study: the trials one worker alone computed, the same best.yaml.
    assert "0 trial(s) run by this worker" in finish(start(tmp_path / "machine-a", shared))
    expected = computed(tmp_path / "alone")
    assert len(expected) == TRIALS
    assert computed(tmp_path / "machine-a") == expected
    assert sum(row["state"] == "fail" for row in rows(tmp_path / "machine-a")) == 1
    assert (tmp_path / "machine-a" / "best.yaml").read_text() == (tmp_path / "alone" / "best.yaml").read_text()
    assert computed(tmp_path / "machine-b").items() <= expected.items()  # what it saw, the same numbers
