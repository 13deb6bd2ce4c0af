"""Pictures: `effspec plot` (params and MACs against phi) and `effspec info --diagram`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from effspec.cli import main
from effspec.tools.plot import fitted_phi

ROOT = Path(__file__).resolve().parents[1]
SPECS = ROOT / "specs"
HEAVY = ("torch", "tensorflow", "keras", "jax", "matplotlib", "optuna")


def test_compile_info_validate_scale_import_no_framework_or_plotting(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "from effspec.cli import main\n"
        f"assert main(['compile', 'specs/efficientnet-b0.yaml', '-o', {str(tmp_path / 'gen')!r}]) == 0\n"
        "assert main(['info', 'specs/efficientnet-b0.yaml']) == 0\n"
        "assert main(['info', 'specs/efficientnetv2-s.yaml', '--json']) == 0\n"
        "assert main(['validate', 'specs/efficientnet-b7.yaml']) == 0\n"
        f"assert main(['scale', 'specs/efficientnet-b0.yaml', '--target-macs', '1e9', '-o', {str(tmp_path / 's.yaml')!r}]) == 0\n"
        f"heavy = sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r})\n"
        "assert not heavy, heavy\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_fitted_phi() -> None:
    assert fitted_phi(1.0, 1.0, 224, 224, (1.2, 1.1, 1.15)) == 0
    phi = 2.5
    assert fitted_phi(1.1**phi, 1.2**phi, round(224 * 1.15**phi), 224, (1.2, 1.1, 1.15)) == pytest.approx(phi, abs=0.01)


def test_plot_family_png_and_svg_with_accuracy(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("matplotlib")
    specs = [str(SPECS / f"efficientnet-b{i}.yaml") for i in (0, 1, 3)] + [str(SPECS / "custom-phi2-relu.yaml")]
    assert main(["plot", *specs, "-o", str(tmp_path / "family.png")]) == 0
    assert (tmp_path / "family.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    out = capsys.readouterr().out
    assert "custom-phi2-relu: phi 2.00, 10,857,708 parameters" in out
    assert "efficientnet-b0: phi 0.00, 5,288,548 parameters, 385,814,752 MACs" in out
    csv = tmp_path / "acc.csv"
    csv.write_text("name,top1\nefficientnet-b0,77.1\nefficientnet-b1,79.1\nefficientnet-b3,81.6\n")
    assert main(["plot", *specs[:3], "-o", str(tmp_path / "family.svg"), "--accuracy", str(csv)]) == 0
    svg = (tmp_path / "family.svg").read_text()
    assert "Accuracy vs MACs" in svg and "b3" in svg
    assert "top-1 81.60%" in capsys.readouterr().out


def test_plot_bad_input_is_one_line_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plot", str(SPECS / "efficientnet-b0.yaml"), "-o", str(tmp_path / "x.gif")]) == 2
    assert main(["plot", str(tmp_path / "missing.yaml"), "-o", str(tmp_path / "x.png")]) == 2
    csv = tmp_path / "acc.csv"
    csv.write_text("model,score\nefficientnet-b0,1\n")
    assert (
        main(["plot", str(SPECS / "efficientnet-b0.yaml"), "-o", str(tmp_path / "x.png"), "--accuracy", str(csv)]) == 2
    )
    err = capsys.readouterr().err
    assert err.count("\n") == 3 and "expected a 'name'" in err


def test_info_diagram(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("matplotlib")
    target = tmp_path / "b0.svg"
    assert main(["info", str(SPECS / "efficientnet-b0.yaml"), "--json", "--diagram", str(target)]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["params"] == 5_288_548  # stdout stays pure JSON
    assert f"wrote {target}" in captured.err
    svg = target.read_text()
    for label in ("stem", "stage 2", "MBConv6 x2", "k5x5, stride 2, expand 6", "7x7x1280", "1000 classes"):
        assert label in svg, label
    assert main(["info", str(SPECS / "efficientnetv2-s.yaml"), "--diagram", str(tmp_path / "v2s.png")]) == 0
    assert (tmp_path / "v2s.png").stat().st_size > 10_000
    assert main(["info", str(SPECS / "efficientnet-b0.yaml"), "--diagram", str(tmp_path / "b0.txt")]) == 2
