"""Offline head pose from 5 landmarks (docs/method.md §1.2, §1.6, §1.7, §8.1, §8.2).

Expected values come from docs/method.md's formulas written out here in float64 numpy: the Deep3DFace camera
(X_w = R_z R_y R_x X + trans, camera 10 units up +Z looking down −Z, f = W / (2 tan(fov/2)), principal
point W/2), GMPI's sphere camera (§1.3 closed form) and Deep3DFaceRecon's POS alignment — never from the
estimator's own helpers.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch

from gmpi_core.camera import deep3dface_to_w2c
from gmpi_core.config import preset
from gmpi_core.data.poses import read_deep3dface_angle_trans, write_deep3dface_mat
from gmpi_core.data.synthetic import identity_and_pose, landmarks_3d, synthesize_dataset
from gmpi_core.preprocess.pose import (
    SYNTHETIC_CALIBRATIONS,
    Calibration,
    HeadPoseEstimator,
    PoseEstimationError,
    deep3dface_crop_intrinsics,
    estimate_pose,
    fit_calibration,
    main,
    read_landmark_file,
    run_poses,
    validate_deep3dface_folder,
)
from gmpi_core.preprocess.template import (
    BFM_LM3D_RAW,
    BFM_TEMPLATE,
    SYNTHETIC_TEMPLATE,
    FaceTemplate,
    symmetrize,
    synthetic_mean_landmarks,
)
from tests.gmpi_core.closed_form import sphere_w2c

CAMERA = preset("FFHQ256").camera  # fov 12.6°, c = r = 1
TAN_HALF_FOV = math.tan(math.radians(12.6) / 2)
ASTRONAUT_512 = np.array([[205.0, 101.7], [246.8, 103.7], [224.7, 129.0], [201.7, 139.2], [245.3, 141.9]])
RES, N_IMAGES = 128, 64


def rotation_zyx(a: float, b: float, g: float) -> np.ndarray:
    """R_z(g) R_y(b) R_x(a), right-handed elementary rotations (docs/method.md §1.6)."""
    rx = np.array([[1, 0, 0], [0, math.cos(a), -math.sin(a)], [0, math.sin(a), math.cos(a)]])
    ry = np.array([[math.cos(b), 0, math.sin(b)], [0, 1, 0], [-math.sin(b), 0, math.cos(b)]])
    rz = np.array([[math.cos(g), -math.sin(g), 0], [math.sin(g), math.cos(g), 0], [0, 0, 1]])
    return rz @ ry @ rx


def deep3dface_project(points: np.ndarray, angle, trans, focal: float, centre) -> np.ndarray:
    """Deep3DFace's camera: X_w = R X + t, camera at +10 ẑ looking down −Z (+Y up), image y down."""
    xw = points @ rotation_zyx(*angle).T + np.asarray(trans)
    depth = 10.0 - xw[:, 2]
    return np.stack([focal * xw[:, 0] / depth + centre[0], focal * -xw[:, 1] / depth + centre[1]], 1)


def gmpi_focal(width: int) -> float:
    return width / (2 * TAN_HALF_FOV)


def mirror(points: np.ndarray, width: int) -> np.ndarray:
    """Landmarks of the horizontally mirrored image: x → W − x, left and right swapped."""
    return points[[1, 0, 2, 4, 3]] * [-1.0, 1.0] + [width, 0.0]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthesize_dataset(tmp_path_factory.mktemp("synth") / "out", res=RES, n=N_IMAGES, progress=False)


def truth(root: Path, members: list[str]) -> tuple[np.ndarray, np.ndarray]:
    pairs = [read_deep3dface_angle_trans(root / "poses" / Path(m).with_suffix(".mat")) for m in members]
    return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])


