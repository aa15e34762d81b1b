"""Cameras: intrinsics, poses on a sphere, pose sampling and the conversions of real-image poses (method §1).

Conventions (docs/method.md §1.1): world = camera axes, +X right, +Y down, +Z forward. Cameras orbit the
sphere centre S = (0, 0, c) at radius r looking at S with zero roll; with c = r the canonical pose
(yaw = pitch = 0) is the identity c2w. All functions are pure, batched over a leading dimension and keep
the dtype/device of their tensor inputs (float32 when they create tensors from Python numbers).

    >>> c2w = sphere_c2w(torch.tensor([0.3]), torch.tensor([0.1]), radius=1.0, center_z=1.0)
    >>> [round(v, 6) for v in c2w[0, :3, 3].tolist()]
    [0.294044, -0.099833, 0.049436]
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from gmpi_core.config import CameraConfig

__all__ = [
    "DEEP3DFACE_CAMERA_DISTANCE",
    "camera_c2w",
    "camera_deep3dface",
    "deep3dface_to_w2c",
    "eg3d_to_w2c",
    "euler_zyx",
    "focal_from_fov",
    "intrinsics",
    "pitch_yaw_from_w2c",
    "pixel_ray_directions",
    "sample_sphere_poses",
    "sample_truncated_normal",
    "sphere_c2w",
    "w2c_condition",
    "w2c_to_deep3dface",
]

# Deep3DFaceRecon's camera sits 10 units in front of the face (``camera_d=10``, docs/method.md §1.2, §1.6).
DEEP3DFACE_CAMERA_DISTANCE = 10.0


def _float_dtype(*tensors: Tensor) -> torch.dtype:
    """The floating dtype to compute in: float64 if any input is float64, else float32."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


# -- intrinsics and rays (method §1.2, §3.1) ---------------------------------------------------------------


def focal_from_fov(fov_deg: float, width: int) -> float:
    """Focal length in pixels from the horizontal field of view: f = W / (2 tan(fov/2)) (method §1.2)."""
    if not 0.0 < fov_deg < 180.0:
        raise ValueError(f"fov_deg must lie in (0, 180) degrees, got {fov_deg}")
    return width / (2.0 * math.tan(math.radians(fov_deg) / 2.0))


def intrinsics(fov_deg: float, width: int, height: int) -> Tensor:
    """K [3, 3]: square pixels, principal point (W/2, H/2) in pixel-edge coordinates (docs/method.md §1.2)."""
    f = focal_from_fov(fov_deg, width)
    return torch.tensor([[f, 0.0, width / 2.0], [0.0, f, height / 2.0], [0.0, 0.0, 1.0]], dtype=torch.float32)


def pixel_ray_directions(
    fov_deg: float, height: int, width: int, dtype: torch.dtype = torch.float32
) -> Tensor:
    """Unit camera-frame directions [H, W, 3] through pixel centres (u + 0.5, v + 0.5) (method §3.1)."""
    f = focal_from_fov(fov_deg, width)
    x = (torch.arange(width, dtype=torch.float64) + 0.5 - width / 2.0) / f
    y = (torch.arange(height, dtype=torch.float64) + 0.5 - height / 2.0) / f
    dirs = torch.stack(
        torch.broadcast_tensors(x[None, :], y[:, None], torch.ones(1, 1, dtype=torch.float64)), -1
    )
    return torch.nn.functional.normalize(dirs, dim=-1).to(dtype)


# -- poses on the sphere (method §1.3) ---------------------------------------------------------------------


