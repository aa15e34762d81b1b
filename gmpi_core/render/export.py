"""MPI export for the browser viewer: RGBA planes as WebP/PNG plus ``mpi.json`` (docs/method.md §1-§3).

Layout ``"planes"`` (default)::

    out_dir/mpi.json
    out_dir/planes/plane_000.webp ... plane_{N-1:03d}.webp      RGBA, not premultiplied, plane 0 nearest

Layout ``"atlas"``: one sprite sheet ``out_dir/atlas.webp`` (``columns`` planes per row, row-major, no
gutter) plus ``mpi.json`` whose planes carry their ``rect`` [x, y, w, h] in the sheet.

``mpi.json`` holds everything a viewer needs to reproduce :func:`gmpi_core.mpi.render.render_mpi`: plane
depths and extents, the texture size, the camera intrinsics and pose sphere, and the conventions as text.
Textures are ``round(255·x)`` of the renderer's [0, 1] values; WebP is written lossless with ``exact``
(RGB under zero alpha is kept: bilinear sampling of non-premultiplied RGBA reads it). The folder is
written to a temporary sibling and renamed into place, so a reader never sees a half-written export.

    >>> export_mpi(mpi, gmpi.config.camera, "out/export")            # out/export/mpi.json, planes/*.webp
    >>> rgba, plane_dhw, meta = load_mpi_export("out/export")        # [1, N, 4, T, T], [N, 3], dict
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, features
from torch import Tensor

from gmpi_core.atomic import staged_dir
from gmpi_core.camera import focal_from_fov
from gmpi_core.config import CameraConfig
from gmpi_core.pipeline import MPI
from gmpi_core.render.io import DIR_MODE, grid, save_json

__all__ = ["EXPORT_VERSION", "IMAGE_FORMATS", "LAYOUTS", "export_mpi", "load_mpi_export"]

ImageFormat = Literal["webp", "png"]
Layout = Literal["planes", "atlas"]
IMAGE_FORMATS = ("webp", "png")
LAYOUTS = ("planes", "atlas")
EXPORT_VERSION = 1
MANIFEST = "mpi.json"
WEBP_MAX_SIDE = 16383  # the WebP format's limit on either image dimension

CONVENTIONS = {
    "world_axes": "+X right, +Y down, +Z forward (away from the canonical camera); right-handed",
    "plane_order": "plane 0 is the nearest; the last plane is the background, opaque for a generated MPI",
    "plane_geometry": "plane i is the rectangle z = depth, |x| <= width/2, |y| <= height/2 (world units)",
    "texels": (
        "texel (row j, column k) of a T x T texture has its centre at x = (-1 + 2k/(T-1)) * width/2, "
        "y = (-1 + 2j/(T-1)) * height/2 (align_corners=True); image row 0 is the top (-Y)"
    ),
    "colour": (
        "RGBA, not premultiplied; 8-bit value / 255 is the renderer's [0, 1] value; RGB and alpha are "
        "sampled bilinearly and independently, 0 outside the plane"
    ),
    "compositing": (
        "front to back: w_i = alpha_i * prod_{j<i} (1 - alpha_j), colour = sum_i w_i c_i (no renormalisation,"
        " no implicit background), depth = sum_i w_i z_i with z_i the camera z-depth of the hit"
    ),
    "camera_pose": (
        "yaw t, pitch p on the sphere of radius r about (0, 0, c): centre C = (r|cos p| sin t, -r sin p, "
        "c - r|cos p| cos t), looking at (0, 0, c) with zero roll (x_cam = normalize((0,1,0) x z_cam)); "
        "yaw = pitch = 0 with c = r is the identity pose"
    ),
    "intrinsics": (
        "pinhole, square pixels, focal f = W / (2 tan(fov/2)) from the horizontal fov, principal point "
        "(W/2, H/2) in pixel-edge coordinates, rays through pixel centres (u + 0.5, v + 0.5)"
    ),
    "atlas": "rect = [x, y, w, h] in pixels of the sheet; clamp sampling to half a texel inside the rect",
}


def _quantize(rgba: Tensor) -> np.ndarray:
    """[N, 4, T, T] in [0, 1] → uint8 [N, T, T, 4] by round(255·x)."""
    return (rgba.detach().float().cpu().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def _save_image(path: Path, image: np.ndarray, fmt: ImageFormat) -> None:
    if fmt == "webp":
        Image.fromarray(image, "RGBA").save(path, "WEBP", lossless=True, exact=True, quality=100)
    else:
        Image.fromarray(image, "RGBA").save(path, "PNG")


def _check_target(out: Path) -> None:
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / MANIFEST).exists())):
        raise FileExistsError(
            f"{out} exists and is not an MPI export (no {MANIFEST}); choose a new or empty folder"
        )


def export_mpi(
    mpi: MPI,
    camera: CameraConfig,
    out_dir: str | Path,
    *,
    fmt: ImageFormat = "webp",
    size: int | None = None,
    layout: Layout = "planes",
    index: int = 0,
    atlas_columns: int = 8,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write MPI ``index`` of the batch (rgba [B, N, 4, T, T]) for the browser viewer; returns ``out_dir``.

    ``size`` resizes the textures to size × size (bilinear, align_corners=True: the corner texels stay on
    the plane corners); ``extra`` (JSON-able, e.g. seed and ψ) is stored under ``"source"``.
    """
    if fmt not in IMAGE_FORMATS:
        raise ValueError(f"unknown image format '{fmt}'; choose one of {IMAGE_FORMATS}")
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout '{layout}'; choose one of {LAYOUTS}")
    if fmt == "webp" and not features.check("webp"):
        raise RuntimeError(
            "this Pillow build cannot write WebP; export with fmt='png' or install a Pillow with WebP"
        )
    if not 0 <= index < mpi.rgba.shape[0]:
        raise ValueError(f"index {index} is outside the batch of {mpi.rgba.shape[0]} MPIs")
    rgba = mpi.rgba[index]
    if size is not None:
        if size < 2:
            raise ValueError(f"size must be >= 2 texels, got {size}")
        rgba = F.interpolate(rgba.float(), size=(size, size), mode="bilinear", align_corners=True)
    textures = _quantize(rgba)
    n, tex = textures.shape[0], textures.shape[1]
    columns = max(1, min(atlas_columns, n))
    rows = math.ceil(n / columns)
    if layout == "atlas" and fmt == "webp" and max(columns, rows) * tex > WEBP_MAX_SIDE:
        raise ValueError(
            f"a {columns} x {rows} atlas of {tex}² textures exceeds WebP's {WEBP_MAX_SIDE} px limit; "
            "use layout='planes', fmt='png', fewer atlas_columns/planes or a smaller size"
        )

    dhw = mpi.plane_dhw.detach().double().cpu().tolist()
    planes: list[dict[str, Any]] = []
    for i, (depth, height, width) in enumerate(dhw):
        entry: dict[str, Any] = {"index": i, "depth": depth, "height": height, "width": width}
        if layout == "planes":
            entry["file"] = f"planes/plane_{i:03d}.{fmt}"
        else:
            row, col = divmod(i, columns)
            entry["file"] = f"atlas.{fmt}"
            entry["rect"] = [col * tex, row * tex, tex, tex]
        planes.append(entry)
    manifest: dict[str, Any] = {
        "format": "gmpi-mpi",
        "version": EXPORT_VERSION,
        "n_planes": n,
        "texture_size": tex,
        "layout": layout,
        "image_format": fmt,
        "planes": planes,
        "camera": {
            "fov_deg": camera.fov_deg,
            "focal_over_width": focal_from_fov(camera.fov_deg, 1),
            "sphere_center_z": camera.sphere_center_z,
            "sphere_radius": camera.sphere_radius,
            "yaw_range": list(camera.yaw_range),
            "pitch_range": list(camera.pitch_range),
            "d_near": camera.d_near,
            "d_far": camera.d_far,
        },
        "conventions": CONVENTIONS,
    }
    if layout == "atlas":
        manifest["atlas"] = {"file": f"atlas.{fmt}", "columns": columns, "rows": rows}
    if extra:
        manifest["source"] = extra

    out = Path(out_dir)
    _check_target(out)
    with staged_dir(out, mode=DIR_MODE) as tmp:  # swapped in by replace_dir when complete
        if layout == "planes":
            (tmp / "planes").mkdir()
            for entry, texture in zip(planes, textures):
                _save_image(tmp / entry["file"], texture, fmt)
        else:
            _save_image(tmp / f"atlas.{fmt}", grid(list(textures), ncols=columns), fmt)
        save_json(tmp / MANIFEST, manifest)
    return out


