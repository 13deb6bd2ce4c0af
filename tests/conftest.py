"""Shared fixtures: the repository root and the shipped specs."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SPECS = sorted((ROOT / "specs").glob("*.yaml"))


@pytest.fixture(autouse=True)
def _run_from_repo_root(monkeypatch: pytest.MonkeyPatch) -> None:
    """Spec paths in headers and messages are relative to the working directory: pin it."""
    monkeypatch.chdir(ROOT)
