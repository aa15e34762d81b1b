"""Benchmark the offline head-pose estimators (``pose``: mtcnn5, ``pose68``: dlib68): speed and pose error.

On a synthetic dataset (``synthesize_dataset``, seed 0; its true poses are in ``poses/*.mat``) it reads the
ground-truth landmark files, estimates every pose with each template / calibration / intrinsics and
prints markdown tables of

* throughput: poses/s of the batched solver and of single ``estimate_pose`` calls on one core, and of the
  whole dataset step ``run_poses`` (read landmark files, solve, write .mat files);
* error against the true poses in degrees (yaw = −angle[1], pitch = angle[0], roll = −angle[2], spec
  §1.7): mean absolute, RMS and mean (bias), plus the angle between the estimated and the true camera
  centres seen from the sphere centre after ``deep3dface_to_w2c`` (what the discriminator is shown);
* the astronaut (skimage) MTCNN landmarks and their mirror image.

    python scripts/bench/pose.py                       # 1000 images at 256² (renders them once, ~3 min)
    python scripts/bench/pose.py --res 128 --n 200     # quick
    python scripts/bench/pose.py --fit                 # refit SYNTHETIC_CALIBRATIONS (seed 1, n=4000, 256²)
    python scripts/bench/pose.py --pipeline --res 128 --n 500   # whole pipeline, every estimator (~2 min)
    python scripts/bench/pose.py --fit68               # refit pose68's template and covariance (3 min)

**Whole pipeline** (``--pipeline``): image → detector → landmarks → pose for every estimator side by side
(``mtcnn5``: MTCNN's 5 landmarks as the landmark files hold them → ``HeadPoseEstimator``; ``dlib68``: the
image → ``pose68.Dlib68PoseEstimator``, the MTCNN landmarks as hint), on held-out synthetic heads (seed 0;
the 68-point template was fitted on seed 1), then the astronaut and its mirror image, and the 100 LFW faces
of ``skimage.data.lfw_subset`` (×4). Measured on the development box, 500 heads at 128², errors over the
465 heads MTCNN found (the issue's goal: yaw and pitch MAE ≤ 2.5°, roll ≤ 1.5°):

| estimator | yaw MAE | pitch MAE | roll MAE | bias y/p | median y/p | gain y/p | no pose | s/img |
|---|---|---|---|---|---|---|---|---|
| mtcnn5 bfm | 3.78 | 6.57 | 1.86 | −1.05 / −5.53 | 3.22 / 5.56 | 0.79 / 0.37 | 35 | — |
| mtcnn5 synthetic | 5.63 | 10.52 | 1.68 | −1.73 / −10.25 | 5.23 / 9.70 | 1.25 / 0.67 | 35 | — |
| dlib68 independent | 3.44 | 4.12 | 1.16 | −0.11 / +0.17 | 2.70 / 3.33 | 1.03 / 0.64 | 0 | 0.052 |
| **dlib68** | **2.60** | **2.69** | **0.79** | −0.13 / +0.36 | 1.89 / 2.02 | 0.92 / 0.64 | 0 | 0.056 |
| shape basis (×) | 3.37 | 3.41 | 0.87 | −0.10 / +0.46 | 2.64 / 2.77 | 1.05 / 0.57 | 0 | +0.02 |
| cov. of 7-view grids (×) | 2.85 | 3.75 | 0.94 | −0.16 / +0.26 | 2.27 / 3.09 | 0.92 / 0.39 | 0 | +0.01 |

(s/img: the pose step alone, on a quiet box (0.085-0.14 s/img when busy); MTCNN's landmark step before it
costs ~0.08 s/img here, and ``mtcnn5``'s solver ~0.2 ms. Gain: slope of the estimated on the true angle;
answering 0° for every head would score a pitch MAE of 5.33, so a gain below 1 lowers the MAE on these
narrow synthetic poses without measuring more.) ``dlib68 independent``: ``Dlib68PoseEstimator(noise_model=
"independent")``, the weighted, reweighted PnP alone (the estimator before issue 17's second round);
``dlib68``: the default, the generalised least squares with the landmarks' residual covariance after it.
(×): variants of the second round of issue 17 on the same landmarks, not kept (``pose68`` docstring): the
joint pose + 20-mode shape fit of a PCA face model of seed-1 identities, and the residual covariance fitted
on 7-view grids of seed-1 identities instead of the heads' own poses. Goal met for roll; missed for yaw by
0.1° and for pitch by 0.2°: the ``pose68`` docstring explains why. Real photos (yaw / pitch / roll,
degrees; the camera convention puts a frontal astronaut at −3.3° pitch, LFW faces at ~0):

| estimator | astronaut | mirrored | Δ: yaw+, pitch−, roll+ | LFW pitch (posed) |
|---|---|---|---|---|
| mtcnn5 bfm | −2.3 / +26.7 / +2.5 | −0.0 / +23.0 / −3.0 | −2.31 / +3.67 / −0.55 | +3.0 (95) |
| mtcnn5 synthetic | −2.3 / +31.8 / +2.2 | +0.5 / +30.4 / −3.1 | −1.81 / +1.48 / −0.83 | +1.6 (95) |
| dlib68 independent | −3.3 / +0.1 / +3.0 | +3.3 / +0.1 / −3.0 | 0.00 / 0.00 / 0.00 | −3.8 (97) |
| **dlib68** | +0.5 / −2.7 / +2.2 | −0.5 / −2.7 / −2.2 | 0.00 / 0.00 / 0.00 | −0.6 (97) |
| shape basis (×) | −10.8 / +3.0 / +3.0 | +10.8 / +3.0 / −3.0 | 0.00 / 0.00 / 0.00 | −0.9 (97) |
| cov. of 7-view grids (×) | +4.1 / −15.0 / +0.9 | −4.1 / −15.0 / −0.9 | 0.00 / 0.00 / 0.00 | −2.6 (97) |

(Δ: yaw + mirrored yaw, pitch − mirrored pitch, roll + mirrored roll; LFW: median pitch.) Between the two
tables, "Why the pitch gain is below 1" (issue 17, third round) prints on the same heads: the exact 5
landmarks against their mean 3D face through the same camera (gain yaw / pitch 1.012 / 1.011, MAE 2.65 /
5.00: the camera and solver add no gain); dlib68's pitch divided by its own gain (MAE 3.18 against 2.69: a
correction would not reach the goal either); and how far dlib's points move with the true angles relative to
``TEMPLATE68``'s rigid motion (vertical with pitch / horizontal with yaw: all 0.71 / 1.08; jaw −0.39 /
1.20, brows 0.44 / 1.10, nose 0.83 / 1.04, eyes 0.91 / 1.05, mouth 0.35 / 1.12).

**From the landmark files** (the default mode, ``mtcnn5`` only).
Measured on the 2-core development box (shared with other jobs, so throughput is approximate): 1000
images of seed 0 at 256², landmarks = the dataset's floored pixel indices, errors in degrees:

| template  | calib.    | intrinsics | yaw MAE / RMS / bias | pitch MAE / RMS / bias | roll MAE | centre |
|-----------|-----------|------------|----------------------|------------------------|----------|--------|
| synthetic | synthetic | gmpi       | 2.70 / 3.52 / +0.17  | 5.21 / 6.51 / −0.01    | 0.69     | 6.15   |
| synthetic | none      | gmpi       | 2.69 / 3.51 / +0.17  | 5.11 / 6.38 / +0.05    | 0.69     | 6.06   |
| bfm       | none      | gmpi       | 5.32 / 6.42 / −0.14  | 4.37 / 5.37 / +0.08    | 1.43     | 7.32   |
| bfm       | synthetic | gmpi       | 2.16 / 2.83 / +0.14  | 5.97 / 7.47 / −0.05    | 1.43     | 6.56   |
| bfm       | none      | deep3dface | 5.29 / 6.38 / −0.16  | 4.28 / 5.25 / +0.84    | 1.35     | 7.40   |
| bfm       | synthetic | deep3dface | 2.07 / 2.72 / +0.10  | 5.72 / 7.14 / −0.05    | 1.35     | 6.37   |

(centre: MAE of the camera-centre direction after ``deep3dface_to_w2c``. Raw ``bfm`` yaw has gain 0.57
on these flat-nosed heads, hidden in its small mean bias; the calibration restores gain 1. Its raw pitch
MAE looks smaller because a gain of 0.6 shrinks the errors along with the poses.)
Astronaut 512² (yaw / pitch / roll): bfm+gmpi −1.8 / +27.9 / +3.2, mirrored +1.8 / +27.9 / −3.2;
bfm+deep3dface −0.8 / +21.8 / +3.3, mirrored +0.7 / +21.8 / −3.3 (a generic template, as users of the
original reported: −5.7 / +38.3 / +2.1). Speed, one core: batched solver 4400-5900 poses/s, single
``estimate_pose`` calls ~100-300/s, ``run_poses`` incl. reading .txt and writing .mat ~1200 images/s.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):  # one core, before numpy loads
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import math  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Literal  # noqa: E402

import numpy as np  # noqa: E402

from gmpi_core.preprocess.pose import (  # noqa: E402
    HeadPoseEstimator,
    estimate_pose,
    fit_calibration,
    project_landmarks,
    read_landmark_file,
    run_poses,
)

ASTRONAUT_512 = np.array([[205.0, 101.7], [246.8, 103.7], [224.7, 129.0], [201.7, 139.2], [245.3, 141.9]])
SETTINGS: list[tuple[str, str, Literal["gmpi", "deep3dface"]]] = [  # (template, calibration, intrinsics)
    ("synthetic", "synthetic", "gmpi"),
    ("synthetic", "none", "gmpi"),
    ("bfm", "none", "gmpi"),
    ("bfm", "synthetic", "gmpi"),
    ("bfm", "none", "deep3dface"),
    ("bfm", "synthetic", "deep3dface"),
]


def synthetic_landmarks(seed: int, n: int, res: int) -> tuple[np.ndarray, np.ndarray]:
    """Landmarks [n, 5, 2] (pixel indices + 0.5, exactly as the dataset files hold them) and true
    Deep3DFace angles [n, 3] of synthetic heads ``0..n-1`` of ``seed`` at ``res``², without ray casting."""
    from gmpi_core.camera import camera_deep3dface
    from gmpi_core.config import preset
    from gmpi_core.data.synthetic import identity_and_pose, landmarks_3d

    camera = preset("FFHQ256").camera
    focal = res / (2.0 * math.tan(math.radians(camera.fov_deg) / 2.0))
    points, angles = [], []
    for i in range(n):
        params, yaw, pitch = identity_and_pose(seed, i, camera)
        angle, trans = camera_deep3dface(camera, yaw, pitch)
        face = 10.0 * (landmarks_3d(params) - [0.0, 0.0, camera.sphere_center_z]) * [1.0, -1.0, -1.0]
        uv = project_landmarks(
            face / camera.sphere_radius, angle.numpy(), trans.numpy(), focal, [res / 2] * 2
        )
        points.append(np.floor(uv[0]) + 0.5)
        angles.append(angle[0].numpy())
    return np.array(points), np.array(angles)


def fit(args: argparse.Namespace) -> None:
    points, true = synthetic_landmarks(1, args.fit_n, 256)
    print(f"# fit_calibration on {args.fit_n} synthetic heads of seed 1 at 256²")
    for template in ("bfm", "synthetic"):
        for intrinsics in ("gmpi", "deep3dface"):
            raw = HeadPoseEstimator(template, "none", intrinsics).estimate_batch(points, 256).angle
            c = fit_calibration(raw, true, "synthetic", template, intrinsics)
            print(
                f'    ("{template}", "{intrinsics}"): Calibration("synthetic", "{template}", "{intrinsics}", '
                f"{c.pitch_offset:.6f}, {c.pitch_gain:.6f}, {c.pitch_yaw2:.6f}, {c.yaw_gain:.6f}, "
                f"fitted_on=_FITTED_ON),"
            )


def dataset(args: argparse.Namespace) -> Path:
    from gmpi_core.data.synthetic import synthesize_dataset

    root = Path(args.data or Path(tempfile.gettempdir()) / f"gmpi_bench_pose_{args.res}_{args.n}")
    if not (root / "meta.json").is_file():
        t0 = time.perf_counter()
        synthesize_dataset(root, res=args.res, n=args.n, seed=0, workers=args.workers, progress=True)
        print(
            f"rendered {args.n} synthetic heads at {args.res}² into {root} "
            f"in {time.perf_counter() - t0:.0f} s"
        )
    return root


def camera_centre_error(angle: np.ndarray, trans: np.ndarray, true_angle: np.ndarray, true_trans: np.ndarray):
    """Angle [N] (degrees) between estimated and true GMPI camera centres seen from the sphere centre."""
    import torch

    from gmpi_core.camera import deep3dface_to_w2c

    def centres(a: np.ndarray, t: np.ndarray) -> np.ndarray:
        w2c = deep3dface_to_w2c(torch.from_numpy(a), torch.from_numpy(t), 1.0, 1.0).numpy()
        c = -np.einsum("nji,nj->ni", w2c[:, :3, :3], w2c[:, :3, 3]) - [0.0, 0.0, 1.0]
        return c / np.linalg.norm(c, axis=1, keepdims=True)

    cos = (centres(angle, trans) * centres(true_angle, true_trans)).sum(1)
    return np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))


PIPELINE_ESTIMATORS = [  # (label, estimator, template or dlib68 noise model, calibration) of the comparison
    ("mtcnn5 bfm", "mtcnn5", "bfm", "none"),
    ("mtcnn5 synthetic", "mtcnn5", "synthetic", "none"),
    ("dlib68 independent", "dlib68", "independent", "none"),
    ("dlib68", "dlib68", "covariance", "none"),
]
_LANDMARKS68: dict[int, tuple[list[np.ndarray], np.ndarray, float]] = {}  # id(images) → (images, points, s)


def _mtcnn_files(images: list[np.ndarray]) -> np.ndarray:
    """MTCNN landmarks [N, 5, 2] as ``gmpi prep landmarks`` writes them and ``read_landmark_file`` reads
    them back (int() + 0.5); NaN where no face was found."""
    from gmpi_core.preprocess.mtcnn import default_detector

    detector = default_detector()
    out = np.full((len(images), 5, 2), np.nan)
    for a in range(0, len(images), 32):
        for i, faces in enumerate(detector.detect(images[a : a + 32])):
            first = faces.first()
            if first is not None:
                out[a + i] = np.trunc(first.landmarks) + 0.5
    return out


def _poses(label: str, images: list[np.ndarray], five: np.ndarray, size: int | tuple[int, int]):
    """Deep3DFace angles [N, 3] (NaN: failed) of ``images`` by the estimator ``label`` and seconds per
    image of the pose step (the landmark step before it not counted)."""
    from gmpi_core.preprocess.pose68 import Dlib68PoseEstimator

    _, estimator, template, calibration = next(e for e in PIPELINE_ESTIMATORS if e[0] == label)
    t0 = time.perf_counter()
    if estimator == "mtcnn5":
        angle = HeadPoseEstimator(template, calibration).estimate_batch(five, size).angle
    else:  # the landmarks once per image list, then each noise model
        est = Dlib68PoseEstimator(noise_model=template)  # type: ignore[arg-type]
        if id(images) not in _LANDMARKS68:
            hints = [f if np.isfinite(f).all() else None for f in five]
            points, _ = est.landmarks_of_images(images, hints)
            _LANDMARKS68[id(images)] = (images, points, time.perf_counter() - t0)
        _, points, landmark_seconds = _LANDMARKS68[id(images)]
        t0 = time.perf_counter() - landmark_seconds
        angle = est.estimate_landmarks_batch(points, size).angle
    return angle, (time.perf_counter() - t0) / max(1, len(images))


def _cells(angle: np.ndarray) -> str:
    return " / ".join(
        f"{v:+.1f}" for v in (-math.degrees(angle[1]), math.degrees(angle[0]), -math.degrees(angle[2]))
    )


def pipeline(args: argparse.Namespace) -> None:
    """The whole pipeline image → detector → landmarks → pose on held-out synthetic heads and real photos."""
    import skimage.data

    from gmpi_core.preprocess.pose68 import TEMPLATE68_FIT, synthetic_views

    assert args.seed != TEMPLATE68_FIT["seed"], "the 68-point template was fitted on this seed"
    views = list(synthetic_views(args.seed, range(args.n), args.res))
    images = [v[0] for v in views]
    true_angle = np.stack([v[1] for v in views])
    five = _mtcnn_files(images)
    found = np.isfinite(five).all(axis=(1, 2))
    results = {label: _poses(label, images, five, args.res) for label, *_ in PIPELINE_ESTIMATORS}
    common = found & np.all([np.isfinite(a).all(1) for a, _ in results.values()], axis=0)
    print(
        f"\n## Whole pipeline on {args.n} held-out synthetic heads (seed {args.seed}) at {args.res}², "
        f"degrees\n\nMTCNN found a face in {found.sum()}/{args.n}; errors over the {common.sum()} images "
        f"every estimator posed (yaw = −angle[1], pitch = angle[0], roll = −angle[2]).\n"
    )
    print(
        "| estimator | yaw MAE | pitch MAE | roll MAE | yaw bias | pitch bias | yaw median | pitch median "
        "| yaw gain | pitch gain | failed | goal (2.5 / 2.5 / 1.5) | s/img |"
    )
    print("|---" * 13 + "|")
    for label, (angle, seconds) in results.items():
        err = np.degrees(angle[common] - true_angle[common]) * [1.0, -1.0, -1.0]  # pitch, yaw, roll
        mae, bias, med = np.abs(err).mean(0), err.mean(0), np.median(np.abs(err), 0)
        goal = "met" if mae[1] <= 2.5 and mae[0] <= 2.5 and mae[2] <= 1.5 else "missed"
        failed = int((~np.isfinite(angle).all(1)).sum())
        # gain: slope of the estimated on the true angle (1: unbiased; < 1: pulled toward frontal, which
        # lowers the MAE on this narrow pose prior without measuring more; pose68 docstring)
        gain = [np.polyfit(true_angle[common, j], angle[common, j], 1)[0] for j in (1, 0)]
        print(
            f"| {label} | {mae[1]:.2f} | {mae[0]:.2f} | {mae[2]:.2f} | {bias[1]:+.2f} | {bias[0]:+.2f} | "
            f"{med[1]:.2f} | {med[0]:.2f} | {gain[0]:.2f} | {gain[1]:.2f} | {failed} | {goal} "
            f"| {seconds:.3f} |"
        )

    _pitch_diagnostics(args, views, images, common, results)

    astronaut = skimage.data.astronaut()
    photos = [astronaut, np.ascontiguousarray(astronaut[:, ::-1])]
    five_photo = _mtcnn_files(photos)
    print(
        "\n## Real photos: the astronaut (512², frontal) and its mirror image, yaw / pitch / roll, "
        "degrees\n\nGoal: the mirror flips yaw and roll and keeps pitch within 3°. The camera convention: a "
        "frontal face above the image centre is seen from below (pose.py, pose68.py), here "
        f"{_convention_pitch(five_photo[0], 512):+.1f}° of pitch.\n"
    )
    print("| estimator | astronaut | mirrored | yaw + yaw' | pitch − pitch' | roll + roll' |")
    print("|---|---|---|---|---|---|")
    for label, *_ in PIPELINE_ESTIMATORS:
        angle, _ = _poses(label, photos, five_photo, 512)
        yaw_sum, roll_sum = -np.degrees(angle[0, 1] + angle[1, 1]), -np.degrees(angle[0, 2] + angle[1, 2])
        pitch_diff = np.degrees(angle[0, 0] - angle[1, 0])
        print(
            f"| {label} | {_cells(angle[0])} | {_cells(angle[1])} | {yaw_sum:+.2f} | {pitch_diff:+.2f} "
            f"| {roll_sum:+.2f} |"
        )

    faces = (skimage.data.lfw_subset()[:100] * 255).round().astype(np.uint8)  # the first 100 are faces
    lfw = [np.ascontiguousarray(np.kron(f, np.ones((4, 4), np.uint8))[..., None].repeat(3, 2)) for f in faces]
    five_lfw = _mtcnn_files(lfw)
    print(
        "\n## Frontal real faces: the 100 LFW faces of skimage (25² crops centred on the face, ×4), pitch in "
        "degrees\n\nLFW faces are mostly frontal and centred, so the camera convention adds ~0 here; a "
        "systematic offset is the estimator's.\n"
    )
    print("| estimator | posed | median pitch | mean pitch | median abs yaw |\n|---|---|---|---|---|")
    for label, *_ in PIPELINE_ESTIMATORS:
        angle, _ = _poses(label, lfw, five_lfw, 100)
        ok = np.isfinite(angle).all(1)
        pitch, yaw = np.degrees(angle[ok, 0]), np.degrees(angle[ok, 1])
        print(
            f"| {label} | {ok.sum()}/100 | {np.median(pitch):+.1f} | {pitch.mean():+.1f} | "
            f"{np.median(np.abs(yaw)):.1f} |"
        )


def _face_points5(seed: int, index: int) -> np.ndarray:
    """The 5 true 3D landmarks of synthetic head (seed, index) in Deep3DFace's face frame (method §1.6)."""
    from gmpi_core.config import preset
    from gmpi_core.data.synthetic import identity_and_pose, landmarks_3d

    camera = preset("FFHQ256").camera
    world = landmarks_3d(identity_and_pose(seed, index, camera)[0]) - [0.0, 0.0, camera.sphere_center_z]
    return 10.0 * world * [1.0, -1.0, -1.0] / camera.sphere_radius


