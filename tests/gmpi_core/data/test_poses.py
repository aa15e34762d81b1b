"""Pose sources: Deep3DFace folders, EG3D dataset.json, our JSON poses (method §1.3, §1.5, §1.6, §7, §8.1).

Expected matrices come from docs/method.md's closed forms written out here in float64 numpy, not from the
code.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import scipy.io

from gmpi_core.data.poses import (
    DEEP3DFACE_KEYS,
    Deep3DFacePoses,
    EG3DPoses,
    JSONPoses,
    PoseError,
    read_fail_list,
    write_deep3dface_mat,
    write_eg3d_dataset_json,
)
from tests.gmpi_core.closed_form import sphere_w2c

F3 = np.diag([1.0, -1.0, -1.0])


def eg3d_lookat_c2w(position: np.ndarray) -> np.ndarray:
    """EG3D camera (OpenCV axes) at ``position`` in EG3D's world (+Y up) looking at the origin."""
    z = -position / np.linalg.norm(position)
    x = np.cross([0.0, -1.0, 0.0], z)  # right = down × forward for an OpenCV camera
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    c2w = np.eye(4)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = x, y, z, position
    return c2w


def rot_xyz(a: np.ndarray) -> np.ndarray:
    """R = Rz(a3) Ry(a2) Rx(a1) (docs/method.md §1.6)."""
    (cx, cy, cz), (sx, sy, sz) = np.cos(a), np.sin(a)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


# --- Deep3DFace ------------------------------------------------------------------------------------------


def test_zero_angle_and_trans_give_identity_w2c_and_zero_yaw_pitch(tmp_path: Path) -> None:
    write_deep3dface_mat(tmp_path / "00000" / "img00000000.mat", [0, 0, 0], [0, 0, 0])
    pose = Deep3DFacePoses(tmp_path, radius=1.0, center_z=1.0).pose("00000/img00000000.png")
    np.testing.assert_allclose(pose.w2c.numpy(), np.eye(4), atol=1e-6)
    assert pose.yaw == 0.0 and pose.pitch == 0.0


def test_yaw_is_minus_angle1_and_pitch_is_angle0(tmp_path: Path) -> None:
    angle = np.array([0.1, 0.25, -0.07], np.float32)
    write_deep3dface_mat(tmp_path / "a.mat", angle, [0.01, -0.02, 0.3])
    pose = Deep3DFacePoses(tmp_path, 1.0, 1.0).pose("a.png")
    assert pose.yaw == pytest.approx(-0.25, abs=1e-7) and pose.pitch == pytest.approx(0.1, abs=1e-7)


@pytest.mark.parametrize(
    ("angle", "yaw", "pitch"), [((0.0, 0.3, 0.0), -0.3, 0.0), ((0.2, 0.0, 0.0), 0.0, 0.2)]
)
def test_single_axis_deep3dface_rotation_lands_on_the_gmpi_sphere_camera(
    tmp_path: Path, angle: tuple[float, ...], yaw: float, pitch: float
) -> None:
    # method §1.7: for pure yaw or pure pitch, §1.6 with trans = 0 equals §1.3 at (yaw, pitch) = (-a2, a1)
    write_deep3dface_mat(tmp_path / "x.mat", angle, [0, 0, 0])
    w2c = Deep3DFacePoses(tmp_path, 1.0, 1.0).pose("x.png").w2c.double().numpy()
    np.testing.assert_allclose(w2c, sphere_w2c(yaw, pitch, 1.0, 1.0), atol=1e-6)


def test_translated_face_keeps_rotation_and_puts_camera_on_the_sphere(tmp_path: Path) -> None:
    angle = np.array([0.1, -0.2, 0.05])
    write_deep3dface_mat(tmp_path / "x.mat", angle, [0.05, -0.08, 0.4])
    w2c = Deep3DFacePoses(tmp_path, radius=1.0, center_z=1.0).pose("x.png").w2c.double().numpy()
    rot = w2c[:3, :3]
    # rotation of F T(-10z) [R|t] F T(-cz) is F R F (docs/method.md §1.6); renormalisation leaves it untouched
    np.testing.assert_allclose(rot, F3 @ rot_xyz(angle.astype(np.float32).astype(np.float64)) @ F3, atol=1e-6)
    centre = -rot.T @ w2c[:3, 3]
    assert np.linalg.norm(centre - np.array([0.0, 0.0, 1.0])) == pytest.approx(1.0, abs=1e-6)
    np.testing.assert_allclose(w2c[3], [0, 0, 0, 1])


def test_ffhq_pose_path_replaces_only_the_suffix_even_with_png_in_folder_names(tmp_path: Path) -> None:
    write_deep3dface_mat(tmp_path / "png_faces" / "img_png.mat", [0.0, 0.4, 0.0], [0, 0, 0])
    poses = Deep3DFacePoses(tmp_path, 1.0, 1.0)
    key = "png_faces/img_png.png"
    assert poses.mat_path(key) == tmp_path / "png_faces" / "img_png.mat"
    assert poses.has(key) and not poses.has("png_faces/other.png")
    assert poses.pose(key).yaw == pytest.approx(-0.4)