# --- the solver --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("template", [BFM_TEMPLATE, SYNTHETIC_TEMPLATE], ids=["bfm", "synthetic"])
@pytest.mark.parametrize(
    "angle, trans",
    [
        ((0.0, 0.0, 0.0), (0.0, 0.0, 0.0)),
        ((0.3, -0.5, 0.2), (0.1, -0.2, 0.5)),
        ((-0.45, 0.7, -0.3), (-0.3, 0.25, -1.0)),
        ((0.1, 1.2, 0.05), (0.0, 0.0, 2.0)),  # yaw 69°
    ],
)
def test_template_projected_with_known_pose_is_recovered_exactly(template, angle, trans) -> None:
    points = deep3dface_project(template.points, angle, trans, gmpi_focal(256), (128.0, 128.0))
    est = estimate_pose(points, 256, template=template)
    np.testing.assert_allclose(est.angle, angle, atol=1e-7)
    np.testing.assert_allclose(est.trans, trans, atol=1e-6)
    assert est.reproj_err_px < 1e-6
    # GMPI's names for the same numbers (docs/method.md §1.7)
    assert (est.yaw, est.pitch, est.roll) == pytest.approx((-angle[1], angle[0], -angle[2]), abs=1e-7)


def test_non_square_images_use_their_own_principal_point() -> None:
    angle, trans = (0.2, -0.3, 0.1), (0.2, 0.1, 0.0)
    points = deep3dface_project(BFM_TEMPLATE.points, angle, trans, gmpi_focal(320), (160.0, 120.0))
    np.testing.assert_allclose(estimate_pose(points, (320, 240)).angle, angle, atol=1e-7)


def test_estimate_turns_into_the_true_gmpi_camera_of_a_synthetic_head() -> None:
    """docs/method.md §1.6 compatibility: the head's own 3D landmarks, seen by GMPI's sphere camera (§1.2,
    §1.3), give an (angle, trans) that ``deep3dface_to_w2c`` maps back to that camera."""
    params, yaw, pitch = identity_and_pose(0, 5, CAMERA)
    world = landmarks_3d(params)
    w2c = sphere_w2c(yaw, pitch)
    cam = world @ w2c[:3, :3].T + w2c[:3, 3]
    pixels = gmpi_focal(256) * cam[:, :2] / cam[:, 2:] + 128.0
    head = FaceTemplate("head", 10.0 * (world - [0.0, 0.0, 1.0]) * [1.0, -1.0, -1.0], "this head")
    est = estimate_pose(pixels, 256, template=head)
    got = deep3dface_to_w2c(torch.from_numpy(est.angle)[None], torch.from_numpy(est.trans)[None], 1.0, 1.0)
    np.testing.assert_allclose(got[0].numpy(), w2c, atol=1e-7)


def test_deep3dface_intrinsics_are_those_of_its_aligned_224_crop() -> None:
    """align_img: POS fit (scale s, translation t) of the BFM lm3D (y up vs image y flipped), image
    resized by 102/s, 224² crop centred on t, camera f = 1015, c = 112 — the same pinhole on the image
    has f = 1015 s / 102 and principal point t."""
    points = np.array([[95.0, 110.0], [150.0, 108.0], [126.0, 140.0], [101.0, 168.0], [148.0, 166.0]])
    height = 256
    flipped = np.stack([points[:, 0], height - points[:, 1]], 1)  # y up, as Deep3DFace feeds POS
    design = np.zeros((10, 8))
    design[0::2, :3], design[0::2, 3] = BFM_LM3D_RAW, 1.0
    design[1::2, 4:7], design[1::2, 7] = BFM_LM3D_RAW, 1.0
    k = np.linalg.lstsq(design, flipped.reshape(-1), rcond=None)[0]
    scale = (np.linalg.norm(k[0:3]) + np.linalg.norm(k[4:7])) / 2
    t = np.array([k[3], height - k[7]])  # back to y down
    focal, centre = deep3dface_crop_intrinsics(points[None])
    assert focal[0] == pytest.approx(1015.0 * scale / 102.0, rel=1e-12)
    np.testing.assert_allclose(centre[0], t, atol=1e-9)
    # the crop camera and the equivalent image camera give the same pose
    crop = (points - t) * (102.0 / scale) + 112.0
    in_crop = estimate_pose(crop, 224, intrinsics="gmpi", fov_deg=math.degrees(2 * math.atan(112 / 1015)))
    in_image = estimate_pose(points, 256, intrinsics="deep3dface")
    np.testing.assert_allclose(in_image.angle, in_crop.angle, atol=1e-9)
    np.testing.assert_allclose(in_image.trans, in_crop.trans, atol=1e-8)


