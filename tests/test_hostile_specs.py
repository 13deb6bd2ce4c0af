"""Hostile specs: oversized, non-finite, non-integer, self-expanding or unreadable input.

Every case asserts the exit code, a single-line message naming the field (no traceback), and that
nothing outside the intended output changed. Most run in-process under a SIGALRM watchdog; the
cases that could block a process (FIFOs, devices) run as subprocesses with a generous timeout, so a
hang fails the test instead of stalling the suite. The helpers here are shared by the other
tests/test_hostile_*.py files.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import GOOD, ROOT, STAGE, spec_text, stage

from effspec.cli import main

TIMEOUT = 60  # seconds: far above any legitimate run; reaching it means a hang


def snapshot(root: Path, skip: tuple[str, ...] = ()) -> dict[str, tuple[object, ...]]:
    """Every path under ``root`` (symlinks not followed) with its type, mode and content digest."""
    seen: dict[str, tuple[object, ...]] = {}
    for directory, dirs, files in os.walk(root):
        rel_dir = os.path.relpath(directory, root)
        dirs[:] = [d for d in dirs if os.path.normpath(os.path.join(rel_dir, d)) not in skip]
        for name in dirs + files:
            path = os.path.join(directory, name)
            rel = os.path.normpath(os.path.join(rel_dir, name))
            info = os.lstat(path)
            digest: object = None
            if os.path.isfile(path) and not os.path.islink(path) and info.st_size < (1 << 20):
                digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
            elif os.path.islink(path):
                digest = os.readlink(path)
            seen[rel] = (info.st_mode, info.st_size if digest is not None else None, digest)
    return seen


def one_line(err: str) -> str:
    """The single line of an error message (fails on a traceback or several lines)."""
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture(autouse=True)
def watchdog() -> Iterator[None]:
    """An in-process case that blocks (a read that never returns) fails after TIMEOUT seconds."""

    def expire(signum: int, frame: object) -> None:
        raise TimeoutError(f"hung for {TIMEOUT} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(TIMEOUT)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def run_main(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        code = main(args)
    except SystemExit as exc:  # argparse usage errors
        code = int(exc.code or 0)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def run_process(args: list[str], cwd: Path, **kwargs: object) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **kwargs.pop("env", {})}  # type: ignore[dict-item]
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    return subprocess.run(
        [sys.executable, "-m", "effspec.cli", *args],
        cwd=cwd,
        capture_output=kwargs.pop("capture_output", True),  # type: ignore[arg-type]
        text=True,
        timeout=TIMEOUT,
        env=env,
        **kwargs,  # type: ignore[arg-type]
    )


def expect_error(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    files: dict[str, str | bytes],
    target: str,
    words: str,
    prefix: str = "",
) -> str:
    """Write ``files``, compile ``target`` beside a good spec: exit 2, one line, nothing written."""
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    (tmp_path / "good.yaml").write_text(GOOD, encoding="utf-8")
    os.chdir(tmp_path)
    before = snapshot(tmp_path)
    code, out, err = run_main(["compile", "good.yaml", target, "-o", "out"], capsys)
    line = one_line(err)
    assert code == 2, err
    assert out == ""
    assert line.startswith(prefix), line
    assert words in line, line
    assert snapshot(tmp_path) == before, "a failed compile must not change any file"
    code, _, err = run_main(["validate", target], capsys)
    assert code == 2 and words in one_line(err)
    return line


def in_stage(case: str, field: str, value: object, words: str) -> tuple[str, str, str, str]:
    """A case whose one bad value is ``field`` of the only stage: the error points at line 3."""
    return case, spec_text(stages=stage(**{field: value})), "s.yaml:3:", f"stages[0].{field}: {words}"


def at_top(case: str, line: str, prefix: str, words: str) -> tuple[str, str, str, str]:
    """A case whose bad value is on ``line``, the spec's second line, before one good stage."""
    return case, spec_text(line), prefix, words


