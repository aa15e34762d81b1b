"""Cameras (docs/method.md §1): intrinsics, sphere poses, pose sampling and real-image pose conversions.

Expected values come from docs/method.md's tables and worked example or from hand derivations written out in
the tests, never from the functions under test.
"""

from __future__ import annotations

import math

import pytest
import torch

from gmpi_core.camera import (
    deep3dface_to_w2c,
    eg3d_to_w2c,
    focal_from_fov,
    intrinsics,
    pitch_yaw_from_w2c,
    pixel_ray_directions,
    sample_sphere_poses,
    sample_truncated_normal,
    sphere_c2w,
    w2c_condition,
    w2c_to_deep3dface,
)

D = torch.float64


def _t(*values: float, dtype: torch.dtype = D) -> torch.Tensor:
    return torch.tensor(values, dtype=dtype)


# -- intrinsics ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fov", "width", "focal"),
    [
        (12.6, 224, 1014.48),
        (12.6, 256, 1159.41),
        (12.6, 1024, 4637.64),
        (13.39, 256, 1090.43),
        (13.39, 512, 2180.87),
    ],
)
def test_focal_matches_spec_table(fov: float, width: int, focal: float) -> None:
    assert focal_from_fov(fov, width) == pytest.approx(focal, abs=0.006)


def test_intrinsics_put_principal_point_at_image_centre_in_edge_coordinates() -> None:
    k = intrinsics(12.6, 256, 128)
    f = 256 / (2 * math.tan(math.radians(6.3)))
    expected = torch.tensor([[f, 0, 128.0], [0, f, 64.0], [0, 0, 1]])
    assert k.dtype == torch.float32
    torch.testing.assert_close(k, expected)


def test_focal_rejects_impossible_fov() -> None:
    with pytest.raises(ValueError, match="fov_deg"):
        focal_from_fov(180.0, 64)


def test_pixel_rays_pass_through_pixel_centres_and_are_unit_length() -> None:
    fov, h, w = 12.6, 5, 7
    f = w / (2 * math.tan(math.radians(fov / 2)))
    dirs = pixel_ray_directions(fov, h, w, dtype=D)
    assert dirs.shape == (h, w, 3)
    torch.testing.assert_close(dirs.norm(dim=-1), torch.ones(h, w, dtype=D))
    torch.testing.assert_close(dirs[2, 3], _t(0, 0, 1))  # centre pixel of an odd image looks straight ahead
    corner = _t((0.5 - w / 2) / f, (0.5 - h / 2) / f, 1.0)
    torch.testing.assert_close(dirs[0, 0], corner / corner.norm())


# -- sphere poses (method §1.3) ------------------------------------------------------------------------------


@pytest.mark.parametrize("radius", [1.0, 2.7])
def test_canonical_pose_is_identity_when_sphere_centre_equals_radius(radius: float) -> None:
    c2w = sphere_c2w(_t(0.0), _t(0.0), radius=radius, center_z=radius)
    torch.testing.assert_close(c2w[0], torch.eye(4, dtype=D))


def test_sphere_pose_reproduces_spec_worked_example() -> None:
    c2w = sphere_c2w(torch.tensor([0.3]), torch.tensor([0.1]), radius=1.0, center_z=1.0)[0]
    assert c2w.dtype == torch.float32
    expected_columns = [
        (0.955336, 0.0, 0.29552),
        (0.029503, 0.995004, -0.095375),
        (-0.294044, 0.099833, 0.950564),
        (0.294044, -0.099833, 0.049436),
    ]
    for col, values in enumerate(expected_columns):
        torch.testing.assert_close(c2w[:3, col], torch.tensor(values), atol=1e-6, rtol=0)
    torch.testing.assert_close(c2w[3], torch.tensor([0.0, 0.0, 0.0, 1.0]))


def test_sphere_poses_look_at_sphere_centre_without_roll_from_radius_r() -> None:
    yaw, pitch = torch.linspace(-0.6, 0.6, 7, dtype=D), torch.linspace(-0.45, 0.45, 7, dtype=D)
    c2w = sphere_c2w(yaw, pitch, radius=2.7, center_z=2.7)
    rot, centre = c2w[:, :3, :3], c2w[:, :3, 3]
    torch.testing.assert_close(rot.transpose(1, 2) @ rot, torch.eye(3, dtype=D).expand(7, 3, 3))
    torch.testing.assert_close(torch.linalg.det(rot), torch.ones(7, dtype=D))
    to_centre = _t(0, 0, 2.7) - centre
    torch.testing.assert_close(to_centre.norm(dim=-1), torch.full((7,), 2.7, dtype=D))
    torch.testing.assert_close(rot[:, :, 2], to_centre / 2.7)  # optical axis points at S
    torch.testing.assert_close(rot[:, 1, 0], torch.zeros(7, dtype=D))  # x_c ⟂ world Y: no roll


