"""`effspec search`: the alpha/beta/gamma grid search through optuna, on a tiny spec and synthetic data.

Each trial runs the generated torch train.py for a few steps (a few seconds, mostly start-up)."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from effspec.support.errors import UsageError
from effspec.tools.search import DEFAULT_GRID, enumerate_candidates, parse_grid, pick

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "tests" / "data" / "torch_v1_tiny.yaml"
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _command(out: Path, trials: int, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "effspec.cli", "search", str(TINY), "--data", "synthetic", "--trials", str(trials),
        "--trial-steps", "3", "--batch-size", "8", "--device", "cpu", "-o", str(out), *extra,
    ]  # fmt: skip


def _study(out: Path):
    optuna = pytest.importorskip("optuna")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.load_study(storage=f"sqlite:///{out / 'search.db'}", study_name="effspec-search-torch-v1-tiny")


def _rows(out: Path) -> list[dict[str, str]]:
    with open(out / "results.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def test_grid_and_candidates() -> None:
    grid = parse_grid("alpha=1.0:1.2:0.1")
    assert grid["alpha"] == [1.0, 1.1, 1.2] and len(grid["beta"]) == 11
    for bad in ("alpha=2:1:0.1", "delta=1:2:0.1", "beta=0.5:1:0.1", "gamma=a:b:c"):
        with pytest.raises(UsageError):
            parse_grid(bad)
    candidates, base = enumerate_candidates(TINY, parse_grid(DEFAULT_GRID), 2.0, 0.05, 8)
    assert base == 1_231_872 and len(candidates) >= 3
    for c in candidates:
        assert abs(c.flops_ratio - 2) <= 0.1 and abs(c.macs_ratio - 2) <= 0.2
        assert abs(c.macs / base - c.macs_ratio) < 1e-9
    assert len({(c.macs, c.params) for c in candidates}) == len(candidates)  # one per rounded network
    assert [c.tag for c in pick(candidates, 3)] == [c.tag for c in pick(candidates, 3)]


@pytest.mark.slow
def test_search_three_trials_writes_csv_plot_and_best(tmp_path: Path) -> None:
    pytest.importorskip("optuna")
    pytest.importorskip("torch")
    out = tmp_path / "search"
    result = subprocess.run(_command(out, 3), capture_output=True, text=True, env=ENV, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    rows = _rows(out)
    assert len(rows) == 3 and {r["state"] for r in rows} == {"complete"}
    for column in ("alpha", "beta", "gamma", "macs", "params", "val_top1", "val_loss", "spec"):
        assert all(r[column] for r in rows), column
    assert len({(r["alpha"], r["beta"], r["gamma"]) for r in rows}) == 3
    for r in rows:
        assert (out / r["spec"]).is_file()
        assert 0 <= float(r["val_top1"]) <= 100
    assert (out / "search.png").read_bytes()[:4] == b"\x89PNG"
    from effspec.emit.pipeline import build

    best = build(out / "best.yaml")
    top = max(rows, key=lambda r: (float(r["val_top1"]), -float(r["val_loss"]), -int(r["trial"])))
    assert best.report.total.macs == int(top["macs"])
    text = (out / "best.yaml").read_text()
    assert f"alpha: {float(top['alpha']):g}, beta: {float(top['beta']):g}, gamma: {float(top['gamma']):g}" in text


@pytest.mark.slow
def test_killed_search_resumes_only_the_missing_trials(tmp_path: Path) -> None:
    pytest.importorskip("optuna")
    pytest.importorskip("torch")
    from optuna.trial import TrialState
    from sqlalchemy.exc import SQLAlchemyError

    out = tmp_path / "search"
    first = subprocess.Popen(_command(out, 3), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV, cwd=ROOT)
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:  # kill it while a trial trains, after one has completed
            if (out / "search.db").is_file():
                try:
                    states = [t.state for t in _study(out).get_trials()]
                except (KeyError, SQLAlchemyError):  # the file exists before optuna has made the study in it
                    states = []
                if TrialState.COMPLETE in states and TrialState.RUNNING in states:
                    break
            assert first.poll() is None, "the search ended before it could be killed"
            time.sleep(0.2)
        else:
            pytest.fail("no trial completed in time")
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    done_before = {t.number: t.params for t in _study(out).get_trials() if t.state == TrialState.COMPLETE}
    assert 1 <= len(done_before) < 3

    second = subprocess.Popen(
        _command(out, 3), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV, cwd=ROOT
    )
    stdout, stderr = second.communicate(timeout=180)
    assert second.returncode == 0, stderr
    trials = _study(out).get_trials()
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 3
    assert len({tuple(sorted(t.params.items())) for t in complete}) == 3  # every candidate exactly once
    for t in complete:  # the trials completed before the kill were not run again
        if t.number in done_before:
            assert t.params == done_before[t.number] and f":{second.pid}:" not in t.user_attrs["worker"]
    rerun = [t for t in complete if f":{second.pid}:" in t.user_attrs["worker"]]
    assert len(rerun) == 3 - len(done_before)
    killed = [t for t in trials if t.state == TrialState.FAIL]
    assert len(killed) == 1 and killed[0].user_attrs["error"].startswith("interrupted")
    assert f"{3 - len(done_before)} trial(s) run by this worker" in stdout
    rows = _rows(out)
    assert sum(r["state"] == "complete" for r in rows) == 3 and sum(r["state"] == "fail" for r in rows) == 1


@pytest.mark.slow
def test_two_workers_split_the_trials_of_one_storage(tmp_path: Path) -> None:
    pytest.importorskip("optuna")
    pytest.importorskip("torch")
    from optuna.trial import TrialState

    out = tmp_path / "search"
    workers = [
        subprocess.Popen(_command(out, 3), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV, cwd=ROOT)
        for _ in range(2)
    ]
    for worker in workers:
        _, stderr = worker.communicate(timeout=240)
        assert worker.returncode == 0, stderr
    trials = _study(out).get_trials()
    assert len(trials) == 3 and all(t.state == TrialState.COMPLETE for t in trials)  # nothing ran twice
    assert len({tuple(sorted(t.params.items())) for t in trials}) == 3
    by_worker = {w.pid: sum(f":{w.pid}:" in t.user_attrs["worker"] for t in trials) for w in workers}
    assert sum(by_worker.values()) == 3 and min(by_worker.values()) >= 1, by_worker


@pytest.mark.slow
def test_failed_trials_are_recorded_and_not_retried(tmp_path: Path) -> None:
    pytest.importorskip("optuna")
    pytest.importorskip("torch")
    out = tmp_path / "search"
    command = _command(out, 1, "--train-arg=--optimizer=bogus")
    result = subprocess.run(command, capture_output=True, text=True, env=ENV, cwd=ROOT)
    assert result.returncode == 1 and "no trial completed" in result.stderr
    rows = _rows(out)
    assert len(rows) == 1 and rows[0]["state"] == "fail" and "invalid choice" in rows[0]["error"]
    again = subprocess.run(command, capture_output=True, text=True, env=ENV, cwd=ROOT)
    assert again.returncode == 1 and "0 trial(s) run by this worker" in again.stdout
    assert len(_rows(out)) == 1
    changed = subprocess.run(_command(out, 1, "--seed", "7"), capture_output=True, text=True, env=ENV, cwd=ROOT)
    assert changed.returncode == 2 and "other settings" in changed.stderr