@pytest.mark.parametrize("calibration", ["none", "synthetic"])
@pytest.mark.parametrize("template", ["bfm", "synthetic"])
def test_mirrored_landmarks_flip_yaw_and_roll_and_keep_pitch(template: str, calibration: str) -> None:
    angle, trans = (0.15, -0.4, 0.12), (0.08, -0.05, 0.3)
    points = deep3dface_project(
        BFM_TEMPLATE.points * [1.0, 1.1, 0.9], angle, trans, gmpi_focal(256), (128, 128)
    )
    est = estimate_pose(points, 256, template, calibration)
    flipped = estimate_pose(mirror(points, 256), 256, template, calibration)
    assert abs(est.yaw) > 0.2
    assert flipped.yaw == pytest.approx(-est.yaw, abs=1e-9)
    assert flipped.roll == pytest.approx(-est.roll, abs=1e-9)
    assert flipped.pitch == pytest.approx(est.pitch, abs=1e-9)
    assert flipped.trans[0] == pytest.approx(-est.trans[0], abs=1e-8)


def test_astronaut_is_near_frontal_and_its_mirror_flips_yaw() -> None:
    """The astronaut's MTCNN landmarks. Yaw and roll are small on this frontal face and flip on the mirror;
    pitch keeps a bias (a broad smile raises the mouth corners, which reads as a lowered head) but stays
    below the +38° that users of the original reported for a generic template."""
    for intrinsics in ("gmpi", "deep3dface"):
        est = estimate_pose(ASTRONAUT_512, 512, "bfm", "none", intrinsics)
        flipped = estimate_pose(mirror(ASTRONAUT_512, 512), 512, "bfm", "none", intrinsics)
        assert abs(math.degrees(est.yaw)) < 5.0 and abs(math.degrees(est.roll)) < 5.0
        assert 0.0 < math.degrees(est.pitch) < 30.0
        assert math.copysign(1.0, flipped.yaw) == -math.copysign(1.0, est.yaw)
        assert flipped.yaw == pytest.approx(-est.yaw, abs=0.2 if intrinsics == "deep3dface" else 1e-6)
        assert flipped.pitch == pytest.approx(est.pitch, abs=1e-3 if intrinsics == "deep3dface" else 1e-6)


@pytest.mark.parametrize(
    "landmarks, reason",
    [
        (np.full((5, 2), 100.0), "coincide"),
        (np.stack([np.linspace(80, 160, 5), np.linspace(90, 130, 5)], 1), "collinear"),
        (np.array([[90.0, 100], [150, 100], [120, 130], [np.nan, 160], [145, 160]]), "non-finite"),
        (mirror(ASTRONAUT_512, 512)[[1, 0, 2, 4, 3]], "MTCNN order"),  # mirrored, left/right not swapped
        (np.array([[115.0, 100], [125, 100], [120, 130], [60, 160], [180, 160]]), "do not fit a face"),
    ],
)
def test_degenerate_landmarks_are_refused_with_a_reason(landmarks: np.ndarray, reason: str) -> None:
    with pytest.raises(PoseEstimationError, match=reason):
        estimate_pose(landmarks, 512)
    batch = HeadPoseEstimator().estimate_batch(np.stack([landmarks, ASTRONAUT_512]), 512)
    assert batch.failure[0] is not None and reason in batch.failure[0]
    assert np.isnan(batch.angle[0]).all() and batch.failure[1] is None


# --- calibration --------------------------------------------------------------------------------------------


def test_fit_calibration_inverts_a_known_systematic_error() -> None:
    rng = np.random.default_rng(0)
    true = np.stack(
        [rng.uniform(-0.3, 0.3, 200), rng.uniform(-0.6, 0.6, 200), rng.uniform(-0.1, 0.1, 200)], 1
    )
    pitch, yaw = true[:, 0], -true[:, 1]
    raw = true.copy()
    raw[:, 0] = 0.05 + 0.6 * pitch + 0.2 * yaw**2  # what a too-deep nose does (cf. the bfm fit)
    raw[:, 1] = -0.57 * yaw
    calibration = fit_calibration(raw, true)
    assert (calibration.pitch_offset, calibration.pitch_gain, calibration.pitch_yaw2) == pytest.approx(
        (0.05, 0.6, 0.2), abs=1e-10
    )
    assert calibration.yaw_gain == pytest.approx(0.57, abs=1e-12)
    np.testing.assert_allclose(calibration.apply(raw), true, atol=1e-10)