def test_positive_yaw_moves_camera_right_and_positive_pitch_moves_it_up() -> None:
    right = sphere_c2w(_t(0.2), _t(0.0), 1.0, 1.0)[0, :3, 3]
    up = sphere_c2w(_t(0.0), _t(0.2), 1.0, 1.0)[0, :3, 3]
    torch.testing.assert_close(right, _t(math.sin(0.2), 0.0, 1 - math.cos(0.2)))
    torch.testing.assert_close(up, _t(0.0, -math.sin(0.2), 1 - math.cos(0.2)))  # +Y is down


def test_w2c_condition_is_row_major_flattened_inverse_in_closed_form() -> None:
    c2w = sphere_c2w(_t(0.3, -0.1), _t(0.1, 0.2), 1.0, 1.0)
    cond = w2c_condition(c2w)
    assert cond.shape == (2, 16)
    for b in range(2):
        x_c, y_c, z_c, centre = (c2w[b, :3, k] for k in range(4))
        rows = [torch.cat([axis, -(axis @ centre)[None]]) for axis in (x_c, y_c, z_c)]
        expected = torch.cat([*rows, _t(0, 0, 0, 1)])
        torch.testing.assert_close(cond[b], expected)


# -- pose sampling (method §1.4) -------------------------------------------------------------------------


def test_truncated_normal_with_zero_std_returns_mean_exactly() -> None:
    samples = sample_truncated_normal(0.25, 0.0, 2.0, 100, generator=torch.Generator().manual_seed(1))
    assert samples.dtype == torch.float32
    assert torch.equal(samples, torch.full((100,), 0.25))


def test_truncated_normal_stays_within_k_sigma() -> None:
    samples = sample_truncated_normal(0.1, 0.3, 2.0, 50_000, generator=torch.Generator().manual_seed(0))
    assert samples.min() >= 0.1 - 0.6 - 1e-6 and samples.max() <= 0.1 + 0.6 + 1e-6


def test_truncated_normal_matches_theoretical_moments() -> None:
    # N(0,1) truncated to ±2: variance 1 − 2kφ(k)/(2Φ(k) − 1) = 0.773741 (the clamped fallback has prob. 4e-6)
    k = 2.0
    phi = math.exp(-k * k / 2) / math.sqrt(2 * math.pi)
    mass = math.erf(k / math.sqrt(2))
    std = math.sqrt(1 - 2 * k * phi / mass)
    samples = sample_truncated_normal(
        0.0, 1.0, k, 200_000, generator=torch.Generator().manual_seed(3)
    ).double()
    assert abs(samples.mean().item()) < 0.01
    assert samples.std().item() == pytest.approx(std, abs=0.005)


def test_truncated_normal_keeps_first_inside_candidate_and_clamps_when_none_is() -> None:
    # the algorithm of docs/method.md §1.4, replayed by hand on the same four candidates per sample
    k, n = 0.5, 2000
    candidates = torch.randn(n, 4, generator=torch.Generator().manual_seed(7))
    samples = sample_truncated_normal(0.0, 1.0, k, n, generator=torch.Generator().manual_seed(7))
    n_clamped = 0
    for i in range(n):
        inside = [c for c in candidates[i].tolist() if abs(c) < k]
        expected = inside[0] if inside else max(-k, min(k, candidates[i, 0].item()))
        n_clamped += not inside
        assert samples[i].item() == pytest.approx(expected, abs=1e-7)
    assert n_clamped > 0  # with k = 0.5 some samples have no candidate inside


