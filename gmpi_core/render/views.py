"""Views of one generated MPI: plane generation in chunks, the single image, the sweeps and the plane
grids (docs/method.md §10).

The MPI of a seed is generated once and re-rendered for every frame; frames go through the renderer in
batches. Poses beyond the pose prior (the sweeps reach yaw ±0.5 and pitch ±0.3, the FFHQ prior only
±0.578 / ±0.254) render with ``out_of_bounds="clamp"`` by default: rays that miss the background plane
take its border texels instead of aborting the run as the original does (``sys.exit``, docs/method.md §3.5).

    >>> mpi = generate_mpi(gmpi, seed=0, n_planes=32)
    >>> yaws, pitches = sweep_poses("horizontal", 100)
    >>> rgb, depth = sweep_frames(gmpi, mpi, yaws, pitches)       # lists of uint8 frames
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from gmpi_core.mpi.render import OutOfBounds
from gmpi_core.pipeline import (  # re-exported: the pieces of GMPI.generate lived here
    GMPI,
    MPI,
    generate_planes,
    iter_plane_chunks,
    mapping_latents,
    zeroed_w_avg,
)
from gmpi_core.render.io import depth_to_uint8, grid, save_json, save_png, to_uint8

__all__ = [
    "GRID_COLUMNS",
    "SINGLE_PITCH_RANGE",
    "SINGLE_YAW_RANGE",
    "SWEEPS",
    "Sweep",
    "generate_mpi",
    "generate_planes",
    "iter_plane_chunks",
    "mapping_latents",
    "mpi_grids",
    "normalized_alpha",
    "render_views",
    "single_view_pose",
    "sweep_frames",
    "sweep_poses",
    "write_mpi_grids",
    "write_single_image",
    "zeroed_w_avg",
]

Sweep = Literal["horizontal", "vertical"]
SWEEPS: tuple[Sweep, ...] = ("horizontal", "vertical")
# method §10: horizontal = yaw linspace(0.5, −0.5) at pitch 0, vertical = pitch linspace(0.3, −0.3) at yaw 0
_SWEEP_RANGE = {"horizontal": (0.5, -0.5), "vertical": (0.3, -0.3)}
# docs/method.md §10: the single image's pose is yaw ~ U(−0.5, 0.5), pitch ~ U(−0.3, 0.3)
SINGLE_YAW_RANGE = (-0.5, 0.5)
SINGLE_PITCH_RANGE = (-0.3, 0.3)
GRID_COLUMNS = 8  # planes per row of the mpi_*.png grids (docs/method.md §10)
GRID_PAD = 2


# -- the MPI of a seed -----------------------------------------------------------------------------------


def generate_mpi(
    gmpi: GMPI,
    seed: int,
    *,
    n_planes: int | None = None,
    truncation_psi: float = 1.0,
    zero_w_avg: bool = False,
    chunk_n_planes: int | None = None,
    noise_mode: str = "random",
) -> MPI:
    """The MPI [1, N, 4, R, R] of one seed: z from ``torch.manual_seed(seed)`` (docs/method.md §9.1), noise
    seeded with the same seed (reproducible renders), N = ``n_planes`` or the config's evaluation count."""
    return gmpi.generate(
        seeds=[seed],
        n_planes=n_planes,
        truncation_psi=truncation_psi,
        noise_mode=noise_mode,
        generator=gmpi.noise_generator(seed),
        zero_w_avg=zero_w_avg,
        chunk_n_planes=chunk_n_planes,
    )


# -- poses and views ------------------------------------------------------------------------------------


