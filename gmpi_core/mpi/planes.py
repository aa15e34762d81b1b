"""Where the MPI planes sit: depths, world extents and texel coordinates (docs/method.md §2).

Planes are fronto-parallel world-space rectangles centred on the Z axis, described by (d, h, w) and
ordered nearest → farthest; the last one is the opaque background.

    >>> depths = plane_depths(0.95, 1.12, 32)
    >>> box, background = confined_extents(12.6, 1.12, 0.289, 0.127, 2.0, radius=1.0, center_z=1.0)
    >>> plane_dhw(depths, box, background).shape
    torch.Size([32, 3])
"""

from __future__ import annotations

import functools
import math
from typing import TYPE_CHECKING, Literal

import torch
from torch import Tensor

from gmpi_core.camera import sphere_c2w

if TYPE_CHECKING:
    from gmpi_core.config import CameraConfig

__all__ = [
    "PlaneSpacing",
    "confined_extents",
    "normalized_depth",
    "plane_depths",
    "plane_dhw",
    "plane_layout",
    "texel_xyz",
]

PlaneSpacing = Literal["inverse", "uniform", "log-uniform"]
_SPACINGS = ("inverse", "uniform", "log-uniform")
# The official code rejects plane extents beyond this bound (docs/method.md §2.3 step 6).
MAX_PLANE_BOUND = 5.0


def plane_depths(d_near: float, d_far: float, n: int, method: PlaneSpacing = "inverse") -> Tensor:
    """Plane depths [N] (float32, nearest first, clamped to [d_near, d_far]) (docs/method.md §2.2).

    ``inverse`` is uniform in disparity: d_i = 1 / (1/d_near − i/(N−1) · (1/d_near − 1/d_far)).
    """
    if not 0.0 < d_near < d_far:
        raise ValueError(f"need 0 < d_near < d_far, got d_near={d_near}, d_far={d_far}")
    if n < 1:
        raise ValueError(f"need at least one plane, got n={n}")
    if method == "inverse":
        depths = 1.0 / torch.linspace(1.0 / d_far, 1.0 / d_near, n, dtype=torch.float64).flip(0)
    elif method == "uniform":
        depths = torch.linspace(d_near, d_far, n, dtype=torch.float64)
    elif method == "log-uniform":
        depths = torch.linspace(math.log(d_near), math.log(d_far), n, dtype=torch.float64).exp()
    else:
        raise ValueError(f"unknown plane spacing '{method}'; choose one of {_SPACINGS}")
    return depths.float().clamp(d_near, d_far)


def _corner_directions(fov_deg: float, dtype: torch.dtype) -> Tensor:
    """Camera-frame directions [4, 3] through the outer pixel *edges* of a 4×4 camera (method §2.3 step 1)."""
    t = math.tan(math.radians(fov_deg) / 2.0)  # (0 − W/2)/f = −tan(fov/2) for W = H = 4
    return torch.tensor([[-t, -t, 1.0], [t, -t, 1.0], [-t, t, 1.0], [t, t, 1.0]], dtype=dtype)


