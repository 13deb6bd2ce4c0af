"""Scaling passes: exact rounding rules and the compound rule."""

from __future__ import annotations

import pytest

from effspec.core.scaling import depth_fractions, drop_path_rate, round_channels, round_repeats, scaled_resolution
from effspec.emit.pipeline import build


@pytest.mark.parametrize(
    ("channels", "width", "round_limit", "expected"),
    [
        (32, 1.0, 0.9, 32),
        (32, 1.1, 0.9, 32),  # 35.2 -> 32 (32 >= 0.9 * 35.2)
        (40, 1.1, 0.9, 48),  # 44 -> 48 (rounds half up)
        (16, 1.4, 0.9, 24),  # 22.4 -> 24
        (1280, 1.1, 0.9, 1408),
        (24, 1.8, 0.9, 40),  # 43.2 -> 40 (40 >= 38.9)
        (320, 1.8, 0.9, 576),
        (112, 2.0, 0.9, 224),
        (4, 0.5, 0.9, 8),  # never below the divisor
        (20, 0.55, 0.9, 16),  # 11 -> 8 is below 0.9 * 11: the 10% rule adds a divisor
        (20, 0.55, 0.0, 8),  # V2 drops the 10% rule
    ],
)
def test_round_channels(channels: int, width: float, round_limit: float, expected: int) -> None:
    assert round_channels(channels, width, 8, round_limit) == expected


def test_round_repeats_is_ceil() -> None:
    assert [round_repeats(r, 3.1) for r in (1, 2, 3, 4)] == [4, 7, 10, 13]
    assert round_repeats(3, 1.0) == 3
    assert round_repeats(2, 1.1) == 3


def test_scaled_resolution() -> None:
    assert scaled_resolution(224, 1.15, 1) == 258
    assert scaled_resolution(224, 1.15, 2, divisor=8) == 296
    assert scaled_resolution(224, 1.15, 0) == 224


def test_drop_path_over_scaled_block_count() -> None:
    assert depth_fractions(4) == [0.0, 0.25, 0.5, 0.75]
    assert [drop_path_rate(0.2, f) for f in depth_fractions(4)] == pytest.approx([0.0, 0.05, 0.1, 0.15])
    model = build("specs/efficientnet-b7.yaml").model
    blocks = model.blocks
    assert len(blocks) == 55  # B7 has 55 blocks after ceil(3.1 * repeats)
    assert blocks[-1].drop_path_rate == pytest.approx(0.2 * 54 / 55)


def test_compound_spec_uses_alpha_beta_gamma() -> None:
    model = build("specs/custom-phi2-relu.yaml").model
    assert model.width == pytest.approx(1.1**2)
    assert model.depth == pytest.approx(1.2**2)
    assert model.resolution == 296  # 224 * 1.15^2 = 296.2, to a multiple of 8
    assert [len(stage.blocks) for stage in model.stages] == [2, 3, 3, 5, 5, 6, 2]
    assert model.padding == "symmetric" and model.blocks[0].depthwise.activation == "relu6"


def test_official_coefficients_are_explicit_not_compound() -> None:
    b4 = build("specs/efficientnet-b4.yaml").model
    assert (b4.width, b4.depth, b4.resolution, b4.head.dropout) == (1.4, 1.8, 380, 0.4)
    assert b4.head.conv.conv.out_channels == 1792  # round_filters(1280 * 1.4)


def test_far_from_two_flops_ratio_warns(tmp_path) -> None:
    spec = tmp_path / "wide.yaml"
    spec.write_text(
        "name: wide\nscaling: {method: compound, phi: 1, alpha: 1.0, beta: 2.0, gamma: 1.0}\n"
        "stages:\n  - {block: mbconv, repeats: 1, kernel: 3, stride: 1, expansion: 1, channels: 16}\n"
    )
    assert any("far from 2" in line for line in build(spec).warnings)
    assert not build("specs/custom-phi2-relu.yaml").warnings
