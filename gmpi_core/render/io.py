"""Turning tensors into image and video files, written atomically (temp file + rename)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from gmpi_core.atomic import DIR_MODE, FILE_MODE, atomic_write

__all__ = [
    "DIR_MODE",
    "FILE_MODE",
    "depth_to_uint8",
    "grid",
    "save_bytes",
    "save_json",
    "save_png",
    "save_video",
    "to_uint8",
]


def to_uint8(image: Tensor, value_range: tuple[float, float] = (-1.0, 1.0)) -> np.ndarray:
    """[3|1,H,W] or [H,W] float → uint8 [H,W,3|1] with clip((x-lo)/(hi-lo))·255 truncated (method §9.1)."""
    lo, hi = value_range
    x = ((image.detach().float().cpu() - lo) / (hi - lo)).clamp(0, 1) * 255
    x = x.to(torch.uint8)
    if x.ndim == 3:
        x = x.permute(1, 2, 0)
    return x.numpy()


def depth_to_uint8(depth: Tensor, d_near: float, d_far: float) -> np.ndarray:
    """Depth [1,H,W] → uint8 [H,W] via clip((D - d_near) / (d_far - d_near)) · 255 (docs/method.md §10)."""
    return to_uint8(depth[0], value_range=(d_near, d_far))


def grid(images: Sequence[np.ndarray] | np.ndarray, ncols: int, pad: int = 0) -> np.ndarray:
    """Tile equally sized HxWxC uint8 images into rows of ``ncols``."""
    images = [im if im.ndim == 3 else im[..., None] for im in images]
    h, w, c = images[0].shape
    nrows = -(-len(images) // ncols)
    out = np.zeros((nrows * (h + pad) - pad, ncols * (w + pad) - pad, c), dtype=np.uint8)
    for i, im in enumerate(images):
        r, col = divmod(i, ncols)
        out[r * (h + pad) : r * (h + pad) + h, col * (w + pad) : col * (w + pad) + w] = im
    return out


def save_png(path: str | Path, image: np.ndarray) -> Path:
    """Write a uint8 HxW(xC) array as PNG; a crash never leaves a truncated file under ``path``."""
    pixels = image.squeeze(-1) if image.ndim == 3 and image.shape[-1] == 1 else image
    return atomic_write(path, lambda tmp: Image.fromarray(pixels).save(tmp, "PNG"), keep_suffix=True)


def save_bytes(path: str | Path, data: bytes) -> Path:
    """Write raw bytes; a crash never leaves a truncated file under ``path``."""
    return atomic_write(path, data, keep_suffix=True)


def save_json(path: str | Path, data: Any) -> Path:
    """Write ``data`` as indented JSON; a crash never leaves a truncated file under ``path``."""
    return atomic_write(path, json.dumps(data, indent=2) + "\n", keep_suffix=True)


def save_video(path: str | Path, frames: Sequence[np.ndarray], fps: int = 8, quality: float = 8) -> Path:
    """Write frames (uint8 HxWx3 or HxW) as MP4 (H.264 via imageio-ffmpeg, ``quality`` 0-10) or GIF, by the
    suffix. The original uses fps 8, quality 5 (docs/method.md §10). GIF: Pillow merges identical consecutive
    frames into one with the summed duration (playback timing is unchanged, the decoded frame count drops)."""
    import imageio.v2 as imageio

    frames = [
        f if f.ndim == 3 and f.shape[-1] == 3 else np.repeat(f.reshape(*f.shape[:2], 1), 3, -1)
        for f in frames
    ]

    def write(tmp: Path) -> None:
        if tmp.suffix.lower() == ".gif":
            gif_frames: list[Any] = list(frames)  # imageio's stubs want a list of ArrayLike
            imageio.mimsave(tmp, gif_frames, format="GIF", duration=1000 / fps, loop=0)
            return
        writer = imageio.get_writer(tmp, format="FFMPEG", fps=fps, quality=quality, macro_block_size=1)
        try:
            for f in frames:
                writer.append_data(f)
        finally:
            writer.close()

    return atomic_write(path, write, keep_suffix=True)  # ffmpeg picks the container by the suffix
