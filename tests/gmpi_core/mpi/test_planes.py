"""Plane placement (method §2): depths, extents and texel coordinates against docs/method.md's numbers."""

from __future__ import annotations

import math

import pytest
import torch

from gmpi_core.mpi.planes import confined_extents, normalized_depth, plane_depths, plane_dhw, texel_xyz


def test_inverse_depths_reproduce_spec_numbers_for_ffhq_and_afhq() -> None:
    ffhq = plane_depths(0.95, 1.12, 32)
    assert ffhq.dtype == torch.float32 and ffhq.shape == (32,)
    expected = {0: 0.95, 1: 0.954674, 2: 0.959395, 3: 0.964163, 29: 1.107217, 30: 1.113572, 31: 1.12}
    for i, d in expected.items():
        assert ffhq[i].item() == pytest.approx(d, abs=1e-6)
    afhq = plane_depths(2.55, 2.8, 32)
    for i, d in {0: 2.55, 1: 2.557366, 30: 2.791173, 31: 2.8}.items():
        assert afhq[i].item() == pytest.approx(d, abs=1e-6)


def test_inverse_depths_are_uniform_in_disparity_nearest_first() -> None:
    depths = plane_depths(0.95, 1.12, 96).double()
    steps = torch.diff(1.0 / depths)
    torch.testing.assert_close(steps, torch.full_like(steps, (1 / 1.12 - 1 / 0.95) / 95), atol=1e-6, rtol=0)
    assert bool((torch.diff(depths) > 0).all())


def test_uniform_and_log_uniform_depths() -> None:
    uniform = plane_depths(1.0, 2.0, 5, method="uniform")
    torch.testing.assert_close(uniform, torch.tensor([1.0, 1.25, 1.5, 1.75, 2.0]))
    log = plane_depths(1.0, 8.0, 4, method="log-uniform")
    torch.testing.assert_close(log, torch.tensor([1.0, 2.0, 4.0, 8.0]))


def test_depths_stay_within_near_and_far() -> None:
    for method in ("inverse", "uniform", "log-uniform"):
        depths = plane_depths(0.95, 1.12, 33, method=method)  # type: ignore[arg-type]
        assert (
            depths.min().item() >= torch.tensor(0.95).item()
            and depths.max().item() <= torch.tensor(1.12).item()
        )


def test_unknown_spacing_and_bad_range_are_rejected_with_choices() -> None:
    with pytest.raises(ValueError, match="choose one of"):
        plane_depths(0.95, 1.12, 8, method="sqrt")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="d_near < d_far"):
        plane_depths(1.12, 0.95, 8)


@pytest.mark.parametrize(
    ("args", "box", "background"),
    [
        ((12.6, 1.12, 0.289, 0.127, 2.0, 1.0, 1.0), 0.247298, (0.414645, 0.494475)),  # FFHQ
        ((13.39, 2.8, 0.19, 0.15, 3.0, 2.7, 2.7), 0.657353, (1.214209, 1.047770)),  # AFHQCat
        ((12.6, 1.12, 0.339, 0.133, 2.0, 1.0, 1.0), 0.247298, (0.450775, 0.568417)),  # MetFaces
    ],
)
def test_confined_extents_reproduce_spec_table(
    args: tuple[float, ...], box: float, background: tuple[float, float]
) -> None:
    (h_c, w_c), (h_bg, w_bg) = confined_extents(*args)
    assert h_c == pytest.approx(box, abs=1e-5) and w_c == pytest.approx(box, abs=1e-5)
    assert h_bg == pytest.approx(background[0], abs=1e-5) and w_bg == pytest.approx(background[1], abs=1e-5)


def test_box_extent_is_the_canonical_frustum_at_d_far() -> None:
    (h_c, w_c), _ = confined_extents(20.0, 3.0, 0.3, 0.1, 2.0, radius=2.0, center_z=2.0)
    assert h_c == pytest.approx(2 * 3.0 * math.tan(math.radians(10.0)), rel=1e-12)
    assert w_c == pytest.approx(h_c, rel=1e-12)


def test_background_of_a_single_pose_prior_is_the_enlarged_box() -> None:
    (h_c, w_c), (h_bg, w_bg) = confined_extents(12.6, 1.12, 0.0, 0.0, 2.0, 1.0, 1.0, enlarge=1.5)
    assert h_bg == pytest.approx(1.5 * h_c, rel=1e-12) and w_bg == pytest.approx(1.5 * w_c, rel=1e-12)


def test_confined_extents_reject_priors_that_look_away_from_the_planes() -> None:
    with pytest.raises(ValueError, match="pose prior"):
        confined_extents(12.6, 1.12, 1.0, 0.1, 2.0, 1.0, 1.0)


def test_plane_dhw_shares_box_extent_and_puts_background_last() -> None:
    depths = torch.tensor([1.0, 1.5, 2.0])
    dhw = plane_dhw(depths, (0.2, 0.3), (0.5, 0.7))
    torch.testing.assert_close(dhw, torch.tensor([[1.0, 0.2, 0.3], [1.5, 0.2, 0.3], [2.0, 0.5, 0.7]]))


def test_normalized_depth_reproduces_spec_numbers() -> None:
    z = normalized_depth(plane_depths(0.95, 1.12, 32), 0.95, 1.12)
    for i, v in {0: 0.0, 1: 0.027496, 2: 0.055265, 29: 0.924807, 30: 0.962188, 31: 1.0}.items():
        assert z[i].item() == pytest.approx(v, abs=2e-6)


def test_texel_centres_span_the_plane_with_align_corners() -> None:
    dhw = torch.tensor([[1.0, 0.4, 0.6], [2.0, 1.0, 2.0]])
    xyz = texel_xyz(dhw, 5)
    assert xyz.shape == (2, 5, 5, 3)
    torch.testing.assert_close(xyz[0, 0, 0], torch.tensor([-0.3, -0.2, 1.0]))  # row j ↔ y, column k ↔ x
    torch.testing.assert_close(xyz[0, 4, 4], torch.tensor([0.3, 0.2, 1.0]))
    torch.testing.assert_close(
        xyz[1, 1, 3], torch.tensor([(-1 + 2 * 3 / 4) * 1.0, (-1 + 2 * 1 / 4) * 0.5, 2.0])
    )
