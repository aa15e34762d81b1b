"""Views of one generated MPI: plane generation in chunks, the single image, the sweeps and the plane
grids (spec §10).

The MPI of a seed is generated once and re-rendered for every frame; frames go through the renderer in
batches. Poses beyond the pose prior (the sweeps reach yaw ±0.5 and pitch ±0.3, the FFHQ prior only
±0.578 / ±0.254) render with ``out_of_bounds="clamp"`` by default: rays that miss the background plane
take its border texels instead of aborting the run as the original does (``sys.exit``, spec §3.5).

    >>> mpi = generate_mpi(gmpi, seed=0, n_planes=32)
    >>> yaws, pitches = sweep_poses("horizontal", 100)
    >>> rgb, depth = sweep_frames(gmpi, mpi, yaws, pitches)       # lists of uint8 frames
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from gmpi_core.mpi.render import OutOfBounds
from gmpi_core.networks import GMPIGenerator
from gmpi_core.networks.synthesis import assemble_mpi
from gmpi_core.pipeline import GMPI, MPI, plane_layout
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
# spec §10: horizontal = yaw linspace(0.5, −0.5) at pitch 0, vertical = pitch linspace(0.3, −0.3) at yaw 0
_SWEEP_RANGE = {"horizontal": (0.5, -0.5), "vertical": (0.3, -0.3)}
# spec §10: the single image's pose is yaw ~ U(−0.5, 0.5), pitch ~ U(−0.3, 0.3)
SINGLE_YAW_RANGE = (-0.5, 0.5)
SINGLE_PITCH_RANGE = (-0.3, 0.3)
GRID_COLUMNS = 8  # planes per row of the mpi_*.png grids (spec §10)
GRID_PAD = 2


# -- latents and planes ---------------------------------------------------------------------------------


@contextmanager
def zeroed_w_avg(generator: GMPIGenerator) -> Iterator[None]:
    """Temporarily set w̄ = 0, so ψ < 1 truncates toward w = 0 like the official renders, whose
    evaluation never restores the ``w_avg`` buffer (spec §9.1, §10). Restored on exit."""
    w_avg = generator.mapping.w_avg
    saved = w_avg.clone()
    w_avg.zero_()
    try:
        yield
    finally:
        w_avg.copy_(saved)


@torch.no_grad()
def mapping_latents(
    generator: GMPIGenerator, z: Tensor, truncation_psi: float = 1.0, zero_w_avg: bool = False
) -> Tensor:
    """z [B, z_dim] → ws [B, num_ws, w_dim] = w̄ + ψ (w − w̄), with w̄ the real running mean or 0."""
    with zeroed_w_avg(generator) if zero_w_avg else nullcontext():
        return generator.mapping(z, None, truncation_psi=truncation_psi, update_w_avg=False)


@contextmanager
def _seeded_noise(seed: int, device: torch.device) -> Iterator[None]:
    """A private RNG state seeded with ``seed``: every call inside draws the same per-layer noise."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        yield


def iter_plane_chunks(
    generator: GMPIGenerator,
    ws: Tensor,
    plane_depth_norm: Tensor,
    *,
    chunk_n_planes: int | None = None,
    noise_mode: str = "random",
    noise_seed: int = 0,
) -> Iterator[tuple[int, Tensor]]:
    """Yield (first plane index, planes [B, n, 4, R, R]) for consecutive chunks of ``plane_depth_norm`` [N].

    Every chunk is synthesised from the same ``ws`` with the same noise (drawn from an RNG seeded with
    ``noise_seed`` before each chunk), so alphas equal those of one call over all planes. Each chunk is a
    separate MPI to the network: its last plane carries the background colour, and its alpha is left as
    generated (``background_alpha_full=False``); :func:`generate_planes` reassembles the colours.
    """
    n = plane_depth_norm.numel()
    chunk = n if chunk_n_planes is None or chunk_n_planes <= 0 else chunk_n_planes
    if chunk < 2 and n > 1:
        raise ValueError(
            f"chunk_n_planes must be >= 2 (or <= 0 for all planes at once), got {chunk_n_planes}"
        )
    depth_norm = plane_depth_norm.to(ws.device)
    for start in range(0, n, chunk):
        with _seeded_noise(noise_seed, ws.device), torch.no_grad():
            planes = generator.synthesis(
                ws, depth_norm[start : start + chunk], noise_mode=noise_mode, background_alpha_full=False
            )
        yield start, planes


