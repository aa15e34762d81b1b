"""Depth and pose metrics (§9.3, §9.4) and the pose-matched ground truth, against hand-derived values."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch

from gmpi_core.eval.geometry import (
    MetricSummary,
    PoseMatchedDepth,
    pose_error,
    pose_matched_reference,
    zscored_depth_mse,
)


def _face_depth(b: int = 3, h: int = 9, w: int = 11, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return 0.95 + 0.17 * torch.rand(b, h, w, generator=g)  # positive, non-constant, like camera z-depth


def _exact(ref: torch.Tensor, k: float) -> torch.Tensor:
    """k·s²/(s + 1e-8)² per image, s = population std of the image: the derived value of k·mean(ẑ²)."""
    s = ref.double().flatten(1).std(-1, correction=0)
    return k * s**2 / (s + 1e-8) ** 2


def _numpy_error(pred: np.ndarray, ref: np.ndarray) -> float:
    """docs/method.md §9.3 on the selected pixels only (1-D float64 vectors), written the plain way."""
    zp = (pred - pred.mean()) / (pred.std() + 1e-8)
    zr = (ref - ref.mean()) / (ref.std() + 1e-8)
    return float(np.mean((zp - zr) ** 2))


def test_flat_prediction_scores_exactly_one() -> None:
    # z-score of a constant is 0, and mean(ẑ_ref²) = var/(std + 1e-8)² = 1 − O(1e-8/std)
    ref = _face_depth()
    pred = torch.full_like(ref, 1.05)
    err = zscored_depth_mse(pred, ref, torch.ones_like(ref, dtype=torch.bool))
    assert err.shape == (3,)
    assert torch.allclose(err, torch.ones(3, dtype=torch.float64), atol=1e-6, rtol=0)
    assert torch.allclose(err, _exact(ref, 1.0), atol=1e-12, rtol=0)


def test_identical_and_positive_affine_predictions_score_zero() -> None:
    ref = _face_depth()
    mask = torch.ones_like(ref, dtype=torch.bool)
    assert zscored_depth_mse(ref.clone(), ref, mask).abs().max() < 1e-12
    assert zscored_depth_mse(2.5 * ref + 0.3, ref, mask).abs().max() < 1e-10


def test_sign_flipped_prediction_scores_four() -> None:
    # ẑ(b − d) = −ẑ(d), so the error is mean((2ẑ)²) = 4·s²/(s + 1e-8)² = 4 − O(1e-8/s)
    ref = _face_depth()
    mask = torch.ones_like(ref, dtype=torch.bool)
    err = zscored_depth_mse(2.0 - ref, ref, mask)
    assert torch.allclose(err, torch.full((3,), 4.0, dtype=torch.float64), atol=1e-5, rtol=0)
    assert torch.allclose(err, _exact(ref, 4.0), atol=1e-9, rtol=0)


def test_error_is_two_minus_twice_the_pearson_correlation() -> None:
    # mean(ẑp − ẑr)² = mean ẑp² + mean ẑr² − 2·mean(ẑp ẑr) = 1 + 1 − 2ρ for population z-scores
    ref, noise = _face_depth(seed=8), _face_depth(seed=9)
    pred = ref + 0.7 * noise
    mask = torch.ones_like(ref, dtype=torch.bool)
    rho = [
        np.corrcoef(pred[i].double().flatten().numpy(), ref[i].double().flatten().numpy())[0, 1]
        for i in range(3)
    ]
    assert zscored_depth_mse(pred, ref, mask).tolist() == pytest.approx([2 - 2 * r for r in rho], abs=1e-6)


def test_negative_gmpi_depth_is_excluded_unless_the_other_argument_is_the_gmpi_depth() -> None:
    ref = _face_depth()
    mask = torch.ones_like(ref, dtype=torch.bool)
    assert torch.isnan(zscored_depth_mse(-ref, ref, mask)).all()  # every "GMPI" depth < 1e-8: nothing left
    err = zscored_depth_mse(-ref, ref, mask, gmpi_depth_arg="ref")
    assert torch.allclose(err, _exact(ref, 4.0), atol=1e-9, rtol=0)


def test_pixels_outside_the_mask_are_never_read() -> None:
    ref, pred = _face_depth(seed=1), _face_depth(seed=2)
    g = torch.Generator().manual_seed(3)
    mask = torch.rand(ref.shape, generator=g) < 0.6
    expect = [
        _numpy_error(pred[i][mask[i]].double().numpy(), ref[i][mask[i]].double().numpy()) for i in range(3)
    ]
    pred_bad, ref_bad = pred.clone(), ref.clone()
    pred_bad[~mask] = 1e9
    ref_bad[~mask] = float("nan")
    err = zscored_depth_mse(pred_bad, ref_bad, mask)
    assert err.tolist() == pytest.approx(expect, abs=1e-9)


def test_gmpi_depth_below_1e_8_drops_those_pixels_from_the_mask() -> None:
    ref, pred = _face_depth(seed=4), _face_depth(seed=5)
    mask = torch.ones_like(ref, dtype=torch.bool)
    pred[:, :3] = 0.0  # no GMPI depth in the first three rows
    keep = torch.ones_like(mask)
    keep[:, :3] = False
    expect = [
        _numpy_error(pred[i][keep[i]].double().numpy(), ref[i][keep[i]].double().numpy()) for i in range(3)
    ]
    assert zscored_depth_mse(pred, ref, mask).tolist() == pytest.approx(expect, abs=1e-9)
    # naming ref as the GMPI depth keeps the zero rows in, which changes the error
    with_zeros = zscored_depth_mse(pred, ref, mask, gmpi_depth_arg="ref")
    assert (with_zeros - torch.tensor(expect, dtype=torch.float64)).abs().min() > 1e-3


def test_empty_mask_gives_nan_and_is_counted_as_skipped() -> None:
    ref, pred = _face_depth(seed=6), _face_depth(seed=7)
    mask = torch.ones_like(ref, dtype=torch.bool)
    mask[1] = False
    err = zscored_depth_mse(pred, ref, mask)
    assert math.isnan(err[1]) and torch.isfinite(err[[0, 2]]).all()
    summary = MetricSummary.of(err)
    finite = err[[0, 2]].numpy()
    assert (summary.n_used, summary.n_skipped) == (2, 1)
    assert summary.mean == pytest.approx(finite.mean(), abs=1e-12)
    assert summary.std == pytest.approx(abs(finite[0] - finite[1]) / 2, abs=1e-12)  # population std of two


def test_mismatched_shapes_and_non_bool_masks_are_rejected_with_a_hint() -> None:
    ref = _face_depth()
    with pytest.raises(ValueError, match="one shape"):
        zscored_depth_mse(ref[0], ref[0], torch.ones_like(ref[0], dtype=torch.bool))
    with pytest.raises(ValueError, match="bool"):
        zscored_depth_mse(ref, ref, torch.ones_like(ref))


def test_pose_error_is_the_mean_squared_difference_to_pitch_minus_yaw_zero() -> None:
    est = torch.tensor([[0.1, -0.2, 0.05], [0.0, 0.0, 0.0]])
    pitch = torch.tensor([0.1, 0.3])
    yaw = torch.tensor([0.2, -0.6])
    # image 0: target (0.1, −0.2, 0) → 0.05²/3; image 1: target (0.3, 0.6, 0) → (0.09 + 0.36)/3
    assert pose_error(est, pitch, yaw).tolist() == pytest.approx([0.0025 / 3, 0.15], abs=1e-7)


# -- pose-matched reference -------------------------------------------------------------------------------

_POSES = {  # (yaw, pitch); the query below is (0.01, 0.0) with tol 0.05
    "00000/img00000000.png": (0.0, 0.0),  # matches
    "00000/img00000001.png": (0.04, -0.03),  # matches
    "00000/img00000002.png": (0.2, 0.0),  # pitch matches, yaw does not
    "00000/img00000003.png": (0.0, 0.08),  # yaw matches, pitch does not
    "00000/img00000004.png": (0.01, 0.01),  # would match, but it is in the fail list
}


def _fake_dataset(root: Path) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    depths, masks = {}, {}
    rng = np.random.default_rng(0)
    for i, member in enumerate(_POSES):
        stem = member.removesuffix(".png")
        depth = (1.0 + i + 0.01 * rng.standard_normal((4, 5))).astype(np.float32)
        mask = rng.random((4, 5)) < 0.5
        (root / "depth" / stem).parent.mkdir(parents=True, exist_ok=True)
        (root / "mask" / stem).parent.mkdir(parents=True, exist_ok=True)
        np.save(root / "depth" / f"{stem}.npy", depth)
        PIL.Image.fromarray(mask.astype(np.uint8) * 255).save(root / "mask" / f"{stem}.png")
        depths[member], masks[member] = depth, mask
    poses = {m: {"yaw": y, "pitch": p} for m, (y, p) in _POSES.items()}  # synthesize_dataset's schema
    fail = ["00000/img00000004.png"]
    (root / "poses.json").write_text(json.dumps({"poses": poses, "fail_list": fail}), encoding="utf-8")
    return depths, masks


def test_pose_matched_reference_averages_exactly_the_views_within_tolerance(tmp_path: Path) -> None:
    depths, masks = _fake_dataset(tmp_path)
    a, b = "00000/img00000000.png", "00000/img00000001.png"
    depth, mean_mask, count = pose_matched_reference(tmp_path, yaw=0.01, pitch=0.0, tol=0.05)
    assert count == 2
    np.testing.assert_allclose(
        depth.numpy(), (depths[a].astype(np.float64) + depths[b]) / 2, rtol=0, atol=1e-6
    )
    np.testing.assert_array_equal(mean_mask.numpy(), (masks[a].astype(np.float32) + masks[b]) / 2)


def test_metric_mask_needs_half_the_views_and_enough_of_them(tmp_path: Path) -> None:
    _, masks = _fake_dataset(tmp_path)
    a, b = "00000/img00000000.png", "00000/img00000001.png"
    table = PoseMatchedDepth(tmp_path, tol=0.05, min_count=2)
    ref = table.lookup(0.01, 0.0)
    np.testing.assert_array_equal(ref.metric_mask(min_count=2).numpy(), masks[a] | masks[b])  # mean ≥ 0.5
    assert not ref.metric_mask(min_count=3).any()  # 2 views < 3: no reference, the image is skipped
    depth, mask, count = table.references([0.01, 0.5], [0.0, 0.0])
    assert count.tolist() == [2, 0] and not mask[1].any() and torch.isnan(depth[1]).all()


def test_exclude_leaves_one_view_out_of_the_average(tmp_path: Path) -> None:
    depths, _ = _fake_dataset(tmp_path)
    table = PoseMatchedDepth(tmp_path, tol=0.05)
    assert table.members[0] == "00000/img00000000.png"
    ref = table.lookup(0.01, 0.0, exclude=0)
    assert ref.n_views == 1
    np.testing.assert_array_equal(ref.depth.numpy(), depths["00000/img00000001.png"])
