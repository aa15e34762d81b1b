"""Sweep videos of one MPI: RGB and depth, MP4 (H.264 via imageio-ffmpeg) and GIF (docs/method.md §10).

Files are named like the original's: ``video_rgb_{horizontal|vertical}.mp4`` and
``video_depth_{horizontal|vertical}.mp4`` (the README's ``video_rgb.mp4`` is not what it writes), plus
the same names with ``.gif``. fps 8 as the original; MP4 quality 5 as the original (0-10 scale).

    >>> write_sweep_videos(gmpi, mpi, "out", "horizontal", n_frames=100)
    [PosixPath('out/video_rgb_horizontal.mp4'), PosixPath('out/video_rgb_horizontal.gif'), ...]
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from gmpi_core.mpi.render import OutOfBounds
from gmpi_core.pipeline import GMPI, MPI
from gmpi_core.render.io import save_video
from gmpi_core.render.views import Sweep, sweep_frames, sweep_poses

__all__ = ["VIDEO_FORMATS", "video_name", "write_sweep_videos"]

VIDEO_FORMATS = ("mp4", "gif")
VIDEO_FPS = 8  # docs/method.md §10
VIDEO_QUALITY = 5  # docs/method.md §10 (imageio-ffmpeg quality, 0-10)


def video_name(kind: str, sweep: Sweep, fmt: str) -> str:
    """``video_{rgb|depth}_{horizontal|vertical}.{mp4|gif}`` (docs/method.md §10)."""
    return f"video_{kind}_{sweep}.{fmt}"


def write_sweep_videos(
    gmpi: GMPI,
    mpi: MPI,
    out_dir: str | Path,
    sweep: Sweep,
    *,
    n_frames: int = 100,
    formats: Sequence[str] = VIDEO_FORMATS,
    fps: int = VIDEO_FPS,
    quality: float = VIDEO_QUALITY,
    size: int | None = None,
    batch_size: int = 16,
    out_of_bounds: OutOfBounds = "clamp",
) -> list[Path]:
    """Render the ``sweep`` of one MPI ([1, N, 4, T, T]) and write its RGB and depth videos in ``formats``."""
    unknown = [f for f in formats if f not in VIDEO_FORMATS]
    if unknown or not formats:
        raise ValueError(f"unknown video format(s) {unknown or list(formats)}; choose from {VIDEO_FORMATS}")
    yaws, pitches = sweep_poses(sweep, n_frames)
    rgb, depth = sweep_frames(
        gmpi, mpi, yaws, pitches, size=size, batch_size=batch_size, out_of_bounds=out_of_bounds
    )
    out = Path(out_dir)
    written = []
    for kind, frames in (("rgb", rgb), ("depth", depth)):
        for fmt in formats:
            written.append(save_video(out / video_name(kind, sweep, fmt), frames, fps=fps, quality=quality))
    return written
