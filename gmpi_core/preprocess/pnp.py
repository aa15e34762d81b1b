"""The landmark → head-pose solver: Deep3DFace's camera conventions, robust PnP against a 3D template,
calibrations, and the batched estimator (what ``gmpi_core.preprocess.pose``'s docstring describes: the
model, the solver and its bias). The dataset step and the CLI, which choose between this 5-point path and
the 68-point one (``pose68``, built on this module), live in ``gmpi_core.preprocess.pose``."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Literal, NamedTuple

import numpy as np
from numpy.typing import ArrayLike

from gmpi_core.preprocess.template import FaceTemplate, get_template

Intrinsics = Literal["gmpi", "deep3dface"]


@dataclass(frozen=True)
class _Deep3DFaceCamera:
    """Deep3DFaceRecon's camera (method §1.2): focal and principal point in its crop, and its distance."""

    focal: float = 1015.0
    center: float = 112.0
    crop_size: int = 224
    rescale_factor: float = 102.0  # align_img: the template's POS scale is mapped to this many px/dm
    distance: float = 10.0


DEEP3DFACE_CAMERA = _Deep3DFaceCamera()
_FLIP = np.array([1.0, -1.0, -1.0])  # F = diag(1, −1, −1): Deep3DFace axes ↔ OpenCV camera axes (method §1.6)
DEFAULT_FOV_DEG = 12.6  # FFHQ / MetFaces (docs/method.md §1.2)


class PoseEstimationError(ValueError):
    """The landmarks of one image give no usable pose; the message says why."""


# --- rotations and the Deep3DFace camera (method §1.6) ------------------------------------------------------


def euler_to_rotation(angle: ArrayLike) -> np.ndarray:
    """R [..., 3, 3] = R_z(a₂) R_y(a₁) R_x(a₀) of Euler angles [..., 3] in radians (Deep3DFace, §1.6)."""
    a, b, g = np.moveaxis(np.asarray(angle, np.float64), -1, 0)
    ca, sa, cb, sb, cg, sg = np.cos(a), np.sin(a), np.cos(b), np.sin(b), np.cos(g), np.sin(g)
    return np.stack(
        [
            np.stack([cg * cb, cg * sb * sa - sg * ca, cg * sb * ca + sg * sa], -1),
            np.stack([sg * cb, sg * sb * sa + cg * ca, sg * sb * ca - cg * sa], -1),
            np.stack([-sb, cb * sa, cb * ca], -1),
        ],
        -2,
    )


def euler_from_rotation(rot: np.ndarray) -> np.ndarray:
    """Euler angles [..., 3] (a₀, a₁, a₂) with R = R_z(a₂) R_y(a₁) R_x(a₀), a₁ ∈ [−π/2, π/2]."""
    rot = np.asarray(rot, np.float64)
    a = np.arctan2(rot[..., 2, 1], rot[..., 2, 2])
    b = np.arctan2(-rot[..., 2, 0], np.hypot(rot[..., 2, 1], rot[..., 2, 2]))
    g = np.arctan2(rot[..., 1, 0], rot[..., 0, 0])
    return np.stack([a, b, g], -1)


