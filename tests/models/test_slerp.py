"""Slerp, the training-free combining function (`--combining slerp`): its formula by hand on fixed
vectors, checked against the geodesic written with angles (cos/sin of αθ along an orthonormal
pair), its endpoints (α=0: the image, α=1: the caption), parallel and opposite inputs without NaN,
scale invariance, and the α check."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from clip_cir.config import CombiningConfig
from clip_cir.errors import CIRError
from clip_cir.models.combiner import COMBINING_FUNCTIONS, Slerp, combining_function, element_wise_sum, slerp


def _geodesic(image: list[float], text: list[float], alpha: float) -> list[float]:
    """The point at angle αθ from the image direction towards the caption's, on their great
    circle, from angles: u = image/|image|, w = the unit part of text orthogonal to u, the point is
    cos(αθ)·u + sin(αθ)·w. Plain Python floats, no torch."""
    def unit(v):
        n = math.sqrt(sum(x * x for x in v))
        return [x / n for x in v]
    u, t = unit(image), unit(text)
    cos = sum(a * b for a, b in zip(u, t))
    theta = math.acos(cos)
    w = unit([b - cos * a for a, b in zip(u, t)])
    return [math.cos(alpha * theta) * a + math.sin(alpha * theta) * b for a, b in zip(u, w)]


def _t(*rows: list[float]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)


def test_orthogonal_unit_vectors_at_half_meet_in_the_middle():
    # θ = 90°: weights sin(45°)/sin(90°) = 1/√2 each, so the query is (1, 1)/√2.
    query = slerp(_t([1.0, 0.0]), _t([0.0, 1.0]), 0.5)
    assert torch.allclose(query, _t([1 / math.sqrt(2), 1 / math.sqrt(2)]), atol=1e-7)


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
def test_non_orthogonal_3d_by_hand(alpha):
    # image (2, 0, 0) and caption (1, 1, 1)·3: cos θ = 1/√3, θ = 54.7356°. By the formula's weights:
    # sin((1-α)θ)/sin θ on the unit image, sin(αθ)/sin θ on the unit caption.
    image, text = [2.0, 0.0, 0.0], [3.0, 3.0, 3.0]
    theta = math.acos(1 / math.sqrt(3))
    wi, wt = math.sin((1 - alpha) * theta) / math.sin(theta), math.sin(alpha * theta) / math.sin(theta)
    by_weights = [wi * 1.0 + wt / math.sqrt(3), wt / math.sqrt(3), wt / math.sqrt(3)]
    query = slerp(_t(image), _t(text), alpha)
    assert torch.allclose(query, _t(by_weights), atol=1e-6)
    assert torch.allclose(query, _t(_geodesic(image, text, alpha)), atol=1e-6)
    expected_at = {0.0: [1.0, 0.0, 0.0], 1.0: [1 / math.sqrt(3)] * 3}
    if alpha in expected_at:  # the endpoints: the image alone, the caption alone
        assert torch.allclose(query, _t(expected_at[alpha]), atol=1e-6)


def test_a_quarter_of_the_way_in_a_plane_is_the_angle_a_quarter_of_the_way():
    # image at 0°, caption at 60° (scaled by 5): α = 0.25 lies at 15°, α = 0.75 at 45°.
    image, text = _t([1.0, 0.0, 0.0]), _t([5 * math.cos(math.pi / 3), 5 * math.sin(math.pi / 3), 0.0])
    for alpha, degrees in ((0.25, 15), (0.75, 45)):
        angle = math.radians(degrees)
        assert torch.allclose(slerp(image, text, alpha), _t([math.cos(angle), math.sin(angle), 0.0]), atol=1e-6)


def test_rows_are_independent_and_match_the_geodesic_in_high_dimension():
    generator = torch.Generator().manual_seed(0)
    image, text = torch.randn(6, 64, generator=generator), torch.randn(6, 64, generator=generator) * 7
    query = slerp(image, text, 0.3)
    expected = _t(*[_geodesic(i.tolist(), t.tolist(), 0.3) for i, t in zip(image, text)])
    assert torch.allclose(query, expected, atol=1e-5)
    # The query sits at 0.3θ from the image and 0.7θ from the caption.
    theta = torch.arccos((F.normalize(image, dim=-1) * F.normalize(text, dim=-1)).sum(-1))
    from_image = torch.arccos((query * F.normalize(image, dim=-1)).sum(-1).clamp(-1, 1))
    from_text = torch.arccos((query * F.normalize(text, dim=-1)).sum(-1).clamp(-1, 1))
    assert torch.allclose(from_image, 0.3 * theta, atol=1e-4) and torch.allclose(from_text, 0.7 * theta, atol=1e-4)
    assert torch.allclose(slerp(image[2:3], text[2:3], 0.3), query[2:3], atol=1e-6)


def test_half_way_is_the_sum_of_the_normalised_features():
    # The arc's midpoint and the chord's midpoint point the same way: α = 0.5 is norm(î + t̂), the
    # element-wise sum after normalising each side (the sum of raw features weighs them by norm).
    generator = torch.Generator().manual_seed(2)
    image, text = torch.randn(5, 32, generator=generator) * 4, torch.randn(5, 32, generator=generator)
    assert torch.allclose(slerp(image, text, 0.5), element_wise_sum(F.normalize(image, dim=-1),
                                                                     F.normalize(text, dim=-1)), atol=1e-6)


def test_scale_of_the_inputs_does_not_matter():
    generator = torch.Generator().manual_seed(1)
    image, text = torch.randn(4, 16, generator=generator), torch.randn(4, 16, generator=generator)
    scales = torch.tensor([[0.01], [3.0], [250.0], [1.0]])
    assert torch.allclose(slerp(image * scales, text * 40, 0.8), slerp(image, text, 0.8), atol=1e-6)


def test_parallel_inputs_interpolate_linearly_without_nan():
    # Same direction (θ = 0: sin θ = 0): the query is that direction, for every α.
    image = _t([3.0, 4.0, 0.0])
    for alpha in (0.0, 0.3, 1.0):
        query = slerp(image, image * 9, alpha)
        assert torch.isfinite(query).all() and torch.allclose(query, _t([0.6, 0.8, 0.0]), atol=1e-7)
    # Rounding can put the cosine of equal directions just above 1 (it does for some of these rows):
    # arccos would be NaN without the clamp.
    rows = torch.randn(64, 8, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(slerp(rows, rows * 3, 0.5), F.normalize(rows, dim=-1), atol=1e-6)
    # Nearly the same direction (θ = 1e-5, below float32's arccos resolution near 1): finite and on the arc.
    tiny = 1e-5
    query = slerp(_t([1.0, 0.0]), _t([math.cos(tiny), math.sin(tiny)]), 0.5)
    assert torch.isfinite(query).all() and torch.allclose(query, _t([1.0, 0.0]), atol=1e-5)
    # A small angle still on the spherical path (θ = 1e-3): the geodesic's point.
    small = [math.cos(1e-3), math.sin(1e-3)]
    assert torch.allclose(slerp(_t([1.0, 0.0]), _t(small), 0.5), _t(_geodesic([1.0, 0.0], small, 0.5)), atol=1e-6)


def test_opposite_inputs_fall_back_to_the_normalised_linear_mix():
    # θ = 180° has no one great circle: (1-α)·image + α·caption, normalised (zero at α = 0.5).
    image, text = _t([2.0, 0.0]), _t([-5.0, 0.0])
    assert torch.allclose(slerp(image, text, 0.25), _t([1.0, 0.0]))
    assert torch.allclose(slerp(image, text, 0.75), _t([-1.0, 0.0]))
    assert torch.equal(slerp(image, text, 0.5), _t([0.0, 0.0]))


def test_the_slerp_combining_function_and_its_name():
    function, name = combining_function("slerp", 0.7)
    assert isinstance(function, Slerp) and function.alpha == 0.7 and name == "slerp (α=0.7)"
    image, text = _t([1.0, 0.0]), _t([0.0, 2.0])
    assert torch.equal(function(image, text), slerp(image, text, 0.7))
    assert combining_function("slerp", 0) == (Slerp(0.0), "slerp (α=0)")
    assert COMBINING_FUNCTIONS["slerp"] == (Slerp(CombiningConfig.slerp_alpha), "slerp (α=0.8)")
    assert combining_function("sum", 0.7) == (element_wise_sum, "element-wise sum")  # α only matters to slerp


@pytest.mark.parametrize("alpha", [1.5, -0.1, float("nan"), "0.5", True])
def test_alpha_outside_zero_one_is_a_one_line_error(alpha):
    for build in (lambda: Slerp(alpha), lambda: CombiningConfig(combining="slerp", slerp_alpha=alpha)):
        with pytest.raises(CIRError) as error:
            build()
        assert str(error.value) == ("--slerp-alpha must be between 0 (the reference image alone) and 1 (the caption "
                                    f"alone), got {alpha!r}")