def test_metfaces_pose_is_coeffs_stem_and_fail_list_matches_basenames(tmp_path: Path) -> None:
    write_deep3dface_mat(tmp_path / "coeffs" / "image-001_xflip.mat", [0.0, -0.3, 0.0], [0, 0, 0])
    (tmp_path / "fail_list.txt").write_text("image-002.png\n")
    poses = Deep3DFacePoses(tmp_path, 1.0, 1.0, layout="metfaces")
    assert poses.mat_path("sub/image-001_xflip.png") == tmp_path / "coeffs" / "image-001_xflip.mat"
    assert poses.pose("image-001_xflip.png").yaw == pytest.approx(0.3)
    assert poses.is_excluded("image-002.png") and poses.is_excluded("sub/image-002.png")
    assert not poses.is_excluded("image-001_xflip.png")


def test_ffhq_fail_list_matches_exact_stripped_member_names(tmp_path: Path) -> None:
    (tmp_path / "fail_list.txt").write_text("  00000/img00000001.png \n\n00000/img00000007.png\n\n")
    poses = Deep3DFacePoses(tmp_path, 1.0, 1.0)
    assert poses.is_excluded("00000/img00000001.png") and poses.is_excluded("00000/img00000007.png")
    assert not poses.is_excluded("img00000001.png") and not poses.is_excluded("00000/img00000002.png")
    assert read_fail_list(tmp_path / "nope.txt") == set()


def test_malformed_coefficient_file_raises_error_naming_the_file(tmp_path: Path) -> None:
    scipy.io.savemat(str(tmp_path / "bad.mat"), {"angle": np.zeros((1, 2)), "trans": np.zeros((1, 3))})
    scipy.io.savemat(str(tmp_path / "notrans.mat"), {"angle": np.zeros((1, 3))})
    (tmp_path / "garbage.mat").write_bytes(b"not a mat file at all" * 10)
    poses = Deep3DFacePoses(tmp_path, 1.0, 1.0)
    with pytest.raises(PoseError, match=r"bad\.mat.*'angle' has shape \(1, 2\)"):
        poses.pose("bad.png")
    with pytest.raises(PoseError, match=r"notrans\.mat.*'trans'"):
        poses.pose("notrans.png")
    with pytest.raises(PoseError, match=r"garbage\.mat"):
        poses.pose("garbage.png")


def test_missing_pose_folder_and_missing_coeffs_subfolder_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Deep3DFacePoses(tmp_path / "nowhere", 1.0, 1.0)
    with pytest.raises(FileNotFoundError, match="coeffs"):
        Deep3DFacePoses(tmp_path, 1.0, 1.0, layout="metfaces")


def test_written_coefficient_file_has_every_deep3dface_key_with_its_shape(tmp_path: Path) -> None:
    path = write_deep3dface_mat(tmp_path / "d" / "x.mat", [0.1, 0.2, 0.3], [1, 2, 3], gamma=np.ones(27))
    mat = scipy.io.loadmat(str(path))
    for name, shape in DEEP3DFACE_KEYS.items():
        assert mat[name].shape == shape, name
        assert mat[name].dtype == np.float32, name
    np.testing.assert_allclose(mat["angle"], [[0.1, 0.2, 0.3]], rtol=1e-6)
    np.testing.assert_array_equal(mat["gamma"], np.ones((1, 27)))
    np.testing.assert_array_equal(mat["lm68"], np.zeros((1, 68, 2)))


# --- EG3D dataset.json --------------------------------------------------------------------------------------


def test_canonical_eg3d_camera_at_distance_2_7_gives_identity_w2c(tmp_path: Path) -> None:
    # W2C = C2W_eg3d⁻¹ F T(-c z) = I  ⇔  C2W_eg3d = F T(-c z): rotation diag(1,-1,-1), centre (0, 0, c) (§1.6)
    c2w = eg3d_lookat_c2w(np.array([0.0, 0.0, 2.7]))
    np.testing.assert_allclose(c2w[:3, :3], F3, atol=1e-12)
    path = write_eg3d_dataset_json(tmp_path / "dataset.json", [("img00000000.png", c2w)])
    pose = EG3DPoses(path, radius=2.7, center_z=2.7).pose("img00000000.png")
    np.testing.assert_allclose(pose.w2c.numpy(), np.eye(4), atol=1e-6)
    assert pose.yaw == pytest.approx(0.0, abs=1e-6) and pose.pitch == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize(("yaw", "pitch", "distance"), [(0.3, 0.0, 2.7), (0.0, 0.2, 2.7), (-0.25, 0.15, 2.0)])
