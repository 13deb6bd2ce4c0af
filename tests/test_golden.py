"""generated/ is the checked-in output of every shipped spec: regenerate and diff.

Refresh with `EFFSPEC_UPDATE_GOLDEN=1 pytest tests/test_golden.py` or `effspec compile specs/*.yaml`.
"""

from __future__ import annotations

import difflib
import filecmp
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, SPECS

from effspec.cli import main
from effspec.emit.registry import available_backends

GENERATED = ROOT / "generated"


def _tree(root: Path) -> dict[str, Path]:
    return {
        p.relative_to(root).as_posix(): p
        for p in sorted(root.rglob("*"))
        if p.is_file() and "__pycache__" not in p.parts
    }


@pytest.fixture(scope="module")
def fresh(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("generated")
    os.chdir(ROOT)
    assert main(["compile", *(str(s.relative_to(ROOT)) for s in SPECS), "-o", str(out)]) == 0
    return out


def test_every_spec_and_backend_is_generated(fresh: Path) -> None:
    backends = available_backends()
    assert set(backends) >= {"torch", "keras"}
    for backend in backends:
        for spec in SPECS:
            assert (fresh / backend / spec.stem.replace("-", "_") / "model.py").is_file()


def test_generated_matches_golden(fresh: Path) -> None:
    if os.environ.get("EFFSPEC_UPDATE_GOLDEN") == "1":
        shutil.rmtree(GENERATED, ignore_errors=True)
        shutil.copytree(fresh, GENERATED)
    expected, actual = _tree(GENERATED), _tree(fresh)
    problems = [f"missing from generated/: {name}" for name in sorted(set(actual) - set(expected))]
    problems += [f"stale in generated/: {name}" for name in sorted(set(expected) - set(actual))]
    for name in sorted(set(actual) & set(expected)):
        if not filecmp.cmp(expected[name], actual[name], shallow=False):
            diff = difflib.unified_diff(
                expected[name].read_text().splitlines(),
                actual[name].read_text().splitlines(),
                f"generated/{name}",
                f"fresh/{name}",
                lineterm="",
            )
            problems.append("\n".join(list(diff)[:80]))
    assert not problems, "generated/ is stale (EFFSPEC_UPDATE_GOLDEN=1 refreshes it):\n" + "\n".join(problems[:20])


def test_output_is_deterministic_across_processes(tmp_path: Path) -> None:
    specs = ["specs/efficientnet-b0.yaml", "specs/efficientnetv2-s.yaml", "specs/custom-phi2-relu.yaml"]
    outs = []
    for seed in ("0", "4242"):
        out = tmp_path / seed
        env = {**os.environ, "PYTHONHASHSEED": seed}
        subprocess.run(
            [sys.executable, "-m", "effspec.cli", "compile", *specs, "-o", str(out)],
            cwd=ROOT,
            env=env,
            check=True,
            capture_output=True,
        )
        outs.append(_tree(out))
    assert outs[0].keys() == outs[1].keys() and outs[0]
    for name in outs[0]:
        assert outs[0][name].read_bytes() == outs[1][name].read_bytes(), name


def test_generated_code_is_formatted_and_lint_clean(fresh: Path) -> None:
    ruff = [sys.executable, "-m", "ruff"]
    fmt = subprocess.run([*ruff, "format", "--isolated", "--check", str(fresh)], capture_output=True, text=True)
    assert fmt.returncode == 0, fmt.stdout + fmt.stderr
    lint = subprocess.run(
        [*ruff, "check", "--isolated", "--select", "E,F,W,I,B,UP", str(fresh)], capture_output=True, text=True
    )
    assert lint.returncode == 0, lint.stdout + lint.stderr
