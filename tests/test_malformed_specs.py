"""Malformed specs: exit 2, one line naming file:line:column and the field path, nothing written."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import GOOD, ROOT, STAGE, spec_text, stage

from effspec.cli import main


def one_spec(case: str, text: str, where: str, field: str, words: str) -> tuple[object, ...]:
    """A case with one file, s.yaml, compiled: the table's row for it."""
    return case, {"s.yaml": text}, "s.yaml", where, field, words


# (case id, {file name: text}, the spec to compile, expected "file:line:column", field path, words in the message)
CASES = [
    one_spec("yaml-syntax", "name: x\nstages: [ {block: mbconv\n", "s.yaml:3:1", "", "YAML syntax error"),
    one_spec("bad-indentation", "name: x\n  stages: 1\n", "s.yaml:2:9", "", "YAML syntax error"),
    one_spec("duplicate-key", spec_text("name: y"), "s.yaml:2:1", "name", "duplicate key"),
    one_spec("unknown-top-key", GOOD + "hed: {channels: 8}\n", "s.yaml:4:6", "hed", "unknown key 'hed'"),
    one_spec(
        "unknown-stage-key",
        spec_text(stages=stage(kernal=3)),
        "s.yaml:3:91",
        "stages[0].kernal",
        "unknown key 'kernal'",
    ),
    one_spec(
        "wrong-type",
        spec_text(stages=stage(repeats="two")),
        "s.yaml:3:30",
        "stages[0].repeats",
        "expected an integer, found 'two'",
    ),
    one_spec("stages-not-a-list", "name: x\nstages: {block: mbconv}\n", "s.yaml:2:9", "stages", "expected a list"),
    one_spec(
        "zero-repeats",
        spec_text(stages=stage(repeats=0)),
        "s.yaml:3:30",
        "stages[0].repeats",
        "expected a value > 0, found 0",
    ),
    one_spec(
        "negative-channels",
        spec_text(stages=stage(channels=-16)),
        "s.yaml:3:79",
        "stages[0].channels",
        "expected a value > 0, found -16",
    ),
    one_spec(
        "even-kernel",
        spec_text(stages=stage(kernel=4)),
        "s.yaml:3:41",
        "stages[0].kernel",
        "expected an odd kernel size, found 4",
    ),
    one_spec(
        "stride-3",
        "name: x\nstages:\n  - block: mbconv\n    repeats: 1\n    kernel: 3\n    stride: 3\n    expansion: 1\n    channels: 16\n",
        "s.yaml:6:13",
        "stages[0].stride",
        "expected 1 or 2, found 3",
    ),
    one_spec("empty-stages", "name: x\nstages: []\n", "s.yaml:2:9", "stages", "expected at least 1 item"),
    one_spec("missing-stages", "name: x\n", "s.yaml:1:1", "stages", "required field is missing"),
    one_spec(
        "unknown-block",
        spec_text(stages=stage(block="resnet")),
        "s.yaml:3:13",
        "stages[0].block",
        "expected 'mbconv' or 'fused_mbconv', found 'resnet'",
    ),
    one_spec(
        "unknown-activation",
        spec_text("defaults: {activation: swishy}"),
        "s.yaml:2:24",
        "defaults.activation",
        "found 'swishy'",
    ),
    one_spec(
        "unknown-padding",
        spec_text("defaults: {padding: reflect}"),
        "s.yaml:2:21",
        "defaults.padding",
        "expected 'same' or 'symmetric'",
    ),
    one_spec(
        "se-ratio-too-big",
        spec_text("defaults: {se_ratio: 1.5}"),
        "s.yaml:2:22",
        "defaults.se_ratio",
        "expected a value < 1, found 1.5",
    ),
    one_spec(
        "bn-momentum-out-of-range",
        spec_text("defaults: {batch_norm: {momentum: 1.0}}"),
        "s.yaml:2:35",
        "defaults.batch_norm.momentum",
        "expected a value < 1",
    ),
    one_spec(
        "bad-name", 'name: "x\'); import os"\nstages:\n' + STAGE, "s.yaml:1:7", "name", "expected lowercase letters"
    ),
    one_spec("mean-length", spec_text("input: {mean: [0.5, 0.5]}"), "s.yaml:2:15", "input.mean", "expected 3 values"),
    one_spec(
        "zero-resolution",
        spec_text("input: {resolution: 0}"),
        "s.yaml:2:21",
        "input.resolution",
        "expected a value > 0, found 0",
    ),
    one_spec(
        "unknown-scaling-method",
        spec_text("scaling: {method: magic, phi: 1}"),
        "s.yaml:2:19",
        "scaling.method",
        "expected method 'compound' or 'explicit', found 'magic'",
    ),
    one_spec(
        "compound-unknown-key",
        spec_text("scaling: {method: compound, phi: 1, width: 2}"),
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
    one_spec("not-a-mapping", "- 1\n- 2\n", "s.yaml:1:1", "", "expected a mapping"),
    one_spec("empty-file", "", "s.yaml:1:1", "", "expected one YAML document"),
    one_spec(
        "custom-tag",
        "name: !!python/object:os.system x\nstages:\n" + STAGE,
        "s.yaml:1:7",
        "name",
        "tags are not allowed",
    ),
    one_spec(
        "spatial-collapse",
        "name: x\ninput: {resolution: 8}\nstages:\n"
        + "  - {block: mbconv, repeats: 1, kernel: 3, stride: 2, expansion: 1, channels: 16}\n" * 4,
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
    bad.write_text(spec_text(stages=stage(kernel=4)))
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
