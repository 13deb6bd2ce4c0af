"""Named regression tests: each spec here once miscompiled (found by users or by test_properties.py).

Each is checked with the same four properties the property test uses (compile, IR == torch ==
Keras parameter counts, IR MACs == torch hook MACs, torch == Keras logits through the converter).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from conftest import ROOT
from test_properties import RUFF, check_spec

from effspec.emit.pipeline import build, emit

#: Issue 10: a Fused-MBConv stage with expansion 1, SE and a width change. torch exited 70
#: ("squeeze-excite gates 32 channels, the conv gives 16"), Keras wrote a wrong PARAMS and
#: `effspec info` reported 5,192 parameters for a stage that has 4,920.
FUSED_EXPANSION_1_WITH_SE = """\
extends: {base}
name: fused-se-test
stages:
  - {{block: fused_mbconv, repeats: 1, kernel: 3, stride: 1, expansion: 1, channels: 16, se_ratio: 0.25}}
  - {{block: fused_mbconv, repeats: 2, kernel: 3, stride: 2, expansion: 4, channels: 32}}
  - {{block: mbconv, repeats: 2, kernel: 3, stride: 2, expansion: 4, channels: 48}}
"""


def test_fused_expansion_1_with_se_and_a_width_change(tmp_path: Path) -> None:
    for shipped in (ROOT / "specs").glob("*.yaml"):  # the base and the specs it extends
        (tmp_path / shipped.name).write_bytes(shipped.read_bytes())
    spec = tmp_path / "fused-se-test.yaml"
    spec.write_text(FUSED_EXPANSION_1_WITH_SE.format(base="efficientnetv2-b0.yaml"))
    model = build(spec).model
    first = model.blocks[0]
    # stem 32 -> one 3x3 conv to 16 channels, SE squeezing 32 * 0.25 = 8 and gating those 16.
    assert (first.expand.conv.in_channels, first.expand.conv.out_channels) == (32, 16)
    assert first.project is None and first.se.channels == 16 and first.se.se_channels == 8
    stage = sum(layer.params for layer in first.layers)
    assert stage == 32 * 16 * 9 + 2 * 16 + (16 * 8 + 8) + (8 * 16 + 16) == 4_920
    check_spec(spec, tmp_path)


#: Found by test_properties.py once it drew long names and ran ruff on every emitted file: a spec
#: path longer than ~70 characters made SPEC_PATH unformatted and the train.py header too long for
#: lint, and a name near the 64-character limit did the same to the Keras model's closing call.
LONG_NAME = "a" * 30 + "-" + "b" * 33


def test_long_names_and_paths_emit_formatted_lint_clean_files(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    spec = deep / "long.yaml"
    spec.write_text(f"extends: efficientnetv2-b0\nname: {LONG_NAME}\n", encoding="utf-8")
    assert len(LONG_NAME) == 64
    outputs = emit(build(spec).model, ["torch", "keras"])
    for directory, files in outputs.items():
        for name, text in files.items():
            path = tmp_path / "out" / directory / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
    paths = sorted(str(path) for path in (tmp_path / "out").rglob("*.py"))
    assert len(paths) == 4
    for command in (["format", "--isolated", "--check"], ["check", "--isolated", "--select", "E,F,W,I,B,UP"]):
        result = subprocess.run([RUFF, *command, *paths], capture_output=True, text=True)
        assert result.returncode == 0, result.stdout + result.stderr


#: Found by test_properties.py (2,000-example run): a description with an East Asian wide character
#: ("⺀", two columns) fitted 88 columns by len() but not by ruff's display width, so DESCRIPTION
#: came out unformatted. Widths are now measured as ruff measures them.
WIDE_DESCRIPTION = "00000000000\x1f\x1f\n⺀\U00010cf3\U00018cd6\U00018d09\U00018d09\U00018d09"


@pytest.mark.parametrize("description", [WIDE_DESCRIPTION, "⺀" * 43, "e\u0301" * 40 + "x" * 30])
def test_descriptions_with_wide_or_combining_characters_stay_formatted(tmp_path: Path, description: str) -> None:
    spec = tmp_path / "wide.yaml"
    spec.write_text(
        f"extends: efficientnet-b0\nname: wide\ndescription: {json.dumps(description, ensure_ascii=False)}\n"
    )
    files = emit(build(spec).model, ["torch"])["torch/wide"]
    path = tmp_path / "model.py"
    path.write_text(files["model.py"], encoding="utf-8")
    result = subprocess.run([RUFF, "format", "--isolated", "--check", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
