"""Mesh extraction: the alpha volume of an MPI with uniformly spaced planes, marching cubes, PLY (§9.6).

The volume follows the original's layout: T = texture size voxels along x and y (the texel centres of
the confined plane box, docs/method.md §2.4), n_act = ⌊min(1, (d_far − d_near)/max(h_c, w_c))·T⌋ planes
uniformly spaced in [d_near, d_far] generated with ``background_alpha_full=False``, and T − n_act all-zero
planes prepended in front, so the volume is T³ and the surface closes toward the camera.

Differences from the original, on purpose:

* chunks of planes are generated from the same latents *and* the same noise (the original's chunks each
  drew their own noise, docs/method.md §10 PITFALL), so the volume does not depend on ``chunk_n_planes``;
* vertices are placed at the true world positions of the voxels — x, y at the texel centres, z at the
  generated plane depths (zero planes continue the spacing in front) — where the original scales index
  coordinates by ``verts / T · (max − min) + min``, off by up to one voxel;
* smoothing is explicit: ``"gaussian"`` blurs ``alpha − 0.5`` with σ voxels (PyMCubes' ``smooth`` does
  that with σ = 3 for arrays above 512³ and a constrained smoother on the binary mask below; which one
  runs depends on the PyMCubes version, docs/method.md §9.6), or ``"none"``. The surface is the ``level`` =
  0.01 iso-surface of the (smoothed) ``alpha − 0.5`` field as in the original, i.e. alpha ≈ 0.51 unsmoothed.

Marching cubes comes from scikit-image (``pip install scikit-image``); faces are oriented so that their
normals (right-hand rule on world x, y, z) point out of the occupied region.

    >>> path = extract_mesh(gmpi, seed=0, out_dir="out")            # out/mesh_1.0.ply
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from gmpi_core.config import CameraConfig
from gmpi_core.mpi.planes import normalized_depth, plane_depths, plane_layout
from gmpi_core.pipeline import GMPI
from gmpi_core.render.io import save_bytes

__all__ = [
    "SMOOTHINGS",
    "Mesh",
    "VoxelGrid",
    "alpha_volume",
    "extract_mesh",
    "mesh_from_alpha",
    "mesh_grid",
    "read_ply",
    "write_ply",
]

Smoothing = Literal["gaussian", "none"]
SMOOTHINGS = ("gaussian", "none")
MESH_LEVEL = 0.01  # docs/method.md §9.6: marching_cubes(smooth(alpha), 0.01)
DEFAULT_SIGMA = 1.0  # voxels; PyMCubes' large-array branch uses 3 (docs/method.md §9.6)


@dataclass(frozen=True)
class VoxelGrid:
    """World placement of a volume indexed (z, y, x): voxel (i, j, k) is at origin + (k·dx, j·dy, i·dz)."""

    shape: tuple[int, int, int]  # (n_z, n_y, n_x)
    origin: tuple[float, float, float]  # world (x, y, z) of voxel (0, 0, 0)
    spacing: tuple[float, float, float]  # (dx, dy, dz)

    def to_world(self, index_zyx: np.ndarray) -> np.ndarray:
        """Continuous voxel indices [V, 3] ordered (z, y, x) → world points [V, 3] ordered (x, y, z)."""
        xyz = np.asarray(index_zyx, dtype=np.float64)[:, ::-1]
        return np.asarray(self.origin) + xyz * np.asarray(self.spacing)


@dataclass
class Mesh:
    """A triangle mesh in world units (docs/method.md §1.1 axes: +X right, +Y down, +Z forward)."""

    vertices: np.ndarray  # [V, 3] float32 (x, y, z)
    faces: np.ndarray  # [F, 3] int32, normals (right-hand rule) point out of the occupied region
    colors: np.ndarray | None = None  # [V, 3] uint8 RGB


# -- the volume --------------------------------------------------------------------------------------------


def mesh_grid(camera: CameraConfig, resolution: int) -> tuple[VoxelGrid, np.ndarray]:
    """The T³ voxel grid of docs/method.md §9.6 and the z̃ [n_act] of its generated (uniformly spaced) planes.

    Voxel columns/rows are the texel centres of the confined box (x = −w_c/2 + k·w_c/(T−1)); the last n_act
    slices are the planes linspace(d_near, d_far, n_act), the T − n_act slices before them are the zero
    planes, continuing the same spacing toward the camera.
    """
    if resolution < 2:
        raise ValueError(f"the mesh resolution (texture size) must be >= 2, got {resolution}")
    dhw, _ = plane_layout(camera, 2)
    box_h, box_w = float(dhw[0, 1]), float(dhw[0, 2])
    n_act = math.floor(min(1.0, (camera.d_far - camera.d_near) / max(box_h, box_w)) * resolution)
    if n_act < 2:
        raise ValueError(
            f"only {n_act} plane(s) fit the depth range at resolution {resolution}; use a larger resolution"
        )
    dz = (camera.d_far - camera.d_near) / (n_act - 1)
    grid = VoxelGrid(
        shape=(resolution, resolution, resolution),
        origin=(-box_w / 2, -box_h / 2, camera.d_far - (resolution - 1) * dz),
        spacing=(box_w / (resolution - 1), box_h / (resolution - 1), dz),
    )
    depths = plane_depths(camera.d_near, camera.d_far, n_act, method="uniform")  # method §2.2: always uniform
    return grid, normalized_depth(depths, camera.d_near, camera.d_far).numpy()


@torch.no_grad()
def alpha_volume(
    gmpi: GMPI,
    seed: int,
    *,
    truncation_psi: float = 1.0,
    zero_w_avg: bool = False,
    chunk_n_planes: int | None = 64,
    noise_mode: str = "random",
) -> tuple[np.ndarray, np.ndarray, VoxelGrid]:
    """(alpha [T, T, T] float32 indexed (z, y, x), colour [T, T, 3] float32 in [0, 1], grid) of one seed.

    Planes come ``chunk_n_planes`` at a time (≤ 0 or None: all at once) with identical noise, seeded like
    the renders (noise seed = ``seed``); the colour is the RGB shared by the non-background planes.
    """
    resolution = gmpi.config.generator.img_resolution
    grid, depth_norm = mesh_grid(gmpi.config.camera, resolution)
    n_zero = resolution - depth_norm.size
    alpha = np.zeros(grid.shape, dtype=np.float32)
    colour: np.ndarray | None = None
    for start, planes in gmpi.iter_planes(
        torch.from_numpy(depth_norm),
        [seed],
        chunk_n_planes=chunk_n_planes,
        truncation_psi=truncation_psi,
        noise_mode=noise_mode,
        generator=gmpi.noise_generator(seed),
        zero_w_avg=zero_w_avg,
    ):
        alpha[n_zero + start : n_zero + start + planes.shape[1]] = planes[0, :, 3].float().cpu().numpy()
        if start == 0:  # first plane of a >= 2-plane chunk: the shared colour, not the background's
            colour = planes[0, 0, :3].float().permute(1, 2, 0).cpu().numpy()
    assert colour is not None
    return alpha, colour, grid


# -- marching cubes ---------------------------------------------------------------------------------------


def _marching_cubes(field: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
    try:
        from skimage.measure import marching_cubes
    except ImportError:
        raise ImportError(
            "mesh extraction needs scikit-image for marching cubes: pip install scikit-image"
        ) from None
    verts, faces, _, _ = marching_cubes(field, level=level, allow_degenerate=False)
    return verts, faces


def mesh_from_alpha(
    alpha: np.ndarray,
    grid: VoxelGrid,
    *,
    smoothing: Smoothing = "gaussian",
    sigma: float = DEFAULT_SIGMA,
    level: float = MESH_LEVEL,
    colour: np.ndarray | None = None,
) -> Mesh:
    """Marching cubes on smooth(alpha − 0.5) at ``level`` for alpha [n_z, n_y, n_x] (docs/method.md §9.6).

    ``colour`` [n_y, n_x, 3] in [0, 1] (optional) is sampled bilinearly at each vertex's (x, y) texel.
    """
    if smoothing not in SMOOTHINGS:
        raise ValueError(f"unknown smoothing '{smoothing}'; choose one of {SMOOTHINGS}")
    if alpha.shape != grid.shape:
        raise ValueError(f"alpha volume {alpha.shape} does not match the grid {grid.shape}")
    field = alpha.astype(np.float32) - 0.5
    if smoothing == "gaussian":
        from scipy.ndimage import gaussian_filter

        field = gaussian_filter(field, sigma=sigma)
    if not field.min() < level < field.max():
        raise ValueError(
            f"the {smoothing}-smoothed alpha − 0.5 spans [{field.min():.3g}, {field.max():.3g}], so it has "
            f"no iso-surface at level {level}: the MPI is empty or fully opaque at this threshold"
        )
    verts, faces = _marching_cubes(field, level)
    # Reversing the axis order (z, y, x) → (x, y, z) flips handedness, which turns scikit-image's faces
    # (normals toward higher values in index order) into outward-facing ones; tests check it on a sphere.
    mesh = Mesh(vertices=grid.to_world(verts).astype(np.float32), faces=faces.astype(np.int32))
    if colour is not None:
        from scipy.ndimage import map_coordinates

        coords = verts[:, 1:].T  # (y, x) texel coordinates
        rgb = np.stack(
            [map_coordinates(colour[..., c], coords, order=1, mode="nearest") for c in range(3)], -1
        )
        mesh.colors = np.round(np.clip(rgb, 0, 1) * 255).astype(np.uint8)
    return mesh


# -- PLY ---------------------------------------------------------------------------------------------------


def write_ply(path: str | Path, mesh: Mesh) -> Path:
    """Binary little-endian PLY: float x, y, z [+ uchar red, green, blue] per vertex, int triangles."""
    v = np.ascontiguousarray(mesh.vertices, dtype="<f4")
    fields = [("x", "<f4"), ("y", "<f4"), ("z", "<f4")]
    if mesh.colors is not None:
        fields += [("red", "u1"), ("green", "u1"), ("blue", "u1")]
    vertices = np.empty(len(v), dtype=fields)
    vertices["x"], vertices["y"], vertices["z"] = v[:, 0], v[:, 1], v[:, 2]
    if mesh.colors is not None:
        vertices["red"], vertices["green"], vertices["blue"] = mesh.colors.T
    faces = np.empty(len(mesh.faces), dtype=[("n", "u1"), ("v", "<i4", (3,))])
    faces["n"], faces["v"] = 3, mesh.faces
    props = "".join(f"property {'float' if t == '<f4' else 'uchar'} {name}\n" for name, t in fields)
    header = (
        "ply\nformat binary_little_endian 1.0\n"
        "comment GMPI mesh, world units (+X right, +Y down, +Z forward)\n"
        f"element vertex {len(vertices)}\n{props}"
        f"element face {len(faces)}\nproperty list uchar int vertex_indices\nend_header\n"
    )
    return save_bytes(path, header.encode("ascii") + vertices.tobytes() + faces.tobytes())


def read_ply(path: str | Path) -> Mesh:
    """Read a PLY written by :func:`write_ply` (binary little-endian, triangles, optional uchar RGB)."""
    data = Path(path).read_bytes()
    marker = b"end_header\n"
    end = data.find(marker)
    if not data.startswith(b"ply\n") or end < 0:
        raise ValueError(f"{path} is not a PLY file (no 'ply' magic or 'end_header')")
    header = data[:end].decode("ascii").splitlines()
    if "format binary_little_endian 1.0" not in header:
        raise ValueError(f"{path}: only binary_little_endian PLY is supported by read_ply")
    counts, props, element = {}, [], None
    for line in header:
        words = line.split()
        if words[0] == "element":
            element, counts[words[1]] = words[1], int(words[2])
        elif words[0] == "property" and element == "vertex":
            props.append((words[2], {"float": "<f4", "uchar": "u1"}[words[1]]))
    vertices = np.frombuffer(data, dtype=props, count=counts["vertex"], offset=end + len(marker))
    faces = np.frombuffer(
        data,
        dtype=[("n", "u1"), ("v", "<i4", (3,))],
        count=counts["face"],
        offset=end + len(marker) + vertices.nbytes,
    )
    if faces.size and not np.all(faces["n"] == 3):
        raise ValueError(f"{path}: only triangle faces are supported by read_ply")
    names = [name for name, _ in props]
    colors = np.stack([vertices[c] for c in ("red", "green", "blue")], -1) if "red" in names else None
    xyz = np.stack([vertices[c] for c in ("x", "y", "z")], -1).astype(np.float32)
    return Mesh(vertices=xyz, faces=faces["v"].astype(np.int32), colors=colors)


# -- everything --------------------------------------------------------------------------------------------


def extract_mesh(
    gmpi: GMPI,
    seed: int,
    out_dir: str | Path,
    *,
    truncation_psi: float = 1.0,
    zero_w_avg: bool = False,
    chunk_n_planes: int | None = 64,
    noise_mode: str = "random",
    smoothing: Smoothing = "gaussian",
    sigma: float = DEFAULT_SIGMA,
    level: float = MESH_LEVEL,
    colors: bool = True,
) -> Path:
    """Alpha volume → marching cubes → ``out_dir/mesh_{ψ}.ply`` (method §9.6) with optional vertex colours."""
    alpha, colour, grid = alpha_volume(
        gmpi,
        seed,
        truncation_psi=truncation_psi,
        zero_w_avg=zero_w_avg,
        chunk_n_planes=chunk_n_planes,
        noise_mode=noise_mode,
    )
    mesh = mesh_from_alpha(
        alpha, grid, smoothing=smoothing, sigma=sigma, level=level, colour=colour if colors else None
    )
    return write_ply(Path(out_dir) / f"mesh_{float(truncation_psi)}.ply", mesh)
