"""Hostile command lines and output targets: compile never loses a user's file, and every misuse
ends with one line and exit 2 (141 for a reader that went away), never 70 and never a silent 0."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_hostile_specs import GOOD, TIMEOUT, one_line, run_main, run_process, snapshot, watchdog  # noqa: F401

pytestmark = pytest.mark.usefixtures("watchdog")


@pytest.fixture
def work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "good.yaml").write_text(GOOD)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def compile_torch(capsys: pytest.CaptureFixture[str], *extra: str, out: str = "out") -> tuple[int, str, str]:
    return run_main(["compile", "good.yaml", "--backend", "torch", "-o", out, *extra], capsys)


def expect_usage_error(work: Path, capsys: pytest.CaptureFixture[str], args: list[str], words: str) -> str:
    before = snapshot(work)
    code, out, err = run_main(args, capsys)
    assert code == 2, err
    line = one_line(err)
    assert words in line, line
    assert "internal error" not in line
    assert snapshot(work) == before
    return line


# ---- -o targets and misuse ------------------------------------------------------------------------


def test_output_at_a_regular_file(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (work / "afile").write_text("keep me")
    line = expect_usage_error(work, capsys, ["compile", "good.yaml", "-o", "afile"], "expected a directory")
    assert line == "effspec: error: -o afile: expected a directory, found a regular file"


def test_output_at_dev_null(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    expect_usage_error(work, capsys, ["compile", "good.yaml", "-o", "/dev/null"], "found a character device")


def test_output_below_a_regular_file(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (work / "afile").write_text("keep me")
    expect_usage_error(work, capsys, ["compile", "good.yaml", "-o", "afile/sub"], "cannot write afile/sub")


def test_output_on_a_read_only_filesystem(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    expect_usage_error(
        work, capsys, ["compile", "good.yaml", "-o", "/proc/effspec-out"], "cannot write /proc/effspec-out"
    )


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_output_in_a_read_only_directory(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (work / "ro").mkdir(mode=0o555)
    expect_usage_error(work, capsys, ["compile", "good.yaml", "-o", "ro"], "Permission denied")


def test_schema_output_at_a_directory(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (work / "d").mkdir()
    line = expect_usage_error(
        work, capsys, ["schema", "-o", "d"], "expected a regular file to write, found a directory"
    )
    assert line.startswith("effspec: error: -o d:")


def test_schema_output_at_dev_null(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    expect_usage_error(work, capsys, ["schema", "-o", "/dev/null"], "found a character device")
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)


def test_schema_output_in_a_missing_directory(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    expect_usage_error(work, capsys, ["schema", "-o", "missing/s.json"], "No such file or directory")


def test_schema_output_replaces_a_file_atomically(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (work / "s.json").write_text("old")
    code, out, err = run_main(["schema", "-o", "s.json"], capsys)
    assert (code, out, err) == (0, "wrote s.json\n", "")
    assert (work / "s.json").read_text().startswith("{")
    assert sorted(p.name for p in work.iterdir()) == ["good.yaml", "s.json"]


def test_unknown_backend(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    expect_usage_error(work, capsys, ["compile", "good.yaml", "--backend", "", "-o", "out"], "unknown backend ''")


def test_unknown_option(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = snapshot(work)
    code, out, err = run_main(["compile", "good.yaml", "--frobnicate"], capsys)
    assert code == 2 and "unrecognized arguments: --frobnicate" in err and "Traceback" not in err
    assert snapshot(work) == before


def test_compile_without_specs(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_main(["compile"], capsys)
    assert code == 2 and "the following arguments are required: SPEC" in err


def test_info_on_a_missing_file(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    expect_usage_error(work, capsys, ["info", "nope.yaml"], "nope.yaml:1:1: error: file not found")


def test_two_specs_with_the_same_name(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (work / "twin.yaml").write_text("# another file\n" + GOOD)
    line = expect_usage_error(work, capsys, ["compile", "good.yaml", "twin.yaml", "-o", "out"], "also named 'tiny'")
    assert line.startswith("twin.yaml:2:7: error: name: good.yaml is also named 'tiny'"), line


def test_the_same_spec_twice_is_compiled_once(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_main(["compile", "good.yaml", "./good.yaml", "--backend", "torch", "-o", "out"], capsys)
    assert (code, err) == (0, "")
    assert out == "wrote out/torch/tiny\n"


def test_a_bad_spec_after_a_good_one_writes_nothing(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (work / "bad.yaml").write_text("name: bad\nstages: []\n")
    expect_usage_error(work, capsys, ["compile", "good.yaml", "bad.yaml", "-o", "out"], "stages: expected at least 1")
    assert not (work / "out").exists()


# ---- output that never loses data -----------------------------------------------------------------


def test_recompile_keeps_the_users_files(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert compile_torch(capsys)[0] == 0
    model_dir = work / "out" / "torch" / "tiny"
    (model_dir / "NOTES.md").write_text("my notes")
    (model_dir / "runs").mkdir()
    (model_dir / "runs" / "metrics.csv").write_text("step,loss\n")
    (model_dir / "model.py").write_text("# edited by hand\n")
    ours = ("out/torch/tiny/model.py", "out/torch/tiny/train.py")
    before = {k: v for k, v in snapshot(work).items() if k not in ours}
    code, out, err = compile_torch(capsys)
    assert (code, err) == (0, "")
    assert {k: v for k, v in snapshot(work).items() if k not in ours} == before
    assert (model_dir / "model.py").read_text().startswith("# Generated by effspec")
    assert (model_dir / "NOTES.md").read_text() == "my notes"
    assert (model_dir / "runs" / "metrics.csv").is_file()


def test_files_are_replaced_by_rename(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert compile_torch(capsys)[0] == 0
    model = work / "out" / "torch" / "tiny" / "model.py"
    model.write_text("# stale\n")
    inode = model.stat().st_ino
    assert compile_torch(capsys)[0] == 0
    assert model.stat().st_ino != inode  # a new file renamed over the old one, never truncated in place
    assert not [p for p in model.parent.iterdir() if p.name.startswith(".")]


def test_unchanged_files_are_not_rewritten(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert compile_torch(capsys)[0] == 0
    model = work / "out" / "torch" / "tiny" / "model.py"
    os.utime(model, (1_000_000_000, 1_000_000_000))
    assert compile_torch(capsys)[0] == 0
    assert model.stat().st_mtime == 1_000_000_000


def test_a_symlinked_output_file_is_replaced_not_followed(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (work / "precious.py").write_text("do not overwrite")
    model_dir = work / "out" / "torch" / "tiny"
    model_dir.mkdir(parents=True)
    os.symlink(work / "precious.py", model_dir / "model.py")
    assert compile_torch(capsys)[0] == 0
    assert (work / "precious.py").read_text() == "do not overwrite"
    assert not (model_dir / "model.py").is_symlink()


def test_a_directory_in_the_way_of_model_py(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model_dir = work / "out" / "torch" / "tiny"
    (model_dir / "model.py").mkdir(parents=True)
    (model_dir / "model.py" / "keep.txt").write_text("x")
    line = expect_usage_error(work, capsys, ["compile", "good.yaml", "--backend", "torch", "-o", "out"], "cannot write")
    assert "model.py" in line
    assert (model_dir / "model.py" / "keep.txt").read_text() == "x"


def test_a_file_in_the_way_of_the_model_directory(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (work / "out" / "torch").mkdir(parents=True)
    (work / "out" / "torch" / "tiny").write_text("a file, not a directory")
    expect_usage_error(work, capsys, ["compile", "good.yaml", "--backend", "torch", "-o", "out"], "cannot write")
    assert (work / "out" / "torch" / "tiny").read_text() == "a file, not a directory"


def test_stale_temp_files_of_a_killed_compile_are_removed(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model_dir = work / "out" / "torch" / "tiny"
    model_dir.mkdir(parents=True)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)  # that process has exited
    stale = model_dir / f".model.py.{dead_pid}.0123456789ab.effspec-tmp"
    stale.write_text("half a model")
    live = model_dir / ".train.py.1.0123456789ab.effspec-tmp"  # pid 1 is alive: maybe a compile in flight
    live.write_text("in flight")
    user = model_dir / ".model.py.bak"
    user.write_text("the user's backup")
    assert compile_torch(capsys)[0] == 0
    assert not stale.exists()
    assert live.exists() and user.read_text() == "the user's backup"


def test_legacy_staging_directories_are_removed(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """effspec 0.1 staged a whole directory beside the model; a killed run left it behind."""
    backend_dir = work / "out" / "torch"
    for name in (".tiny.old", ".tiny.a1b2c3d4"):
        (backend_dir / name).mkdir(parents=True)
        (backend_dir / name / "model.py").write_text("# Generated by effspec 0.1.0. Do not edit\n")
    mine = backend_dir / ".tiny.notes123"  # the user's: a file effspec does not write
    mine.mkdir()
    (mine / "todo.txt").write_text("not effspec's")
    backup = backend_dir / ".tiny.backup01"  # the user's: model.py without effspec's header
    backup.mkdir()
    (backup / "model.py").write_text("# my hand-edited model\n")
    other = backend_dir / ".other.old"  # beside another model: not this compile's business
    other.mkdir()
    (other / "model.py").write_text("# Generated by effspec 0.1.0. Do not edit\n")
    assert compile_torch(capsys)[0] == 0
    assert sorted(p.name for p in backend_dir.iterdir()) == [".other.old", ".tiny.backup01", ".tiny.notes123", "tiny"]


def test_directories_and_files_follow_the_umask(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    old = os.umask(0o027)
    try:
        assert compile_torch(capsys)[0] == 0
    finally:
        os.umask(old)
    for path in (work / "out", work / "out" / "torch", work / "out" / "torch" / "tiny"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o750, path
    assert stat.S_IMODE((work / "out" / "torch" / "tiny" / "model.py").stat().st_mode) == 0o640


def test_concurrent_compiles_of_the_same_spec(work: Path) -> None:
    spec = Path(__file__).resolve().parent.parent / "specs" / "efficientnet-b0.yaml"
    (work / "b0.yaml").write_text(spec.read_text())
    args = [sys.executable, "-m", "effspec.cli", "compile", "b0.yaml", "-o", "out"]
    env = dict(os.environ)
    procs = [
        subprocess.Popen(args, cwd=work, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env) for _ in range(3)
    ]
    results = [proc.communicate(timeout=TIMEOUT) for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0, 0], results
    expected = {p.relative_to(work).as_posix() for p in (work / "out").rglob("*") if p.is_file()}
    assert expected == {f"out/{b}/efficientnet_b0/{f}" for b in ("torch", "keras") for f in ("model.py", "train.py")}
    result = run_process(["compile", "b0.yaml", "-o", "again"], work)
    assert result.returncode == 0
    for rel in expected:
        assert (work / rel).read_bytes() == (work / "again" / rel.removeprefix("out/")).read_bytes()


# ---- standard output ------------------------------------------------------------------------------


def test_stdout_closed(work: Path) -> None:
    for command in ("info good.yaml", "schema", "compile good.yaml -o out"):
        result = subprocess.run(
            f"{sys.executable} -m effspec.cli {command} >&-",
            shell=True,
            cwd=work,
            capture_output=False,
            stderr=subprocess.PIPE,
            text=True,
            timeout=TIMEOUT,
        )
        assert result.returncode == 2, (command, result.stderr)
        assert one_line(result.stderr) == "effspec: error: standard output is closed; nothing was done"
    assert not (work / "out").exists()


@pytest.mark.parametrize("command", [["info", "good.yaml", "--json"], ["schema"], ["validate", "good.yaml"]])
def test_stdout_full(work: Path, command: list[str]) -> None:
    with open("/dev/full", "w") as full:
        result = run_process(command, work, stdout=full, capture_output=False, stderr=subprocess.PIPE)
    assert result.returncode == 2, result.stderr
    assert one_line(result.stderr) == "effspec: error: cannot write to standard output: No space left on device"


def test_reader_goes_away(work: Path) -> None:
    reader, writer = os.pipe()
    os.close(reader)
    try:
        result = run_process(["schema"], work, stdout=writer, capture_output=False, stderr=subprocess.PIPE)
    finally:
        os.close(writer)
    assert (result.returncode, result.stderr) == (141, "")


def test_compile_is_quick_even_for_the_largest_spec(work: Path) -> None:
    """Not a speed assertion: a generous bound that catches a hang or a runaway build."""
    spec = Path(__file__).resolve().parent.parent / "specs" / "efficientnetv2-l.yaml"
    start = time.monotonic()
    result = run_process(["info", str(spec)], work)
    assert result.returncode == 0 and time.monotonic() - start < TIMEOUT


def test_a_newline_in_a_spec_file_name_stays_one_line(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (work / "a\nb.yaml").write_text("name: x\n")
    line = expect_usage_error(work, capsys, ["validate", "a\nb.yaml"], "stages: required field is missing")
    assert line.startswith("a\\nb.yaml:1:1: error: "), line


def test_a_newline_in_the_output_path_stays_one_line(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    line = expect_usage_error(work, capsys, ["compile", "good.yaml", "-o", "/proc/x\ny"], "cannot write /proc/x\\ny/")
    assert "\n" not in line


def test_a_full_disk_mid_compile_changes_nothing(
    work: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every new file is written to a temp file first; the renames come only after all succeeded."""
    import errno

    from effspec.support import output

    assert run_main(["compile", "good.yaml", "-o", "out"], capsys)[0] == 0
    for model in (work / "out").glob("*/tiny/model.py"):
        model.write_text("# the user's previous build\n")
    before = snapshot(work)
    real = output.stage_bytes
    calls = []

    def full_disk(target: Path, data: bytes, skip_same: bool = False) -> Path | None:
        calls.append(target)
        if len(calls) == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(target, data, skip_same)

    monkeypatch.setattr(output, "stage_bytes", full_disk)
    code, out, err = run_main(["compile", "good.yaml", "-o", "out"], capsys)
    assert code == 2 and one_line(err).endswith("No space left on device")
    assert snapshot(work) == before  # no file replaced, no temp file left


