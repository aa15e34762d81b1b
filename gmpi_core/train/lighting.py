"""Lighting augmentation of MPIs during training (docs/method.md §6.6).

Plane colours are multiplied by ``k_a + k_d · max(0, −n·ℓ)`` where the normals ``n`` come from the blurred
texture-space depth of the MPI and ``ℓ`` points from a light sampled on the camera sphere to the sphere
centre. ``k_a, k_d`` ramp from 0 to (0.9, 0.1) over ``grow_n_iters`` *calls* (official behaviour: the
first shaded MPIs are black, §12.2.1); with ``official_ramp=False`` the shading instead blends in from
identity, ``RGB · ((1 − ρ) + ρ(k_a + k_d·diffuse))``. Alpha is never changed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from gmpi_core.camera import camera_c2w, sample_truncated_normal
from gmpi_core.config import CameraConfig, LightingConfig
from gmpi_core.mpi.planes import texel_xyz


def texture_space_depth(alpha: Tensor, depths: Tensor) -> Tensor:
    """Σ_i w_i d_i with the compositing weights of docs/method.md §3.3 computed without warping.

    alpha [B, N, T, T], depths [N] → [B, T, T].
    """
    transmittance = torch.cumprod(1.0 - alpha + 1e-10, dim=1)
    transmittance = torch.cat([torch.ones_like(alpha[:, :1]), transmittance[:, :-1]], dim=1)
    return (alpha * transmittance * depths.view(1, -1, 1, 1)).sum(dim=1)


def gaussian_blur(x: Tensor, kernel_size: int, sigma: float) -> Tensor:
    """Separable Gaussian blur with reflect padding (torchvision's GaussianBlur). x [B, C, H, W]."""
    half = (kernel_size - 1) / 2
    t = torch.linspace(-half, half, kernel_size, device=x.device, dtype=x.dtype)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    c = x.shape[1]
    pad = kernel_size // 2
    x = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    x = F.conv2d(x, k.view(1, 1, 1, -1).expand(c, 1, 1, kernel_size), groups=c)
    return F.conv2d(x, k.view(1, 1, -1, 1).expand(c, 1, kernel_size, 1), groups=c)


def surface_normals(points: Tensor) -> Tensor:
    """Unit normals of a point map [B, H, W, 3] from the four neighbour cross products (method §6.6 step 4).

    For interior pixels n ∝ (u−c)×(l−c) + (l−c)×(d−c) + (d−c)×(r−c) + (r−c)×(u−c) with u/d/l/r the
    neighbours above/below/left/right; border normals replicate the nearest interior one. A fronto-parallel
    surface gets n = (0, 0, −1) (facing the camera).
    """
    c = points[:, 1:-1, 1:-1]
    up, down = points[:, :-2, 1:-1] - c, points[:, 2:, 1:-1] - c
    left, right = points[:, 1:-1, :-2] - c, points[:, 1:-1, 2:] - c
    n = (
        torch.linalg.cross(up, left, dim=-1)
        + torch.linalg.cross(left, down, dim=-1)
        + torch.linalg.cross(down, right, dim=-1)
        + torch.linalg.cross(right, up, dim=-1)
    )
    n = F.pad(n.permute(0, 3, 1, 2), (1, 1, 1, 1), mode="replicate").permute(0, 2, 3, 1)
    return n / (n.norm(dim=-1, keepdim=True) + 1e-8)


class LightingAugmentation:
    """Stateful shader: counts its calls for the k_a/k_d ramp like the original (one counter per process)."""

    def __init__(self, lighting: LightingConfig, camera: CameraConfig) -> None:
        self.cfg = lighting
        self.camera = camera
        self.n_calls = 0

    def coefficients(self) -> tuple[float, float, float]:
        """(ρ, k_a, k_d) for the next call."""
        rho = min(1.0, self.n_calls / max(1, self.cfg.grow_n_iters))
        return rho, self.cfg.ka_max * rho, self.cfg.kd_max * rho

    def light_directions(self, batch: int, generator: torch.Generator | None = None) -> Tensor:
        """ℓ [B, 3]: from a light on the camera sphere towards the sphere centre (method §6.6 step 5)."""
        cfg, cam = self.cfg, self.camera
        yaw = sample_truncated_normal(0.0, cfg.light_yaw_std, 2.0, batch, generator=generator)
        pitch = sample_truncated_normal(
            cfg.light_pitch_mean, cfg.light_pitch_std, 2.0, batch, generator=generator
        )
        position = camera_c2w(cam, yaw, pitch)[:, :3, 3]
        center = torch.tensor([0.0, 0.0, cam.sphere_center_z])
        return F.normalize(center - position, dim=-1)

    def __call__(self, rgba: Tensor, plane_dhw: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Shade rgba [B, N, 4, T, T] (values in [0, 1]); returns a new tensor, alpha unchanged."""
        b, _, _, t, _ = rgba.shape
        rho, ka, kd = self.coefficients()
        self.n_calls += 1
        depths = plane_dhw[:, 0].to(rgba)
        d_tex = texture_space_depth(rgba[:, :, 3], depths)  # [B,T,T]
        d_tex = gaussian_blur(d_tex[:, None], self.cfg.blur_kernel, blur_sigma(self.cfg.blur_kernel))[:, 0]
        last_plane = texel_xyz(plane_dhw[-1:], t)[0].to(rgba)  # [T,T,3], z = d_{N-1}
        points = last_plane[None] * (d_tex / (plane_dhw[-1, 0].to(rgba) + 1e-8))[..., None]
        normals = surface_normals(points)  # [B,T,T,3]
        light = self.light_directions(b, generator).to(rgba)  # [B,3]
        diffuse = (-(normals * light[:, None, None, :]).sum(-1)).clamp(min=0.0)  # [B,T,T]
        shade = ka + kd * diffuse
        if not self.cfg.official_ramp:
            shade = (1.0 - rho) + rho * shade
        rgb = (rgba[:, :, :3] * shade[:, None, None]).clamp(0.0, 1.0)
        return torch.cat([rgb, rgba[:, :, 3:]], dim=2)


def blur_sigma(kernel_size: int) -> float:
    """torchvision's default σ for a kernel size: 0.3·((k−1)/2 − 1) + 0.8 (1.7 for k = 9)."""
    return 0.3 * ((kernel_size - 1) * 0.5 - 1) + 0.8
