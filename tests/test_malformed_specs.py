"""Malformed specs: exit 2, one line naming file:line:column and the field path, nothing written."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

from effspec.cli import main

STAGE = "  - {block: mbconv, repeats: 1, kernel: 3, stride: 1, expansion: 1, channels: 16}\n"
GOOD = "name: tiny\nstages:\n" + STAGE

# (case id, {file name: text}, the spec to compile, expected "file:line:column", field path, words in the message)
CASES = [
    ("yaml-syntax", {"s.yaml": "name: x\nstages: [ {block: mbconv\n"}, "s.yaml", "s.yaml:3:1", "", "YAML syntax error"),
    ("bad-indentation", {"s.yaml": "name: x\n  stages: 1\n"}, "s.yaml", "s.yaml:2:9", "", "YAML syntax error"),
    (
        "duplicate-key",
        {"s.yaml": "name: x\nname: y\nstages:\n" + STAGE},
        "s.yaml",
        "s.yaml:2:1",
        "name",
        "duplicate key",
    ),
    ("unknown-top-key", {"s.yaml": GOOD + "hed: {channels: 8}\n"}, "s.yaml", "s.yaml:4:6", "hed", "unknown key 'hed'"),
    (
        "unknown-stage-key",
        {
            "s.yaml": "name: x\nstages:\n  - {block: mbconv, repeats: 1, kernel: 3, stride: 1, expansion: 1, channels: 16, kernal: 3}\n"
        },
        "s.yaml",
        "s.yaml:3:91",
        "stages[0].kernal",
        "unknown key 'kernal'",
    ),
    (
        "wrong-type",
        {
            "s.yaml": "name: x\nstages:\n  - {block: mbconv, repeats: two, kernel: 3, stride: 1, expansion: 1, channels: 16}\n"
        },
        "s.yaml",
        "s.yaml:3:30",
        "stages[0].repeats",
        "expected an integer, found 'two'",
    ),
    (
        "stages-not-a-list",
        {"s.yaml": "name: x\nstages: {block: mbconv}\n"},
        "s.yaml",
        "s.yaml:2:9",
        "stages",
        "expected a list",
    ),
    (
        "zero-repeats",
        {
            "s.yaml": "name: x\nstages:\n  - {block: mbconv, repeats: 0, kernel: 3, stride: 1, expansion: 1, channels: 16}\n"
        },
        "s.yaml",
        "s.yaml:3:30",
        "stages[0].repeats",
        "expected a value > 0, found 0",
    ),
    (
        "negative-channels",
        {
            "s.yaml": "name: x\nstages:\n  - {block: mbconv, repeats: 1, kernel: 3, stride: 1, expansion: 1, channels: -16}\n"
        },
        "s.yaml",
        "s.yaml:3:79",
        "stages[0].channels",
        "expected a value > 0, found -16",
    ),
    (
        "even-kernel",
        {
            "s.yaml": "name: x\nstages:\n  - {block: mbconv, repeats: 1, kernel: 4, stride: 1, expansion: 1, channels: 16}\n"
        },
        "s.yaml",
        "s.yaml:3:41",
        "stages[0].kernel",
        "expected an odd kernel size, found 4",
    ),
    (
        "stride-3",
        {
            "s.yaml": "name: x\nstages:\n  - block: mbconv\n    repeats: 1\n    kernel: 3\n    stride: 3\n    expansion: 1\n    channels: 16\n"
        },
        "s.yaml",
        "s.yaml:6:13",
        "stages[0].stride",
        "expected 1 or 2, found 3",
    ),
    ("empty-stages", {"s.yaml": "name: x\nstages: []\n"}, "s.yaml", "s.yaml:2:9", "stages", "expected at least 1 item"),
    ("missing-stages", {"s.yaml": "name: x\n"}, "s.yaml", "s.yaml:1:1", "stages", "required field is missing"),
    (
        "unknown-block",
        {
            "s.yaml": "name: x\nstages:\n  - {block: resnet, repeats: 1, kernel: 3, stride: 1, expansion: 1, channels: 16}\n"
        },
        "s.yaml",
        "s.yaml:3:13",
        "stages[0].block",
        "expected 'mbconv' or 'fused_mbconv', found 'resnet'",
    ),
    (
        "unknown-activation",
        {"s.yaml": "name: x\ndefaults: {activation: swishy}\nstages:\n" + STAGE},
        "s.yaml",
        "s.yaml:2:24",
        "defaults.activation",
        "found 'swishy'",
    ),
    (
        "unknown-padding",
        {"s.yaml": "name: x\ndefaults: {padding: reflect}\nstages:\n" + STAGE},
        "s.yaml",
        "s.yaml:2:21",
        "defaults.padding",
        "expected 'same' or 'symmetric'",
    ),
    (
        "se-ratio-too-big",
        {"s.yaml": "name: x\ndefaults: {se_ratio: 1.5}\nstages:\n" + STAGE},
        "s.yaml",
        "s.yaml:2:22",
        "defaults.se_ratio",
        "expected a value < 1, found 1.5",
    ),
    (
        "bn-momentum-out-of-range",
        {"s.yaml": "name: x\ndefaults: {batch_norm: {momentum: 1.0}}\nstages:\n" + STAGE},
        "s.yaml",
        "s.yaml:2:35",
        "defaults.batch_norm.momentum",
        "expected a value < 1",
    ),
    (
        "bad-name",
        {"s.yaml": 'name: "x\'); import os"\nstages:\n' + STAGE},
        "s.yaml",
        "s.yaml:1:7",
        "name",
        "expected lowercase letters",
    ),
    (
        "mean-length",
        {"s.yaml": "name: x\ninput: {mean: [0.5, 0.5]}\nstages:\n" + STAGE},
        "s.yaml",
        "s.yaml:2:15",
        "input.mean",
        "expected 3 values",
    ),
    (
        "zero-resolution",
        {"s.yaml": "name: x\ninput: {resolution: 0}\nstages:\n" + STAGE},
        "s.yaml",
        "s.yaml:2:21",
        "input.resolution",
        "expected a value > 0, found 0",
    ),
    (
        "unknown-scaling-method",
        {"s.yaml": "name: x\nscaling: {method: magic, phi: 1}\nstages:\n" + STAGE},
        "s.yaml",
        "s.yaml:2:19",
        "scaling.method",
        "expected method 'compound' or 'explicit', found 'magic'",
    ),
    (
        "compound-unknown-key",
        {"s.yaml": "name: x\nscaling: {method: compound, phi: 1, width: 2}\nstages:\n" + STAGE},
        "s.yaml",
        "s.yaml:2:44",
        "scaling.width",
        "unknown key 'width'",
    ),
    (
        "extends-cycle",
        {"a.yaml": "extends: b.yaml\nname: a\n", "b.yaml": "extends: a.yaml\nname: b\n"},
        "a.yaml",
        "b.yaml:1:10",
        "extends",
        "extends cycle: a.yaml -> b.yaml -> a.yaml",
    ),
    ("extends-self", {"a.yaml": "extends: a.yaml\nname: a\n"}, "a.yaml", "a.yaml:1:10", "extends", "extends cycle"),
    (
        "missing-base",
        {"a.yaml": "extends: nothere.yaml\nname: a\n"},
        "a.yaml",
        "a.yaml:1:10",
        "extends",
        "base spec not found",
    ),
    (
        "error-in-base-names-both-files",
        {
            "base.yaml": "name: base\nstages:\n  - {block: mbconv, repeats: 1, kernel: 2, stride: 1, expansion: 1, channels: 16}\n",
            "a.yaml": "extends: base.yaml\nname: a\n",
        },
        "a.yaml",
        "a.yaml",  # the spec compiled; the base's line follows the message
        "stages[0].kernel",
        "expected an odd kernel size, found 2 (inherited from base.yaml:3:41)",
    ),
    ("not-a-mapping", {"s.yaml": "- 1\n- 2\n"}, "s.yaml", "s.yaml:1:1", "", "expected a mapping"),
    ("empty-file", {"s.yaml": ""}, "s.yaml", "s.yaml:1:1", "", "expected one YAML document"),
    (
        "custom-tag",
        {"s.yaml": "name: !!python/object:os.system x\nstages:\n" + STAGE},
        "s.yaml",
        "s.yaml:1:7",
        "name",
        "tags are not allowed",
    ),
    (
        "spatial-collapse",
        {
            "s.yaml": "name: x\ninput: {resolution: 8}\nstages:\n"
            + "  - {block: mbconv, repeats: 1, kernel: 3, stride: 2, expansion: 1, channels: 16}\n" * 4
        },
        "s.yaml",
        "s.yaml:6:52",
        "stages[2].stride",
        "spatial size collapses",
    ),
    ("missing-file", {}, "nope.yaml", "nope.yaml:1:1", "", "file not found"),
]


@pytest.mark.parametrize(
    ("files", "target", "where", "field", "words"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_malformed_spec(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    files: dict[str, str],
    target: str,
    where: str,
    field: str,
    words: str,
) -> None:
    for name, text in files.items():
        (tmp_path / name).write_text(text, encoding="utf-8")
    out = tmp_path / "out"
    monkeypatch.chdir(tmp_path)
    (tmp_path / "good.yaml").write_text(GOOD, encoding="utf-8")
    # A good spec beside the bad one: still nothing may be written.
    code = main(["compile", "good.yaml", target, "-o", str(out)])
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert code == 2, captured.err
    assert len(lines) == 1, captured.err
    line = lines[0]
    assert "Traceback" not in captured.err
    prefix = f"{where}: error: " + (f"{field}: " if field else "")
    assert line.startswith(prefix), line
    assert words in line, line
    assert not out.exists(), "a failed compile must not write anything"
    assert main(["validate", target]) == 2


def test_the_table_covers_twenty_kinds_of_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The compiler, not the table, decides the count: each row's spec is built and the distinct
    messages it gives (values and numbers masked) must number at least twenty, every row must fail
    with its own error, and the good spec every row is compiled beside must pass. (This replaces a
    test that counted the table's own rows, which could not fail.)"""
    from effspec.emit.pipeline import build
    from effspec.support.errors import SpecError

    assert len({case[0] for case in CASES}) == len(CASES), "duplicate case ids"
    kinds: dict[str, str] = {}
    for case_id, files, target, _where, _field, words in CASES:
        directory = tmp_path / case_id
        directory.mkdir()
        for name, text in files.items():
            (directory / name).write_text(text, encoding="utf-8")
        monkeypatch.chdir(directory)
        with pytest.raises(SpecError) as caught:
            build(target)
        assert words in str(caught.value), (case_id, str(caught.value))
        shape = re.sub(r"'[^']*'|\[[^\]]*\]|-?\d[\d.,]*", "_", caught.value.message)
        kinds.setdefault(shape, case_id)
    assert len(kinds) >= 20, sorted(kinds)
    (tmp_path / "good.yaml").write_text(GOOD, encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    build("good.yaml")


def test_error_is_one_line_from_the_real_process(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "name: x\nstages:\n  - {block: mbconv, repeats: 1, kernel: 4, stride: 1, expansion: 1, channels: 16}\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "effspec.cli", "compile", "bad.yaml", "-o", str(tmp_path / "out")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert result.stdout == ""
    assert re.fullmatch(
        r"bad\.yaml:3:41: error: stages\[0\]\.kernel: expected an odd kernel size, found 4\n", result.stderr
    )
    assert not (tmp_path / "out").exists()


def test_usage_errors_exit_2() -> None:
    result = subprocess.run([sys.executable, "-m", "effspec.cli", "compile"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 2 and "usage:" in result.stderr