def sweep_poses(sweep: Sweep, n_frames: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """(yaws [F], pitches [F]) of a sweep (docs/method.md §10): ``horizontal`` = yaw linspace(0.5, −0.5) at
    pitch 0, ``vertical`` = pitch linspace(0.3, −0.3) at yaw 0."""
    if sweep not in _SWEEP_RANGE:
        raise ValueError(f"unknown sweep '{sweep}'; choose one of {SWEEPS}")
    if n_frames < 1:
        raise ValueError(f"a sweep needs at least one frame, got n_frames={n_frames}")
    ramp = np.linspace(*_SWEEP_RANGE[sweep], n_frames)
    zeros = np.zeros(n_frames)
    return (ramp, zeros) if sweep == "horizontal" else (zeros, ramp)


def single_view_pose(seed: int) -> tuple[float, float]:
    """(yaw, pitch) ~ U(−0.5, 0.5) × U(−0.3, 0.3) (docs/method.md §10), from an RNG seeded with ``seed`` (the
    original draws from the unseeded numpy RNG; seeding makes the single image reproducible)."""
    rng = np.random.default_rng(seed)
    return float(rng.uniform(*SINGLE_YAW_RANGE)), float(rng.uniform(*SINGLE_PITCH_RANGE))


def render_views(
    gmpi: GMPI,
    mpi: MPI,
    yaws: Sequence[float] | np.ndarray,
    pitches: Sequence[float] | np.ndarray,
    *,
    size: int | None = None,
    batch_size: int = 16,
    out_of_bounds: OutOfBounds = "clamp",
) -> Iterator[tuple[Tensor, Tensor]]:
    """Render one MPI ([1, N, 4, T, T]) at every (yaw, pitch), ``batch_size`` views per renderer call.

    Yields (image [b, 3, H, W] in [−1, 1], depth [b, 1, H, W]) per batch, in pose order.
    """
    if mpi.rgba.shape[0] != 1:
        raise ValueError(f"render_views renders one MPI, got a batch of {mpi.rgba.shape[0]}; index it first")
    if len(yaws) != len(pitches):
        raise ValueError(f"{len(yaws)} yaws but {len(pitches)} pitches; pass one of each per view")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    yaw_t = torch.as_tensor(np.asarray(yaws, dtype=np.float64), dtype=torch.float32)
    pitch_t = torch.as_tensor(np.asarray(pitches, dtype=np.float64), dtype=torch.float32)
    for start in range(0, len(yaw_t), batch_size):
        stop = start + batch_size
        yield gmpi.render(mpi, yaw_t[start:stop], pitch_t[start:stop], size=size, out_of_bounds=out_of_bounds)


def sweep_frames(
    gmpi: GMPI,
    mpi: MPI,
    yaws: Sequence[float] | np.ndarray,
    pitches: Sequence[float] | np.ndarray,
    *,
    size: int | None = None,
    batch_size: int = 16,
    out_of_bounds: OutOfBounds = "clamp",
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """uint8 frames of :func:`render_views`: RGB [H, W, 3] via clip((I+1)/2)·255 and depth [H, W, 1] via
    clip((D − d_near)/(d_far − d_near))·255 (docs/method.md §9.1, §10)."""
    cam = gmpi.config.camera
    rgb: list[np.ndarray] = []
    depth: list[np.ndarray] = []
    for images, depths in render_views(
        gmpi, mpi, yaws, pitches, size=size, batch_size=batch_size, out_of_bounds=out_of_bounds
    ):
        rgb.extend(to_uint8(im) for im in images)
        depth.extend(depth_to_uint8(d, cam.d_near, cam.d_far) for d in depths)
    return rgb, depth


# -- plane grids ------------------------------------------------------------------------------------------


def normalized_alpha(alpha: Tensor) -> Tensor:
    """alpha [N, 1, T, T] with each plane divided by its own maximum, so faint planes stay visible in
    ``mpi_alpha.png`` (docs/method.md §10 "normalised"); an all-zero plane stays 0."""
    peak = alpha.amax(dim=(1, 2, 3), keepdim=True)
    return torch.where(
        peak > 0, alpha / peak.clamp_min(torch.finfo(alpha.dtype).tiny), torch.zeros_like(alpha)
    )


def mpi_grids(rgba: Tensor, ncols: int = GRID_COLUMNS, pad: int = GRID_PAD) -> dict[str, np.ndarray]:
    """Plane grids of one MPI rgba [N, 4, T, T] in [0, 1], ``ncols`` planes per row, plane 0 top left:
    ``mpi_rgb`` [., ., 3], ``mpi_alpha`` [., ., 1] (per-plane normalised), ``mpi_rgba`` [., ., 4]
    (not premultiplied, padding transparent)."""
    if rgba.dim() != 4 or rgba.shape[1] != 4:
        raise ValueError(
            f"mpi_grids takes one MPI [N, 4, T, T], got {tuple(rgba.shape)}; index the batch first"
        )
    rgba = rgba.detach().float().cpu()
    return {
        "mpi_rgb": grid([to_uint8(p[:3], (0, 1)) for p in rgba], ncols=ncols, pad=pad),
        "mpi_alpha": grid([to_uint8(p, (0, 1)) for p in normalized_alpha(rgba[:, 3:])], ncols=ncols, pad=pad),
        "mpi_rgba": grid([to_uint8(p, (0, 1)) for p in rgba], ncols=ncols, pad=pad),
    }


def write_mpi_grids(rgba: Tensor, out_dir: str | Path) -> list[Path]:
    """``mpi_rgb.png``, ``mpi_alpha.png``, ``mpi_rgba.png`` of one MPI rgba [N, 4, T, T] (method §10)."""
    out = Path(out_dir)
    return [save_png(out / f"{name}.png", image) for name, image in mpi_grids(rgba).items()]


def write_single_image(
    gmpi: GMPI,
    mpi: MPI,
    out_dir: str | Path,
    yaw: float,
    pitch: float,
    *,
    size: int | None = None,
    out_of_bounds: OutOfBounds = "clamp",
) -> list[Path]:
    """``rendered.png`` (and ``rendered_depth.png``, ``rendered.json`` with the pose) at (yaw, pitch),
    plus the three plane grids (docs/method.md §10 single-image mode)."""
    out = Path(out_dir)
    ((image, depth),) = render_views(gmpi, mpi, [yaw], [pitch], size=size, out_of_bounds=out_of_bounds)
    cam = gmpi.config.camera
    written = [
        save_png(out / "rendered.png", to_uint8(image[0])),
        save_png(out / "rendered_depth.png", depth_to_uint8(depth[0], cam.d_near, cam.d_far)),
    ]
    pose = save_json(out / "rendered.json", {"yaw": yaw, "pitch": pitch, "n_planes": mpi.n_planes})
    return [*written, pose, *write_mpi_grids(mpi.rgba[0], out)]
