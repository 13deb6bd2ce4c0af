"""The project stands alone: nothing in it cites files outside the repository."""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_no_file_cites_documents_outside_the_repository() -> None:
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    offenders = []
    for name in tracked.splitlines():
        path = ROOT / name
        if path.suffix not in {".py", ".md", ".j2", ".yaml", ".toml", ".sh", ".txt"} or not path.is_file():
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        for needle in ("REFERENCE" + ".md", "../" + "shared/", "STYLE" + ".md"):
            if needle in text:
                offenders.append(f"{name}: {needle}")
    assert not offenders, offenders
