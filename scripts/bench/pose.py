"""Benchmark the offline head-pose estimator (``gmpi_core.preprocess.pose``): speed and pose error.

On a synthetic dataset (``synthesize_dataset``, seed 0; its true poses are in ``poses/*.mat``) it reads the
ground-truth landmark files, estimates every pose with each template / calibration / intrinsics and
prints markdown tables of

* throughput: poses/s of the batched solver and of single ``estimate_pose`` calls on one core, and of the
  whole dataset step ``run_poses`` (read landmark files, solve, write .mat files);
* error against the true poses in degrees (yaw = −angle[1], pitch = angle[0], roll = −angle[2], spec
  §1.7): mean absolute, RMS and mean (bias), plus the angle between the estimated and the true camera
  centres seen from the sphere centre after ``deep3dface_to_w2c`` (what the discriminator is shown);
* the astronaut (skimage) MTCNN landmarks and their mirror image (spec field notes §2, §4).

    python scripts/bench/pose.py                       # 1000 images at 256² (renders them once, ~3 min)
    python scripts/bench/pose.py --res 128 --n 200     # quick
    python scripts/bench/pose.py --fit                 # refit SYNTHETIC_CALIBRATIONS (seed 1, n=4000, 256²)

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
bfm+deep3dface −0.8 / +21.8 / +3.3, mirrored +0.7 / +21.8 / −3.3 (generic template of the field notes:
−5.7 / +38.3 / +2.1). Speed, one core: batched solver 4400-5900 poses/s, single ``estimate_pose`` calls
~100-300/s, ``run_poses`` incl. reading .txt and writing .mat ~1200 images/s.
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
    import torch

    from gmpi_core.camera import sphere_c2w, w2c_to_deep3dface
    from gmpi_core.config import preset
    from gmpi_core.data.synthetic import identity_and_pose, landmarks_3d

    camera = preset("FFHQ256").camera
    focal = res / (2.0 * math.tan(math.radians(camera.fov_deg) / 2.0))
    points, angles = [], []
    for i in range(n):
        params, yaw, pitch = identity_and_pose(seed, i, camera)
        c2w = sphere_c2w(
            torch.tensor([yaw], dtype=torch.float64),
            torch.tensor([pitch], dtype=torch.float64),
            camera.sphere_radius,
            camera.sphere_center_z,
        )
        angle, trans = w2c_to_deep3dface(torch.linalg.inv(c2w), camera.sphere_center_z)
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--res", type=int, default=256)
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 1)))
    parser.add_argument("--data", help="synthetic dataset folder (rendered there if missing)")
    parser.add_argument("--fit", action="store_true", help="refit the synthetic calibrations and exit")
    parser.add_argument("--fit-n", type=int, default=4000)
    args = parser.parse_args()
    if args.fit:
        fit(args)
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
            root / "landmarks", out, "ffhq", args.res, "synthetic", "synthetic", progress=False
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