def _pitch_diagnostics(
    args: argparse.Namespace, views: list, images: list[np.ndarray], common: np.ndarray, results: dict
) -> None:
    """Where dlib68's pitch gain below 1 comes from (issue 17): not the camera or the solver (the exact 5
    landmarks against their mean face: gain 1), but the landmarks: per landmark group, how far dlib's points
    move with the true pitch (vertically) and yaw (horizontally) relative to the rigid template's motion."""
    from gmpi_core.preprocess.pnp import camera_pose_to_deep3dface, deep3dface_camera_pose, solve_pnp
    from gmpi_core.preprocess.pose68 import TEMPLATE68, TEMPLATE68_FIT, landmark_residuals68

    true_angle = np.stack([v[1] for v in views])[common]
    true_trans = np.stack([v[2] for v in views])[common]
    focal = args.res / (2.0 * math.tan(math.radians(12.6) / 2.0))
    n = int(common.sum())
    mean_face = np.mean([_face_points5(TEMPLATE68_FIT["seed"], i) for i in range(500)], axis=0)
    exact = np.stack([v[3] for v in views])[common]  # the renderer's exact projections of the 5 3D points
    solution = solve_pnp(
        exact, mean_face, np.full(n, focal), np.full((n, 2), args.res / 2), 30, np.ones((n, 5))
    )
    oracle = camera_pose_to_deep3dface(solution.rot, solution.t)[0]

    def gain(angle: np.ndarray, j: int) -> float:
        return float(np.polyfit(true_angle[:, j], angle[:, j], 1)[0])

    oracle_mae = np.degrees(np.abs(oracle - true_angle)).mean(0)
    print(
        "\n## Why the pitch gain is below 1 (same heads)\n\nCamera and solver: the exact 5 landmarks "
        f"against their mean 3D face (seed {TEMPLATE68_FIT['seed']}) through the same camera: gain yaw / "
        f"pitch {gain(oracle, 1):.3f} / {gain(oracle, 0):.3f} "
        f"(MAE {oracle_mae[1]:.2f} / {oracle_mae[0]:.2f}: "
        "the heads' proportions vary). dlib68's pitch divided by its own gain (a fitted correction, "
        "which the issue rules out, shown to size the problem): "
    )
    angle = results["dlib68"][0][common]
    g = gain(angle, 0)
    corrected = np.degrees(np.abs(angle[:, 0] / g - true_angle[:, 0])).mean()
    plain = np.degrees(np.abs(angle[:, 0] - true_angle[:, 0])).mean()
    print(
        f"MAE {corrected:.2f} (gain {g:.2f}), against {plain:.2f} without: un-shrinking amplifies the "
        "noise more than it removes the bias.\n\ndlib's landmarks against TEMPLATE68 at the true pose: "
        "response = 1 + (slope of the residual on the true angle) / (the template's own motion per "
        "radian), both centred over the group's points and pooled (1: the points move as rigidly as the "
        "template says).\n"
    )
    points = _LANDMARKS68[id(images)][1][common]
    r = landmark_residuals68(points, true_angle, true_trans, focal, args.res / 2, TEMPLATE68)
    base = np.zeros((1, 3))
    step = 1e-4

    def motion(j: int) -> np.ndarray:  # image motion [68, 2] of the template per radian of angle j
        d = np.zeros((1, 3))
        d[0, j] = step
        (r0, t0), (r1, t1) = deep3dface_camera_pose(base, base), deep3dface_camera_pose(d, base)
        p0, p1 = TEMPLATE68 @ r0[0].T + t0[0], TEMPLATE68 @ r1[0].T + t1[0]
        return (p1[:, :2] / p1[:, 2:] - p0[:, :2] / p0[:, 2:]) * t0[0, 2] / step

    design = np.stack([np.ones(n), true_angle[:, 0], true_angle[:, 1]], 1)
    slopes = np.linalg.lstsq(design, r.reshape(n, 136), rcond=None)[0].reshape(3, 68, 2)
    groups = {"jaw 0-16": range(17), "brows 17-26": range(17, 27), "nose 27-35": range(27, 36),
              "eyes 36-47": range(36, 48), "mouth 48-67": range(48, 68), "all": range(68)}  # fmt: skip
    print("| points | vertical response to pitch | horizontal response to yaw |\n|---|---|---|")
    for name, span in groups.items():
        idx = list(span)
        cells = []
        for row, j, c in ((1, 0, 1), (2, 1, 0)):  # (pitch → image y), (yaw → image x)
            m = motion(j)[idx, c] - motion(j)[idx, c].mean()
            s = slopes[row, idx, c] - slopes[row, idx, c].mean()
            cells.append(1.0 + float(m @ s / (m @ m)))
        print(f"| {name} | {cells[0]:.2f} | {cells[1]:.2f} |")


