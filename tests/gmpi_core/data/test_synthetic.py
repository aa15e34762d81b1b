"""Synthetic heads: exact geometry, cameras and the FFHQ on-disk layouts (method §1.2-§1.6, §2.2, §7, §8.1).

Expected values are derived here by hand in float64 numpy — the §1.3 closed-form camera, the pinhole of
§1.2, the ray–ellipsoid quadratic — from the identity's own parameters, never from the renderer.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import zipfile
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import scipy.io
import torch

from gmpi_core.camera import deep3dface_to_w2c
from gmpi_core.config import preset
from gmpi_core.data.synthetic import (
    FACE_PARTS,
    Part,
    head_primitives,
    identity_and_pose,
    render_head,
    sample_identity,
    synthesize_dataset,
)
from tests.gmpi_core.closed_form import sphere_c2w as true_c2w

CAMERA = preset("FFHQ256").camera  # fov 12.6°, planes 0.95…1.12, c = r = 1
BACKGROUND_Z = 1.12 - 1e-3  # the documented background plane: just before d_far
TAN_HALF_FOV = math.tan(math.radians(12.6) / 2)  # 0.110401 (docs/method.md §1.2 table)
N_IMAGES, RES = 5, 32


def pixel_rays(res: int) -> np.ndarray:
    """K⁻¹ (u + 0.5, v + 0.5, 1) for every pixel [res, res, 3] (z component 1), f = W / (2 tan(fov/2))."""
    f = res / (2 * TAN_HALF_FOV)
    centres = (np.arange(res) + 0.5 - res / 2) / f
    x, y = np.meshgrid(centres, centres)  # x varies along columns, y along rows
    return np.stack([x, y, np.ones_like(x)], -1)


def project(point: np.ndarray, c2w: np.ndarray, res: int) -> np.ndarray:
    """Pixel coordinates (x, y) of a world point: u = f X/Z + W/2 (docs/method.md §1.2)."""
    cam = c2w[:3, :3].T @ (point - c2w[:3, 3])
    f = res / (2 * TAN_HALF_FOV)
    return f * cam[:2] / cam[2] + res / 2


def symmetric_identity(seed: int = 3):
    return sample_identity(np.random.default_rng(seed), symmetric=True)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthesize_dataset(
        tmp_path_factory.mktemp("synth") / "out", res=RES, n=N_IMAGES, seed=7, progress=False
    )


def tree_digest(root: Path) -> dict[str, str]:
    """sha256 of every file's bytes (a .mat without its 116-byte text header "... Created on: <date>"); a zip
    is also hashed member by member so single images can be compared across datasets."""
    digest: dict[str, str] = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        if path.suffix == ".zip":
            with zipfile.ZipFile(path) as zf:
                for member in zf.namelist():
                    digest[f"{rel}:{member}"] = hashlib.sha256(zf.read(member)).hexdigest()
        data = path.read_bytes()
        digest[rel] = hashlib.sha256(data[116:] if path.suffix == ".mat" else data).hexdigest()
    return digest


# --- determinism -------------------------------------------------------------------------------------


@pytest.mark.slow
def test_same_seed_gives_identical_files_whatever_the_worker_count(dataset: Path, tmp_path: Path) -> None:
    again = synthesize_dataset(tmp_path / "again", res=RES, n=N_IMAGES, seed=7, workers=1, progress=False)
    parallel = synthesize_dataset(
        tmp_path / "parallel", res=RES, n=N_IMAGES, seed=7, workers=2, progress=False
    )
    reference = tree_digest(dataset)
    assert len(reference) > 5 * N_IMAGES
    assert tree_digest(again) == reference
    assert tree_digest(parallel) == reference


def test_image_i_depends_only_on_seed_and_i_not_on_n_and_differs_across_seeds(
    dataset: Path, tmp_path: Path
) -> None:
    fewer = tree_digest(synthesize_dataset(tmp_path / "fewer", res=RES, n=2, seed=7, progress=False))
    other = tree_digest(synthesize_dataset(tmp_path / "other", res=RES, n=2, seed=8, progress=False))
    full = tree_digest(dataset)
    for key in (
        "images.zip:00000/img00000001.png",
        "depth/00000/img00000001.npy",
        "poses/00000/img00000001.mat",
    ):
        assert fewer[key] == full[key]
        assert other[key] != full[key]


# --- layouts (method §7, §1.6, §8.1) -------------------------------------------------------------------


def test_zip_has_dataset_tool_members_rgb_pngs_and_null_labels(dataset: Path) -> None:
    with zipfile.ZipFile(dataset / "images.zip") as zf:
        names = zf.namelist()
        assert names == [f"00000/img{i:08d}.png" for i in range(N_IMAGES)] + ["dataset.json"]
        assert json.loads(zf.read("dataset.json")) == {"labels": None}
        with zf.open("00000/img00000003.png") as f:
            image = PIL.Image.open(f)
            assert (image.format, image.mode, image.size) == ("PNG", "RGB", (RES, RES))
    assert not list(dataset.parent.glob(".*partial*"))  # the temporary folder was renamed into place


def test_mat_files_hold_every_deep3dface_key_and_round_trip_to_the_true_camera(dataset: Path) -> None:
    poses = json.loads((dataset / "poses.json").read_text())["poses"]
    assert len(poses) == N_IMAGES
    shapes = {
        "id": (1, 80), "exp": (1, 64), "tex": (1, 80), "angle": (1, 3), "gamma": (1, 27), "trans": (1, 3),
        "lm68": (1, 68, 2),
    }  # fmt: skip
    for i in range(N_IMAGES):
        coeffs = scipy.io.loadmat(dataset / f"poses/00000/img{i:08d}.mat")
        assert {k: coeffs[k].shape for k in shapes} == shapes
        pose = poses[f"00000/img{i:08d}.png"]
        _, yaw, pitch = identity_and_pose(7, i, CAMERA)
        assert (pose["yaw"], pose["pitch"]) == (yaw, pitch)
        angle, trans = (torch.from_numpy(coeffs[k].astype(np.float64)) for k in ("angle", "trans"))
        w2c = deep3dface_to_w2c(angle, trans, 1.0, 1.0)[0].numpy()
        np.testing.assert_allclose(w2c, np.linalg.inv(true_c2w(yaw, pitch)), atol=1e-5)
    assert (dataset / "poses/fail_list.txt").read_text() == "\n"


def test_ground_truth_files_match_a_fresh_render_of_the_same_identity(dataset: Path) -> None:
    i = 2
    params, yaw, pitch = identity_and_pose(7, i, CAMERA)
    sample = render_head(params, yaw, pitch, RES, CAMERA)
    depth = np.load(dataset / f"depth/00000/img{i:08d}.npy")
    assert depth.dtype == np.float32 and depth.shape == (RES, RES)
    np.testing.assert_array_equal(depth, sample.depth)
    mask = np.asarray(PIL.Image.open(dataset / f"mask/00000/img{i:08d}.png"))
    assert mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 255}
    np.testing.assert_array_equal(mask == 255, sample.mask)
    with zipfile.ZipFile(dataset / "images.zip") as zf, zf.open(f"00000/img{i:08d}.png") as f:
        np.testing.assert_array_equal(np.asarray(PIL.Image.open(f)), sample.image)
    lines = (dataset / f"landmarks/detections/results/00000/img{i:08d}.txt").read_text().splitlines()
    assert [tuple(map(int, line.split("\t"))) for line in lines] == [
        (math.floor(x), math.floor(y)) for x, y in sample.landmarks
    ]
    assert (dataset / "landmarks/detections/fail_list.txt").read_text() == "\n"
    meta = json.loads((dataset / "meta.json").read_text())
    assert (meta["resolution"], meta["n"], meta["seed"]) == (RES, N_IMAGES, 7)
    assert meta["camera"]["fov_deg"] == 12.6 and meta["background_depth"] == pytest.approx(BACKGROUND_Z)


def test_synthetic_layout_loads_with_the_true_cameras_through_build_dataset(dataset: Path) -> None:
    from gmpi_core.data.datasets import build_dataset

    ds = build_dataset("synthetic", dataset, None, RES, CAMERA)
    assert len(ds) == N_IMAGES
    _, yaw, pitch = identity_and_pose(7, 4, CAMERA)
    expected = np.linalg.inv(true_c2w(yaw, pitch)).reshape(16)
    np.testing.assert_allclose(ds[4][1].numpy(), expected, atol=1e-5)


# --- geometry -----------------------------------------------------------------------------------------


def test_centre_pixel_depth_is_the_analytic_head_ellipsoid_hit_from_the_canonical_pose() -> None:
    # raise the head so the optical axis meets the forehead (skin) rather than the nose
    params = dataclasses.replace(symmetric_identity(), head_center=(0.0, 0.03, 1.04))
    (_, ay, az), hz = params.head_radii, 1.04
    res = 33  # odd: the centre pixel's ray is the optical axis (0, 0, 1)
    sample = render_head(params, 0.0, 0.0, res, CAMERA)
    # x = 0, y = 0, z = t:  (0.03 / ay)² + ((t − hz) / az)² = 1, nearer root
    expected = hz - az * math.sqrt(1 - (0.03 / ay) ** 2)
    assert sample.parts[16, 16] == Part.SKIN
    assert sample.depth[16, 16] == pytest.approx(expected, abs=1e-6)


def test_every_skin_pixel_depth_is_the_analytic_head_ellipsoid_hit_from_the_canonical_pose() -> None:
    params = symmetric_identity()
    (_, hy, hz), (ax, ay, az) = params.head_center, params.head_radii
    sample = render_head(params, 0.0, 0.0, RES, CAMERA)
    d = pixel_rays(RES)  # camera = world at the canonical pose; a point is t·d with depth t
    a = (d[..., 0] / ax) ** 2 + (d[..., 1] / ay) ** 2 + (1 / az) ** 2
    b = -2 * (d[..., 1] * hy / ay**2 + hz / az**2)
    c = (hy / ay) ** 2 + (hz / az) ** 2 - 1
    skin = sample.parts == Part.SKIN
    assert skin.sum() > 0.2 * RES * RES
    a, b, c = a[skin], b[skin], c
    expected = (-b - np.sqrt(b * b - 4 * a * c)) / (2 * a)  # nearer root; NaN (a fail) if the ray misses
    np.testing.assert_allclose(sample.depth[skin], expected, atol=2e-7)


@pytest.mark.parametrize(("yaw", "pitch"), [(0.0, 0.0), (0.578, 0.254), (-0.578, -0.254), (0.3, -0.1)])
def test_head_lies_between_the_ffhq_planes_and_background_pixels_on_the_background_plane(
    yaw: float, pitch: float
) -> None:
    c2w = true_c2w(yaw, pitch)
    rays = pixel_rays(RES) @ c2w[:3, :3].T  # world direction scaled so that its camera-z component is 1
    for seed in range(3):
        params = sample_identity(np.random.default_rng(seed))
        sample = render_head(params, yaw, pitch, RES, CAMERA)
        world_z = c2w[2, 3] + sample.depth * rays[..., 2]  # back-project: X = C + depth · R K⁻¹ (u, v, 1)
        head = sample.parts != Part.BACKGROUND
        assert head.any() and (~head).any()
        assert world_z[head].min() >= 0.95 and world_z[head].max() <= 1.12
        np.testing.assert_allclose(world_z[~head], BACKGROUND_Z, atol=1e-6)
        if yaw == pitch == 0.0:
            np.testing.assert_array_equal(sample.depth[~head], np.float32(BACKGROUND_Z))
        np.testing.assert_array_equal(sample.mask, np.isin(sample.parts, [int(p) for p in FACE_PARTS]))


def test_every_ellipsoid_of_random_identities_lies_between_the_near_plane_and_the_background() -> None:
    for seed in range(200):
        prims = head_primitives(sample_identity(np.random.default_rng(seed)))
        z_front, z_back = prims.center[:, 2] - prims.radii[:, 2], prims.center[:, 2] + prims.radii[:, 2]
        assert z_front.min() >= 0.95 and z_back.max() < BACKGROUND_Z


def test_far_mouth_corner_is_hidden_beyond_the_prior_and_still_written_with_the_image_on_the_fail_list(
    tmp_path: Path,
) -> None:
    params = symmetric_identity()
    assert render_head(params, 0.0, 0.0, RES, CAMERA).landmarks_visible.all()
    # yaw > 0 puts the camera at +X: the −X ("left") mouth corner turns away behind the cheek, and vice versa
    np.testing.assert_array_equal(
        render_head(params, 1.3, 0.0, RES, CAMERA).landmarks_visible, [1, 1, 1, 0, 1]
    )
    np.testing.assert_array_equal(
        render_head(params, -1.3, 0.0, RES, CAMERA).landmarks_visible, [1, 1, 1, 1, 0]
    )
    side_view = CAMERA.model_copy(update={"yaw_mean": 1.3, "yaw_std": 0.0})
    out = synthesize_dataset(tmp_path / "side", res=16, n=2, camera=side_view, progress=False)
    fail_list = (out / "landmarks/detections/fail_list.txt").read_text().split()
    assert fail_list == ["00000/img00000000.png", "00000/img00000001.png"]
    assert len((out / "landmarks/detections/results/00000/img00000001.txt").read_text().splitlines()) == 5


def test_nose_tip_projects_to_the_hand_computed_pixel_for_a_yawed_pose() -> None:
    params = sample_identity(np.random.default_rng(11))
    c2w = true_c2w(0.3, 0.1)
    # docs/method.md §1.3 example: C = (0.294044, −0.099833, 0.049436), x_c = (0.955336, 0, 0.29552)
    np.testing.assert_allclose(c2w[:3, 3], [0.294044, -0.099833, 0.049436], atol=1e-6)
    np.testing.assert_allclose(c2w[:3, 0], [0.955336, 0.0, 0.29552], atol=1e-6)
    (_, hy, hz), (ax, ay, az) = params.head_center, params.head_radii
    x, y = params.nose_x, hy + params.nose_tip_y
    skin_z = hz - az * math.sqrt(1 - (x / ax) ** 2 - ((y - hy) / ay) ** 2)
    tip = np.array([x, y, skin_z - params.nose_protrusion])
    res = 64
    sample = render_head(params, 0.3, 0.1, res, CAMERA)
    np.testing.assert_allclose(sample.landmarks[2], project(tip, c2w, res), atol=1e-6)
    assert sample.landmarks_visible.all()
    assert sample.parts[int(sample.landmarks[2][1]), int(sample.landmarks[2][0])] == Part.NOSE


def test_symmetric_identity_at_zero_yaw_renders_a_mirror_image_with_mirrored_landmarks() -> None:
    params = symmetric_identity()
    sample = render_head(params, 0.0, 0.1, RES, CAMERA)  # pitch keeps the left-right symmetry
    assert np.abs(sample.image.astype(int) - sample.image[:, ::-1].astype(int)).max() <= 1
    np.testing.assert_array_equal(sample.mask, sample.mask[:, ::-1])
    np.testing.assert_allclose(sample.depth, sample.depth[:, ::-1], atol=1e-7)
    (lx, ly), (rx, ry), (nx, _), (mlx, mly), (mrx, mry) = sample.landmarks
    assert lx < RES / 2 < rx  # MTCNN "left eye" is the one on the image's left
    assert (lx + rx, ly, nx, mlx + mrx, mly) == pytest.approx((RES, ry, RES / 2, RES, mry), abs=1e-9)
    # the same draw without the symmetry constraint is visibly asymmetric: the check above can fail
    lopsided = render_head(sample_identity(np.random.default_rng(3)), 0.0, 0.1, RES, CAMERA)
    assert np.abs(lopsided.image.astype(int) - lopsided.image[:, ::-1].astype(int)).max() > 10


def test_poses_follow_the_truncated_gaussian_ffhq_prior() -> None:
    yp = np.array([identity_and_pose(0, i, CAMERA)[1:] for i in range(1500)])
    k_sigma = 2 * np.array([0.289, 0.127])
    assert (np.abs(yp) < k_sigma).all()
    # std of N(0, σ²) truncated to ±2σ is 0.8796 σ
    np.testing.assert_allclose(yp.std(axis=0), 0.8796 * np.array([0.289, 0.127]), rtol=0.06)
    assert identity_and_pose(0, 42, CAMERA) == identity_and_pose(0, 42, CAMERA)
    assert identity_and_pose(0, 42, CAMERA) != identity_and_pose(0, 43, CAMERA)


# --- errors -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"res": 48}, "power of two"),
        ({"res": 8}, "power of two"),
        ({"res": 64.0}, "power of two"),
        ({"n": 0}, "positive"),
        ({"n": -3}, "positive"),
        ({"seed": -1}, "non-negative"),
        ({"workers": 0}, "workers"),
        ({"antialias": 0}, "antialias"),
        ({"camera": preset("AFHQCat").camera}, "enclose"),
    ],
)
def test_invalid_dataset_arguments_raise_errors_that_name_them(
    tmp_path: Path, kwargs: dict, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        synthesize_dataset(tmp_path / "out", **{"res": 16, "n": 1, "progress": False, **kwargs})
    assert not (tmp_path / "out").exists()


def test_render_head_rejects_bad_resolution_and_non_finite_angles() -> None:
    params = symmetric_identity()
    with pytest.raises(ValueError, match="res"):
        render_head(params, 0.0, 0.0, 2, CAMERA)
    with pytest.raises(ValueError, match="finite"):
        render_head(params, float("nan"), 0.0, 16, CAMERA)


def test_existing_output_is_kept_unless_it_is_a_dataset_and_overwrite_is_given(tmp_path: Path) -> None:
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not a synthetic dataset"):
        synthesize_dataset(foreign, res=16, n=1, progress=False, overwrite=True)
    assert (foreign / "notes.txt").read_text() == "mine"
    out = synthesize_dataset(tmp_path / "ds", res=16, n=1, progress=False)
    with pytest.raises(FileExistsError, match="overwrite"):
        synthesize_dataset(out, res=16, n=2, progress=False)
    synthesize_dataset(out, res=16, n=2, progress=False, overwrite=True)
    assert json.loads((out / "meta.json").read_text())["n"] == 2


def test_in_process_synthesis_leaves_the_callers_torch_threads_alone(tmp_path):
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        synthesize_dataset(tmp_path / "ds", res=16, n=1, workers=1, progress=False)
        assert torch.get_num_threads() == 2  # the renderer's 1 thread is restored
    finally:
        torch.set_num_threads(before)
