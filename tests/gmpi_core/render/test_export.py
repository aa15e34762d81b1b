"""MPI export for the browser: textures, manifest, atomic folder, and a render round trip (method §2-§3)."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from gmpi_core.mpi.render import render_mpi
from gmpi_core.pipeline import GMPI, MPI
from gmpi_core.render.export import export_mpi, load_mpi_export
from gmpi_core.render.views import generate_mpi


@pytest.fixture(scope="module")
def gmpi():
    return GMPI.random("synthetic32", seed=0)


@pytest.fixture(scope="module")
def mpi(gmpi):
    mpi = generate_mpi(gmpi, seed=3, n_planes=32)
    rgba = mpi.rgba.clone()
    rgba[0, 3, 3, :, :16] = 0  # transparent texels whose colour still matters to bilinear sampling
    return MPI(rgba=rgba, plane_dhw=mpi.plane_dhw, depth_norm=mpi.depth_norm)


def _quantized(rgba):
    return (rgba.clamp(0, 1) * 255).round() / 255


def test_export_round_trip_renders_like_the_original_within_quantisation_error(gmpi, mpi, tmp_path):
    out = export_mpi(mpi, gmpi.config.camera, tmp_path / "export")
    rgba, dhw, _ = load_mpi_export(out)
    # lossless WebP with exact=True: every texel is round(255·x)/255, RGB under zero alpha included
    assert torch.equal(rgba, _quantized(mpi.rgba))
    assert torch.equal(dhw, mpi.plane_dhw)
    yaw = torch.tensor([0.0, 0.3, -0.5, 0.45])
    pitch = torch.tensor([0.0, 0.1, -0.2, 0.25])
    c2w = gmpi.cameras(yaw, pitch)
    fov = gmpi.config.camera.fov_deg
    original, _ = render_mpi(mpi.rgba, mpi.plane_dhw, c2w, fov, 32)
    again, _ = render_mpi(rgba, dhw, c2w, fov, 32)
    err = (original - again).abs() / 2  # images are 2c − 1: error in [0, 1] colour units
    # texels move by ≤ 0.5/255; to first order the colour moves by ≤ 0.5/255 · (1 + Σ_j T_j) — N = 32 planes
    # allow up to 16.5/255, but signs average out: measured max 1.13/255, mean 0.16/255
    assert err.max() <= 2 / 255 and err.mean() <= 0.5 / 255
    assert err.max() > 0  # quantisation did happen: the check is not vacuous


def test_manifest_describes_planes_camera_and_conventions(gmpi, mpi, tmp_path):
    out = export_mpi(mpi, gmpi.config.camera, tmp_path / "e", fmt="png", extra={"seed": 3})
    meta = json.loads((out / "mpi.json").read_text())
    cam = gmpi.config.camera
    assert meta["version"] == 1 and meta["n_planes"] == 32 and meta["texture_size"] == 32
    assert [p["index"] for p in meta["planes"]] == list(range(32))
    for p, (d, h, w) in zip(meta["planes"], mpi.plane_dhw.tolist()):
        assert (p["depth"], p["height"], p["width"]) == (d, h, w)
        image = Image.open(out / p["file"])
        assert image.mode == "RGBA" and image.size == (32, 32)
    assert meta["planes"][5]["file"] == "planes/plane_005.png"
    assert meta["camera"]["fov_deg"] == cam.fov_deg and meta["camera"]["d_far"] == cam.d_far
    assert meta["camera"]["yaw_range"] == list(cam.yaw_range)
    assert meta["camera"]["focal_over_width"] == pytest.approx(1 / (2 * np.tan(np.radians(cam.fov_deg) / 2)))
    assert "+Y down" in meta["conventions"]["world_axes"] and meta["source"] == {"seed": 3}


def test_atlas_layout_holds_the_same_textures_as_separate_planes(gmpi, mpi, tmp_path):
    planes = export_mpi(mpi, gmpi.config.camera, tmp_path / "planes")
    atlas = export_mpi(mpi, gmpi.config.camera, tmp_path / "atlas", layout="atlas", atlas_columns=6)
    a, _, _ = load_mpi_export(planes)
    b, _, meta = load_mpi_export(atlas)
    assert torch.equal(a, b)
    assert meta["atlas"] == {"file": "atlas.webp", "columns": 6, "rows": 6}
    assert meta["planes"][7]["rect"] == [32, 32, 32, 32]  # row 1, column 1
    assert Image.open(atlas / "atlas.webp").size == (6 * 32, 6 * 32)
    assert sorted(p.name for p in atlas.iterdir()) == ["atlas.webp", "mpi.json"]


def test_resized_export_keeps_the_corner_texels(gmpi, mpi, tmp_path):
    out = export_mpi(mpi, gmpi.config.camera, tmp_path / "small", size=17)
    rgba, _, meta = load_mpi_export(out)
    assert meta["texture_size"] == 17 and rgba.shape == (1, 32, 4, 17, 17)
    # align_corners=True: the texel centres on the plane corners are unchanged (up to quantisation)
    corners = _quantized(mpi.rgba[..., ::31, ::31])
    assert torch.allclose(rgba[..., ::16, ::16], corners, atol=1e-6)


def test_exports_replace_atomically_and_never_overwrite_foreign_folders(gmpi, mpi, tmp_path):
    target = tmp_path / "export"
    export_mpi(mpi, gmpi.config.camera, target, fmt="png")
    export_mpi(mpi, gmpi.config.camera, target, fmt="webp")  # replaces the previous export
    assert sorted(p.suffix for p in (target / "planes").iterdir()) == [".webp"] * 32
    assert [p.name for p in tmp_path.iterdir()] == ["export"]  # no temporary folders left behind
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "holiday.jpg").write_bytes(b"")
    with pytest.raises(FileExistsError, match="not an MPI export"):
        export_mpi(mpi, gmpi.config.camera, foreign)
    assert [p.name for p in foreign.iterdir()] == ["holiday.jpg"]
    with pytest.raises(ValueError, match="unknown image format 'jpg'"):
        export_mpi(mpi, gmpi.config.camera, tmp_path / "x", fmt="jpg")  # type: ignore[arg-type]