def test_sphere_poses_are_cpu_float32_within_the_prior_and_reproducible() -> None:
    yaw, pitch = sample_sphere_poses(1000, 0.289, 0.127, 2.0, generator=torch.Generator().manual_seed(5))
    again, _ = sample_sphere_poses(1000, 0.289, 0.127, 2.0, generator=torch.Generator().manual_seed(5))
    assert yaw.device.type == pitch.device.type == "cpu" and yaw.dtype == torch.float32
    assert torch.equal(yaw, again)
    assert yaw.abs().max() <= 0.578 + 1e-6 and pitch.abs().max() <= 0.254 + 1e-6
    assert yaw.std() > 2 * pitch.std()  # yaw and pitch use their own σ


# -- real-image poses (method §1.6) --------------------------------------------------------------------------


@pytest.mark.parametrize("radius", [1.0, 2.7])
def test_deep3dface_zero_angle_and_trans_is_identity(radius: float) -> None:
    w2c = deep3dface_to_w2c(torch.zeros(1, 3, dtype=D), torch.zeros(1, 3, dtype=D), radius, radius)
    torch.testing.assert_close(w2c[0], torch.eye(4, dtype=D))


def test_deep3dface_single_axis_rotations_equal_sphere_poses() -> None:
    # docs/method.md §1.7: GMPI (pitch, yaw) ↔ Deep3DFace (angle0, −angle1), exact for single-axis rotations
    for pitch, yaw in [(0.2, 0.0), (-0.15, 0.0), (0.0, 0.4), (0.0, -0.3)]:
        angle = _t(pitch, -yaw, 0.0)[None]
        w2c = deep3dface_to_w2c(angle, torch.zeros(1, 3, dtype=D), 1.0, 1.0)
        expected = torch.linalg.inv(sphere_c2w(_t(yaw), _t(pitch), 1.0, 1.0))
        torch.testing.assert_close(w2c, expected)


def test_deep3dface_cameras_lie_on_the_sphere_with_rotation_untouched() -> None:
    gen = torch.Generator().manual_seed(0)
    angle = (torch.rand(16, 3, generator=gen, dtype=D) - 0.5) * 0.8
    trans = (torch.rand(16, 3, generator=gen, dtype=D) - 0.5) * 0.6
    w2c = deep3dface_to_w2c(angle, trans, radius=1.0, center_z=1.0)
    rot = w2c[:, :3, :3]
    centre = -(rot.transpose(1, 2) @ w2c[:, :3, 3:])[..., 0]
    torch.testing.assert_close((centre - _t(0, 0, 1.0)).norm(dim=-1), torch.ones(16, dtype=D))
    # R_w = F R_z R_y R_x F with F = diag(1, −1, −1), written out for angle = (a, b, g)
    a, b, g = angle.unbind(-1)
    ca, sa, cb, sb, cg, sg = a.cos(), a.sin(), b.cos(), b.sin(), g.cos(), g.sin()
    r = torch.stack(
        [
            torch.stack([cg * cb, cg * sb * sa - sg * ca, cg * sb * ca + sg * sa], -1),
            torch.stack([sg * cb, sg * sb * sa + cg * ca, sg * sb * ca - cg * sa], -1),
            torch.stack([-sb, cb * sa, cb * ca], -1),
        ],
        -2,
    )
    flip = torch.diag(_t(1, -1, -1))
    torch.testing.assert_close(rot, flip @ r @ flip)


def _rolled_sphere_w2c(n: int, seed: int, radius: float, center_z: float) -> torch.Tensor:
    """Random w2c on the sphere with a random roll about the optical axis (real cameras roll)."""
    gen = torch.Generator().manual_seed(seed)
    yaw = (torch.rand(n, generator=gen, dtype=D) - 0.5) * 1.2
    pitch = (torch.rand(n, generator=gen, dtype=D) - 0.5) * 0.8
    roll = (torch.rand(n, generator=gen, dtype=D) - 0.5) * 0.4
    c2w = sphere_c2w(yaw, pitch, radius, center_z)
    rz = torch.zeros(n, 3, 3, dtype=D)
    rz[:, 0, 0], rz[:, 0, 1], rz[:, 1, 0], rz[:, 1, 1], rz[:, 2, 2] = (
        roll.cos(),
        -roll.sin(),
        roll.sin(),
        roll.cos(),
        1,
    )
    c2w[:, :3, :3] = c2w[:, :3, :3] @ rz  # roll about the camera's own z axis; the centre stays on the sphere
    return torch.linalg.inv(c2w)