def test_calibration_must_match_the_template_it_was_fitted_with() -> None:
    with pytest.raises(ValueError, match="fitted with template 'bfm'"):
        HeadPoseEstimator("synthetic", SYNTHETIC_CALIBRATIONS[("bfm", "gmpi")])
    with pytest.raises(ValueError, match="choose 'none', 'synthetic'"):
        HeadPoseEstimator("bfm", "median")
    assert HeadPoseEstimator("bfm", Calibration()).calibration.name == "none"


# --- templates ----------------------------------------------------------------------------------------------


def test_bfm_template_is_deep3dfacerecon_lm3d_made_symmetric() -> None:
    pts = BFM_TEMPLATE.points
    np.testing.assert_allclose(pts[[1, 0, 2, 4, 3]] * [-1, 1, 1], pts, atol=0)  # exactly mirror-symmetric
    assert np.abs(pts - BFM_LM3D_RAW).max() < 0.02  # < 2 mm from the published numbers (decimetres)
    assert pts[2, 2] - pts[0, 2] == pytest.approx(0.42, abs=0.005)  # nose 42 mm in front of the eyes


def test_synthetic_template_is_the_mean_of_the_synthetic_heads_landmarks() -> None:
    np.testing.assert_allclose(
        SYNTHETIC_TEMPLATE.points, symmetrize(synthetic_mean_landmarks(4000, 1)), atol=1e-5
    )


# --- the dataset step ---------------------------------------------------------------------------------------


def test_synthetic_heads_pose_error_after_calibration_is_within_the_measured_bound(dataset: Path) -> None:
    """64 heads at 128² from their ground-truth landmark files. Measured mean absolute errors with the
    synthetic template + calibration: yaw 2.85°, pitch 5.32°, roll 0.85° (5 points fix pitch only through
    the nose's height between eyes and mouth, which varies per head); bounds have ~20 % margin."""
    out = dataset / "est_synthetic"
    summary = run_poses(
        dataset / "landmarks", out, "ffhq", RES, "synthetic", "synthetic", progress=False, estimator="mtcnn5"
    )
    assert (summary.images, summary.written, summary.pose_failures) == (N_IMAGES, N_IMAGES, 0)
    members = sorted(p.relative_to(out).with_suffix("").as_posix() for p in out.rglob("*.mat"))
    angle = np.stack([read_deep3dface_angle_trans(out / f"{m}.mat")[0] for m in members])
    true_angle, _ = truth(dataset, members)
    mae = np.degrees(np.abs(angle - true_angle)).mean(0)  # (pitch, yaw, roll)
    assert mae[1] < 3.5 and mae[0] < 6.5 and mae[2] < 1.2


def test_synthetic_calibration_removes_the_bfm_templates_yaw_gain(dataset: Path) -> None:
    """The BFM nose stands 3× further out than the synthetic heads', so raw yaw comes out at ~0.57 of the
    truth; the calibration restores a gain of 1 and roughly halves the yaw error."""
    files = sorted((dataset / "landmarks/detections/results").rglob("*.txt"))
    points = np.stack([read_landmark_file(f) for f in files])
    true_angle, _ = truth(dataset, [f.relative_to(f.parents[1]).with_suffix("").as_posix() for f in files])
    true_yaw = -true_angle[:, 1]
    gains, maes = [], []
    for calibration in ("none", "synthetic"):
        yaw = -HeadPoseEstimator("bfm", calibration).estimate_batch(points, RES).angle[:, 1]
        gains.append(yaw @ true_yaw / (true_yaw @ true_yaw))
        maes.append(np.degrees(np.abs(yaw - true_yaw)).mean())
    assert 0.5 < gains[0] < 0.65 and 0.95 < gains[1] < 1.05
    assert maes[1] < 0.6 * maes[0]