def test_eg3d_orbit_camera_maps_to_the_gmpi_sphere_camera_with_the_same_angles(
    tmp_path: Path, yaw: float, pitch: float, distance: float
) -> None:
    # EG3D world point p_e ↔ GMPI world F p_e + c z: an EG3D camera at d (cos p sin y, sin p, cos p cos y)
    # is the GMPI camera at yaw y, pitch p; renormalisation moves it radially onto the r = 2.7 sphere
    position = distance * np.array(
        [math.cos(pitch) * math.sin(yaw), math.sin(pitch), math.cos(pitch) * math.cos(yaw)]
    )
    path = write_eg3d_dataset_json(tmp_path / "dataset.json", [("cat/a.png", eg3d_lookat_c2w(position))])
    pose = EG3DPoses(path, radius=2.7, center_z=2.7).pose("cat/a.png")
    np.testing.assert_allclose(pose.w2c.double().numpy(), sphere_w2c(yaw, pitch, 2.7, 2.7), atol=2e-6)
    assert pose.yaw == pytest.approx(yaw, abs=1e-6) and pose.pitch == pytest.approx(pitch, abs=1e-6)


def test_eg3d_json_ignores_the_nine_intrinsics_and_lists_its_keys(tmp_path: Path) -> None:
    c2w = eg3d_lookat_c2w(np.array([0.0, 0.0, 2.7]))
    a = write_eg3d_dataset_json(tmp_path / "a.json", [("x.png", c2w), ("y.png", c2w)])
    b = write_eg3d_dataset_json(tmp_path / "b.json", [("x.png", c2w)], intrinsics=[9.0] * 9)
    assert json.loads(a.read_text())["labels"][0][1][:16] == c2w.reshape(16).tolist()
    assert len(json.loads(a.read_text())["labels"][0][1]) == 25
    pa, pb = EG3DPoses(a, 2.7, 2.7), EG3DPoses(b, 2.7, 2.7)
    assert pa.keys() == {"x.png", "y.png"} and not pa.is_excluded("x.png")
    np.testing.assert_array_equal(pa.w2c("x.png").numpy(), pb.w2c("x.png").numpy())


def test_eg3d_json_without_labels_or_with_short_labels_is_rejected(tmp_path: Path) -> None:
    (tmp_path / "null.json").write_text(json.dumps({"labels": None}))
    (tmp_path / "short.json").write_text(json.dumps({"labels": [["a.png", [1.0] * 12]]}))
    with pytest.raises(PoseError, match="no camera labels"):
        EG3DPoses(tmp_path / "null.json", 2.7, 2.7)
    with pytest.raises(PoseError, match=r"label #0"):
        EG3DPoses(tmp_path / "short.json", 2.7, 2.7)


# --- JSON poses (custom data) -----------------------------------------------------------------------------


def test_json_yaw_pitch_entry_gives_the_sphere_camera_and_w2c_entry_is_kept(tmp_path: Path) -> None:
    given = sphere_w2c(-0.2, 0.1, 1.0, 1.0)
    path = tmp_path / "poses.json"
    poses_json = {
        "poses": {"a/x.png": {"yaw": 0.3, "pitch": -0.1}, "a/y.png": {"w2c": given.reshape(16).tolist()}},
        "fail_list": ["a/z.png"],
    }
    path.write_text(json.dumps(poses_json))
    poses = JSONPoses(path, radius=1.0, center_z=1.0)
    x, y = poses.pose("a/x.png"), poses.pose("a/y.png")
    np.testing.assert_allclose(x.w2c.double().numpy(), sphere_w2c(0.3, -0.1, 1.0, 1.0), atol=1e-6)
    assert (x.yaw, x.pitch) == (pytest.approx(0.3), pytest.approx(-0.1))
    np.testing.assert_allclose(y.w2c.double().numpy(), given, atol=1e-7)
    assert y.yaw == pytest.approx(-0.2, abs=1e-6) and y.pitch == pytest.approx(0.1, abs=1e-6)
    assert poses.keys() == {"a/x.png", "a/y.png"} and poses.is_excluded("a/z.png")


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"yaw": 0.1}, "must be"),
        ({"yaw": "left", "pitch": 0.0}, "finite numbers"),
        ({"w2c": [1.0] * 15}, "16 finite numbers"),
        ({"w2c": (2 * np.eye(4)).reshape(16).tolist()}, "not a rigid transform"),
        ({"w2c": np.diag([1.0, 1.0, -1.0, 1.0]).reshape(16).tolist()}, "reflection"),
    ],
)
def test_json_entries_that_are_not_a_pose_are_rejected_naming_the_image(
    tmp_path: Path, entry: dict, message: str
) -> None:
    path = tmp_path / "poses.json"
    path.write_text(json.dumps({"poses": {"faces/bad.png": entry}}))
    with pytest.raises(PoseError, match=rf"faces/bad\.png.*{message}"):
        JSONPoses(path, 1.0, 1.0)