def test_stderr_closed_keeps_errors_off_stdout(work: Path) -> None:
    result = subprocess.run(
        f"{sys.executable} -m effspec.cli validate nope.yaml 2>&-",
        shell=True,
        cwd=work,
        stdout=subprocess.PIPE,
        text=True,
        timeout=TIMEOUT,
    )
    assert (result.returncode, result.stdout) == (2, "")


def test_a_compile_killed_between_writing_and_renaming(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A process that dies after writing its temp files and before renaming them (as SIGKILL would)
    leaves the previous files intact; the next compile removes its temp files."""
    assert compile_torch(capsys)[0] == 0
    model_dir = work / "out" / "torch" / "tiny"
    (model_dir / "model.py").write_text("# previous build\n")
    code = (
        "import os, sys\n"
        "os.replace = lambda *a, **k: os._exit(137)  # die at the first rename\n"
        "from effspec.cli import main\n"
        "main(['compile', 'good.yaml', '--backend', 'torch', '-o', 'out'])\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=work, capture_output=True, text=True, timeout=TIMEOUT)
    assert result.returncode == 137
    leftovers = [p.name for p in model_dir.iterdir() if p.name.endswith(".effspec-tmp")]
    assert leftovers and (model_dir / "model.py").read_text() == "# previous build\n"
    assert compile_torch(capsys)[0] == 0
    assert sorted(p.name for p in model_dir.iterdir()) == ["model.py", "train.py"]
    assert (model_dir / "model.py").read_text().startswith("# Generated by effspec")