def test_written_file_reads_back_as_the_w2c_of_the_estimate(dataset: Path, tmp_path: Path) -> None:
    run_poses(dataset / "landmarks", tmp_path, "ffhq", RES, "bfm", "none", progress=False, estimator="mtcnn5")
    member = "00000/img00000003"
    points = read_landmark_file(dataset / "landmarks/detections/results" / f"{member}.txt")
    est = estimate_pose(points, RES)
    mat = scipy.io.loadmat(str(tmp_path / f"{member}.mat"))
    assert {k: mat[k].shape for k in ("id", "exp", "tex", "angle", "gamma", "trans", "lm68")} == {
        "id": (1, 80), "exp": (1, 64), "tex": (1, 80), "angle": (1, 3), "gamma": (1, 27), "trans": (1, 3),
        "lm68": (1, 68, 2),
    }  # fmt: skip
    angle, trans = read_deep3dface_angle_trans(tmp_path / f"{member}.mat")
    w2c_file = deep3dface_to_w2c(torch.from_numpy(angle)[None], torch.from_numpy(trans)[None], 1.0, 1.0)
    w2c_est = deep3dface_to_w2c(
        torch.from_numpy(est.angle)[None], torch.from_numpy(est.trans)[None], 1.0, 1.0
    )
    np.testing.assert_allclose(w2c_file.numpy(), w2c_est.numpy(), atol=1e-6)  # float32 storage


def test_failures_go_to_the_fail_list_with_their_reason_and_nothing_crashes(tmp_path: Path) -> None:
    results = tmp_path / "detections" / "results" / "00000"
    results.mkdir(parents=True)
    good = np.floor(ASTRONAUT_512).astype(int)
    rows = {
        "img00000000": good,
        "img00000001": np.full((5, 2), 40),  # all equal
        "img00000002": np.stack([np.arange(5) * 30 + 10, np.arange(5) * 20 + 5], 1),  # collinear
        "img00000003": good,  # on the detector's fail list
    }
    for name, pts in rows.items():
        (results / f"{name}.txt").write_text("".join(f"{x}\t{y}\n" for x, y in pts))
    (results / "img00000004.txt").write_text("1\t2\n3\t4\n")  # truncated file
    (tmp_path / "detections" / "fail_list.txt").write_text("00000/img00000003.png\n")
    out = tmp_path / "poses"
    summary = run_poses(tmp_path / "detections", out, "ffhq", 512, progress=False, estimator="mtcnn5")
    assert (summary.images, summary.written, summary.landmark_failures, summary.pose_failures) == (5, 1, 1, 3)
    assert sorted(p.name for p in out.rglob("*.mat")) == ["img00000000.mat"]
    assert (out / "fail_list.txt").read_text().split() == [f"00000/img0000000{i}.png" for i in (3, 1, 2, 4)]
    log = dict(line.split("\t") for line in (out / "pose_failures.log").read_text().splitlines())
    assert "coincide" in log["00000/img00000001.png"] and "collinear" in log["00000/img00000002.png"]
    assert "5 lines" in log["00000/img00000004.png"]
    assert not (out / ".partial").exists()


def test_run_resumes_keeps_files_and_refuses_other_settings(dataset: Path, tmp_path: Path) -> None:
    first = run_poses(dataset / "landmarks", tmp_path, "ffhq", RES, progress=False, estimator="mtcnn5")
    target = tmp_path / "00000" / "img00000000.mat"
    write_deep3dface_mat(target, [9.0, 9.0, 9.0], [0.0, 0.0, 0.0])  # a kept file is not rewritten
    second = run_poses(
        dataset / "landmarks" / "detections", tmp_path, "ffhq", RES, progress=False, estimator="mtcnn5"
    )
    assert (first.written, second.written, second.kept) == (N_IMAGES, 0, N_IMAGES)
    assert read_deep3dface_angle_trans(target)[0].tolist() == [9.0, 9.0, 9.0]
    with pytest.raises(ValueError, match=r"other settings.*template"):
        run_poses(
            dataset / "landmarks",
            tmp_path,
            "ffhq",
            RES,
            template="synthetic",
            progress=False,
            estimator="mtcnn5",
        )
    third = run_poses(
        dataset / "landmarks",
        tmp_path,
        "ffhq",
        RES,
        "synthetic",
        overwrite=True,
        progress=False,
        estimator="mtcnn5",
    )
    assert third.written == N_IMAGES and read_deep3dface_angle_trans(target)[0][0] != 9.0