def deep3dface_camera_pose(angle: ArrayLike, trans: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """The face→camera transform P = rot·X + t [..., 3, 3], [..., 3] in OpenCV camera axes of a
    Deep3DFace pose: rot = F·R(angle), t = F·trans + 10ẑ (module docstring)."""
    rot = _FLIP[:, None] * euler_to_rotation(angle)
    t = _FLIP * np.asarray(trans, np.float64)
    t[..., 2] += DEEP3DFACE_CAMERA.distance
    return rot, t


def camera_pose_to_deep3dface(rot: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of ``deep3dface_camera_pose``: (angle [..., 3], trans [..., 3]) of a face→camera transform."""
    t = np.array(t, np.float64)
    t[..., 2] -= DEEP3DFACE_CAMERA.distance
    return euler_from_rotation(_FLIP[:, None] * np.asarray(rot, np.float64)), _FLIP * t


def project_landmarks(
    template: ArrayLike, angle: ArrayLike, trans: ArrayLike, focal: ArrayLike, center: ArrayLike
) -> np.ndarray:
    """Pixel positions [N, K, 2] of template points [K, 3] posed by angle, trans [N, 3] through pinholes
    with focal [N] and principal point center [N, 2] (pixel-edge coordinates, docs/method.md §1.2)."""
    rot, t = deep3dface_camera_pose(np.atleast_2d(angle), np.atleast_2d(trans))
    points = np.einsum("nij,kj->nki", rot, np.asarray(template, np.float64)) + t[:, None, :]
    focal = np.broadcast_to(np.asarray(focal, np.float64), (len(rot),))
    return focal[:, None, None] * points[..., :2] / points[..., 2:] + np.atleast_2d(center)[:, None, :]


# --- the solver --------------------------------------------------------------------------------------------


class PnPSolution(NamedTuple):
    """Face→camera transforms (OpenCV axes) ``rot`` [N, 3, 3], ``t`` [N, 3] and the RMS reprojection error
    per landmark ``rms_px`` [N] (inf where no finite solution was found)."""

    rot: np.ndarray
    t: np.ndarray
    rms_px: np.ndarray


def _skew(v: np.ndarray) -> np.ndarray:
    """[v]× [..., 3, 3] of vectors [..., 3]."""
    out = np.zeros((*v.shape, 3))
    out[..., 0, 1], out[..., 0, 2], out[..., 1, 2] = -v[..., 2], v[..., 1], -v[..., 0]
    out[..., 1, 0], out[..., 2, 0], out[..., 2, 1] = v[..., 2], -v[..., 1], v[..., 0]
    return out


def _rodrigues(omega: np.ndarray) -> np.ndarray:
    """exp([ω]×) [N, 3, 3] of rotation vectors [N, 3]."""
    theta = np.linalg.norm(omega, axis=-1)[:, None, None]
    k = _skew(omega)
    small = theta < 1e-8
    safe = np.where(small, 1.0, theta)
    a = np.where(small, 1.0, np.sin(safe) / safe)
    b = np.where(small, 0.5, (1.0 - np.cos(safe)) / safe**2)
    return np.eye(3) + a * k + b * (k @ k)


def _residuals(
    rot: np.ndarray, t: np.ndarray, template: np.ndarray, m: np.ndarray, sqrt_w: np.ndarray | None = None
) -> tuple[np.ndarray, ...]:
    """Camera points P [N, K, 3], normalised reprojection residuals [N, K, 2] (times the square roots of
    the point weights [N, K] if given) and the cost [N] (inf where a point is not in front of the camera)."""
    p = np.einsum("nij,kj->nki", rot, template) + t[:, None, :]
    z = p[..., 2]
    in_front = (z > 1e-9).all(axis=1)
    residual = p[..., :2] / np.where(z > 1e-9, z, 1.0)[..., None] - m
    if sqrt_w is not None:
        residual = residual * sqrt_w[..., None]
    cost = np.where(in_front, (residual**2).sum(axis=(1, 2)), np.inf)
    return p, residual, cost


def _affine_start(template: np.ndarray, m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Closed-form scaled-orthographic pose of normalised points m [N, K, 2]: the least-squares affine
    camera m ≈ A·[X; 1], its two rows made orthonormal (nearest, by SVD), depth = 1 / scale."""
    design = np.concatenate([template, np.ones((len(template), 1))], axis=1)  # [K, 4]
    coeffs = np.einsum("ak,nkc->nac", np.linalg.pinv(design), m)  # [N, 4, 2]
    rows = np.swapaxes(coeffs[:, :3, :], 1, 2)  # [N, 2, 3] = scale · (r1, r2)
    scale = 0.5 * np.linalg.norm(rows, axis=2).sum(axis=1)
    u, _, vt = np.linalg.svd(rows, full_matrices=False)
    r12 = u @ vt
    rot = np.concatenate([r12, np.cross(r12[:, 0], r12[:, 1])[:, None, :]], axis=1)
    depth = 1.0 / np.maximum(scale, 1e-12)
    t = np.stack([coeffs[:, 3, 0] * depth, coeffs[:, 3, 1] * depth, depth], axis=1)
    return rot, t


def _frontal_start(template: np.ndarray, m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The face looking straight at the camera (Deep3DFace angle 0), at the depth and centre that match
    the landmarks' spread and centroid."""
    spread_model = np.sqrt(((template[:, :2] - template[:, :2].mean(0)) ** 2).sum(1).mean())
    spread_image = np.sqrt(((m - m.mean(1, keepdims=True)) ** 2).sum(2).mean(1))
    depth = spread_model / np.maximum(spread_image, 1e-12)
    centre = m.mean(1) * depth[:, None] - (_FLIP * template.mean(0))[None, :2]
    rot = np.broadcast_to(np.diag(_FLIP), (len(m), 3, 3)).copy()
    return rot, np.concatenate([centre, depth[:, None]], axis=1)


def _levenberg_marquardt(
    rot: np.ndarray,
    t: np.ndarray,
    template: np.ndarray,
    m: np.ndarray,
    iterations: int,
    sqrt_w: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Minimise the (weighted) normalised reprojection error over (rot, t) from the given start; returns
    (rot, t, cost [N]). Images leave the loop once their step is negligible or no step helps any more."""
    rot, t = rot.copy(), t.copy()
    lam = np.full(len(m), 1e-3)
    cost = _residuals(rot, t, template, m, sqrt_w)[2]
    active = np.arange(len(m))
    for _ in range(iterations):
        if active.size == 0:
            break
        rot_a, t_a, m_a = rot[active], t[active], m[active]
        w_a = None if sqrt_w is None else sqrt_w[active]
        p, residual, _ = _residuals(rot_a, t_a, template, m_a, w_a)
        z = p[..., 2:3]
        d_proj = np.zeros((*p.shape[:2], 2, 3))  # ∂(x/z, y/z)/∂P [A, K, 2, 3]
        d_proj[..., 0, 0] = d_proj[..., 1, 1] = 1.0 / z[..., 0]
        d_proj[..., :, 2] = -p[..., :2] / z**2
        d_rot = -_skew(p - t_a[:, None, :])  # ∂P/∂ω for rot ← exp([ω]×)·rot: −[rot·X]×
        jac = np.concatenate([d_proj @ d_rot, d_proj], axis=3)  # [A, K, 2, 6]
        if w_a is not None:
            jac = jac * w_a[..., None, None]
        jac = jac.reshape(len(active), -1, 6)  # [A, 2K, 6]
        hess = np.swapaxes(jac, 1, 2) @ jac
        grad = np.einsum("nki,nk->ni", jac, residual.reshape(len(active), -1))
        diag = np.eye(6) * np.diagonal(hess, axis1=1, axis2=2)[:, None, :]
        damped = hess + lam[active, None, None] * diag + 1e-15 * np.eye(6)
        step = -np.linalg.solve(damped, grad[..., None])[..., 0]
        rot_new = _rodrigues(step[:, :3]) @ rot_a
        t_new = t_a + step[:, 3:]
        cost_new = _residuals(rot_new, t_new, template, m_a, w_a)[2]
        better = cost_new < cost[active]
        taken = active[better]
        rot[taken], t[taken], cost[taken] = rot_new[better], t_new[better], cost_new[better]
        lam[active] = np.clip(np.where(better, lam[active] / 3.0, lam[active] * 4.0), 1e-12, 1e12)
        tiny = np.abs(step).max(axis=1) <= 1e-12 * (1.0 + np.abs(t_a).max(axis=1))
        active = active[~(tiny | (lam[active] >= 1e8))]
    u, _, vt = np.linalg.svd(rot)  # re-orthonormalise the accumulated product
    return u @ vt, t, cost


def solve_pnp(
    points: np.ndarray,
    template: np.ndarray,
    focal: np.ndarray,
    center: np.ndarray,
    iterations: int = 30,
    weights: np.ndarray | None = None,
) -> PnPSolution:
    """Face→camera pose (OpenCV axes) of template points [K, 3] seen at pixels points [N, K, 2] through
    pinholes with focal [N] and principal point center [N, 2]: the affine start refined by
    Levenberg-Marquardt on the pixel reprojection error, and where that ends with an error above 5 % of
    the landmarks' spread, also the frontal start; the better one per image is returned. ``weights`` [K]
    or [N, K] (>= 0) weight each point's squared error (the affine start stays unweighted); ``rms_px`` is
    then the weighted RMS, normalised by the mean weight."""
    points = np.asarray(points, np.float64)
    template = np.asarray(template, np.float64)
    focal = np.broadcast_to(np.asarray(focal, np.float64), (len(points),))
    m = (points - np.asarray(center, np.float64).reshape(-1, 1, 2)) / focal[:, None, None]
    sqrt_w = None
    norm = np.full(len(points), float(len(template)))
    if weights is not None:
        w = np.broadcast_to(np.asarray(weights, np.float64), points.shape[:2])
        if not (np.isfinite(w).all() and (w >= 0).all()):
            raise ValueError("weights must be finite and >= 0")
        sqrt_w = np.sqrt(w)
        norm = w.sum(1)
    rot, t, cost = _levenberg_marquardt(*_affine_start(template, m), template, m, iterations, sqrt_w)
    # second start where the first one ended badly (> 5 % of the spread, or nowhere): the frontal pose
    spread = np.sqrt(((m - m.mean(1, keepdims=True)) ** 2).sum(2).mean(1))
    retry = np.flatnonzero(~(np.sqrt(cost / norm) <= 0.05 * spread))
    if retry.size:
        rot2, t2, cost2 = _levenberg_marquardt(
            *_frontal_start(template, m[retry]),
            template,
            m[retry],
            iterations,
            None if sqrt_w is None else sqrt_w[retry],
        )
        take = cost2 < cost[retry]
        rot[retry[take]], t[retry[take]], cost[retry[take]] = rot2[take], t2[take], cost2[take]
    return PnPSolution(rot, t, np.sqrt(cost / norm) * focal)


def deep3dface_crop_intrinsics(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Focal [N] and principal point [N, 2] in image pixels equivalent to Deep3DFaceRecon's aligned crop
    (module docstring): POS fit of its BFM template (scale s px/dm, translation t), f = 1015·s/102, c = t."""
    from gmpi_core.preprocess.template import BFM_LM3D_RAW

    points = np.asarray(points, np.float64)
    design = np.concatenate([BFM_LM3D_RAW * _FLIP, np.ones((5, 1))], axis=1)  # y down, like the pixels
    coeffs = np.einsum("ak,nkc->nac", np.linalg.pinv(design), points)  # [N, 4, 2]
    scale = 0.5 * np.linalg.norm(coeffs[:, :3, :], axis=1).sum(axis=1)
    focal = DEEP3DFACE_CAMERA.focal * scale / DEEP3DFACE_CAMERA.rescale_factor
    return focal, coeffs[:, 3, :]


# --- calibration -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Calibration:
    """Systematic error of the raw estimates as a function of the true pose (radians; pitch = a₀, yaw = −a₁):

        pitch_est = pitch_offset + pitch_gain·pitch + pitch_yaw2·yaw²
        yaw_est   = yaw_gain·yaw

    ``apply`` inverts it (yaw first, then pitch). The model is fitted estimate-on-truth (classical
    calibration), so it removes offsets and gains without shrinking the estimates toward the pose
    distribution of the fitting data, and it is mirror-symmetric (pitch even in yaw, yaw odd), so a
    mirrored image still gets the mirrored pose. Roll is left as solved: the synthetic heads never roll,
    so there is nothing to fit a roll gain on. ``template`` and ``intrinsics`` name the setting it was
    fitted in ("" = any)."""

    name: str = "none"
    template: str = ""
    intrinsics: str = ""
    pitch_offset: float = 0.0
    pitch_gain: float = 1.0
    pitch_yaw2: float = 0.0
    yaw_gain: float = 1.0
    fitted_on: str = ""

    def apply(self, angle: np.ndarray) -> np.ndarray:
        """Corrected Deep3DFace angles [..., 3] of raw ones [..., 3]."""
        angle = np.array(angle, np.float64)
        yaw = -angle[..., 1] / self.yaw_gain
        pitch = (angle[..., 0] - self.pitch_offset - self.pitch_yaw2 * yaw**2) / self.pitch_gain
        angle[..., 0], angle[..., 1] = pitch, -yaw
        return angle


NO_CALIBRATION = Calibration()


def fit_calibration(
    estimated: np.ndarray,
    true: np.ndarray,
    name: str = "custom",
    template: str = "",
    intrinsics: str = "",
    fitted_on: str = "",
) -> Calibration:
    """Least-squares ``Calibration`` of raw Deep3DFace angles [N, 3] against the true ones [N, 3]."""
    estimated, true = np.asarray(estimated, np.float64), np.asarray(true, np.float64)
    if estimated.shape != true.shape or estimated.ndim != 2 or estimated.shape[1] != 3 or len(true) < 8:
        raise ValueError(
            f"fit_calibration needs matching [N, 3] angle arrays with N >= 8, got {estimated.shape} and "
            f"{true.shape}"
        )
    keep = np.isfinite(estimated).all(1) & np.isfinite(true).all(1)
    estimated, true = estimated[keep], true[keep]
    pitch, yaw = true[:, 0], -true[:, 1]
    p = np.linalg.lstsq(np.stack([np.ones_like(pitch), pitch, yaw**2], 1), estimated[:, 0], rcond=None)[0]
    y = np.linalg.lstsq(yaw[:, None], -estimated[:, 1], rcond=None)[0]
    return Calibration(
        name, template, intrinsics, float(p[0]), float(p[1]), float(p[2]), float(y[0]), fitted_on=fitted_on
    )


# fit_calibration on 4000 synthetic heads of seed 1 (FFHQ camera, landmarks at 256² floored to pixel indices
# as in the dataset files), per (template, intrinsics); refit with ``scripts/bench/pose.py --fit``.
_FITTED_ON = "synthetic heads seed 1, n=4000, 256²"
SYNTHETIC_CALIBRATIONS: dict[tuple[str, str], Calibration] = {
    ("bfm", "gmpi"): Calibration(
        "synthetic", "bfm", "gmpi", -0.010308, 0.607241, 0.161554, 0.569848, _FITTED_ON
    ),
    ("bfm", "deep3dface"): Calibration(
        "synthetic", "bfm", "deep3dface", 0.003661, 0.608395, 0.152317, 0.572067, _FITTED_ON
    ),
    ("synthetic", "gmpi"): Calibration(
        "synthetic", "synthetic", "gmpi", -0.000499, 0.981866, 0.021802, 0.996659, _FITTED_ON
    ),
    ("synthetic", "deep3dface"): Calibration(
        "synthetic", "synthetic", "deep3dface", 0.007512, 0.976599, 0.045703, 1.001318, _FITTED_ON
    ),
}
CALIBRATIONS = ("none", "synthetic", "dataset-median")


# --- the estimator -----------------------------------------------------------------------------------------


class PoseEstimate(NamedTuple):
    """One head pose: Deep3DFace ``angle`` [3] (radians, Euler x, y, z) and ``trans`` [3] (docs/method.md
    §1.6), GMPI's ``yaw`` = −angle[1], ``pitch`` = angle[0], ``roll`` = −angle[2] (radians, docs/method.md
    §1.7) and the RMS landmark reprojection error ``reproj_err_px`` of the solved (uncalibrated) pose."""

    angle: np.ndarray
    trans: np.ndarray
    yaw: float
    pitch: float
    roll: float
    reproj_err_px: float


class PoseBatch(NamedTuple):
    """Poses of N images: ``angle`` [N, 3], ``trans`` [N, 3], ``reproj_err_px`` [N] and ``failure`` (None or
    the reason the image has no pose; its angle/trans are NaN)."""

    angle: np.ndarray
    trans: np.ndarray
    reproj_err_px: np.ndarray
    failure: list[str | None]

    def estimate(self, i: int) -> PoseEstimate:
        """Image ``i`` as a ``PoseEstimate``; raises ``PoseEstimationError`` if it failed."""
        if self.failure[i] is not None:
            raise PoseEstimationError(self.failure[i])
        a = self.angle[i]
        return PoseEstimate(
            a.copy(),
            self.trans[i].copy(),
            -float(a[1]),
            float(a[0]),
            -float(a[2]),
            float(self.reproj_err_px[i]),
        )


def _image_size(image_size: int | tuple[int, int]) -> tuple[int, int]:
    width, height = (image_size, image_size) if isinstance(image_size, int) else image_size
    if not (width > 0 and height > 0):
        raise ValueError(f"image_size must be positive (W or (W, H) in pixels), got {image_size!r}")
    return int(width), int(height)


class HeadPoseEstimator:
    """Deep3DFace-compatible head pose from 5 MTCNN landmarks (module docstring).

    template:           3D face template (``bfm``, ``synthetic`` or a ``FaceTemplate``).
    calibration:        ``none``, ``synthetic`` (the correction fitted for ``template`` on synthetic heads)
                        or a ``Calibration``.
    intrinsics:         ``gmpi`` (GMPI's camera on the full image) or ``deep3dface`` (its aligned crop).
    fov_deg:            horizontal field of view of the ``gmpi`` intrinsics (docs/method.md §1.2).
    iterations:         Levenberg-Marquardt iterations per start.
    min_spread_px:      landmarks whose RMS distance from their centroid is below this are degenerate.
    min_aspect:         ... and so are landmarks whose minor/major spread ratio is below this (collinear).
    max_relative_error: reprojection RMS above this fraction of the spread means "not a face".
    max_angle_deg:      |yaw| or |pitch| above this is implausible (e.g. left/right landmarks swapped).
    """

    def __init__(
        self,
        template: str | FaceTemplate = "bfm",
        calibration: str | Calibration = "none",
        intrinsics: Intrinsics = "gmpi",
        fov_deg: float = DEFAULT_FOV_DEG,
        iterations: int = 30,
        min_spread_px: float = 2.0,
        min_aspect: float = 0.08,
        max_relative_error: float = 0.25,
        max_angle_deg: float = 89.0,
    ) -> None:
        self.template = get_template(template)
        if intrinsics not in ("gmpi", "deep3dface"):
            raise ValueError(f"unknown intrinsics '{intrinsics}'; choose 'gmpi' or 'deep3dface'")
        if isinstance(calibration, Calibration):
            self.calibration = calibration
        elif calibration == "none":
            self.calibration = NO_CALIBRATION
        elif calibration == "synthetic":
            key = (self.template.name, intrinsics)
            if key not in SYNTHETIC_CALIBRATIONS:
                raise ValueError(
                    f"no synthetic calibration for template '{self.template.name}'; fit one with "
                    f"fit_calibration or use calibration='none'"
                )
            self.calibration = SYNTHETIC_CALIBRATIONS[key]
        else:
            raise ValueError(
                f"unknown calibration '{calibration}'; choose 'none', 'synthetic' or pass a Calibration "
                f"('dataset-median' is a dataset-level option of run_poses)"
            )
        for what, fitted, used in (
            ("template", self.calibration.template, self.template.name),
            ("intrinsics", self.calibration.intrinsics, intrinsics),
        ):
            if fitted and fitted != used:
                raise ValueError(
                    f"calibration '{self.calibration.name}' was fitted with {what} '{fitted}', not '{used}'; "
                    f"use the matching {what} or calibration='none'"
                )
        if not 0.0 < fov_deg < 180.0:
            raise ValueError(f"fov_deg must lie in (0, 180) degrees, got {fov_deg}")
        if iterations < 1:
            raise ValueError(f"iterations must be >= 1, got {iterations}")
        self.intrinsics: Intrinsics = intrinsics
        self.fov_deg = float(fov_deg)
        self.iterations = int(iterations)
        self.min_spread_px = float(min_spread_px)
        self.min_aspect = float(min_aspect)
        self.max_relative_error = float(max_relative_error)
        self.max_angle_deg = float(max_angle_deg)

    def __repr__(self) -> str:
        return (
            f"HeadPoseEstimator(template='{self.template.name}', calibration='{self.calibration.name}', "
            f"intrinsics='{self.intrinsics}', fov_deg={self.fov_deg})"
        )

    def settings(self) -> dict[str, object]:
        """Everything that determines the output, for ``pose_estimator.json``."""
        return {
            "template": self.template.name,
            "template_points": self.template.points.tolist(),
            "calibration": asdict(self.calibration),
            "intrinsics": self.intrinsics,
            "fov_deg": self.fov_deg,
            "iterations": self.iterations,
            "min_spread_px": self.min_spread_px,
            "min_aspect": self.min_aspect,
            "max_relative_error": self.max_relative_error,
            "max_angle_deg": self.max_angle_deg,
        }

    def _camera(self, points: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        if self.intrinsics == "deep3dface":
            return deep3dface_crop_intrinsics(points)
        focal = size[0] / (2.0 * math.tan(math.radians(self.fov_deg) / 2.0))  # docs/method.md §1.2
        return np.full(len(points), focal), np.tile([size[0] / 2.0, size[1] / 2.0], (len(points), 1))

    def _degenerate(self, points: np.ndarray) -> list[str | None]:
        """Why each of landmarks [N, 5, 2] cannot be solved (None: it can)."""
        finite = np.isfinite(points).all(axis=(1, 2))
        centred = np.where(finite[:, None, None], points - points.mean(1, keepdims=True), 0.0)
        spread = np.sqrt((centred**2).sum(2).mean(1))
        sv = np.linalg.svd(centred, compute_uv=False)  # [N, 2]
        aspect = sv[:, 1] / np.maximum(sv[:, 0], 1e-300)
        reasons: list[str | None] = [None] * len(points)
        for i in np.flatnonzero(~finite | (spread < self.min_spread_px) | (aspect < self.min_aspect)):
            if not finite[i]:
                reasons[i] = "landmarks contain non-finite values"
            elif spread[i] < self.min_spread_px:
                reasons[i] = f"landmarks coincide (spread {spread[i]:.2f} px < {self.min_spread_px:g} px)"
            else:
                reasons[i] = (
                    f"landmarks are collinear (minor/major spread {aspect[i]:.3f} < {self.min_aspect:g})"
                )
        return reasons

    def estimate_batch(self, landmarks: np.ndarray, image_size: int | tuple[int, int]) -> PoseBatch:
        """Poses of landmarks [N, 5, 2] (pixel-edge coordinates, MTCNN order) in images of ``image_size``
        (W or (W, H)); failures are reported per image, never raised."""
        size = _image_size(image_size)
        points = np.asarray(landmarks, np.float64)
        if points.ndim != 3 or points.shape[1:] != (5, 2):
            raise ValueError(f"landmarks must have shape [N, 5, 2] (x, y of 5 points), got {points.shape}")
        n = len(points)
        failure = self._degenerate(points)
        ok = np.array([f is None for f in failure], bool)
        angle, trans, rms = np.full((n, 3), np.nan), np.full((n, 3), np.nan), np.full(n, np.nan)
        if ok.any():
            good = points[ok]
            focal, center = self._camera(good, size)
            solution = solve_pnp(good, self.template.points, focal, center, self.iterations)
            raw, t = camera_pose_to_deep3dface(solution.rot, solution.t)
            angle[ok], trans[ok], rms[ok] = self.calibration.apply(raw), t, solution.rms_px
            spread = np.sqrt(((good - good.mean(1, keepdims=True)) ** 2).sum(2).mean(1))
            limit = math.radians(self.max_angle_deg)
            behind = ~np.isfinite(solution.rms_px) | (solution.t[:, 2] <= 0.0)
            implausible = (np.abs(raw[:, 0]) > limit) | (np.abs(raw[:, 1]) > limit)
            misfit = solution.rms_px > self.max_relative_error * spread
            for j in np.flatnonzero(behind | implausible | misfit):
                if behind[j]:
                    reason = "no pose puts the face in front of the camera"
                elif implausible[j]:
                    reason = (
                        f"implausible head pose (yaw {-math.degrees(raw[j, 1]):.0f}°, pitch "
                        f"{math.degrees(raw[j, 0]):.0f}°); are the landmarks in MTCNN order (left eye, right "
                        f"eye, nose, mouth left, mouth right, 'left' = the image's left)?"
                    )
                else:
                    reason = (
                        f"reprojection error {solution.rms_px[j]:.2f} px exceeds {self.max_relative_error:g} "
                        f"of the landmarks' spread ({spread[j]:.1f} px); the landmarks do not fit a face"
                    )
                failure[int(np.flatnonzero(ok)[j])] = reason
        bad = np.array([f is not None for f in failure], bool)
        angle[bad], trans[bad] = np.nan, np.nan
        return PoseBatch(angle, trans, rms, failure)

    def estimate(self, landmarks: np.ndarray, image_size: int | tuple[int, int]) -> PoseEstimate:
        """Pose of landmarks [5, 2] (pixel-edge coordinates, MTCNN order); raises ``PoseEstimationError``."""
        points = np.asarray(landmarks, np.float64)
        if points.shape != (5, 2):
            raise ValueError(f"landmarks must have shape [5, 2] (x, y of 5 points), got {points.shape}")
        return self.estimate_batch(points[None], image_size).estimate(0)


def estimate_pose(
    landmarks: np.ndarray,
    image_size: int | tuple[int, int],
    template: str | FaceTemplate = "bfm",
    calibration: str | Calibration = "none",
    intrinsics: Intrinsics = "gmpi",
    fov_deg: float = DEFAULT_FOV_DEG,
) -> PoseEstimate:
    """Head pose of one image's 5 landmarks [5, 2] (pixel-edge coordinates: x right, y down, origin at the
    top-left image corner; MTCNN order) in an image of ``image_size`` (W or (W, H)); see
    ``HeadPoseEstimator``. Raises ``PoseEstimationError`` with the reason when there is no usable pose."""
    estimator = HeadPoseEstimator(template, calibration, intrinsics, fov_deg)
    return estimator.estimate(landmarks, image_size)
