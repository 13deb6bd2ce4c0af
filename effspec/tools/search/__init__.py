"""`effspec search`: the papers' first step, a grid search for alpha, beta, gamma at phi = 1.

1. Enumerate (alpha, beta, gamma >= 1) on the grid with alpha * beta^2 * gamma^2 within
   ``--ratio-tolerance`` of ``--flops-ratio``; keep those whose ROUNDED model at phi = 1 really has
   that many times the base's MACs (within 10%, from effspec's own analysis).
2. Pick ``--trials`` of them (spread evenly over the sorted list) and enqueue them once in an optuna
   study. The study's storage (a SQLite file in DIR unless ``--storage URL``) is the only shared
   state: every ``effspec search`` worker pops waiting trials from it (an atomic WAITING -> RUNNING
   update), so workers on one storage split the trials and never run one twice.
3. Each trial compiles its candidate spec (written under DIR/candidates/) into a temp dir and runs
   the generated torch ``train.py`` for ``--trial-steps`` steps as a subprocess, then reads
   val_top1 / val_loss from the run's metrics.csv. A trial whose training fails is recorded as
   failed with its error and never retried. A trial whose worker died (SIGKILL, a lost machine) is
   marked failed as interrupted and its candidate enqueued again, so a rerun finishes exactly the
   trials that are missing.
4. Every worker, when it runs out of trials, writes DIR/results.csv, DIR/search.png and
   DIR/best.yaml from the whole study.

Its modules, one job each: ``grid`` (the grid, the candidates, their spec files), ``study`` (the
optuna storage, the creator's lock, workers and heartbeats), ``trials`` (one trial's train.py
subprocess), ``results`` (results.csv and best.yaml), ``figure`` (search.png) and ``command`` (the
command line).
"""

from __future__ import annotations

from effspec.tools.search.command import run
from effspec.tools.search.grid import DEFAULT_GRID, Candidate, enumerate_candidates, parse_grid, pick

__all__ = ["DEFAULT_GRID", "Candidate", "enumerate_candidates", "parse_grid", "pick", "run"]