@pytest.mark.parametrize("radius", [1.0, 2.7])
def test_w2c_to_deep3dface_round_trips_cameras_on_the_sphere(radius: float) -> None:
    w2c = _rolled_sphere_w2c(32, 1, radius, radius)
    angle, trans = w2c_to_deep3dface(w2c, center_z=radius)
    torch.testing.assert_close(deep3dface_to_w2c(angle, trans, radius, radius), w2c)


def test_w2c_to_deep3dface_recovers_angles_and_keeps_camera_ten_units_away() -> None:
    gen = torch.Generator().manual_seed(2)
    angle = (torch.rand(8, 3, generator=gen, dtype=D) - 0.5) * 0.8
    trans = (torch.rand(8, 3, generator=gen, dtype=D) - 0.5) * 0.4
    got_angle, got_trans = w2c_to_deep3dface(deep3dface_to_w2c(angle, trans, 1.0, 1.0), center_z=1.0)
    torch.testing.assert_close(got_angle, angle)
    # the face centre sits 10 units from Deep3DFace's camera: |F t + 10 ẑ| = |t − 10 ẑ| = 10
    torch.testing.assert_close((got_trans - _t(0, 0, 10.0)).norm(dim=-1), torch.full((8,), 10.0, dtype=D))
    zero_angle, zero_trans = w2c_to_deep3dface(torch.eye(4, dtype=D)[None], center_z=1.0)
    torch.testing.assert_close(zero_angle, torch.zeros(1, 3, dtype=D))
    torch.testing.assert_close(zero_trans, torch.zeros(1, 3, dtype=D))


def _eg3d_camera_at_yaw(theta: float, radius: float) -> torch.Tensor:
    """EG3D c2w (world +Y up, +Z towards the camera; OpenCV camera axes) orbiting the origin by yaw θ."""
    centre = _t(radius * math.sin(theta), 0.0, radius * math.cos(theta))
    z = -centre / radius  # looks at the origin
    y = _t(0.0, -1.0, 0.0)  # image down = world down
    x = torch.linalg.cross(y, z)
    c2w = torch.eye(4, dtype=D)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = x, y, z, centre
    return c2w[None]


def test_eg3d_canonical_camera_is_identity() -> None:
    torch.testing.assert_close(eg3d_to_w2c(_eg3d_camera_at_yaw(0.0, 2.7), 2.7, 2.7)[0], torch.eye(4, dtype=D))


@pytest.mark.parametrize("theta", [0.3, -0.5])
def test_eg3d_yawed_camera_equals_sphere_pose_with_same_yaw(theta: float) -> None:
    w2c = eg3d_to_w2c(_eg3d_camera_at_yaw(theta, 2.7), 2.7, 2.7)
    torch.testing.assert_close(w2c, torch.linalg.inv(sphere_c2w(_t(theta), _t(0.0), 2.7, 2.7)))
    pitch, yaw = pitch_yaw_from_w2c(w2c, 2.7)
    torch.testing.assert_close(yaw, _t(theta))
    torch.testing.assert_close(pitch, _t(0.0))


def test_eg3d_camera_off_the_sphere_is_moved_radially_onto_it() -> None:
    far = _eg3d_camera_at_yaw(0.2, 4.0)  # same direction, 4 units away instead of 2.7
    torch.testing.assert_close(
        eg3d_to_w2c(far, 2.7, 2.7), torch.linalg.inv(sphere_c2w(_t(0.2), _t(0.0), 2.7, 2.7))
    )


@pytest.mark.parametrize(
    ("radius", "dtype", "tol"), [(1.0, torch.float32, 2e-5), (2.7, torch.float64, 1e-10)]
)
def test_pitch_yaw_from_w2c_inverts_sphere_poses(radius: float, dtype: torch.dtype, tol: float) -> None:
    yaw, pitch = torch.meshgrid(
        torch.linspace(-0.7, 0.7, 9, dtype=dtype), torch.linspace(-0.45, 0.45, 9, dtype=dtype), indexing="ij"
    )
    yaw, pitch = yaw.reshape(-1), pitch.reshape(-1)
    got_pitch, got_yaw = pitch_yaw_from_w2c(torch.linalg.inv(sphere_c2w(yaw, pitch, radius, radius)), radius)
    torch.testing.assert_close(got_yaw, yaw, atol=tol, rtol=0)
    torch.testing.assert_close(got_pitch, pitch, atol=tol, rtol=0)
