"""Mesh extraction: analytic alpha volumes give surfaces where they should, PLY round trip (method §9.6)."""

import math

import numpy as np
import pytest
import torch

from gmpi_core.config import preset
from gmpi_core.pipeline import GMPI
from gmpi_core.render.mesh import (
    Mesh,
    VoxelGrid,
    alpha_volume,
    extract_mesh,
    mesh_from_alpha,
    mesh_grid,
    read_ply,
    write_ply,
)

pytest.importorskip("skimage", reason="marching cubes needs scikit-image: pip install scikit-image")

# anisotropic voxels so that a mix-up of axes or spacings shows
GRID = VoxelGrid(shape=(24, 20, 16), origin=(-0.4, -0.5, 0.9), spacing=(0.05, 0.05, 0.02))


def _world_axes(grid):
    (nz, ny, nx), (x0, y0, z0), (dx, dy, dz) = grid.shape, grid.origin, grid.spacing
    z, y, x = np.meshgrid(
        z0 + dz * np.arange(nz), y0 + dy * np.arange(ny), x0 + dx * np.arange(nx), indexing="ij"
    )
    return x, y, z


def test_a_single_opaque_plane_gives_vertices_within_one_voxel_of_its_depth():
    alpha = np.zeros(GRID.shape, dtype=np.float32)
    alpha[10] = 1.0  # one opaque plane at slice 10
    depth = GRID.origin[2] + 10 * GRID.spacing[2]
    mesh = mesh_from_alpha(alpha, GRID, smoothing="none")
    z = mesh.vertices[:, 2]
    assert len(z) > 0 and np.all(np.abs(z - depth) < GRID.spacing[2])
    assert (z < depth).any() and (z > depth).any()  # both faces of the plane
    x, y = mesh.vertices[:, 0], mesh.vertices[:, 1]
    assert x.min() == pytest.approx(-0.4, abs=1e-6) and x.max() == pytest.approx(-0.4 + 15 * 0.05, abs=1e-6)
    assert y.min() == pytest.approx(-0.5, abs=1e-6) and y.max() == pytest.approx(-0.5 + 19 * 0.05, abs=1e-6)


@pytest.mark.parametrize(("smoothing", "tolerance_voxels"), [("none", 0.3), ("gaussian", 1.0)])
def test_a_sphere_gives_vertices_at_its_radius_and_outward_faces(smoothing, tolerance_voxels):
    x, y, z = _world_axes(GRID)
    centre, radius = np.array([-0.02, -0.03, 1.13]), 0.17
    r = np.sqrt((x - centre[0]) ** 2 + (y - centre[1]) ** 2 + (z - centre[2]) ** 2)
    ramp = 0.03  # soft occupancy: alpha = 0.5 on the sphere, 1 inside, 0 outside
    alpha = np.clip(0.5 + (radius - r) / ramp, 0, 1).astype(np.float32)
    mesh = mesh_from_alpha(alpha, GRID, smoothing=smoothing, sigma=1.0)
    radii = np.linalg.norm(mesh.vertices - centre, axis=1)
    # unsmoothed, the level alpha − 0.5 = 0.01 lies 0.01 · ramp inside the sphere
    assert np.abs(radii - radius).max() < tolerance_voxels * max(GRID.spacing)
    a, b, c = (mesh.vertices[mesh.faces[:, k]] for k in range(3))
    normals = np.cross(b - a, c - a)
    outward = np.einsum("fi,fi->f", normals, (a + b + c) / 3 - centre)
    assert np.all(outward > 0)


def test_ply_round_trip_keeps_vertices_faces_and_colours(tmp_path):
    rng = np.random.default_rng(0)
    mesh = Mesh(
        vertices=rng.normal(size=(7, 3)).astype(np.float32),
        faces=rng.integers(0, 7, size=(5, 3)).astype(np.int32),
        colors=rng.integers(0, 256, size=(7, 3)).astype(np.uint8),
    )
    path = write_ply(tmp_path / "m.ply", mesh)
    data = path.read_bytes()
    header = data[: data.index(b"end_header\n") + len(b"end_header\n")].decode("ascii")
    assert "element vertex 7\n" in header and "element face 5\n" in header
    assert "format binary_little_endian 1.0" in header
    assert len(data) == len(header) + 7 * (3 * 4 + 3) + 5 * (1 + 3 * 4)
    back = read_ply(path)
    assert np.array_equal(back.vertices, mesh.vertices) and np.array_equal(back.faces, mesh.faces)
    assert np.array_equal(back.colors, mesh.colors)
    write_ply(tmp_path / "plain.ply", Mesh(mesh.vertices, mesh.faces))
    assert read_ply(tmp_path / "plain.ply").colors is None


