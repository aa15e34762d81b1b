"""The MPI renderer: ray/plane intersection, bilinear sampling and front-to-back compositing (method §3).

Two implementations of the same function:

* ``render_mpi_reference`` — the literal formulation: a ray per pixel, one batched ``grid_sample`` over
  all B·N planes, ``cumprod`` compositing. Obviously right, memory O(B·N·H·W); the reference in tests.
* the fused kernel (``impl="fused"``) — fronto-parallel planes make each plane's pixel → texel map a
  homography, so a C++/OpenMP kernel (CUDA on GPUs) samples and composites in one pass per pixel with
  memory O(B·H·W) beyond inputs and outputs; its backward gives gradients w.r.t. the RGBA textures.

    >>> image, depth = render_mpi(rgba, plane_dhw, c2w, fov_deg=12.6, size=256)   # [B,3,H,W], [B,1,H,W]

Inputs are not premultiplied, with values in [0, 1] (not checked: the check would cost a pass over the
MPI). Rays that miss the background plane raise ``RayOutsideMPIError`` unless ``out_of_bounds`` says
otherwise.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from gmpi_core.camera import focal_from_fov, pixel_ray_directions
from gmpi_core.ops import kernels
from gmpi_core.ops._build import CheckedKernel, build_error, load_registered

__all__ = [
    "IMPLS",
    "OUT_OF_BOUNDS",
    "RAY_TOLERANCE",
    "RayOutsideMPIError",
    "fused_available",
    "plane_homographies",
    "render_mpi",
    "render_mpi_reference",
]

OutOfBounds = Literal["raise", "clamp", "ignore"]
Impl = Literal["auto", "fused", "reference"]
OUT_OF_BOUNDS = ("raise", "clamp", "ignore")
IMPLS = ("auto", "fused", "reference")
# A ray "misses" the background plane when |u| or |v| exceeds 1 by more than this (normalised plane
# coordinates, computed in float64). Poses of the prior stay ≥ 1e-3 inside thanks to the 1.001 enlargement
# (docs/method.md §2.3), so 1e-6 only absorbs rounding of poses that were themselves computed in float32.
RAY_TOLERANCE = 1e-6
TRANSMITTANCE_EPS = 1e-10  # docs/method.md §3.3
_CUDA_SPEC = kernels.MPI_RENDER_CUDA
_CPU_SPEC = kernels.MPI_RENDER_CPU


class RayOutsideMPIError(ValueError):
    """Some rays of a view miss the background plane: the pose lies outside what the MPI covers (§3.5)."""


# -- geometry shared by both implementations ------------------------------------------------------------


def _pixel_to_direction(fov_deg: float, size: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """K⁻¹ with the pixel-centre shift [3, 3]: integer pixel (x, y, 1) → camera direction (x_c, y_c, 1)."""
    f = focal_from_fov(fov_deg, size)
    c = (0.5 - size / 2.0) / f
    return torch.tensor([[1 / f, 0.0, c], [0.0, 1 / f, c], [0.0, 0.0, 1.0]], dtype=dtype, device=device)


def plane_homographies(
    c2w: Tensor, plane_dhw: Tensor, fov_deg: float, size: int, texture_hw: tuple[int, int]
) -> tuple[Tensor, Tensor]:
    """Per-view ray maps A [B, 3, 3] and per-plane texel maps [B, N, 5] of the fused renderer (float64).

    With q = A·(x, y, 1) the (unnormalised) world direction of pixel (x, y) and r = (q_x/q_z, q_y/q_z),
    the ray hits plane i (depth d_i, extent h_i × w_i) at X = e + (d_i − e_z)·q/q_z (docs/method.md §3.2),
    i.e. at the align_corners=True texel coordinate
        ix = (e_x/w_i + 1/2)(T_w − 1) + (d_i − e_z)(T_w − 1)/w_i · r_x,   iy likewise with (e_y, h_i, T_h),
    and at camera z-depth (d_i − e_z)/q_z (q has unit camera-frame z). Rows of maps: (ax, bx, ay, by, dz).
    """
    c2w, dhw = c2w.to(torch.float64), plane_dhw.to(device=c2w.device, dtype=torch.float64)
    rays = c2w[:, :3, :3] @ _pixel_to_direction(fov_deg, size, torch.float64, c2w.device)
    eye = c2w[:, :3, 3]
    th, tw = texture_hw
    d, h, w = dhw.unbind(-1)
    dz = d[None, :] - eye[:, 2:3]  # [B, N]
    ax = (eye[:, 0:1] / w + 0.5) * (tw - 1)
    bx = dz * (tw - 1) / w
    ay = (eye[:, 1:2] / h + 0.5) * (th - 1)
    by = dz * (th - 1) / h
    return rays, torch.stack([ax.expand_as(dz), bx, ay.expand_as(dz), by, dz], -1)


def _view_description(c2w: Tensor, b: int) -> str:
    """Camera centre and the yaw/pitch of its optical axis (exact for poses on the sphere, method §1.3)."""
    axis, centre = c2w[b, :3, 2], c2w[b, :3, 3]
    yaw = torch.atan2(-axis[0], axis[2]).item()
    pitch = torch.asin(axis[1].clamp(-1, 1)).item()
    where = ", ".join(f"{v:.4f}" for v in centre.tolist())
    return f"camera at ({where}), yaw {yaw:.4f} rad, pitch {pitch:.4f} rad"


def _check_geometry(c2w: Tensor, plane_dhw: Tensor, fov_deg: float, size: int, out_of_bounds: str) -> None:
    """Planes in front of every camera, rays pointing at them and (for "raise") inside the background plane.

    The pixel → plane map is a homography with q_z > 0 on the image, so the pixel-centre square maps to a
    convex quad: checking the four corner pixels decides every pixel (exactly, in float64). Runs on the
    CPU: one small device → host copy instead of a synchronisation per test.
    """
    c2w = c2w.detach().to("cpu", torch.float64)
    dhw = plane_dhw.detach().to("cpu", torch.float64)
    eye_z = c2w[:, 2, 3]
    behind = dhw[None, :, 0] <= eye_z[:, None]  # [B, N]
    if behind.any():
        b, i = (int(v) for v in behind.nonzero()[0])
        raise ValueError(
            f"plane {i} (depth {dhw[i, 0].item():.4f}) is not in front of view {b} "
            f"({_view_description(c2w, b)}): "
            "every plane must lie beyond the camera's z; move the camera back or the planes further away"
        )
    rays, _ = plane_homographies(c2w, dhw, fov_deg, size, (3, 3))  # texture size irrelevant here
    corners = torch.tensor(
        [[0, 0, 1], [size - 1, 0, 1], [0, size - 1, 1], [size - 1, size - 1, 1]],
        dtype=torch.float64,
        device=c2w.device,
    )
    q = torch.einsum("bij,cj->bci", rays, corners)  # [B, 4, 3]
    if (q[..., 2] <= 0).any():
        b = int((q[..., 2] <= 0).any(-1).nonzero()[0])
        raise ValueError(
            f"view {b} ({_view_description(c2w, b)}) looks away from the MPI: some rays never reach "
            "the planes; keep the optical axis within (90° − fov/2) of +Z"
        )
    if out_of_bounds != "raise":
        return
    eye, last = c2w[:, :3, 3], dhw[-1]
    hit = (
        eye[:, None, :2] + (last[0] - eye[:, None, 2:3]) * q[..., :2] / q[..., 2:3]
    )  # [B, 4, 2] on z = d_last
    uv = 2 * hit / torch.stack([last[2], last[1]])
    bad_views = (uv.abs() > 1 + RAY_TOLERANCE).flatten(1).any(-1)
    if bad_views.any():
        _raise_outside(c2w, rays, last, size, bad_views)


def _raise_outside(c2w: Tensor, rays: Tensor, last: Tensor, size: int, bad_views: Tensor) -> None:
    """Count the rays that miss the background plane in the first bad view and raise."""
    b = int(bad_views.nonzero()[0])
    ys, xs = torch.meshgrid(
        torch.arange(size, dtype=torch.float64), torch.arange(size, dtype=torch.float64), indexing="ij"
    )
    pix = torch.stack([xs, ys, torch.ones_like(xs)], -1).to(c2w.device)
    q = pix @ rays[b].T  # [H, W, 3]
    eye = c2w[b, :3, 3]
    hit = eye[:2] + (last[0] - eye[2]) * q[..., :2] / q[..., 2:3]
    u, v = 2 * hit[..., 0] / last[2], 2 * hit[..., 1] / last[1]
    miss = (u.abs() > 1 + RAY_TOLERANCE) | (v.abs() > 1 + RAY_TOLERANCE)
    n_views = int(bad_views.sum())
    others = f" ({n_views - 1} more view(s) of this batch miss it too)" if n_views > 1 else ""
    raise RayOutsideMPIError(
        f"{int(miss.sum())} of {size * size} rays of view {b} ({_view_description(c2w, b)}) miss the "
        f"background plane (max |u| = {u.abs().max().item():.4f}, max |v| = {v.abs().max().item():.4f}; "
        f"must be ≤ 1){others}. "
        "The pose lies outside the range the MPI covers: keep poses within the pose prior (mean ± k·σ), or "
        "render with out_of_bounds='clamp' to extend the background's border texels (or 'ignore' to let them "
        "sample zeros, i.e. black, as the original renderer did with its assertion off)."
    )


def _check_inputs(rgba: Tensor, plane_dhw: Tensor, c2w: Tensor, size: int, out_of_bounds: str) -> None:
    if out_of_bounds not in OUT_OF_BOUNDS:
        raise ValueError(f"unknown out_of_bounds '{out_of_bounds}'; choose one of {OUT_OF_BOUNDS}")
    if rgba.dim() != 5 or rgba.shape[2] != 4:
        raise ValueError(
            f"rgba must be [B, N, 4, T, T] (not premultiplied, in [0, 1]), got {tuple(rgba.shape)}"
        )
    if plane_dhw.shape != (rgba.shape[1], 3):
        raise ValueError(
            f"plane_dhw must be [N, 3] with N = {rgba.shape[1]} planes of rgba, got {tuple(plane_dhw.shape)}"
        )
    if c2w.dim() != 3 or c2w.shape[1:] != (4, 4):
        raise ValueError(f"c2w must be [B, 4, 4], got {tuple(c2w.shape)}")
    if rgba.shape[0] not in (1, c2w.shape[0]):
        raise ValueError(
            f"rgba has {rgba.shape[0]} MPIs but c2w has {c2w.shape[0]} poses; pass one MPI or one per pose"
        )
    if size < 1:
        raise ValueError(f"size must be a positive number of pixels, got {size}")


def _render_dtype(rgba: Tensor) -> torch.dtype:
    return torch.float64 if rgba.dtype == torch.float64 else torch.float32  # method §3: float32, no autocast


# -- reference -------------------------------------------------------------------------------------------


def render_mpi_reference(
    rgba: Tensor,
    plane_dhw: Tensor,
    c2w: Tensor,
    fov_deg: float,
    size: int,
    *,
    out_of_bounds: OutOfBounds = "raise",
) -> tuple[Tensor, Tensor]:
    """Render rgba [B, N, 4, T, T] from c2w [B, 4, 4] → (image [B, 3, H, W] in [−1, 1], depth [B, 1, H, W]).

    The literal method §3: pixel-centre rays, ray/plane intersection, one zero-padded bilinear grid_sample
    (align_corners=True) over all planes, weights α_i Π_{j<i}(1 − α_j + 1e-10), image 2c − 1, camera z-depth.
    """
    _check_inputs(rgba, plane_dhw, c2w, size, out_of_bounds)
    _check_geometry(c2w, plane_dhw, fov_deg, size, out_of_bounds)
    dtype = _render_dtype(rgba)
    with torch.autocast(rgba.device.type, enabled=False):
        batch, n = c2w.shape[0], rgba.shape[1]
        rgba = rgba.to(dtype).expand(batch, *rgba.shape[1:])
        rot, eye = c2w[:, :3, :3].to(rgba), c2w[:, :3, 3].to(rgba)
        depth_i, h_i, w_i = (v[None, :, None, None] for v in plane_dhw.to(rgba).unbind(-1))  # [1, N, 1, 1]
        dirs = torch.einsum(
            "bij,hwj->bhwi", rot, pixel_ray_directions(fov_deg, size, size, rgba.dtype).to(rgba)
        )  # [B,H,W,3]
        s = (depth_i - eye[:, None, None, None, 2]) / dirs[:, None, ..., 2]  # [B, N, H, W]
        hits = eye[:, None, None, None, :] + s[..., None] * dirs[:, None]  # [B, N, H, W, 3]
        grid = torch.stack([2 * hits[..., 0] / w_i, 2 * hits[..., 1] / h_i], -1)
        if out_of_bounds == "clamp":
            grid = torch.cat([grid[:, :-1], grid[:, -1:].clamp(-1, 1)], 1)
        z = (
            s * torch.einsum("bhwi,bi->bhw", dirs, rot[:, :, 2])[:, None]
        )  # camera z-depth s·(d·a) [B, N, H, W]
        samples = F.grid_sample(
            rgba.reshape(batch * n, 4, *rgba.shape[-2:]),
            grid.reshape(batch * n, size, size, 2),
            mode="bilinear",
            padding_mode="zeros",
            align_corners=True,
        ).view(batch, n, 4, size, size)
        color, alpha = samples[:, :, :3], samples[:, :, 3:]
        transmittance = torch.cumprod(
            torch.cat([torch.ones_like(alpha[:, :1]), 1 - alpha[:, :-1] + TRANSMITTANCE_EPS], 1), 1
        )
        weights = alpha * transmittance  # [B, N, 1, H, W]
        image = (weights * color).sum(1)
        depth = (weights * z[:, :, None]).sum(1)
    return 2 * image - 1, depth


# -- fused -----------------------------------------------------------------------------------------------


# built on first use, self-checked against the reference once, else disabled (one warning)
_CUDA_KERNEL = CheckedKernel(_CUDA_SPEC, lambda: _cuda_self_check())


def _cpu_kernel() -> ModuleType | None:
    return load_registered(_CPU_SPEC)


def _kernel_for(device: torch.device) -> ModuleType | None:
    return _CUDA_KERNEL.get() if device.type == "cuda" else _cpu_kernel() if device.type == "cpu" else None


def fused_available(device: torch.device | str = "cpu") -> bool:
    """Whether the fused renderer builds and (on CUDA) passed its self-check on this kind of device."""
    return _kernel_for(torch.device(device)) is not None


class _FusedRender(torch.autograd.Function):
    """image, depth = fused(rgba [Bt, N, 4, Th, Tw]); gradients flow to rgba only."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, rgba: Tensor, rays: Tensor, maps: Tensor, size: int, clamp_last: bool, kernel: ModuleType
    ) -> tuple[Tensor, Tensor]:
        image, depth = kernel.forward(rgba, rays, maps, size, size, clamp_last, torch.get_num_threads())
        ctx.save_for_backward(rgba, rays, maps)
        ctx.clamp_last, ctx.kernel = clamp_last, kernel
        return image, depth

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_image: Tensor | None, grad_depth: Tensor | None) -> tuple[Tensor | None, ...]:
        rgba, rays, maps = ctx.saved_tensors
        ref = grad_image if grad_image is not None else grad_depth
        assert ref is not None, "autograd calls backward only when some output needs a gradient"
        batch, size = rays.shape[0], ref.shape[-1]
        opts = {"dtype": rgba.dtype, "device": rgba.device}
        g_image = (
            grad_image.contiguous() if grad_image is not None else torch.zeros(batch, 3, size, size, **opts)
        )
        g_depth = (
            grad_depth.contiguous() if grad_depth is not None else torch.zeros(batch, 1, size, size, **opts)
        )
        grad = ctx.kernel.backward(
            rgba, rays, maps, g_image, g_depth, ctx.clamp_last, torch.get_num_threads()
        )
        return grad, None, None, None, None, None


