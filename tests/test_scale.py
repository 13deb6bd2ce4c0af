"""`effspec scale`: budget-driven compound scaling on the exact figures of the rounded model."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from effspec.cli import main
from effspec.emit.pipeline import build
from effspec.tools.scale import DEFAULT_COEFFICIENTS, Family, Settings, measure_latency, solve_analytic, solve_latency

ROOT = Path(__file__).resolve().parents[1]
B0 = ROOT / "specs" / "efficientnet-b0.yaml"
TINY = ROOT / "tests" / "data" / "torch_v1_tiny.yaml"


def _scale(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], *args: str, name: str = "out.yaml"
) -> tuple[int, str, str]:
    out = tmp_path / name
    code = main(["scale", *args, "-o", str(out)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize(
    ("flag", "target", "field"), [("--target-macs", 1e9, "macs"), ("--target-params", 20e6, "params")]
)
def test_b0_targets_land_within_5_percent(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flag: str, target: float, field: str
) -> None:
    code, out, err = _scale(tmp_path, capsys, str(B0), flag, f"{target:g}")
    assert code == 0, err
    written = tmp_path / "out.yaml"
    text = written.read_text()
    assert "extends: " in text and "method: compound" in text
    assert Path(text.split("extends: ")[1].split("\n")[0]).is_absolute() is False  # relative to the new file
    total = build(written).report.total  # the written spec itself, through the real pipeline
    assert abs(getattr(total, field) / target - 1) <= 0.05, (total, out)
    assert f"{total.params:,}" in out and f"{total.macs:,}" in out
    assert out.count("\n->") == 1  # one chosen row among its neighbours


@pytest.mark.slow
def test_closest_step_wins(tmp_path: Path) -> None:
    """Scanning phi finely finds no rounded model closer to the target than the one chosen."""
    family = Family(TINY, Settings(*DEFAULT_COEFFICIENTS, 8, False))
    values = sorted({family.at(i / 200).macs for i in range(0, 1601)})  # phi 0..8
    assert len(values) > 20
    for target in (values[3] * 1.01, (values[10] + values[11]) / 2, values[-5] * 0.999, (values[0] + values[-1]) / 3):
        best = solve_analytic(family, "macs", target).best
        nearest = min(values, key=lambda v: abs(v - target))
        assert abs(best.macs - target) <= abs(nearest - target), (target, best.macs, nearest)
        assert family.at(best.phi).macs == best.macs  # the written (rounded) phi gives the same model


@pytest.mark.slow
def test_unreachable_targets_exit_2_with_the_nearest_figure(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _scale(tmp_path, capsys, str(B0), "--target-macs", "1e6")
    assert code == 2 and "unreachable" in err and "385,814,752 MACs" in err
    code, _, err = _scale(tmp_path, capsys, str(B0), "--target-params", "1e15")
    assert code == 2 and "nearest reachable model has" in err
    for bad in ("abc", "-5", "nan"):
        code, _, err = _scale(tmp_path, capsys, str(B0), "--target-macs", bad)
        assert code == 2 and err.count("\n") == 1, err
    assert not (tmp_path / "out.yaml").exists()


@pytest.mark.slow
def test_explicit_scaling_and_explicit_base(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _scale(tmp_path, capsys, str(B0), "--target-macs", "2e9", "--explicit")
    assert code == 0, err
    assert "method: explicit" in (tmp_path / "out.yaml").read_text()
    assert abs(build(tmp_path / "out.yaml").report.total.macs / 2e9 - 1) <= 0.05
    # B3's explicit section cannot take a compound one through `extends`: explicit is written.
    code, _, err = _scale(
        tmp_path, capsys, str(ROOT / "specs" / "efficientnet-b3.yaml"), "--target-params", "20e6", name="b3.yaml"
    )
    assert code == 0, err
    assert "method: explicit" in (tmp_path / "b3.yaml").read_text()
    # A compound base cannot take an explicit section.
    code, _, err = _scale(
        tmp_path, capsys, str(ROOT / "specs" / "custom-phi2-relu.yaml"), "--target-macs", "3e9", "--explicit"
    )
    assert code == 2 and "--explicit" in err


def test_latency_search_brackets_the_target() -> None:
    family = Family(TINY, Settings(*DEFAULT_COEFFICIENTS, 8, False))
    fake = lambda c: c.macs / 1e6  # noqa: E731 - a deterministic "latency": 1 ms per MMAC
    target = family.at(2.3).macs / 1e6
    outcome = solve_latency(family, target, fake)
    assert abs(outcome.best.latency_ms / target - 1) < 0.1
    assert any(c.key == outcome.best.key for c in outcome.table)


def test_measure_latency_times_the_generated_torch_model() -> None:
    pytest.importorskip("torch")
    family = Family(TINY, Settings(*DEFAULT_COEFFICIENTS, 8, False))
    candidate = family.at(0.0)
    ms = measure_latency(family.model_of(candidate), "torch", "cpu", 1, repeats=3)
    assert 0 < ms < 10_000
    assert dataclasses.replace(candidate, latency_ms=ms).latency_ms == ms


def test_latency_needs_a_backend(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _scale(tmp_path, capsys, str(B0), "--target-latency", "20")
    assert code == 2 and "--backend" in err


def test_each_scaled_model_carries_its_own_spec_sha256(tmp_path: Path) -> None:
    """The family's model at phi is the base with that scaling section: its sha256 is that spec's,
    the one `effspec compile` gives a file that extends the base with the same section."""
    import os

    from effspec.core.loader import load_spec

    family = Family(TINY, Settings(*DEFAULT_COEFFICIENTS, 8, False))
    model = family.model_of(family.at(1.0))
    child = tmp_path / "child.yaml"
    extends = Path(os.path.relpath(TINY, tmp_path)).as_posix()
    child.write_text(
        f"extends: {extends}\nscaling: {{method: compound, phi: 1, alpha: 1.2, beta: 1.1, gamma: 1.15, "
        "resolution_divisor: 8}\n"
    )
    assert model.spec_sha256 == load_spec(child).sha256 != family.loaded.sha256
