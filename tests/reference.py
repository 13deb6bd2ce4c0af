"""The reference figures, read from docs/reference.md (their one owner): trainable parameters and
conv+linear MACs at each model's native resolution."""

from __future__ import annotations

from pathlib import Path

_DOC = Path(__file__).resolve().parent.parent / "docs" / "reference.md"


def _table(heading: str) -> list[list[str]]:
    """The rows of the first markdown table after the line starting with ``heading``."""
    lines = _DOC.read_text(encoding="utf-8").splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(heading))
    rows: list[list[str]] = []
    for line in lines[start + 1 :]:
        if line.startswith("|"):
            rows.append([cell.strip() for cell in line.strip("|").split("|")])
        elif rows:
            break
    return rows[2:]  # drop the header and the |---| line


def _int(text: str) -> int:
    return int(text.replace(",", ""))


#: spec -> (parameters, MACs): EfficientNet B0..B7 and V2 (keras.applications and timm `tf_` models).
REFERENCE = {row[0]: (_int(row[2]), _int(row[3])) for row in _table("Trainable parameters (the same")}

#: The wider MBConv family: spec -> (timm model, native resolution, params, MACs).
FAMILIES = {
    row[0]: (row[1], int(row[2]), _int(row[3]), _int(row[4])) for row in _table("The wider MBConv family, against timm")
}

if (len(REFERENCE), len(FAMILIES)) != (15, 24):  # a table lost or cut short in the doc
    raise RuntimeError(f"docs/reference.md: expected 15 + 24 reference rows, read {len(REFERENCE)} + {len(FAMILIES)}")