# (id, spec text, message prefix "file:line:column: error: field", words in the message)
SPEC_CASES = [
    in_stage("repeats-huge", "repeats", 10**12, "expected a value <= 1000"),
    in_stage("repeats-true", "repeats", "true", "expected an integer, found true"),
    in_stage("repeats-float", "repeats", "1.0", "expected an integer, found 1.0"),
    in_stage("repeats-string", "repeats", '"1"', "expected an integer, found '1'"),
    in_stage("kernel-true", "kernel", "true", "expected an integer"),
    in_stage("kernel-huge", "kernel", 1000001, "expected a value <= 31"),
    in_stage("stride-true", "stride", "true", "expected 1 or 2, found true"),
    in_stage("stride-float", "stride", "2.0", "expected 1 or 2, found 2.0"),
    in_stage("channels-float", "channels", "1e9", "expected an integer"),
    in_stage("channels-huge", "channels", 10**9, "expected a value <= 16384"),
    in_stage("expansion-huge", "expansion", 1000, "expected a value <= 64"),
    at_top("stem-kernel-even", "stem: {kernel: 30}", "s.yaml:2:", "stem.kernel: expected an odd kernel size"),
    at_top("phi-huge", "scaling: {method: compound, phi: 10000}", "s.yaml:2:34", "scaling.phi: expected a value <= 30"),
    at_top("phi-inf", "scaling: {method: compound, phi: .inf}", "s.yaml:2:34", "scaling.phi: expected a finite number"),
    at_top("phi-nan", "scaling: {method: compound, phi: .nan}", "s.yaml:2:34", "scaling.phi: expected a finite number"),
    at_top(
        "phi-minus-inf",
        "scaling: {method: compound, phi: -.inf}",
        "s.yaml:2:34",
        "scaling.phi: expected a finite number",
    ),
    at_top(
        "phi-string",
        "scaling: {method: compound, phi: '2'}",
        "s.yaml:2:34",
        "scaling.phi: expected a number, found '2'",
    ),
    at_top(
        "alpha-huge",
        "scaling: {method: compound, phi: 2, alpha: 1.0e+300}",
        "s.yaml:2:",
        "scaling.alpha: expected a value <= 4",
    ),
    at_top(
        "width-inf", "scaling: {method: explicit, width: .inf}", "s.yaml:2:", "scaling.width: expected a finite number"
    ),
    at_top(
        "depth-nan", "scaling: {method: explicit, depth: .nan}", "s.yaml:2:", "scaling.depth: expected a finite number"
    ),
    at_top(
        "width-bool",
        "scaling: {method: explicit, width: true}",
        "s.yaml:2:",
        "scaling.width: expected a number, found true",
    ),
    at_top("mean-nan", "input: {mean: [.nan, 0.5, 0.5]}", "s.yaml:2:", "input.mean[0]: expected a finite number"),
    at_top("std-inf", "input: {std: [.inf, 0.5, 0.5]}", "s.yaml:2:", "input.std[0]: expected a finite number"),
    at_top("lr-inf", "training: {lr_per_256: .inf}", "s.yaml:2:", "training.lr_per_256: expected a finite number"),
    at_top(
        "resolution-huge", "input: {resolution: 1000000000}", "s.yaml:2:", "input.resolution: expected a value <= 8192"
    ),
    at_top(
        "explicit-resolution-huge",
        "scaling: {method: explicit, resolution: 100000}",
        "s.yaml:2:",
        "scaling.resolution: expected a value <= 8192",
    ),
    at_top(
        "classes-huge", "head: {num_classes: 1000000000}", "s.yaml:2:", "head.num_classes: expected a value <= 100000"
    ),
    (
        "progressive-stages-huge",
        "name: x\ntraining: {progressive: {stages: 1000000, image_size: {start: 128, end: 300}, randaugment_magnitude: {start: 5, end: 15}, mixup_alpha: {start: 0, end: 0}, dropout: {start: 0.1, end: 0.3}}}\nstages:\n"
        + STAGE,
        "s.yaml:2:",
        "training.progressive.stages: expected a value <= 100",
    ),
    (
        "progressive-image-huge",
        "name: x\ntraining: {progressive: {stages: 4, image_size: {start: 128, end: 1.0e+12}, randaugment_magnitude: {start: 5, end: 15}, mixup_alpha: {start: 0, end: 0}, dropout: {start: 0.1, end: 0.3}}}\nstages:\n"
        + STAGE,
        "s.yaml:2:",
        "training.progressive.image_size.end: expected an image size of at most 8192",
    ),
    # Limits after scaling (effspec/core/limits.py): each field legal alone, the product too big.
    (
        "scaled-blocks",
        spec_text("scaling: {method: explicit, depth: 64}", stages=stage(repeats=900)),
        "s.yaml:4:",
        "stages[0].repeats: expected at most 1,000 blocks in all after scaling",
    ),
    (
        "scaled-blocks-many-stages",
        spec_text("scaling: {method: explicit, depth: 2}", stages=stage(repeats=300) * 2),
        "s.yaml:5:",
        "stages[1].repeats: expected at most 1,000 blocks",
    ),
    (
        "scaled-channels",
        spec_text("scaling: {method: explicit, width: 64}", stages=stage(channels=16000)),
        "s.yaml:4:",
        "stages[0].channels: expected at most 65,536 channels after scaling",
    ),
    at_top(
        "scaled-head",
        "scaling: {method: explicit, width: 60}\nhead: {channels: 16000}",
        "s.yaml:3:",
        "head.channels: expected at most 65,536 channels",
    ),
    (
        "expanded-channels",
        spec_text(stages=stage(channels=16384) + stage(channels=16384, expansion=64)),
        "s.yaml:4:",
        "stages[1].expansion: expected at most 65,536 expanded channels",
    ),
    (
        "scaled-params",
        spec_text(stages=stage(channels=16384, expansion=4, repeats=10) * 2),
        "s.yaml:",
        "stages[0]: expected at most 4,000,000,000 parameters",
    ),
    at_top(
        "scaled-resolution",
        "scaling: {method: compound, phi: 30, gamma: 4}",
        "s.yaml:2:34",
        "scaling.phi: expected a scaled resolution between 1 and 8192",
    ),
    # YAML itself.
    (
        "merge-key",
        "base: &b {channels: 8}\nname: x\nhead:\n  <<: *b\nstages:\n" + STAGE,
        "s.yaml:4:3",
        "head: YAML merge keys (<<) are not supported",
    ),
    (
        "deep-nesting",
        "name: x\ndescription: " + "[" * 40 + "]" * 40 + "\nstages:\n" + STAGE,
        "s.yaml:2:",
        "expected at most 32 levels of nesting",
    ),
    ("flow-nesting-libyaml", "name: x\na: " + "[" * 2000 + "]" * 2000 + "\n", "s.yaml:", "YAML syntax error"),
    (
        "multiple-documents",
        GOOD + "---\n" + GOOD,
        "s.yaml:1:1",
        "expected one YAML document with a mapping, found 2 documents",
    ),
    at_top("complex-key", "? [a, b]\n: 1", "s.yaml:2:", "expected a plain key, found a complex key"),
    ("integer-key", spec_text("1: 2"), "s.yaml:2:1", "expected a string key, found 1"),
    ("tagged-key", "!foo name: x\nstages:\n" + STAGE, "s.yaml:1:1", "custom YAML tags are not allowed"),
    (
        "python-tag",
        "name: !!python/object/apply:os.system [echo hacked]\nstages:\n" + STAGE,
        "s.yaml:1:7",
        "custom YAML tags are not allowed",
    ),
    (
        "timestamp",
        "name: 2020-01-01\nstages:\n" + STAGE,
        "s.yaml:1:7",
        "name: expected a string, number, true/false or null, found a YAML timestamp",
    ),
    ("binary", "name: !!binary aGVsbG8=\nstages:\n" + STAGE, "s.yaml:1:7", "found a YAML binary"),
    at_top(
        "bad-explicit-float", "input: {resolution: !!float abc}", "s.yaml:2:21", "input.resolution: cannot read value"
    ),
    (
        "description-huge",
        "name: x\ndescription: '" + "a" * 5000 + "'\nstages:\n" + STAGE,
        "s.yaml:2:14",
        "description: string should have at most 2000 characters",
    ),
    ("name-injection", 'name: "x\\nimport os"\nstages:\n' + STAGE, "s.yaml:1:7", "name: expected lowercase letters"),
    (
        "name-too-long",
        "name: " + "a" * 100 + "\nstages:\n" + STAGE,
        "s.yaml:1:7",
        "name: string should have at most 64 characters",
    ),
]


