"""Turning tensors into image and video files, written atomically (temp file + rename)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor


def to_uint8(image: Tensor, value_range: tuple[float, float] = (-1.0, 1.0)) -> np.ndarray:
    """[3|1,H,W] or [H,W] float → uint8 [H,W,3|1] with clip((x-lo)/(hi-lo))·255 truncated (spec §9.1)."""
    lo, hi = value_range
    x = ((image.detach().float().cpu() - lo) / (hi - lo)).clamp(0, 1) * 255
    x = x.to(torch.uint8)
    if x.ndim == 3:
        x = x.permute(1, 2, 0)
    return x.numpy()


def depth_to_uint8(depth: Tensor, d_near: float, d_far: float) -> np.ndarray:
    """Depth [1,H,W] → uint8 [H,W] via clip((D - d_near) / (d_far - d_near)) · 255 (spec §10)."""
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


def _atomic_target(path: Path) -> tuple[Path, Path]:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    return path, Path(tmp)


def save_png(path: str | Path, image: np.ndarray) -> Path:
    """Write a uint8 HxW(xC) array as PNG; a crash never leaves a truncated file under ``path``."""
    final, tmp = _atomic_target(Path(path))
    try:
        Image.fromarray(image.squeeze(-1) if image.ndim == 3 and image.shape[-1] == 1 else image).save(tmp, "PNG")
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
    return final


def save_video(path: str | Path, frames: Sequence[np.ndarray], fps: int = 8) -> Path:
    """Write frames (uint8 HxWx3 or HxW) as MP4 (H.264 via imageio-ffmpeg) or GIF, by the suffix."""
    import imageio.v2 as imageio

    final, tmp = _atomic_target(Path(path))
    frames = [f if f.ndim == 3 and f.shape[-1] == 3 else np.repeat(f.reshape(*f.shape[:2], 1), 3, -1) for f in frames]
    try:
        if final.suffix.lower() == ".gif":
            imageio.mimsave(tmp, frames, format="GIF", duration=1000 / fps, loop=0)
        else:
            writer = imageio.get_writer(tmp, format="FFMPEG", fps=fps, quality=8, macro_block_size=1)
            try:
                for f in frames:
                    writer.append_data(f)
            finally:
                writer.close()
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
    return final