def load_mpi_export(path: str | Path) -> tuple[Tensor, Tensor, dict[str, Any]]:
    """Read an export back: (rgba [1, N, 4, T, T] float32 in [0, 1], plane_dhw [N, 3] float32, manifest)."""
    root = Path(path)
    manifest = json.loads((root / MANIFEST).read_text(encoding="utf-8"))
    if manifest.get("format") != "gmpi-mpi" or manifest.get("version") != EXPORT_VERSION:
        raise ValueError(
            f"{root / MANIFEST} is not a version-{EXPORT_VERSION} gmpi-mpi export "
            f"(format {manifest.get('format')!r}, version {manifest.get('version')!r})"
        )
    sheets: dict[str, np.ndarray] = {}
    textures = []
    for entry in manifest["planes"]:
        if entry["file"] not in sheets:
            with Image.open(root / entry["file"]) as im:
                sheets[entry["file"]] = np.asarray(im.convert("RGBA"))
        image = sheets[entry["file"]]
        if "rect" in entry:
            x, y, w, h = entry["rect"]
            image = image[y : y + h, x : x + w]
        textures.append(image)
    rgba = torch.from_numpy(np.stack(textures)).permute(0, 3, 1, 2).float().div(255)
    dhw = torch.tensor(
        [[p["depth"], p["height"], p["width"]] for p in manifest["planes"]], dtype=torch.float32
    )
    return rgba[None], dhw, manifest