def _render_fused(
    kernel: ModuleType,
    rgba: Tensor,
    plane_dhw: Tensor,
    c2w: Tensor,
    fov_deg: float,
    size: int,
    clamp_last: bool,
) -> tuple[Tensor, Tensor]:
    if rgba.shape[0] > 1 and rgba.stride(0) == 0:  # one MPI expanded over all views: read it once
        rgba = rgba[:1]
    rgba = rgba.to(_render_dtype(rgba)).contiguous()
    rays, maps = plane_homographies(
        c2w.detach(), plane_dhw.detach(), fov_deg, size, (rgba.shape[-2], rgba.shape[-1])
    )
    return _FusedRender.apply(
        rgba, rays.reshape(-1, 9).contiguous(), maps.contiguous(), size, clamp_last, kernel
    )


def _cuda_self_check() -> str | None:
    """Fused CUDA vs reference on a small random scene: images, depths and texture gradients."""
    try:
        gen = torch.Generator().manual_seed(0)
        from gmpi_core.camera import sphere_c2w
        from gmpi_core.mpi.planes import confined_extents, plane_depths, plane_dhw

        box, background = confined_extents(12.6, 1.12, 0.289, 0.127, 2.0, radius=1.0, center_z=1.0)
        dhw = plane_dhw(plane_depths(0.95, 1.12, 7), box, background).cuda()
        c2w = sphere_c2w(torch.tensor([0.0, 0.4, -0.5]), torch.tensor([0.0, -0.2, 0.25]), 1.0, 1.0).cuda()
        rgba = torch.rand(3, 7, 4, 13, 13, generator=gen).cuda().requires_grad_(True)
        g_img, g_dep = (
            torch.randn(3, 3, 17, 17, generator=gen).cuda(),
            torch.randn(3, 1, 17, 17, generator=gen).cuda(),
        )
        results = []
        for impl in ("fused", "reference"):
            image, depth = render_mpi(rgba, dhw, c2w, 12.6, 17, impl=impl)  # type: ignore[arg-type]
            (grad,) = torch.autograd.grad((image * g_img).sum() + (depth * g_dep).sum(), [rgba])
            results.append((image, depth, grad))
        for label, got, want in zip(("image", "depth", "gradient"), *results):
            err = (got - want).abs().max().item()
            if not err <= 1e-4:
                return f"{label} differs from the reference by {err:.3g}"
        return None
    except Exception as exc:  # a crashing kernel is a failed self-check
        return f"{type(exc).__name__}: {exc}"