def sphere_c2w(yaw: Tensor, pitch: Tensor, radius: float, center_z: float) -> Tensor:
    """Camera-to-world [B, 4, 4] of cameras on the sphere looking at (0, 0, c) with zero roll (method §1.3).

    yaw, pitch: [B] radians. Positive yaw moves the camera to +X (right), positive pitch moves it up (−Y).
    """
    yaw, pitch = torch.atleast_1d(yaw), torch.atleast_1d(pitch)
    dtype = _float_dtype(yaw, pitch)
    yaw, pitch = yaw.to(dtype), pitch.to(dtype)
    cos_p = pitch.cos().abs()
    centre = torch.stack(
        [radius * cos_p * yaw.sin(), -radius * pitch.sin(), center_z - radius * cos_p * yaw.cos()], -1
    )  # C [B, 3]
    target = torch.tensor([0.0, 0.0, center_z], dtype=dtype, device=yaw.device)
    down = torch.tensor([0.0, 1.0, 0.0], dtype=dtype, device=yaw.device).expand_as(centre)
    z_c = torch.nn.functional.normalize(target - centre, dim=-1)
    x_c = torch.nn.functional.normalize(torch.linalg.cross(down, z_c), dim=-1)
    y_c = torch.nn.functional.normalize(torch.linalg.cross(z_c, x_c), dim=-1)
    c2w = torch.zeros(centre.shape[0], 4, 4, dtype=dtype, device=yaw.device)
    c2w[:, :3, 0], c2w[:, :3, 1], c2w[:, :3, 2], c2w[:, :3, 3] = x_c, y_c, z_c, centre
    c2w[:, 3, 3] = 1.0
    return c2w


def camera_c2w(camera: CameraConfig, yaw: Tensor, pitch: Tensor) -> Tensor:
    """:func:`sphere_c2w` on the sphere of a camera config (its ``sphere_radius``, ``sphere_center_z``)."""
    return sphere_c2w(yaw, pitch, radius=camera.sphere_radius, center_z=camera.sphere_center_z)


def camera_deep3dface(camera: CameraConfig, yaw: float, pitch: float) -> tuple[Tensor, Tensor]:
    """The Deep3DFaceRecon (angle [1, 3], trans [1, 3]) of the camera at (``yaw``, ``pitch``) on the sphere
    of ``camera``, in float64: the true pose of a synthetic head rendered from there."""
    c2w = camera_c2w(
        camera, torch.tensor([yaw], dtype=torch.float64), torch.tensor([pitch], dtype=torch.float64)
    )
    return w2c_to_deep3dface(torch.linalg.inv(c2w), camera.sphere_center_z)


def w2c_condition(c2w: Tensor) -> Tensor:
    """The discriminator's pose condition [B, 16]: row-major flattening of w2c = c2w⁻¹ (method §1.5)."""
    return torch.linalg.inv(c2w).reshape(c2w.shape[0], 16)


# -- pose sampling (method §1.4) ---------------------------------------------------------------------------


def sample_truncated_normal(
    mean: float, std: float, k: float, n: int, generator: torch.Generator | None = None
) -> Tensor:
    """n samples [n] of N(mean, std²) truncated to mean ± k·std, on the CPU generator (docs/method.md §1.4).

    Four standard-normal candidates are drawn per sample and the first one strictly inside (−k, k) is
    kept; when none is, the first candidate is clamped to the bound. ``std == 0`` returns ``mean`` exactly.
    """
    if std < 0 or k <= 0:
        raise ValueError(f"need std >= 0 and k > 0 for a truncated normal, got std={std}, k={k}")
    candidates = torch.randn(n, 4, generator=generator, dtype=torch.float32)
    inside = candidates.abs() < k
    first_inside = inside.to(torch.uint8).argmax(dim=1, keepdim=True)  # 0 when no candidate is inside
    z = candidates.gather(1, first_inside)[:, 0].clamp(-k, k)
    return mean + std * z