@pytest.mark.parametrize(("text", "prefix", "words"), [c[1:] for c in SPEC_CASES], ids=[c[0] for c in SPEC_CASES])
def test_hostile_spec(tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, prefix: str, words: str) -> None:
    line = expect_error(tmp_path, capsys, {"s.yaml": text}, "s.yaml", words, prefix)
    assert line.startswith("s.yaml:"), line
    assert "Infinity" not in line and "internal error" not in line


def test_billion_laughs_is_bounded(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = "a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1]\n"
    for name, prev in zip("bcdefghij", "abcdefghi", strict=True):
        text += f"{name}: &{name} [" + ", ".join([f"*{prev}"] * 9) + "]\n"
    line = expect_error(tmp_path, capsys, {"s.yaml": text + GOOD}, "s.yaml", "expected at most 20,000 values")
    assert "aliases" in line


def test_quadratic_aliases_are_bounded(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    big = "[" + ", ".join(["0"] * 300) + "]"
    text = f"base: &b {big}\nname: x\ndescription: [" + ", ".join(["*b"] * 300) + "]\nstages:\n" + STAGE
    expect_error(tmp_path, capsys, {"s.yaml": text}, "s.yaml", "expected at most 20,000 values")


def test_non_utf8_bytes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    expect_error(
        tmp_path, capsys, {"s.yaml": b"name: \xff\xfe\nstages: []\n"}, "s.yaml", "not UTF-8 text", "s.yaml:1:1"
    )


def test_nul_and_control_bytes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    expect_error(tmp_path, capsys, {"s.yaml": b"name: x\x00\nstages: []\n"}, "s.yaml", "YAML syntax error", "s.yaml:")


def test_oversized_spec(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = GOOD + ("# padding\n" * 30_000)
    expect_error(tmp_path, capsys, {"s.yaml": text}, "s.yaml", "expected a spec of at most 262,144 bytes")


def test_one_gigabyte_sparse_spec(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    big = tmp_path / "big.yaml"
    with open(big, "wb") as handle:
        handle.truncate(1 << 30)
    expect_error(tmp_path, capsys, {}, "big.yaml", "found 1,073,741,824", "big.yaml:1:1")


def test_directory_as_spec(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "d.yaml").mkdir()
    expect_error(tmp_path, capsys, {}, "d.yaml", "expected a regular file, found a directory", "d.yaml:1:1")


def test_symlink_loop_as_spec(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    os.symlink("b.yaml", tmp_path / "a.yaml")
    os.symlink("a.yaml", tmp_path / "b.yaml")
    expect_error(tmp_path, capsys, {}, "a.yaml", "symlink loop", "a.yaml:1:1")


def test_empty_spec_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    expect_error(tmp_path, capsys, {}, "", "expected a spec file path, found an empty string")


# ---- extends --------------------------------------------------------------------------------------


def test_extends_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "sub").mkdir()
    line = expect_error(tmp_path, capsys, {"a.yaml": "extends: sub\nname: a\n"}, "a.yaml", "found a directory")
    assert line.startswith("a.yaml:1:10: error: extends: base spec sub:"), line


def test_extends_symlink_loop(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    os.symlink("l2.yaml", tmp_path / "l1.yaml")
    os.symlink("l1.yaml", tmp_path / "l2.yaml")
    expect_error(tmp_path, capsys, {"a.yaml": "extends: l1.yaml\nname: a\n"}, "a.yaml", "symlink loop", "a.yaml:1:10")


def test_extends_one_gigabyte(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with open(tmp_path / "big.yaml", "wb") as handle:
        handle.truncate(1 << 30)
    files = {"a.yaml": "extends: big.yaml\nname: a\n"}
    expect_error(tmp_path, capsys, files, "a.yaml", "expected a spec of at most 262,144 bytes", "a.yaml:1:10")


def test_extends_absolute_path_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    files = {"a.yaml": f"extends: {tmp_path / 'good.yaml'}\nname: a\n"}
    expect_error(tmp_path, capsys, files, "a.yaml", "expected a relative path", "a.yaml:1:10: error: extends")


def test_extends_nul_character(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    files = {"a.yaml": 'extends: "good.yaml\\0"\nname: a\n'}
    expect_error(tmp_path, capsys, files, "a.yaml", "found a NUL character", "a.yaml:1:10: error: extends")


def test_extends_not_a_string(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    files = {"a.yaml": "extends: [good.yaml]\nname: a\n"}
    expect_error(
        tmp_path, capsys, files, "a.yaml", 'expected a relative path or a shipped spec name, found ["good.yaml"]'
    )


def test_extends_chain_too_long(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    files = {f"s{i}.yaml": f"extends: s{i + 1}.yaml\nname: s{i}\n" for i in range(20)}
    files["s20.yaml"] = GOOD
    expect_error(tmp_path, capsys, files, "s0.yaml", "expected an extends chain of at most 16 files")


def test_extends_dotdot_is_allowed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "base.yaml").write_text(GOOD)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.yaml").write_text("extends: ../base.yaml\nname: child\n")
    os.chdir(tmp_path)
    before = snapshot(tmp_path)
    code, out, err = run_main(["compile", "sub/a.yaml", "-o", "out", "--backend", "torch"], capsys)
    assert (code, err) == (0, ""), err
    assert out.strip() == "wrote out/torch/child"
    after = snapshot(tmp_path, skip=("out",))
    assert {k: v for k, v in after.items() if not k.startswith("out")} == before


def test_extends_fifo_and_dev_zero_exit_at_once(tmp_path: Path) -> None:
    """Reading a FIFO would wait for a writer forever, /dev/zero never ends: both are refused."""
    os.mkfifo(tmp_path / "fifo.yaml")
    depth = len(tmp_path.resolve().parts) - 1
    zero = "../" * depth + "dev/zero"
    (tmp_path / "a.yaml").write_text("extends: fifo.yaml\nname: a\n")
    (tmp_path / "b.yaml").write_text(f"extends: {zero}\nname: b\n")
    before = snapshot(tmp_path)
    for spec, words in (("a.yaml", "found a FIFO"), ("b.yaml", "found a character device")):
        result = run_process(["compile", spec, "-o", "out"], tmp_path)
        assert result.returncode == 2, result.stderr
        line = one_line(result.stderr)
        assert line.startswith(f"{spec}:1:10: error: extends: base spec") and words in line, line
    assert snapshot(tmp_path) == before


def test_fifo_and_devices_as_the_spec_itself(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "fifo.yaml")
    before = snapshot(tmp_path)
    for spec, words in (
        ("fifo.yaml", "found a FIFO"),
        ("/dev/zero", "found a character device"),
        ("/dev/stdin", "expected a regular file"),
    ):
        result = run_process(["validate", spec], tmp_path, stdin=subprocess.DEVNULL)
        assert result.returncode == 2, result.stderr
        assert words in one_line(result.stderr)
    assert snapshot(tmp_path) == before


def test_limits_fail_fast_in_a_real_process(tmp_path: Path) -> None:
    """`repeats: 1000000000000` once took minutes and gigabytes: now the schema stops it."""
    (tmp_path / "s.yaml").write_text(spec_text("scaling: {method: explicit, depth: 64}", stages=stage(repeats=1000)))
    result = run_process(["info", "s.yaml", "--json"], tmp_path)
    assert result.returncode == 2 and result.stdout == ""
    assert "stages[0].repeats: expected at most 1,000 blocks" in one_line(result.stderr)


def test_info_json_never_prints_infinity(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The largest phi the schema allows still gives finite numbers (or a clean limit error)."""
    os.chdir(tmp_path)
    for phi in ("30", "29.999", "7"):
        (tmp_path / "s.yaml").write_text(spec_text(f"scaling: {{method: compound, phi: {phi}}}"))
        code, out, err = run_main(["info", "s.yaml", "--json"], capsys)
        assert "Infinity" not in out and "NaN" not in out
        if code:
            assert code == 2 and "expected" in one_line(err)


def test_an_unknown_key_that_is_not_an_identifier(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = spec_text("head: {num-classes: 10}")
    expect_error(
        tmp_path, capsys, {"s.yaml": text}, "s.yaml", "head.num-classes: unknown key 'num-classes'", "s.yaml:2:"
    )


def test_a_very_long_unknown_key_is_shortened(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = "name: x\n" + "k" * 1000 + ": 1\nstages:\n" + STAGE
    line = expect_error(tmp_path, capsys, {"s.yaml": text}, "s.yaml", "unknown key 'kkkk", "s.yaml:2:")
    # The message shows the key shortened (the field path names it whole), then the valid keys.
    assert len(line) < 1400 and " unknown key '" + "k" * 56 + "... (valid keys here: name, " in line, line
