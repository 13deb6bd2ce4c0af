"""Spec errors a user can act on (issue 11): ``extends`` a shipped spec by name, unknown keys with
the valid keys and the nearest match, every validation error of a file (up to a cap), and errors in
inherited values naming both the spec and the base's line. In-process and fast."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from conftest import ROOT

from effspec.cli import main
from effspec.core.loader import MAX_ERRORS
from effspec.support.paths import shipped_spec_names

STAGE = "  - {block: mbconv, repeats: 1, kernel: 3, stride: 1, expansion: 1, channels: 16}\n"
B0_PARAMS = "5,288,548 parameters"
LINE = re.compile(r"[^:\s]+(:\d+:\d+)?: error: \S")  # every error line: file[:line:column]: error: ...


def run(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    files: dict[str, str],
    *args: str,
) -> tuple[int, str, list[str]]:
    """Write ``files`` into tmp_path, run effspec there, return (exit code, stdout, stderr lines)."""
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    code = main(list(args))
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    return code, captured.out, captured.err.splitlines()


def one_error(code: int, lines: list[str]) -> str:
    assert code == 2 and len(lines) == 1, lines
    return lines[0]


# ---- extends: a shipped spec by name --------------------------------------------------------------


def test_shipped_names_are_the_specs_directory() -> None:
    names = shipped_spec_names()
    assert names == sorted(p.stem for p in (ROOT / "specs").glob("*.yaml"))
    assert {"efficientnet-b0", "mobilenetv3-large-100", "tinynet-e"} <= set(names)


def test_extends_a_shipped_spec_by_name_from_any_directory(tmp_path, monkeypatch, capsys) -> None:
    files = {"deep/dir/my.yaml": "extends: efficientnet-b0\nname: my-net\n"}
    code, out, err = run(tmp_path, monkeypatch, capsys, files, "validate", "deep/dir/my.yaml")
    assert code == 0, err
    assert f"(my-net, {B0_PARAMS})" in out


def test_a_shipped_base_may_itself_extend(tmp_path, monkeypatch, capsys) -> None:
    files = {"my.yaml": "extends: efficientnet-b1\nname: my-b1\nhead: {num_classes: 10}\n"}
    code, out, err = run(tmp_path, monkeypatch, capsys, files, "validate", "my.yaml")
    assert code == 0, err and "my-b1" in out


def test_a_file_beside_the_spec_wins_over_a_shipped_name(tmp_path, monkeypatch, capsys) -> None:
    files = {
        "efficientnet-b0": "name: local\nstages:\n" + STAGE,  # a file named exactly like the shipped spec
        "my.yaml": "extends: efficientnet-b0\nname: my-net\n",
    }
    code, out, err = run(tmp_path, monkeypatch, capsys, files, "validate", "my.yaml")
    assert code == 0, err
    assert "my-net" in out and B0_PARAMS not in out


def test_an_unknown_name_lists_the_shipped_specs_nearest_first(tmp_path, monkeypatch, capsys) -> None:
    files = {"my.yaml": "extends: efficientnet-bo\nname: my-net\n"}
    line = one_error(*run(tmp_path, monkeypatch, capsys, files, "validate", "my.yaml")[::2])
    assert line.startswith("my.yaml:1:10: error: extends: expected a relative path or the name of a shipped spec, ")
    assert "found 'efficientnet-bo'" in line and "did you mean efficientnet-b0?" in line
    listed = line.split("shipped specs: ", 1)[1].split(", ")
    assert listed[0] == "efficientnet-b0"
    assert sorted(listed) == shipped_spec_names()


def test_a_missing_yaml_file_with_a_shipped_stem_hints_at_the_name(tmp_path, monkeypatch, capsys) -> None:
    files = {"my.yaml": "extends: efficientnet-b0.yaml\nname: my-net\n"}
    line = one_error(*run(tmp_path, monkeypatch, capsys, files, "validate", "my.yaml")[::2])
    assert line.startswith("my.yaml:1:10: error: extends: base spec not found: expected a file at efficientnet-b0.yaml")
    assert "write 'extends: efficientnet-b0'" in line


@pytest.mark.parametrize("ref", ["effspec.core.schema", "efficientnet-b0/..", "EFFICIENTNET-B0", "../specs/nothere"])
def test_only_listed_names_are_shipped_specs(tmp_path, monkeypatch, capsys, ref: str) -> None:
    files = {"my.yaml": f"extends: {ref}\nname: my-net\n"}
    line = one_error(*run(tmp_path, monkeypatch, capsys, files, "validate", "my.yaml")[::2])
    assert line.startswith("my.yaml:1:10: error: extends: "), line


# ---- unknown keys ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "where", "guess", "keys"),
    [
        ("name: x\nhed: {channels: 8}\nstages:\n" + STAGE, "s.yaml:2:6: error: hed: ", "head", "name, description, "),
        (
            "name: x\nstages:\n  - {block: mbconv, repeats: 1, kernel: 3, stride: 1, expansion: 1, channels: 16, se_ration: 0.5}\n",
            "s.yaml:3:94: error: stages[0].se_ration: ",
            "se_ratio",
            "block, repeats, kernel, stride, expansion, channels, se_ratio, ",
        ),
        (
            "name: x\ndefaults: {batch_norm: {epsilon: 0.001}}\nstages:\n" + STAGE,
            "s.yaml:2:34: error: defaults.batch_norm.epsilon: ",
            "eps",
            "eps, momentum)",
        ),
        (
            "name: x\nstages:\n  - {block: mbconv, repeats: 2, kernel: 3, stride: 1, expansion: 1, channels: 16, blocks: [{}, {kernal: 5}]}\n",
            "s.yaml:3:105: error: stages[0].blocks[1].kernal: ",
            "kernel",
            "kernel, expansion, expansion_in, ",
        ),
        (
            "name: x\ntraining: {xyz: 2}\nstages:\n" + STAGE,
            "s.yaml:2:17: error: training.xyz: ",
            None,
            "optimizer, lr_per_256, ",
        ),
        (
            "name: x\nscaling: {method: compound, phi: 1, widht: 2}\nstages:\n" + STAGE,
            "s.yaml:2:44: error: scaling.widht: ",
            None,
            "method, phi, alpha, beta, gamma, ",
        ),
    ],
    ids=["top-level", "stage", "batch-norm", "block-override", "no-near-key", "compound-scaling"],
)
def test_unknown_key_lists_valid_keys_and_nearest(
    tmp_path, monkeypatch, capsys, text: str, where: str, guess: str | None, keys: str
) -> None:
    line = one_error(*run(tmp_path, monkeypatch, capsys, {"s.yaml": text}, "validate", "s.yaml")[::2])
    assert line.startswith(where + "unknown key '"), line
    assert (f"did you mean {guess}?" in line) if guess else ("did you mean" not in line), line
    assert "(valid keys here: " + keys in line, line


def test_a_key_of_the_other_scaling_method_says_so(tmp_path, monkeypatch, capsys) -> None:
    text = "name: x\nscaling: {method: compound, phi: 1, width: 2}\nstages:\n" + STAGE
    line = one_error(*run(tmp_path, monkeypatch, capsys, {"s.yaml": text}, "validate", "s.yaml")[::2])
    assert "unknown key 'width'; width is a key of method: explicit (valid keys here: method, phi," in line


# ---- every error of a file ------------------------------------------------------------------------


def test_every_error_of_a_file_one_line_each_in_file_order(tmp_path, monkeypatch, capsys) -> None:
    text = (
        "name: x\n"
        "defaults: {se_ration: 0.5, padding: reflect}\n"
        "stages:\n"
        "  - {block: mbconv, repeats: 0, kernel: 4, stride: 1, expansion: 1, channels: 16}\n"
        "  - {block: resnet, repeats: 1, kernel: 3, stride: 3, expansion: 1, channels: 16}\n"
    )
    out = tmp_path / "out"
    code, stdout, lines = run(tmp_path, monkeypatch, capsys, {"s.yaml": text}, "compile", "s.yaml", "-o", str(out))
    assert code == 2 and stdout == ""
    assert not out.exists()
    assert [line.split(": error: ")[0] for line in lines] == [
        "s.yaml:2:23",
        "s.yaml:2:37",
        "s.yaml:4:30",
        "s.yaml:4:41",
        "s.yaml:5:13",
        "s.yaml:5:52",
    ], lines
    assert "defaults.se_ration: unknown key 'se_ration'; did you mean se_ratio?" in lines[0]
    assert lines[1].endswith("defaults.padding: expected 'same' or 'symmetric', found 'reflect'")
    assert lines[2].endswith("stages[0].repeats: expected a value > 0, found 0")
    assert lines[3].endswith("stages[0].kernel: expected an odd kernel size, found 4")
    assert lines[4].endswith("stages[1].block: expected 'mbconv' or 'fused_mbconv', found 'resnet'")
    assert lines[5].endswith("stages[1].stride: expected 1 or 2, found 3")


def test_errors_are_capped_with_a_count_of_the_rest(tmp_path, monkeypatch, capsys) -> None:
    stages = "".join(
        f"  - {{block: mbconv, repeats: 1, kernel: 3, stride: 1, expansion: 1, channels: 16, bad{i}: 1}}\n"
        for i in range(MAX_ERRORS + 7)
    )
    code, _, lines = run(tmp_path, monkeypatch, capsys, {"s.yaml": "name: x\nstages:\n" + stages}, "validate", "s.yaml")
    assert code == 2
    assert len(lines) == MAX_ERRORS + 1, lines
    assert all(LINE.match(line) for line in lines), lines
    assert lines[0].startswith("s.yaml:3:") and "stages[0].bad0: unknown key 'bad0'" in lines[0]
    assert lines[-1] == "s.yaml: error: 7 more errors not shown"


@pytest.mark.parametrize(
    ("kernel", "expected"),
    [
        ("[3, 0]", "stages[0].kernel[1]: expected a value > 0, found 0"),
        ("'a'", "stages[0].kernel: expected an integer, found 'a'"),
        ("[3, 4]", "stages[0].kernel: expected an odd kernel size, found 4"),
    ],
)
def test_a_union_field_gives_one_error_about_the_member_the_value_fits(
    tmp_path, monkeypatch, capsys, kernel: str, expected: str
) -> None:
    text = f"name: x\nstages:\n  - {{block: mbconv, repeats: 1, kernel: {kernel}, stride: 1, expansion: 1, channels: 16}}\n"
    line = one_error(*run(tmp_path, monkeypatch, capsys, {"s.yaml": text}, "validate", "s.yaml")[::2])
    assert line.endswith(expected), line


# ---- errors in inherited values -------------------------------------------------------------------


BASE = "name: base\nstem: {kernel: 4}\nstages:\n  - {block: mbconv, repeats: 1, kernel: 2, stride: 1, expansion: 1, channels: 16}\n"


def test_an_inherited_error_names_the_spec_and_the_bases_line(tmp_path, monkeypatch, capsys) -> None:
    files = {"base.yaml": BASE, "my.yaml": "extends: base.yaml\nname: my-net\n"}
    code, _, lines = run(tmp_path, monkeypatch, capsys, files, "validate", "my.yaml")
    assert code == 2
    assert lines == [
        "my.yaml: error: stem.kernel: expected an odd kernel size, found 4 (inherited from base.yaml:2:16)",
        "my.yaml: error: stages[0].kernel: expected an odd kernel size, found 2 (inherited from base.yaml:4:41)",
    ]


def test_along_a_chain_the_spec_compiled_is_named(tmp_path, monkeypatch, capsys) -> None:
    files = {
        "lib/base.yaml": BASE,
        "lib/mid.yaml": "extends: base.yaml\nname: mid\nstem: {kernel: 3}\n",  # fixes the stem, not the stage
        "my.yaml": "extends: lib/mid.yaml\nname: my-net\nhead: {dropout: 2}\n",
    }
    code, _, lines = run(tmp_path, monkeypatch, capsys, files, "validate", "my.yaml")
    assert code == 2
    assert lines == [
        "my.yaml:3:17: error: head.dropout: expected a value < 1, found 2",  # the spec's own value: its own line
        "my.yaml: error: stages[0].kernel: expected an odd kernel size, found 2 (inherited from lib/base.yaml:4:41)",
    ]


def test_an_error_found_after_validation_in_a_shipped_base_names_both(tmp_path, monkeypatch, capsys) -> None:
    # B0's stages are fine at 224 px; at 8 px the map collapses before a stride inherited from B0.
    files = {"my.yaml": "extends: efficientnet-b0\nname: my-net\ninput: {resolution: 8}\n"}
    line = one_error(*run(tmp_path, monkeypatch, capsys, files, "validate", "my.yaml")[::2])
    assert line.startswith("my.yaml: error: stages[2].stride: spatial size collapses"), line
    shipped = (ROOT / "specs" / "efficientnet-b0.yaml").as_posix()
    assert re.search(rf"\(inherited from {re.escape(shipped)}:\d+:\d+\)$", line), line


def test_a_base_compiled_by_itself_names_only_itself(tmp_path, monkeypatch, capsys) -> None:
    code, _, lines = run(tmp_path, monkeypatch, capsys, {"base.yaml": BASE}, "validate", "base.yaml")
    assert code == 2 and [line.split(": error:")[0] for line in lines] == ["base.yaml:2:16", "base.yaml:4:41"]
    assert not any("inherited" in line for line in lines)


# ---- descriptions ---------------------------------------------------------------------------------


def test_every_schema_field_has_a_description() -> None:
    from pydantic import BaseModel

    import effspec.core.schema as schema

    models = [
        m
        for m in vars(schema).values()
        if isinstance(m, type) and issubclass(m, BaseModel) and m.__module__ == schema.__name__
    ]
    missing = [
        f"{m.__name__}.{name}" for m in models for name, field in m.model_fields.items() if not field.description
    ]
    assert len(models) >= 15 and not missing, missing
    committed = json.loads((ROOT / "specs" / "effspec.schema.json").read_text(encoding="utf-8"))
    sections = [committed, *committed["$defs"].values()]
    undescribed = [
        name for s in sections for name, prop in s.get("properties", {}).items() if not prop.get("description")
    ]
    assert not undescribed, undescribed


def test_thousands_of_unknown_keys_stay_fast(tmp_path, monkeypatch, capsys) -> None:
    """Messages (nearest key, valid keys) are built only for the errors shown: 9,000 unknown keys took
    over 20 s when every one was matched and compared with every other."""
    import time

    text = "name: x\nstages:\n" + STAGE + "defaults:\n" + "".join(f"  se_rat{i}: 1\n" for i in range(9000))
    start = time.perf_counter()
    code, _, lines = run(tmp_path, monkeypatch, capsys, {"s.yaml": text}, "validate", "s.yaml")
    assert time.perf_counter() - start < 8
    assert code == 2 and len(lines) == MAX_ERRORS + 1
    assert lines[-1] == f"s.yaml: error: {9000 - MAX_ERRORS} more errors not shown"
