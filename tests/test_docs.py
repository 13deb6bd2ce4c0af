"""Documented commands run as written: the shell blocks of README.md and docs/*.md.

Every fenced shell block (```bash / sh / shell / console, or an unlabelled block whose first line is a
``$ command``) carries a marker on the line before its fence, visible in the Markdown source:

    <!-- docs-test: run; expect: TEXT -->         run it; exit 0 and TEXT in its output
    <!-- docs-test: illustrative: REASON -->      not run (needs ImageNet, GPUs, a download, ...)

A ``bash`` block runs with ``bash -e`` in a fresh temporary directory that holds links to the
repository's specs/, generated/ and tests/data/, so its relative paths work and its outputs land
there. A ``$ command`` block runs each command and checks that each output line it shows (except
``...``) is printed. An unmarked block fails ``test_every_shell_block_is_marked``, so a new example
is either run by the suite or visibly declared illustrative.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL = {"bash", "sh", "shell", "console"}
MARKER = re.compile(r"<!-- docs-test: (run(?:; expect: (?P<expect>.*?))?|illustrative: (?P<reason>.+?)) -->")


@dataclass(frozen=True)
class Block:
    file: str
    line: int  # of the opening fence
    language: str
    text: str
    marker: str | None  # the marker line before the fence, if any

    @property
    def id(self) -> str:
        return f"{self.file}:{self.line}"


def blocks() -> list[Block]:
    found = []
    for path in DOCS:
        lines = path.read_text(encoding="utf-8").splitlines()
        index = 0
        while index < len(lines):
            fence = re.match(r"^```(\w*)\s*$", lines[index])
            if not fence:
                index += 1
                continue
            end = next(j for j in range(index + 1, len(lines)) if lines[j].startswith("```"))
            body = lines[index + 1 : end]
            language = fence.group(1)
            if language in SHELL or (not language and body and body[0].startswith("$ ")):
                before = lines[index - 1] if index else ""
                marker = before if "docs-test:" in before else None
                name = str(path.relative_to(ROOT))
                found.append(Block(name, index + 1, language or "console", "\n".join(body) + "\n", marker))
            index = end + 1
    return found


ALL = blocks()
RUN = [block for block in ALL if block.marker and MARKER.search(block.marker).group(1).startswith("run")]


def test_every_shell_block_is_marked() -> None:
    unmarked = [block.id for block in ALL if block.marker is None or not MARKER.search(block.marker)]
    assert not unmarked, f"shell blocks without a <!-- docs-test: ... --> marker on the line before: {unmarked}"
    assert RUN, "no documented block runs"


def test_illustrative_blocks_say_why() -> None:
    for block in ALL:
        match = MARKER.search(block.marker or "")
        if match and match.group("reason") is not None:
            assert len(match.group("reason").strip()) > 5, block.id


def _sandbox(tmp_path: Path) -> dict[str, str]:
    for name in ("specs", "generated"):
        (tmp_path / name).symlink_to(ROOT / name)
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "data").symlink_to(ROOT / "tests" / "data")
    bin_dir = str(Path(sys.executable).parent)
    return {
        **os.environ,
        "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),
        "OMP_NUM_THREADS": "1",
        "TF_CPP_MIN_LOG_LEVEL": "3",
        "PYTHONPATH": str(ROOT),  # generated/*/train.py import effspec as installed; this is the same tree
    }


@pytest.mark.parametrize("block", RUN, ids=[block.id for block in RUN])
def test_documented_block_runs(block: Block, tmp_path: Path) -> None:
    env = _sandbox(tmp_path)
    expect = MARKER.search(block.marker or "").group("expect")
    if block.language == "console":  # one or more "$ command" lines, each followed by what it prints
        output = ""
        for segment in re.split(r"(?m)^(?=\$ )", block.text):
            if not segment.strip():
                continue
            command, *shown = segment.splitlines()
            result = subprocess.run(
                command[2:], shell=True, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
            )
            printed = result.stdout + result.stderr
            output += printed
            assert result.returncode == 0, f"{block.id}: {command}: exit {result.returncode}\n{printed[-3000:]}"
            for line in shown:
                if line.strip() and line.strip() != "...":
                    assert line.rstrip() in printed, f"{block.id}: {line!r} not in the output\n{printed[-3000:]}"
    else:
        result = subprocess.run(
            ["bash", "-e", "-o", "pipefail", "-c", block.text],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        output = result.stdout + result.stderr
        assert result.returncode == 0, f"{block.id}: exit {result.returncode}\n{output[-3000:]}"
    if expect:
        assert expect in output, f"{block.id}: {expect!r} not in the output\n{output[-3000:]}"


def test_readme_suite_time_names_its_machine_and_load() -> None:
    text = " ".join((ROOT / "README.md").read_text(encoding="utf-8").split())
    timing = re.search(r"Measured on a fresh clone of (?P<machine>[^:]+): .*?suite (?P<time>\d+ min \d+ s)", text)
    assert timing, "README: the suite's time, measured on which machine"
    assert "vCPU" in timing.group("machine") or "core" in timing.group("machine")
    assert re.search(r"suite \d+ min \d+ s \(about \d+ tests\) under a load average of [\d-]+", text)
