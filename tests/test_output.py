"""effspec.support.output, the one module that writes files and folders for every command: atomic
replacement, no writing through links or into FIFOs and devices, never an input, never a user's
file lost, every failure one OutputError (exit 2) with nothing left behind."""

from __future__ import annotations

import errno
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from effspec.support import output
from effspec.support.errors import OutputError


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if output.TEMP_SUFFIX in p.name)


def test_write_file_replaces_by_rename(tmp_path: Path) -> None:
    target = tmp_path / "a.txt"
    target.write_text("old")
    inode = target.stat().st_ino
    assert output.write_file(target, "new")
    assert target.read_text() == "new" and target.stat().st_ino != inode
    assert not output.write_file(target, "new", skip_same=True)
    assert leftovers(tmp_path) == []


def test_a_symlink_is_replaced_not_followed(tmp_path: Path) -> None:
    (tmp_path / "precious").write_text("keep")
    os.symlink(tmp_path / "precious", tmp_path / "link")
    output.write_file(tmp_path / "link", "new")
    assert (tmp_path / "precious").read_text() == "keep"
    assert not (tmp_path / "link").is_symlink()


@pytest.mark.parametrize("kind", ["fifo", "dir", "device"])
def test_special_targets_are_refused(tmp_path: Path, kind: str) -> None:
    target = tmp_path / "t"
    if kind == "fifo":
        os.mkfifo(target)
    elif kind == "dir":
        target.mkdir()
    else:
        target = Path("/dev/null")
    with pytest.raises(OutputError, match="expected a regular file"):
        output.write_file(target, "x")
    with pytest.raises(OutputError, match="expected a regular file"):
        with output.staged_file(target):
            pass
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)


def test_an_input_is_never_an_output(tmp_path: Path) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text("name: x\n")
    os.link(spec, tmp_path / "hard.yaml")
    os.symlink(spec, tmp_path / "soft.yaml")
    for name in ("spec.yaml", "hard.yaml", "soft.yaml"):
        with pytest.raises(OutputError, match="is one of this command's inputs"):
            output.write_file(tmp_path / name, "y", inputs=[spec])
    assert spec.read_text() == "name: x\n"


@pytest.mark.parametrize(
    ("name", "words"),
    [
        ("afile/sub.txt", "a file is in the way"),
        ("missing/sub.txt", "No such file or directory"),
        ("x" * 300, "File name too long"),
    ],
)
def test_bad_paths_are_one_line_errors(tmp_path: Path, name: str, words: str) -> None:
    (tmp_path / "afile").write_text("keep")
    with pytest.raises(OutputError, match=words):
        output.write_file(tmp_path / name, "x")
    assert (tmp_path / "afile").read_text() == "keep"


def test_a_full_disk_keeps_the_previous_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "fig.svg"
    target.write_text("previous")
    with pytest.raises(OutputError, match="No space left on device"):
        with output.staged_file(target) as temp:
            assert temp.suffix == ".svg"
            temp.write_text("half")
            raise OSError(errno.ENOSPC, "No space left on device")
    assert target.read_text() == "previous" and leftovers(tmp_path) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_a_read_only_folder(tmp_path: Path) -> None:
    (tmp_path / "ro").mkdir(mode=0o555)
    with pytest.raises(OutputError, match="Permission denied"):
        output.write_file(tmp_path / "ro" / "x", "x")


def test_temp_names_are_unique_per_call(tmp_path: Path) -> None:
    names = {output.temp_path(tmp_path / "out.yaml") for _ in range(100)}
    assert len(names) == 100


def test_a_folder_output_refuses_a_users_folder(tmp_path: Path) -> None:
    target = tmp_path / "saved"
    target.mkdir()
    (target / "mine.txt").write_text("mine")
    with pytest.raises(OutputError, match="did not write"):
        with output.staged_folder(target):
            raise AssertionError("not reached")
    assert (target / "mine.txt").read_text() == "mine"


def test_a_folder_output_replaces_its_own_previous_output(tmp_path: Path) -> None:
    target = tmp_path / "saved"
    with output.staged_folder(target) as temp:
        (temp / "variables").mkdir()
        (temp / "variables" / "v.data").write_text("1")
        (temp / "model.pb").write_text("1")
    with output.staged_folder(target) as temp:
        (temp / "model.pb").write_text("2")
    assert sorted(p.name for p in target.iterdir()) == [output.WRITTEN_LIST, "model.pb"]
    assert (target / "model.pb").read_text() == "2" and leftovers(tmp_path) == []
    (target / "notes.txt").write_text("the user's")  # now it holds a file we did not write
    with pytest.raises(OutputError, match="did not write"):
        with output.staged_folder(target):
            pass


def test_a_failed_folder_output_leaves_nothing(tmp_path: Path) -> None:
    target = tmp_path / "saved"
    with pytest.raises(RuntimeError):
        with output.staged_folder(target) as temp:
            (temp / "half").write_text("x")
            raise RuntimeError("exporter failed")
    assert list(tmp_path.iterdir()) == []


def test_stale_temporaries_of_dead_processes_are_removed(tmp_path: Path) -> None:
    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True).stdout)
    stale = tmp_path / f".fig.svg.{dead}.0123456789ab{output.TEMP_SUFFIX}.svg"
    stale.write_text("half")
    live = tmp_path / f".fig.svg.1.0123456789ab{output.TEMP_SUFFIX}.svg"
    live.write_text("in flight")
    output.write_file(tmp_path / "fig.svg", "x")
    with output.staged_file(tmp_path / "fig.svg") as temp:
        temp.write_text("y")
    assert not stale.exists() and live.exists()


def test_open_append_refuses_links_and_fifos(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "fifo.csv")
    os.symlink(tmp_path / "elsewhere", tmp_path / "link.csv")
    for name in ("fifo.csv", "link.csv"):
        with pytest.raises(OutputError):
            output.open_append(tmp_path / name)
    fd = output.open_append(tmp_path / "m.csv")
    os.write(fd, b"a\n")
    os.close(fd)
    assert (tmp_path / "m.csv").read_text() == "a\n"


def test_a_second_writer_of_a_run_folder_is_refused_naming_the_first(tmp_path: Path) -> None:
    lock = output.lock_folder(tmp_path / "run", "effspec train torch tiny")
    code = (
        "import sys; from effspec.support import output\n"
        "try:\n    output.lock_folder(sys.argv[1], 'second')\n"
        "except Exception as exc:\n    print(exc); sys.exit(2)\n"
    )
    second = subprocess.run([sys.executable, "-c", code, str(tmp_path / "run")], capture_output=True, text=True)
    assert second.returncode == 2
    assert f"pid {os.getpid()} (effspec train torch tiny)" in second.stdout
    lock.release()
    output.lock_folder(tmp_path / "run", "third").release()
