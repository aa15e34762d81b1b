"""3D mean-face templates of the five MTCNN landmarks, the model points of the offline pose estimator.

Every template lives in Deep3DFaceRecon's face frame (docs/method.md §1.6): +X toward the image's right in the
frontal view (the subject's left), +Y up, +Z out of the face toward the camera, units of decimetres, the
origin at the face centre, which Deep3DFace's camera sees from 10 units away and which GMPI maps onto its
sphere centre S (docs/method.md §1.6: a GMPI world point P is the face point F·(P − S), F = diag(1, −1, −1)).
Rows follow MTCNN's order: left eye, right eye, nose, mouth left, mouth right ("left" = the image's left, the
subject's right, at −X).

``bfm``
    Deep3DFaceRecon's own 5-point alignment template ``lm3D`` (``util/load_mats.py: load_lm3d``): the
    Basel Face Model 2009 mean-shape landmarks of ``BFM/similarity_Lm3D_all.mat`` (68 points, the BFM
    scaled by 1e-5 to decimetres, centred on the mean vertex), reduced to five points as eye = mean of
    68-point landmarks 37/40 (resp. 43/46), nose = 31, mouth = 49/55 (1-based). The numbers are the ones
    the Deep3DFaceReconstruction preprocessing code prints in its ``align_img`` docstring and that many
    ports hard-code (``BFM_LM3D_RAW`` below). The pose estimator uses them made exactly left-right
    symmetric (``symmetrize``: the raw ones differ by < 2 mm between sides), so that mirroring an image
    flips yaw and roll exactly.
``synthetic``
    The mean landmarks of our procedural heads (``gmpi_core.data.synthetic.landmarks_3d``: pupils' front,
    nose tip, the lips' ends) over 4000 identities of seed 1 (seed 0 makes the default datasets, so
    the template and the calibration fitted with it never see the test identities), mapped into the face
    frame with the FFHQ camera (c = r = 1) as 10·F·(P − S)/r — the scale at which Deep3DFace's camera
    distance 10 is GMPI's radius r — and symmetrised. ``synthetic_mean_landmarks`` recomputes it.

The two faces differ a lot where the pose hides: the BFM nose tip stands 0.42 dm in front of the eyes and
the mouth 0.09 dm, the synthetic heads' only 0.13 and −0.07. A template that does not match the faces
therefore biases pitch and scales yaw (users of the original reported that a generic template gives +36°
pitch on a frontal face); ``gmpi_core.preprocess.pose`` removes what it can measure with a calibration.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "BFM_LM3D_RAW",
    "BFM_TEMPLATE",
    "SYNTHETIC_TEMPLATE",
    "TEMPLATES",
    "FaceTemplate",
    "get_template",
    "symmetrize",
    "synthetic_mean_landmarks",
]

# Deep3DFaceRecon lm3D (5 × 3, decimetres, face frame): left eye, right eye, nose, mouth left, mouth right.
BFM_LM3D_RAW = np.array(
    [
        [-0.31148657, 0.29036078, 0.13377953],
        [0.30979887, 0.28972036, 0.13179526],
        [0.0032535, -0.04617932, 0.55244243],
        [-0.25216928, -0.38133916, 0.22405732],
        [0.2484662, -0.38128236, 0.22235769],
    ]
)

# synthetic_mean_landmarks(n=4000, seed=1), rounded to 1e-5 dm (1 µm) and symmetrised.
_SYNTHETIC_MEAN = np.array(
    [
        [-0.26011, 0.1006, 0.23597],
        [0.26011, 0.1006, 0.23597],
        [0.0, -0.13983, 0.36591],
        [-0.15725, -0.38957, 0.16815],
        [0.15725, -0.38957, 0.16815],
    ]
)

_MIRROR_PARTNER = (1, 0, 2, 4, 3)  # the landmark each one becomes in the mirror image


def symmetrize(points: np.ndarray) -> np.ndarray:
    """The left-right symmetric part [5, 3] of a 5-point template [5, 3]: the mean of the points and
    their mirror images (x → −x, left and right swapped); the nose lands on x = 0."""
    points = np.asarray(points, np.float64)
    if points.shape != (5, 3):
        raise ValueError(f"a 5-point template has shape (5, 3), got {points.shape}")
    mirrored = points[list(_MIRROR_PARTNER)] * np.array([-1.0, 1.0, 1.0])
    return 0.5 * (points + mirrored)


@dataclass(frozen=True, eq=False)
class FaceTemplate:
    """A 3D face template: ``points`` [5, 3] in the face frame (module docstring), read-only float64."""

    name: str
    points: np.ndarray
    source: str

    def __post_init__(self) -> None:
        points = np.array(self.points, np.float64)
        if points.shape != (5, 3) or not np.isfinite(points).all():
            raise ValueError(f"template '{self.name}' needs 5 finite 3D points (5, 3), got {points.shape}")
        points.flags.writeable = False
        object.__setattr__(self, "points", points)

    def __repr__(self) -> str:
        return f"FaceTemplate('{self.name}')"


BFM_TEMPLATE = FaceTemplate(
    "bfm",
    symmetrize(BFM_LM3D_RAW),
    "Deep3DFaceRecon lm3D (BFM 2009 mean landmarks, BFM/similarity_Lm3D_all.mat), symmetrised",
)
SYNTHETIC_TEMPLATE = FaceTemplate(
    "synthetic",
    _SYNTHETIC_MEAN,
    "mean landmarks_3d of 4000 synthetic heads (seed 1), FFHQ camera, symmetrised",
)
TEMPLATES: dict[str, FaceTemplate] = {t.name: t for t in (BFM_TEMPLATE, SYNTHETIC_TEMPLATE)}


def get_template(template: str | FaceTemplate) -> FaceTemplate:
    """A template by name (``bfm``, ``synthetic``) or the template itself."""
    if isinstance(template, FaceTemplate):
        return template
    try:
        return TEMPLATES[template]
    except KeyError:
        raise ValueError(
            f"unknown face template '{template}'; choose one of {', '.join(TEMPLATES)}"
        ) from None


def synthetic_mean_landmarks(n: int = 4000, seed: int = 1) -> np.ndarray:
    """The mean [5, 3] (face frame, module docstring) of the synthetic heads' 3D landmarks over identities
    ``0..n-1`` of dataset ``seed`` with the FFHQ camera; not symmetrised, not rounded."""
    from gmpi_core.config import preset
    from gmpi_core.data.synthetic import identity_and_pose, landmarks_3d

    camera = preset("FFHQ256").camera
    centre = np.array([0.0, 0.0, camera.sphere_center_z])
    flip = np.array([1.0, -1.0, -1.0])
    total = np.zeros((5, 3))
    for index in range(n):
        params = identity_and_pose(seed, index, camera)[0]
        total += (landmarks_3d(params) - centre) * flip
    return 10.0 * total / (n * camera.sphere_radius)