def generate_planes(
    generator: GMPIGenerator,
    ws: Tensor,
    plane_depth_norm: Tensor,
    *,
    chunk_n_planes: int | None = None,
    noise_mode: str = "random",
    noise_seed: int = 0,
    background_alpha_full: bool = True,
) -> Tensor:
    """MPI [B, N, 4, R, R] for ws [B, num_ws, w_dim] and z̃ [N], synthesised ``chunk_n_planes`` at a time.

    Unlike the original's chunked generation (spec §10 PITFALL: every chunk's last plane became an opaque
    background with its own noise), the result equals one call over all N planes: planes 0..N−2 get the
    shared colour, plane N−1 the background colour, alphas come from identically seeded chunks.
    """
    n = plane_depth_norm.numel()
    if chunk_n_planes is None or chunk_n_planes <= 0 or chunk_n_planes >= n:
        with _seeded_noise(noise_seed, ws.device), torch.no_grad():
            return generator.synthesis(
                ws,
                plane_depth_norm.to(ws.device),
                noise_mode=noise_mode,
                background_alpha_full=background_alpha_full,
            )
    alphas, rgb, background = [], None, None
    for start, planes in iter_plane_chunks(
        generator,
        ws,
        plane_depth_norm,
        chunk_n_planes=chunk_n_planes,
        noise_mode=noise_mode,
        noise_seed=noise_seed,
    ):
        if (
            start == 0
        ):  # the first chunk has >= 2 planes: its first carries the colour, its last the background
            rgb, background = planes[:, 0, :3], planes[:, -1, :3]
        alphas.append(planes[:, :, 3])
    assert rgb is not None and background is not None
    return assemble_mpi(rgb, background, torch.cat(alphas, 1), background_alpha_full)


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
    """The MPI [1, N, 4, R, R] of one seed: z from ``torch.manual_seed(seed)`` (spec §9.1), noise seeded
    with the same seed (reproducible renders), N = ``n_planes`` or the config's evaluation count."""
    n = n_planes or gmpi.config.eval.n_planes
    dhw, depth_norm = plane_layout(gmpi.config.camera, n)
    ws = mapping_latents(gmpi.generator, gmpi.latents([seed]), truncation_psi, zero_w_avg)
    rgba = generate_planes(
        gmpi.generator, ws, depth_norm, chunk_n_planes=chunk_n_planes, noise_mode=noise_mode, noise_seed=seed
    )
    return MPI(rgba=rgba, plane_dhw=dhw.to(rgba.device), depth_norm=depth_norm.to(rgba.device))


# -- poses and views ------------------------------------------------------------------------------------


def sweep_poses(sweep: Sweep, n_frames: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """(yaws [F], pitches [F]) of a sweep (spec §10): ``horizontal`` = yaw linspace(0.5, −0.5) at pitch 0,
    ``vertical`` = pitch linspace(0.3, −0.3) at yaw 0."""
    if sweep not in _SWEEP_RANGE:
        raise ValueError(f"unknown sweep '{sweep}'; choose one of {SWEEPS}")
    if n_frames < 1:
        raise ValueError(f"a sweep needs at least one frame, got n_frames={n_frames}")
    ramp = np.linspace(*_SWEEP_RANGE[sweep], n_frames)
    zeros = np.zeros(n_frames)
    return (ramp, zeros) if sweep == "horizontal" else (zeros, ramp)


def single_view_pose(seed: int) -> tuple[float, float]:
    """(yaw, pitch) ~ U(−0.5, 0.5) × U(−0.3, 0.3) (spec §10), from an RNG seeded with ``seed`` (the
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
    clip((D − d_near)/(d_far − d_near))·255 (spec §9.1, §10)."""
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
    ``mpi_alpha.png`` (spec §10 "normalised"); an all-zero plane stays 0."""
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
    """``mpi_rgb.png``, ``mpi_alpha.png``, ``mpi_rgba.png`` of one MPI rgba [N, 4, T, T] (spec §10)."""
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
    plus the three plane grids (spec §10 single-image mode)."""
    out = Path(out_dir)
    ((image, depth),) = render_views(gmpi, mpi, [yaw], [pitch], size=size, out_of_bounds=out_of_bounds)
    cam = gmpi.config.camera
    written = [
        save_png(out / "rendered.png", to_uint8(image[0])),
        save_png(out / "rendered_depth.png", depth_to_uint8(depth[0], cam.d_near, cam.d_far)),
    ]
    pose = save_json(out / "rendered.json", {"yaw": yaw, "pitch": pitch, "n_planes": mpi.n_planes})
    return [*written, pose, *write_mpi_grids(mpi.rgba[0], out)]