def test_mesh_grid_follows_the_original_volume_for_ffhq256():
    cam = preset("FFHQ256").camera
    grid, depth_norm = mesh_grid(cam, 256)
    box = 2 * 1.12 * math.tan(math.radians(12.6) / 2)  # confined extent h_c = w_c (docs/method.md §2.3)
    assert depth_norm.size == math.floor(0.17 / box * 256) == 175  # docs/method.md §9.6 example
    assert depth_norm[0] == 0 and depth_norm[-1] == pytest.approx(1)
    assert grid.shape == (256, 256, 256)
    first_plane = grid.origin[2] + (256 - 175) * grid.spacing[2]
    last_plane = grid.origin[2] + 255 * grid.spacing[2]
    assert first_plane == pytest.approx(0.95) and last_plane == pytest.approx(1.12)
    assert grid.origin[0] == pytest.approx(-box / 2, rel=1e-5) and grid.spacing[0] == pytest.approx(
        box / 255, rel=1e-5
    )


def test_alpha_volume_does_not_depend_on_the_chunk_size_and_has_zero_planes_in_front():
    gmpi = GMPI.random("synthetic32", seed=0)
    whole, colour, _ = alpha_volume(gmpi, seed=2, chunk_n_planes=0)
    chunked, colour_chunked, _ = alpha_volume(gmpi, seed=2, chunk_n_planes=5)
    n_act = math.floor(0.17 / (2 * 1.12 * math.tan(math.radians(12.6) / 2)) * 32)
    assert np.all(whole[: 32 - n_act] == 0) and whole[32 - n_act :].max() > 0
    assert np.allclose(whole, chunked, atol=1e-6) and np.array_equal(colour, colour_chunked)
    # the last generated plane keeps its generated alpha (background_alpha_full=False)
    assert not np.all(whole[-1] == 1)
    assert colour.shape == (32, 32, 3) and np.all((colour >= 0) & (colour <= 1))


def test_extract_mesh_writes_a_coloured_ply_named_by_psi_inside_the_volume(tmp_path):
    gmpi = GMPI.random("synthetic32", seed=0)
    path = extract_mesh(gmpi, seed=1, out_dir=tmp_path, truncation_psi=0.7, chunk_n_planes=8)
    assert path.name == "mesh_0.7.ply"
    mesh = read_ply(path)
    assert len(mesh.faces) > 0 and mesh.colors is not None
    grid, _ = mesh_grid(gmpi.config.camera, 32)
    lo = np.array(grid.origin)
    hi = lo + (np.array(grid.shape[::-1]) - 1) * np.array(grid.spacing)
    assert np.all(mesh.vertices >= lo - 1e-5) and np.all(mesh.vertices <= hi + 1e-5)


def test_an_empty_volume_is_a_clear_error():
    with pytest.raises(ValueError, match="no iso-surface"):
        mesh_from_alpha(np.zeros(GRID.shape, dtype=np.float32), GRID, smoothing="none")
    with pytest.raises(ValueError, match="unknown smoothing"):
        mesh_from_alpha(np.zeros(GRID.shape, dtype=np.float32), GRID, smoothing="box")  # type: ignore[arg-type]


def test_alpha_volume_planes_match_the_generator_at_uniform_depths():
    gmpi = GMPI.random("synthetic32", seed=0)
    alpha, _, _ = alpha_volume(gmpi, seed=4, chunk_n_planes=0)
    _, depth_norm = mesh_grid(gmpi.config.camera, 32)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(4)  # the noise seed of alpha_volume
        direct = gmpi.generator(gmpi.latents([4]), torch.from_numpy(depth_norm), background_alpha_full=False)
    assert np.allclose(alpha[32 - depth_norm.size :], direct[0, :, 3].numpy(), atol=1e-6)