def test_metfaces_layout_writes_coeffs_by_stem_and_dataset_median_centres_pitch(
    dataset: Path, tmp_path: Path
):
    detections = tmp_path / "detections"
    (detections / "results").mkdir(parents=True)
    for f in sorted((dataset / "landmarks/detections/results").rglob("*.txt"))[:20]:
        (detections / "results" / f"{f.stem}_xflip.txt").write_text(f.read_text())
    (detections / "fail_list.txt").write_text("img00000005_xflip.png\n")
    out = tmp_path / "metfaces_poses"
    summary = run_poses(
        detections, out, "metfaces", RES, calibration="dataset-median", progress=False, estimator="mtcnn5"
    )
    assert summary.written == 19 and (out / "coeffs" / "img00000000_xflip.mat").is_file()
    assert (out / "fail_list.txt").read_text() == "img00000005_xflip.png\n"
    pitches = [read_deep3dface_angle_trans(p)[0][0] for p in (out / "coeffs").glob("*.mat")]
    assert abs(np.median(pitches)) < 1e-6 and summary.pitch_offset != 0.0


def test_validation_reports_missing_malformed_and_unmatched_files(tmp_path: Path) -> None:
    keys = [f"00000/img0000000{i}.png" for i in range(5)]
    for i in (0, 1, 3):
        write_deep3dface_mat(tmp_path / f"00000/img0000000{i}.mat", [0.1, 0.2, 0.0], [0.0, 0.0, 0.0])
    scipy.io.savemat(
        str(tmp_path / "00000/img00000001.mat"), {"angle": np.zeros((1, 2)), "trans": np.zeros((1, 3))}
    )
    wrong_id = {"angle": np.zeros((1, 3)), "trans": np.zeros((1, 3)), "id": np.zeros((1, 79))}
    scipy.io.savemat(str(tmp_path / "00000/img00000003.mat"), wrong_id)
    write_deep3dface_mat(tmp_path / "00001/img00001000.mat", [0.0] * 3, [0.0] * 3)
    (tmp_path / "fail_list.txt").write_text("00000/img00000004.png\n00000/img99999999.png\n")
    report = validate_deep3dface_folder(tmp_path, keys, "ffhq")
    assert (report.images, report.excluded, report.usable) == (5, 1, 1)
    assert report.missing == ["00000/img00000002.png"]
    assert [k for k, _ in report.malformed] == ["00000/img00000001.png", "00000/img00000003.png"]
    assert "'id' has 79 values" in report.malformed[1][1]
    assert report.unmatched_files == ["00001/img00001000.mat"]
    assert report.unknown_fail_list_entries == ["00000/img99999999.png"] and not report.ok


def test_command_line_writes_poses_and_validates_them_against_the_dataset(
    dataset: Path, tmp_path: Path, capsys
):
    args = ["--landmarks", str(dataset / "landmarks"), "--out", str(tmp_path), "--resolution", str(RES)]
    args += ["--estimator", "mtcnn5"]
    assert (
        main([*args, "--template", "synthetic", "--images", str(dataset / "images.zip"), "--no-progress"])
        == 0
    )
    assert f"{N_IMAGES} with a valid pose, 0 missing" in capsys.readouterr().out
    (tmp_path / "00000" / "img00000007.mat").unlink()
    assert main(["--validate-only", "--out", str(tmp_path), "--images", str(dataset / "images.zip")]) == 1
    assert main([*args, "--no-progress"]) == 2  # other template than the files on disk
    assert "other settings" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path)])  # neither landmarks nor --validate-only


def test_landmark_files_are_read_as_pixel_centres(tmp_path: Path) -> None:
    path = tmp_path / "a.txt"
    path.write_text("10\t20\n30\t20\n20\t30\n12\t40\n28\t40\n")
    np.testing.assert_array_equal(read_landmark_file(path)[0], [10.5, 20.5])
    path.write_text("10\t20\n30\tx\n20\t30\n12\t40\n28\t40\n")
    with pytest.raises(PoseEstimationError, match="non-numeric"):
        read_landmark_file(path)