def _convention_pitch(five: np.ndarray, res: int) -> float:
    """Pitch (degrees) a face parallel to the optical axis gets at the landmarks' height: −atan(dy/f)."""
    focal = res / (2.0 * math.tan(math.radians(12.6) / 2.0))
    return -math.degrees(math.atan((res / 2.0 - float(np.nanmean(five[:, 1]))) / focal))


def fit68() -> None:
    """Refit ``pose68.TEMPLATE68`` (printed, to paste) and, against the shipped template, the residual
    covariance (written to ``gmpi_core/assets/pose68_residual_cov.npz``), on the same heads."""
    from gmpi_core.preprocess.pose68 import (
        RESIDUAL_COV68_FILE,
        TEMPLATE68,
        TEMPLATE68_FIT,
        fit_residual_cov68,
        save_residual_cov68,
        symmetrize68,
        synthetic_landmarks68,
        triangulate,
    )

    seed, n, res = TEMPLATE68_FIT["seed"], TEMPLATE68_FIT["n"], TEMPLATE68_FIT["res"]
    print(f"# fit_template68 and fit_residual_cov68 on {TEMPLATE68_FIT}")
    points, angles, trans = synthetic_landmarks68(seed, n, res, progress=True)
    focal = res / (2.0 * math.tan(math.radians(12.6) / 2.0))
    template = np.round(symmetrize68(triangulate(points, angles, trans, focal, res / 2.0)), 4) + 0.0
    print("\n".join(f"        [{', '.join(repr(float(v)) for v in row)}]," for row in template))
    if not np.array_equal(template, TEMPLATE68):
        print("# the template changed: paste it into pose68.py and rerun --fit68 for the covariance")
    cov = fit_residual_cov68(points, angles, trans, focal, res / 2.0, TEMPLATE68)
    save_residual_cov68(cov, seed=seed, n=n, res=res)
    print(f"# wrote {RESIDUAL_COV68_FILE} (RMS residual {math.sqrt(np.diag(cov).mean()):.4f} dm)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--res", type=int, default=256)
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 1)))
    parser.add_argument("--data", help="synthetic dataset folder (rendered there if missing)")
    parser.add_argument("--fit", action="store_true", help="refit the synthetic calibrations and exit")
    parser.add_argument("--fit-n", type=int, default=4000)
    parser.add_argument(
        "--pipeline",
        action="store_true",
        help="whole pipeline (image → detector → landmarks → pose) for every estimator side by side, on "
        "--n held-out synthetic heads of --seed at --res², the astronaut and LFW faces",
    )
    parser.add_argument("--seed", type=int, default=0, help="synthetic seed of --pipeline (not 1)")
    parser.add_argument(
        "--fit68",
        action="store_true",
        help="refit pose68.TEMPLATE68 (printed) and its residual covariance (written to gmpi_core/assets)",
    )
    args = parser.parse_args()
    if args.fit:
        fit(args)
        return
    if args.fit68:
        fit68()
        return
    if args.pipeline:
        pipeline(args)
        return

    from gmpi_core.data.poses import read_deep3dface_angle_trans

    root = dataset(args)
    results = root / "landmarks" / "detections" / "results"
    files = sorted(results.rglob("*.txt"))
    points = np.stack([read_landmark_file(f) for f in files])
    truth = [
        read_deep3dface_angle_trans(root / "poses" / f.relative_to(results).with_suffix(".mat"))
        for f in files
    ]
    true_angle, true_trans = np.stack([t[0] for t in truth]), np.stack([t[1] for t in truth])

    print(f"\n## Speed ({len(files)} images at {args.res}², one core)\n")
    print("| what | poses/s |\n|---|---|")
    estimator = HeadPoseEstimator("synthetic", "synthetic")
    for template in ("synthetic", "bfm"):
        est = HeadPoseEstimator(template)
        est.estimate_batch(points[:8], args.res)
        t0 = time.perf_counter()
        est.estimate_batch(points, args.res)
        print(f"| batched solver, template {template} | {len(points) / (time.perf_counter() - t0):.0f} |")
    k = min(200, len(points))
    t0 = time.perf_counter()
    for p in points[:k]:
        estimate_pose(p, args.res, "synthetic", "synthetic")
    print(f"| single estimate_pose calls | {k / (time.perf_counter() - t0):.0f} |")
    with tempfile.TemporaryDirectory() as out:
        summary = run_poses(
            root / "landmarks",
            out,
            "ffhq",
            args.res,
            "synthetic",
            "synthetic",
            progress=False,
            estimator="mtcnn5",
        )
        print(f"| run_poses (read .txt, solve, write .mat) | {summary.images / summary.seconds:.0f} |")

    print(f"\n## Error against the true poses ({len(files)} images at {args.res}², degrees)\n")
    print(
        "| template | calibration | intrinsics | yaw MAE | yaw RMS | yaw bias | pitch MAE | pitch RMS "
        "| pitch bias | roll MAE | roll RMS | camera-centre MAE | failed |"
    )
    print("|---" * 13 + "|")
    for template, calibration, intrinsics in SETTINGS:
        estimator = HeadPoseEstimator(template, calibration, intrinsics)
        batch = estimator.estimate_batch(points, args.res)
        ok = np.isfinite(batch.angle).all(1)
        err = np.degrees(batch.angle[ok] - true_angle[ok]) * [1.0, -1.0, -1.0]  # (pitch, yaw, roll)
        mae, rms, bias = np.abs(err).mean(0), np.sqrt((err**2).mean(0)), err.mean(0)
        centre = camera_centre_error(batch.angle[ok], batch.trans[ok], true_angle[ok], true_trans[ok]).mean()
        print(
            f"| {template} | {calibration} | {intrinsics} | {mae[1]:.2f} | {rms[1]:.2f} | {bias[1]:+.2f} | "
            f"{mae[0]:.2f} | {rms[0]:.2f} | {bias[0]:+.2f} | {mae[2]:.2f} | {rms[2]:.2f} | {centre:.2f} | "
            f"{(~ok).sum()} |"
        )

    print("\n## Astronaut (512², MTCNN landmarks) and its mirror image: yaw / pitch / roll, degrees\n")
    mirrored = ASTRONAUT_512[[1, 0, 2, 4, 3]] * [-1.0, 1.0] + [512.0, 0.0]
    print(
        "| template | calibration | intrinsics | astronaut | mirrored | reprojection px |\n"
        "|---|---|---|---|---|---|"
    )
    for template, calibration, intrinsics in SETTINGS:
        poses = [estimate_pose(p, 512, template, calibration, intrinsics) for p in (ASTRONAUT_512, mirrored)]
        cells = [" / ".join(f"{math.degrees(v):+.1f}" for v in (e.yaw, e.pitch, e.roll)) for e in poses]
        print(
            f"| {template} | {calibration} | {intrinsics} | {cells[0]} | {cells[1]} "
            f"| {poses[0].reproj_err_px:.2f} |"
        )


if __name__ == "__main__":
    main()