def confined_extents(
    fov_deg: float,
    d_far: float,
    yaw_std: float,
    pitch_std: float,
    k: float,
    radius: float,
    center_z: float,
    yaw_mean: float = 0.0,
    pitch_mean: float = 0.0,
    enlarge: float = 1.001,
    grid: int = 100,
) -> tuple[tuple[float, float], tuple[float, float]]:
    """((h_c, w_c), (h_bg, w_bg)): the shared extent of planes 0..N−2 and the background's (method §2.3).

    The frustum corners of every pose of a ``grid`` × ``grid`` yaw/pitch grid over mean ± k·σ (plus the mean
    pose) are intersected with z = d_far. The box extent comes from the mean pose alone, the background
    covers the symmetrised union over all poses, enlarged by ``enlarge``.
    """
    yaws = torch.linspace(yaw_mean - k * yaw_std, yaw_mean + k * yaw_std, grid, dtype=torch.float64)
    pitches = torch.linspace(
        pitch_mean - k * pitch_std, pitch_mean + k * pitch_std, grid, dtype=torch.float64
    )
    yaw, pitch = torch.meshgrid(yaws, pitches, indexing="ij")
    yaw = torch.cat([yaw.reshape(-1), torch.tensor([yaw_mean], dtype=torch.float64)])
    pitch = torch.cat([pitch.reshape(-1), torch.tensor([pitch_mean], dtype=torch.float64)])
    c2w = sphere_c2w(yaw, pitch, radius=radius, center_z=center_z)  # [P, 4, 4], mean pose last
    dirs = torch.einsum(
        "pij,cj->pci", c2w[:, :3, :3], _corner_directions(fov_deg, torch.float64)
    )  # [P, 4, 3]
    eye = c2w[:, None, :3, 3]  # [P, 1, 3]
    if (dirs[..., 2] <= 0).any() or (eye[..., 2] >= d_far).any():
        raise ValueError(
            f"some pose of the prior (yaw {yaw_mean}±{k}·{yaw_std}, pitch {pitch_mean}±{k}·{pitch_std}) "
            f"does not see the plane z = {d_far} in front of it; narrow the pose prior or move d_far "
            "further away"
        )
    hits = eye + (d_far - eye[..., 2:]) / dirs[..., 2:] * dirs  # [P, 4, 3] corner rays ∩ {z = d_far}
    x_abs, y_abs = hits[..., 0].abs(), hits[..., 1].abs()
    box_h, box_w = 2.0 * y_abs[-1].max().item(), 2.0 * x_abs[-1].max().item()
    bg_h, bg_w = 2.0 * y_abs.max().item() * enlarge, 2.0 * x_abs.max().item() * enlarge
    if max(box_h, box_w, bg_h, bg_w) / 2.0 > MAX_PLANE_BOUND:
        raise ValueError(
            f"plane extents ({bg_h:.3f} × {bg_w:.3f}) exceed ±{MAX_PLANE_BOUND}: the pose prior or d_far is "
            "too large for an MPI; narrow the pose prior or bring d_far closer"
        )
    return (box_h, box_w), (bg_h, bg_w)


def plane_dhw(depths: Tensor, box_hw: tuple[float, float], background_hw: tuple[float, float]) -> Tensor:
    """(d, h, w) [N, 3] per plane: planes 0..N−2 share ``box_hw``, the last is the background (§2.3)."""
    depths = depths.to(torch.float32)
    dhw = torch.empty(depths.shape[0], 3, dtype=torch.float32, device=depths.device)
    dhw[:, 0] = depths
    dhw[:, 1], dhw[:, 2] = box_hw
    dhw[-1, 1], dhw[-1, 2] = background_hw
    return dhw


def normalized_depth(depths: Tensor, d_near: float, d_far: float) -> Tensor:
    """z̃ [N] = (d − d_near)/(d_far − d_near) ∈ [0, 1], the network's plane input (docs/method.md §2.4)."""
    return (depths - d_near) / (d_far - d_near)


def texel_xyz(plane_dhw: Tensor, size: int) -> Tensor:
    """World coordinates [N, T, T, 3] of the texel centres (align_corners=True) of every plane (method §2.4).

    Texel (row j, column k) of plane i is (x, y, z) = ((−1 + 2k/(T−1)) w_i/2, (−1 + 2j/(T−1)) h_i/2, d_i).
    """
    ramp = torch.linspace(-1.0, 1.0, size, dtype=plane_dhw.dtype, device=plane_dhw.device)
    d, h, w = plane_dhw.unbind(-1)
    n = plane_dhw.shape[0]
    x = (ramp[None, None, :] * w[:, None, None] / 2).expand(n, size, size)
    y = (ramp[None, :, None] * h[:, None, None] / 2).expand(n, size, size)
    z = d[:, None, None].expand(n, size, size)
    return torch.stack([x, y, z], -1)


@functools.lru_cache(maxsize=16)
def _extents(camera: CameraConfig) -> tuple[tuple[float, float], tuple[float, float]]:
    return confined_extents(
        fov_deg=camera.fov_deg,
        d_far=camera.d_far,
        yaw_std=camera.yaw_std,
        pitch_std=camera.pitch_std,
        k=camera.truncation_k,
        radius=camera.sphere_radius,
        center_z=camera.sphere_center_z,
        yaw_mean=camera.yaw_mean,
        pitch_mean=camera.pitch_mean,
        enlarge=camera.spatial_enlarge_factor,
    )


def plane_layout(camera: CameraConfig, n_planes: int) -> tuple[Tensor, Tensor]:
    """(plane_dhw [N,3], depth_norm [N]) for ``n_planes`` planes of this camera set-up (method §2.2-§2.4)."""
    if n_planes < 2:
        raise ValueError(f"an MPI needs at least 2 planes (content + background), got {n_planes}")
    depths = plane_depths(camera.d_near, camera.d_far, n_planes, method=camera.plane_spacing)
    box_hw, background_hw = _extents(camera)
    return plane_dhw(depths, box_hw, background_hw), normalized_depth(depths, camera.d_near, camera.d_far)