def sample_sphere_poses(
    n: int,
    yaw_std: float,
    pitch_std: float,
    k: float,
    yaw_mean: float = 0.0,
    pitch_mean: float = 0.0,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """(yaw [n], pitch [n]) on the CPU from independent truncated Gaussians, yaw drawn first (method §1.4)."""
    yaw = sample_truncated_normal(yaw_mean, yaw_std, k, n, generator=generator)
    pitch = sample_truncated_normal(pitch_mean, pitch_std, k, n, generator=generator)
    return yaw, pitch


# -- real-image poses (method §1.6) ------------------------------------------------------------------------


def _flip_yz(dtype: torch.dtype, device: torch.device) -> Tensor:
    """F = diag(1, −1, −1, 1): +Y down/+Z forward ↔ +Y up/+Z backward (docs/method.md §1.6)."""
    return torch.diag(torch.tensor([1.0, -1.0, -1.0, 1.0], dtype=dtype, device=device))


def _translation(t: Tensor) -> Tensor:
    """Homogeneous translations [B, 4, 4] from t [B, 3]."""
    out = torch.eye(4, dtype=t.dtype, device=t.device).repeat(t.shape[0], 1, 1)
    out[:, :3, 3] = t
    return out


def _z_translation(z: float, batch: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    t = torch.zeros(batch, 3, dtype=dtype, device=device)
    t[:, 2] = z
    return _translation(t)


def euler_zyx(angle: Tensor) -> Tensor:
    """R [B, 3, 3] = R_z(a₂) R_y(a₁) R_x(a₀), right-handed elementary rotations (Deep3DFace, method §1.6)."""
    a, b, g = angle.unbind(-1)
    one, zero = torch.ones_like(a), torch.zeros_like(a)
    rx = torch.stack([one, zero, zero, zero, a.cos(), -a.sin(), zero, a.sin(), a.cos()], -1).view(-1, 3, 3)
    ry = torch.stack([b.cos(), zero, b.sin(), zero, one, zero, -b.sin(), zero, b.cos()], -1).view(-1, 3, 3)
    rz = torch.stack([g.cos(), -g.sin(), zero, g.sin(), g.cos(), zero, zero, zero, one], -1).view(-1, 3, 3)
    return rz @ ry @ rx


def _project_centre_to_sphere(w2c_raw: Tensor, radius: float, center_z: float) -> Tensor:
    """Move the camera centre radially onto the sphere |C − S| = r, keeping the rotation (method §1.6)."""
    rot, tau = w2c_raw[:, :3, :3], w2c_raw[:, :3, 3]
    centre = -(rot.transpose(1, 2) @ tau[..., None])[..., 0]  # C = −R⁻¹τ (R is a rotation)
    sphere_centre = torch.tensor([0.0, 0.0, center_z], dtype=w2c_raw.dtype, device=w2c_raw.device)
    centre = sphere_centre + radius * torch.nn.functional.normalize(centre - sphere_centre, dim=-1)
    w2c = w2c_raw.clone()
    w2c[:, :3, 3] = -(rot @ centre[..., None])[..., 0]
    return w2c


def deep3dface_to_w2c(angle: Tensor, trans: Tensor, radius: float, center_z: float) -> Tensor:
    """GMPI w2c [B, 4, 4] of a Deep3DFaceRecon pose: angle [B, 3] (radians), trans [B, 3] (method §1.6).

    W2C_raw = F T(−10 ẑ) [R(angle) | trans] F T(−c ẑ), then the camera centre is moved radially onto the
    radius-r sphere around (0, 0, c). angle = trans = 0 gives the identity (with c = r).
    """
    angle, trans = torch.atleast_2d(angle), torch.atleast_2d(trans)
    dtype = _float_dtype(angle, trans)
    angle, trans = angle.to(dtype), trans.to(dtype)
    batch, device = angle.shape[0], angle.device
    flip = _flip_yz(dtype, device)
    face = _translation(trans)
    face[:, :3, :3] = euler_zyx(angle)
    w2c_raw = (
        flip
        @ _z_translation(-DEEP3DFACE_CAMERA_DISTANCE, batch, dtype, device)
        @ face
        @ flip
        @ _z_translation(-center_z, batch, dtype, device)
    )
    return _project_centre_to_sphere(w2c_raw, radius, center_z)


def w2c_to_deep3dface(w2c: Tensor, center_z: float) -> tuple[Tensor, Tensor]:
    """(angle [B, 3], trans [B, 3]) of Deep3DFaceRecon that ``deep3dface_to_w2c`` maps back to w2c [B, 4, 4].

    Inverts docs/method.md §1.6 for cameras looking from anywhere: the rotation gives R = F R_w F and its
    z-y-x Euler angles. The renormalisation onto GMPI's sphere forgets the raw camera distance, so it is a
    free choice; we pick the one of Deep3DFace itself: the face centre is ``DEEP3DFACE_CAMERA_DISTANCE`` = 10
    units from its camera (angle = trans = 0 is the canonical pose, and trans stays small for faces near the
    canonical framing, as in real Deep3DFace fits). Only the direction from S to the camera centre of ``w2c``
    is used, so the result is exact for cameras on the sphere (the radius is re-imposed on the way back).
    """
    dtype = _float_dtype(w2c)
    w2c = w2c.to(dtype)
    rot, tau = w2c[:, :3, :3], w2c[:, :3, 3]
    flip3 = torch.diag(torch.tensor([1.0, -1.0, -1.0], dtype=dtype, device=w2c.device))
    r_face = flip3 @ rot @ flip3
    # R = R_z(g) R_y(b) R_x(a): R[2,0] = −sin b, R[2,1] = cos b sin a, R[2,2] = cos b cos a,
    # R[1,0] = sin g cos b, R[0,0] = cos g cos b
    a = torch.atan2(r_face[:, 2, 1], r_face[:, 2, 2])
    b = torch.atan2(-r_face[:, 2, 0], torch.hypot(r_face[:, 2, 1], r_face[:, 2, 2]))
    g = torch.atan2(r_face[:, 1, 0], r_face[:, 0, 0])
    # Raw camera centre = S − R_wᵀ(F t + 10 ẑ) (expanding W2C_raw), so F t + 10 ẑ = −λ R_w (C − S)/|C − S|;
    # λ = 10 keeps Deep3DFace's camera 10 units from the face.
    centre = -(rot.transpose(1, 2) @ tau[..., None])[..., 0]
    sphere_centre = torch.tensor([0.0, 0.0, center_z], dtype=dtype, device=w2c.device)
    direction = torch.nn.functional.normalize(centre - sphere_centre, dim=-1)
    ft = -DEEP3DFACE_CAMERA_DISTANCE * (rot @ direction[..., None])[..., 0]
    ft[:, 2] -= DEEP3DFACE_CAMERA_DISTANCE
    trans = ft * torch.tensor([1.0, -1.0, -1.0], dtype=dtype, device=w2c.device)
    return torch.stack([a, b, g], -1), trans


def eg3d_to_w2c(c2w_eg3d: Tensor, radius: float, center_z: float) -> Tensor:
    """GMPI w2c [B, 4, 4] of an EG3D camera-to-world label [B, 4, 4] (AFHQ, docs/method.md §1.6).

    W2C_raw = C2W_eg3d⁻¹ F T(−c ẑ) (EG3D cameras are already OpenCV), then the radial renormalisation.
    """
    c2w_eg3d = c2w_eg3d.to(_float_dtype(c2w_eg3d))
    batch, dtype, device = c2w_eg3d.shape[0], c2w_eg3d.dtype, c2w_eg3d.device
    w2c_raw = (
        torch.linalg.inv(c2w_eg3d) @ _flip_yz(dtype, device) @ _z_translation(-center_z, batch, dtype, device)
    )
    return _project_centre_to_sphere(w2c_raw, radius, center_z)


def pitch_yaw_from_w2c(w2c: Tensor, center_z: float) -> tuple[Tensor, Tensor]:
    """(pitch [B], yaw [B]) of the camera centre of w2c [B, 4, 4] seen from the sphere centre (method §1.6).

    The centre is mapped into the sphere frame (x_s = −Z, y_s = X, z_s = −(Y) relative to S);
    yaw = atan2(y_s, x_s), pitch = π/2 − acos(z_s/|p|). Inverts ``sphere_c2w`` for |yaw| < π.
    """
    rot, tau = w2c[:, :3, :3], w2c[:, :3, 3]
    centre = -(rot.transpose(1, 2) @ tau[..., None])[..., 0]
    x, y, z = centre.unbind(-1)
    p = torch.stack([-(z - center_z), x, -y], -1)
    yaw = torch.atan2(p[:, 1], p[:, 0])
    pitch = math.pi / 2 - torch.acos((p[:, 2] / p.norm(dim=-1)).clamp(-1.0, 1.0))
    return pitch, yaw
