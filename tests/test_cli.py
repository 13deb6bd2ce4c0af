"""The `effspec` CLI: info/validate/compile/schema, exit codes, and no framework imports."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, SPECS
from reference import REFERENCE

from effspec.cli import main
from effspec.core.jsonschema import schema_text

SCHEMA_LINE = "# yaml-language-server: $schema=effspec.schema.json"


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_info_json_matches_reference(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", f"specs/{name}.yaml", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["params"], report["macs"]) == REFERENCE[name]
    assert sum(stage["params"] for stage in report["stages"]) == report["params"]
    assert sum(stage["macs"] for stage in report["stages"]) == report["macs"]


def test_info_table_shows_scaled_stages(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", "specs/efficientnet-b3.yaml"]) == 0
    out = capsys.readouterr().out
    assert "resolution 300" in out and "12,233,232 parameters" in out
    assert "384->1536" in out and "1536->1000" in out  # head: round_filters(1280 * 1.2) = 1536
    rows = {line.split()[0]: line for line in out.splitlines() if line.startswith("blocks.")}
    assert "232->384" in rows["blocks.6"]  # B3 last stage: 320 * 1.2 = 384


def test_validate_all_shipped_specs(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", *map(str, SPECS)]) == 0
    assert capsys.readouterr().out.count(": ok (") == len(SPECS)


def test_schema_is_committed_and_fresh() -> None:
    committed = (ROOT / "specs" / "effspec.schema.json").read_text(encoding="utf-8")
    assert committed == schema_text(), "run: effspec schema -o specs/effspec.schema.json"
    for spec in SPECS:
        assert spec.read_text(encoding="utf-8").splitlines()[0] == SCHEMA_LINE, spec


def test_compile_info_validate_never_import_frameworks(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "from effspec.cli import main\n"
        f"assert main(['compile', 'specs/efficientnet-b0.yaml', 'specs/efficientnetv2-s.yaml', '-o', {str(tmp_path)!r}]) == 0\n"
        "assert main(['info', 'specs/efficientnet-b0.yaml', '--json']) == 0\n"
        "assert main(['info', 'specs/efficientnet-b0.yaml', '--features', '--output-stride', '8']) == 0\n"
        "assert main(['validate', 'specs/efficientnet-b7.yaml']) == 0\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'tensorflow', 'keras', 'jax'))\n"
        "assert not heavy, heavy\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert list(tmp_path.glob("*/efficientnet_b0/model.py")), "compile wrote no model"


def test_unknown_backend_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["compile", "specs/efficientnet-b0.yaml", "--backend", "mxnet", "-o", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "unknown backend 'mxnet'" in err and "Known backends are:" in err
    assert list(tmp_path.iterdir()) == []


def test_compile_writes_backend_and_model_dirs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["compile", "specs/efficientnetv2-b0.yaml", "--backend", "torch", "-o", str(tmp_path)]) == 0
    assert (tmp_path / "torch" / "efficientnetv2_b0" / "model.py").is_file()
    assert not (tmp_path / "keras").exists()
    # Recompiling replaces the files atomically, keeps the user's own files and leaves no temp files behind.
    (tmp_path / "torch" / "efficientnetv2_b0" / "NOTES.md").write_text("mine")
    assert main(["compile", "specs/efficientnetv2-b0.yaml", "--backend", "torch", "-o", str(tmp_path)]) == 0
    assert sorted(p.name for p in (tmp_path / "torch").iterdir()) == ["efficientnetv2_b0"]
    assert sorted(p.name for p in (tmp_path / "torch" / "efficientnetv2_b0").iterdir()) == [
        "NOTES.md",
        "model.py",
        "train.py",
    ]


def test_console_script_runs_as_a_process() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "effspec.cli", "info", "specs/efficientnet-b0.yaml", "--json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["params"] == REFERENCE["efficientnet-b0"][0]


def test_a_reader_that_goes_away_is_not_an_internal_error() -> None:
    """`effspec info SPEC --json | head -c 1`: the closed pipe ends the run quietly with SIGPIPE's status."""
    reader, writer = os.pipe()
    os.close(reader)  # nobody reads: the first write fails with EPIPE
    try:
        result = subprocess.run(
            [sys.executable, "-m", "effspec.cli", "info", "specs/efficientnet-b7.yaml", "--json"],
            cwd=ROOT,
            stdout=writer,
            stderr=subprocess.PIPE,
            text=True,
        )
    finally:
        os.close(writer)
    assert (result.returncode, result.stderr) == (141, "")


def test_every_build_reads_the_bytes_on_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No build cache: editing a base spec changes the next build, and nothing is written outside -o
    (not even with HOME unset or empty)."""
    from effspec.emit.pipeline import build

    monkeypatch.setenv("HOME", "")
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    base = tmp_path / "base.yaml"
    child = tmp_path / "child.yaml"
    base.write_text((ROOT / "specs" / "efficientnet-b0.yaml").read_text())
    child.write_text(
        "extends: base.yaml\nname: child\nscaling: {method: explicit, width: 1.1, depth: 1.2, resolution: 260}\n"
    )
    first = build(child)
    assert build(child) == first
    base.write_text(base.read_text().replace("channels: 320}", "channels: 328}"))
    assert build(child).report.total.params != first.report.total.params
    child.write_text("extends: base.yaml\nname: child\nstem: {kernel: 2}\n")
    with pytest.raises(Exception, match="odd kernel"):
        build(child)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base.yaml", "child.yaml"]
    assert not Path("/.cache/effspec").exists()