def render_mpi(
    rgba: Tensor,
    plane_dhw: Tensor,
    c2w: Tensor,
    fov_deg: float,
    size: int,
    *,
    out_of_bounds: OutOfBounds = "raise",
    impl: Impl = "auto",
) -> tuple[Tensor, Tensor]:
    """Render rgba [B, N, 4, T, T] from c2w [B, 4, 4] → (image [B, 3, H, W] in [−1, 1], depth [B, 1, H, W]).

    rgba: not premultiplied, values in [0, 1], plane 0 nearest; one MPI ([1, N, 4, T, T]) may be shared by all
    views. plane_dhw [N, 3]: (depth, height, width) per plane, the last one the background (docs/method.md
    §2.3). out_of_bounds: what to do with rays that miss the background plane — "raise" RayOutsideMPIError,
    "clamp" the background's sampling coordinates to its border, "ignore" (zero padding: black pixels).
    impl: "fused" kernel (gradients w.r.t. rgba only), "reference", or "auto" = fused when it is available
    and no gradient w.r.t. c2w or plane_dhw is needed.
    """
    if impl not in IMPLS:
        raise ValueError(f"unknown impl '{impl}'; choose one of {IMPLS}")
    _check_inputs(rgba, plane_dhw, c2w, size, out_of_bounds)
    pose_grad = torch.is_grad_enabled() and (c2w.requires_grad or plane_dhw.requires_grad)
    if impl == "reference" or (impl == "auto" and pose_grad):
        return render_mpi_reference(rgba, plane_dhw, c2w, fov_deg, size, out_of_bounds=out_of_bounds)
    kernel = _kernel_for(rgba.device)
    if kernel is None:
        if impl == "fused":
            kind = "mpi_render_cuda" if rgba.device.type == "cuda" else "mpi_render_cpu"
            raise RuntimeError(
                f"the fused MPI renderer is unavailable on {rgba.device.type} "
                f"({build_error(kind) or 'disabled or failed its self-check'}); "
                "use impl='auto' or 'reference'"
            )
        return render_mpi_reference(rgba, plane_dhw, c2w, fov_deg, size, out_of_bounds=out_of_bounds)
    if pose_grad:
        raise ValueError(
            "impl='fused' gives gradients w.r.t. rgba only, but c2w or plane_dhw requires grad; "
            "use impl='reference' (or 'auto') to differentiate through the cameras or planes"
        )
    _check_geometry(c2w, plane_dhw, fov_deg, size, out_of_bounds)
    with torch.autocast(rgba.device.type, enabled=False):
        return _render_fused(
            kernel, rgba, plane_dhw, c2w.to(rgba.device), fov_deg, size, out_of_bounds == "clamp"
        )
