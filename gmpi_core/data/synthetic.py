"""Procedural synthetic 3D heads with exact ground truth: our stand-in for FFHQ, in FFHQ's on-disk layouts.

Every identity is a dozen analytic quadrics — head ellipsoid, hair cap, eyes with iris and pupil, eyebrows,
nose (bridge, tip, wings), lips, ears, neck — with random proportions and colours, shaded Lambertian +
ambient in front of a smooth random background plane at the preset's far depth. Images are ray cast
exactly in GMPI's convention (world +X right, +Y down, +Z forward; cameras on the sphere around (0, 0, c);
pinhole with the principal point at (W/2, H/2) and rays through pixel centres; docs/method.md §1.1-§1.3) with
the preset's intrinsics, so depth, face mask, landmarks and camera are known exactly. All geometry lies in
world z ∈ [d_near, d_far) of the FFHQ preset (0.95…1.12, docs/method.md §2.2), the head centred on the Z axis
near z ≈ 1.04; poses follow the FFHQ pose prior (docs/method.md §1.4). Identity ``i`` and its pose depend only
on ``(seed, i)``.

``synthesize_dataset(out)`` writes (docs/method.md §7, §1.6, §8.1):

    out/images.zip                         dataset_tool zip: 00000/img00000000.png, … + dataset.json
    out/poses/00000/img00000000.mat        Deep3DFaceRecon coefficients; angle/trans encode the TRUE camera
    out/poses/fail_list.txt                "\\n" (nothing failed)
    out/depth/00000/img00000000.npy        float32 [H, W] camera z-depth (distance along the optical axis)
    out/mask/00000/img00000000.png         uint8 0/255 face mask (skin, eyes, brows, nose, lips)
    out/landmarks/detections/results/00000/img00000000.txt   5 lines "x<TAB>y" (MTCNN order)
    out/landmarks/detections/fail_list.txt images with a landmark hidden or outside the frame ("\\n" if none)
    out/poses.json                         {"poses": {member: {"yaw", "pitch"}}, "fail_list": []} (JSONPoses)
    out/meta.json                          resolution, n, seed, camera, generator version, background depth

Landmarks follow MTCNN (ipazc/mtcnn) order — left eye, right eye, nose, mouth left, mouth right — where
"left" is the image's left side: the subject's right eye, the one at world −X. They are the projections of
3D points (pupil centres, nose tip, the lips' ends) written as the integer index of the pixel
holding the point, ``floor(x)``, with pixel centres at +0.5. Inside the FFHQ prior box (|yaw| ≤ 0.578,
|pitch| ≤ 0.254) all five stay visible, its corners included. Beyond it (large yaw) the far eye or mouth
corner goes behind the nose or cheek: as a detector always reports five points, a landmark that is hidden
(a surface lies in front of it) or outside the frame is still written at its projection, and the image is
listed in the detections fail list.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import multiprocessing
import os
import shutil
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from typing import NamedTuple

import numpy as np
import PIL.Image
import torch
from numpy.typing import ArrayLike

from gmpi_core.atomic import staged_dir
from gmpi_core.camera import camera_c2w, pixel_ray_directions, sample_sphere_poses, w2c_to_deep3dface
from gmpi_core.config import CameraConfig, preset
from gmpi_core.data.datasets import dataset_tool_name, synthetic_images_zip, write_dataset_zip
from gmpi_core.data.poses import write_deep3dface_mat

__all__ = [
    "FACE_PARTS",
    "GENERATOR_VERSION",
    "HEAD_Z_RANGE",
    "LANDMARK_NAMES",
    "HeadParams",
    "HeadSample",
    "Part",
    "background_depth",
    "head_primitives",
    "identity_and_pose",
    "landmarks_3d",
    "main",
    "render_head",
    "sample_identity",
    "synthesize_dataset",
]

GENERATOR_VERSION = "gmpi-synthetic-heads/1"
LANDMARK_NAMES = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")
MIN_DATASET_RES, MAX_DATASET_RES = 16, 1024
_BACKGROUND_GAP = 1e-3  # background plane this far before d_far: inside the MPI's depth range (method §2.2)
_RAY_BLOCK = 512  # rays per block of the ray caster: keeps its [rays, primitives] temporaries in cache
_LANDMARK_TOLERANCE = 1e-6  # world units; a first hit this much before a landmark means it is hidden
_LIP_SINK, _LIP_DEPTH = 0.003, 0.0055  # lips ellipsoid centre behind the skin, and its z radius
_CORNER_FRACTION = 0.85  # mouth-corner landmarks: this fraction of the lips' half width from their centre
HEAD_Z_RANGE = (0.954, 1.115)  # world z bounds of every identity's geometry (from sample_identity's ranges)

Vec3 = tuple[float, float, float]
Vec4 = tuple[float, float, float, float]


class Part(IntEnum):
    """What a pixel's ray hits first."""

    BACKGROUND = 0
    SKIN = 1
    HAIR = 2
    EYE = 3
    BROW = 4
    NOSE = 5
    LIPS = 6
    EAR = 7
    NECK = 8


# The face mask: what Deep3DFace's BFM face region covers (no hair, ears, neck or background).
FACE_PARTS = frozenset({Part.SKIN, Part.EYE, Part.BROW, Part.NOSE, Part.LIPS})


@dataclass(frozen=True)
class HeadParams:
    """One identity. Lengths in world units (docs/method.md §1.1 frame, +Y down); ``*_y`` are offsets from the
    head centre (negative = up); colours are RGB albedo in [0, 1]. The head is mirror-symmetric about x = 0 up
    to the asymmetry terms ``eye_dy``, ``nose_x``, ``mouth_x``, ``hair_offset[0]``, ``light[0]`` and
    ``background_wave[0]``, which ``sample_identity(symmetric=True)`` sets to 0."""

    head_center: Vec3  # (0, y, z)
    head_radii: Vec3
    skin: Vec3
    hair_color: Vec3
    hair_scale: Vec3  # hair ellipsoid radii / head radii
    hair_offset: Vec3  # hair ellipsoid centre − head centre
    hairline: float  # hair covers y − y_head < hairline + hair_slope · (z − z_head)
    hair_slope: float  # > 0: the hair reaches lower behind the face
    eye_spacing: float  # half the distance between the eye centres
    eye_y: float
    eye_dy: float  # the right (world +X) eye sits this much lower than the left one
    eye_radius: float
    eye_protrusion: float  # fraction of the eye radius in front of the skin
    iris_color: Vec3
    iris_angle: float  # angular radius (rad) of the iris around the gaze (−Z)
    pupil_angle: float
    brow_color: Vec3
    brow_lift: float  # brow centre above the eye centre, in eye radii
    brow_radii: Vec3
    nose_x: float
    nose_tip_y: float
    nose_tip_radius: float
    nose_protrusion: float  # distance of the nose tip in front of the skin surface
    nose_width: float  # half width of the bridge
    mouth_x: float
    mouth_y: float
    mouth_half_width: float
    lip_half_height: float
    lip_color: Vec3
    ear_y: float
    ear_radii: Vec3
    neck_radii: Vec3
    light: Vec3  # unit vector towards the light (world frame)
    ambient: float
    background_a: Vec3
    background_b: Vec3
    background_wave: tuple[float, float]  # cycles per world unit along X and Y on the background plane
    background_phase: float

    def skin_z(self, x: float, y: float) -> float:
        """World z of the front of the head ellipsoid at world (x, y); the centre's z outside its outline."""
        cx, cy, cz = self.head_center
        ax, ay, az = self.head_radii
        inside = 1.0 - ((x - cx) / ax) ** 2 - ((y - cy) / ay) ** 2
        return cz - az * math.sqrt(max(inside, 0.0))

    def eye_centers(self) -> tuple[Vec3, Vec3]:
        """World centres of the left (−X, image left at yaw 0) and right eye spheres."""
        _, hy, _ = self.head_center
        centers = []
        for side, dy in ((-1.0, 0.0), (1.0, self.eye_dy)):
            x, y = side * self.eye_spacing, hy + self.eye_y + dy
            centers.append((x, y, self.skin_z(x, y) + (1.0 - self.eye_protrusion) * self.eye_radius))
        return centers[0], centers[1]

    def nose_tip(self) -> Vec3:
        """World nose tip: the front of the tip sphere, ``nose_protrusion`` in front of the skin."""
        x, y = self.nose_x, self.head_center[1] + self.nose_tip_y
        return (x, y, self.skin_z(x, y) - self.nose_protrusion)

    def lips(self) -> tuple[Vec3, Vec3]:
        """Centre and radii of the lips ellipsoid, sunk into the skin so that its front bulges out a bit."""
        x, y = self.mouth_x, self.head_center[1] + self.mouth_y
        center = (x, y, self.skin_z(x, y) + _LIP_SINK)
        return center, (self.mouth_half_width, self.lip_half_height, _LIP_DEPTH)

    def mouth_corners(self) -> tuple[Vec3, Vec3]:
        """World mouth corners (left = −X side): front of the lips at 85 % of their half width (the corners
        proper sit in the crease between lips and cheek, which hides them already at small yaw)."""
        (cx, cy, cz), (rx, _, rz) = self.lips()
        z = cz - rz * math.sqrt(1.0 - _CORNER_FRACTION**2)
        return (cx - _CORNER_FRACTION * rx, cy, z), (cx + _CORNER_FRACTION * rx, cy, z)


class HeadSample(NamedTuple):
    """One rendered view: ``image`` uint8 [H, W, 3]; ``depth`` float32 [H, W] camera z-depth (background
    pixels: the background plane's); ``mask`` bool [H, W] face region (``FACE_PARTS``); ``landmarks`` float64
    [5, 2] (x, y) pixel coordinates, origin at the top-left corner, pixel centres at +0.5, MTCNN order;
    ``landmarks_visible`` bool [5]; ``parts`` uint8 [H, W] ``Part`` of every pixel."""

    image: np.ndarray
    depth: np.ndarray
    mask: np.ndarray
    landmarks: np.ndarray
    landmarks_visible: np.ndarray
    parts: np.ndarray


class _Primitives(NamedTuple):
    """K ellipsoids: a ray hit at p counts only where ``clip[:3]·p <= clip[3]`` (the hair cap)."""

    center: np.ndarray  # [K, 3]
    radii: np.ndarray  # [K, 3]
    albedo: np.ndarray  # [K, 3]
    part: np.ndarray  # [K] Part
    clip: np.ndarray  # [K, 4]


# --- identities ------------------------------------------------------------------------------------------

_SKIN_TONES = np.array([[0.96, 0.80, 0.69], [0.91, 0.72, 0.58], [0.80, 0.60, 0.46], [0.62, 0.44, 0.32],
                        [0.45, 0.31, 0.22], [0.98, 0.85, 0.76]])  # fmt: skip
_HAIR_COLORS = np.array([[0.08, 0.06, 0.05], [0.25, 0.16, 0.09], [0.45, 0.30, 0.16], [0.80, 0.66, 0.40],
                         [0.55, 0.24, 0.10], [0.62, 0.62, 0.62]])  # fmt: skip
_IRIS_COLORS = np.array([[0.30, 0.18, 0.08], [0.20, 0.35, 0.60], [0.25, 0.42, 0.25], [0.45, 0.35, 0.20]])
_SCLERA = np.array([0.93, 0.92, 0.90])
_PUPIL = np.array([0.03, 0.03, 0.03])


def _jitter(rng: np.random.Generator, color: np.ndarray, amount: float) -> Vec3:
    c = np.clip(color + rng.uniform(-amount, amount, 3), 0.0, 1.0)
    return (float(c[0]), float(c[1]), float(c[2]))


def sample_identity(rng: np.random.Generator, symmetric: bool = False) -> HeadParams:
    """A random head. ``symmetric=True`` zeroes every left-right asymmetry (see ``HeadParams``), so the
    frontal view is an exact mirror image of itself. The ranges keep all geometry inside ``HEAD_Z_RANGE`` =
    world z ∈ [0.954, 1.115], between the FFHQ preset's planes 0.95 and 1.12 (docs/method.md §2.2)."""
    u = rng.uniform

    def asym(scale: float) -> float:
        return 0.0 if symmetric else float(u(-scale, scale))

    head_radii = (u(0.063, 0.071), u(0.082, 0.090), u(0.058, 0.065))
    head_center = (0.0, u(-0.006, 0.004), u(1.035, 1.04))
    skin = _SKIN_TONES[rng.integers(len(_SKIN_TONES))]
    hair = _HAIR_COLORS[rng.integers(len(_HAIR_COLORS))]
    long_hair = rng.random() < 0.4
    light_dir = np.array([asym(0.7), u(-0.8, 0.0), -1.0])
    light_dir /= np.linalg.norm(light_dir)
    bg_a, bg_b = (0.6 * rng.uniform(0.0, 1.0, 3) + 0.4 * rng.uniform(0.1, 0.9) for _ in range(2))
    eye_radius = u(0.0085, 0.0098)
    return HeadParams(
        head_center=head_center,
        head_radii=head_radii,
        skin=_jitter(rng, skin, 0.04),
        hair_color=_jitter(rng, hair, 0.04),
        hair_scale=(u(1.08, 1.16), u(1.05, 1.1), u(1.04, 1.08)),
        hair_offset=(asym(0.003), u(-0.008, -0.003), u(0.0, 0.004)),
        hairline=u(-0.05, -0.036),
        hair_slope=u(1.2, 2.5) if long_hair else u(0.3, 0.8),
        eye_spacing=u(0.024, 0.028),
        eye_y=u(-0.012, -0.006),
        eye_dy=asym(0.0012),
        eye_radius=eye_radius,
        eye_protrusion=u(0.45, 0.6),
        iris_color=_jitter(rng, _IRIS_COLORS[rng.integers(len(_IRIS_COLORS))], 0.05),
        iris_angle=u(0.5, 0.62),
        pupil_angle=u(0.2, 0.27),
        brow_color=_jitter(rng, hair * 0.8, 0.03),
        brow_lift=u(1.5, 1.9),
        brow_radii=(u(0.011, 0.014), u(0.0018, 0.0028), 0.004),
        nose_x=asym(0.0008),
        nose_tip_y=u(0.012, 0.018),
        nose_tip_radius=u(0.0055, 0.0072),
        nose_protrusion=u(0.011, 0.016),
        nose_width=u(0.0055, 0.0075),
        mouth_x=asym(0.0008),
        mouth_y=u(0.036, 0.044),
        mouth_half_width=u(0.016, 0.021),
        lip_half_height=u(0.0035, 0.0055),
        lip_color=_jitter(rng, np.array([0.72, 0.30, 0.30]) * 0.5 + skin * 0.5, 0.05),
        ear_y=u(-0.004, 0.006),
        ear_radii=(0.005, u(0.015, 0.019), u(0.009, 0.012)),
        neck_radii=(u(0.032, 0.040), 0.06, u(0.032, 0.038)),
        light=(float(light_dir[0]), float(light_dir[1]), float(light_dir[2])),
        ambient=u(0.35, 0.55),
        background_a=(float(bg_a[0]), float(bg_a[1]), float(bg_a[2])),
        background_b=(float(bg_b[0]), float(bg_b[1]), float(bg_b[2])),
        background_wave=(asym(5.0), u(-5.0, 5.0)),
        background_phase=u(0.0, 2.0 * math.pi),
    )


def head_primitives(p: HeadParams) -> _Primitives:
    """The ellipsoids of a head (world frame). Row 0 is always the head ellipsoid itself."""
    hx, hy, hz = p.head_center
    ax, ay, az = p.head_radii
    skin = np.asarray(p.skin)
    rows: list[tuple[Vec3, Vec3, ArrayLike, Part, Vec4]] = []

    def add(
        center: Vec3, radii: Vec3, albedo: ArrayLike, part: Part, clip: Vec4 = (0.0, 0.0, 0.0, 1.0)
    ) -> None:
        rows.append((center, radii, albedo, part, clip))

    add(p.head_center, p.head_radii, p.skin, Part.SKIN)
    # hair: kept where y − hy − slope·(z − hz) <= hairline: above the hairline, reaching lower behind the face
    hair_center = (hx + p.hair_offset[0], hy + p.hair_offset[1], hz + p.hair_offset[2])
    hair_radii = (ax * p.hair_scale[0], ay * p.hair_scale[1], az * p.hair_scale[2])
    add(
        hair_center,
        hair_radii,
        p.hair_color,
        Part.HAIR,
        (0.0, 1.0, -p.hair_slope, p.hairline + hy - p.hair_slope * hz),
    )
    r = p.eye_radius
    for eye in p.eye_centers():
        add(eye, (r, r, r), _SCLERA, Part.EYE)
        bx, by = eye[0], eye[1] - p.brow_lift * r
        add((bx, by, p.skin_z(bx, by) - 0.3 * p.brow_radii[2]), p.brow_radii, p.brow_color, Part.BROW)
    tx, ty, tz = p.nose_tip()
    rt = p.nose_tip_radius
    add((tx, ty, tz + rt), (rt, rt, rt), p.skin, Part.NOSE)
    for side in (-1.0, 1.0):  # nose wings
        add((tx + side * 1.05 * rt, ty + 0.35 * rt, tz + 1.25 * rt), (0.7 * rt,) * 3, p.skin, Part.NOSE)
    top_y = hy + p.eye_y  # the bridge runs from between the eyes down to the tip
    bridge_y, bridge_rz = 0.5 * (top_y + ty), p.nose_protrusion + 0.012
    bridge_z = p.skin_z(tx, bridge_y) - 0.55 * p.nose_protrusion + bridge_rz
    add((tx, bridge_y, bridge_z), (p.nose_width, 0.5 * (ty - top_y) + 0.3 * rt, bridge_rz), p.skin, Part.NOSE)
    add(*p.lips(), p.lip_color, Part.LIPS)
    for side in (-1.0, 1.0):
        add((side * 0.96 * ax, hy + p.ear_y, hz + 0.004), p.ear_radii, 0.92 * skin, Part.EAR)
    add((0.0, hy + 0.75 * ay, hz + 0.012), p.neck_radii, 0.85 * skin, Part.NECK)
    return _Primitives(
        center=np.array([row[0] for row in rows], np.float64),
        radii=np.array([row[1] for row in rows], np.float64),
        albedo=np.array([row[2] for row in rows], np.float64),
        part=np.array([int(row[3]) for row in rows], np.int64),
        clip=np.array([row[4] for row in rows], np.float64),
    )


def landmarks_3d(p: HeadParams) -> np.ndarray:
    """World positions [5, 3] of the MTCNN landmarks: pupil centres (left = −X), nose tip, mouth corners."""
    (le, re), (ml, mr) = p.eye_centers(), p.mouth_corners()
    eyes = [(c[0], c[1], c[2] - p.eye_radius) for c in (le, re)]  # front of the eye along the gaze (−Z)
    return np.array([eyes[0], eyes[1], p.nose_tip(), ml, mr], np.float64)


# --- ray casting -----------------------------------------------------------------------------------------


def _first_hits(prims: _Primitives, origin: np.ndarray, dirs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nearest ray–ellipsoid hit of the rays ``origin + t·dirs`` (dirs [P, 3], unit): ``t`` [P] (inf: no hit)
    and the primitive index [P]. A clipped ellipsoid (hair cap) also offers its far root, so the inside of
    the shell shows through the cut; the camera is outside every ellipsoid, so the others need only the
    near root."""
    inv_r = 1.0 / prims.radii  # in each ellipsoid's unit-sphere frame: |o' + t d'|² = 1
    o = (origin[None, :] - prims.center) * inv_r  # o' [K, 3]
    quad, lin = (inv_r**2).T, (o * inv_r).T  # a = Σ d_i² / r_i², b = Σ d_i o'_i / r_i
    c = np.einsum("ki,ki->k", o, o) - 1.0
    clipped = np.flatnonzero(np.any(prims.clip[:, :3] != 0.0, axis=1))
    normals = prims.clip[clipped, :3].T  # [3, Kc]
    limits = prims.clip[clipped, 3] - origin @ normals  # clip: n·(origin + t d) <= h
    t_out, index_out = np.empty(len(dirs)), np.empty(len(dirs), np.int64)
    for s in range(0, len(dirs), _RAY_BLOCK):  # blocks keep the [P, K] temporaries in cache
        d = dirs[s : s + _RAY_BLOCK]
        a, b = (d * d) @ quad, d @ lin  # [P, K]
        disc = b * b - a * c
        root = np.sqrt(np.maximum(disc, 0.0))
        t = (-b - root) / a
        t[(disc <= 0.0) | (t <= 0.0)] = np.inf
        if len(clipped):
            n_d = d @ normals
            t_near, t_far = t[:, clipped], (-b[:, clipped] + root[:, clipped]) / a[:, clipped]
            t_far[(disc[:, clipped] <= 0.0) | (t_far <= 0.0) | (t_far * n_d > limits)] = np.inf
            t[:, clipped] = np.where(t_near * n_d <= limits, t_near, t_far)
        index = t.argmin(axis=1)
        index_out[s : s + _RAY_BLOCK] = index
        t_out[s : s + _RAY_BLOCK] = t[np.arange(len(d)), index]
    return t_out, index_out


def _trace(
    p: HeadParams, prims: _Primitives, origin: np.ndarray, dirs: np.ndarray, background_z: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Colour [P, 3] in [0, 1], ray length to the first surface or the background plane [P] and the index
    of the primitive hit [P] (−1: background) of the world rays [P, 3] from ``origin``."""
    t, index = _first_hits(prims, origin, dirs)
    hit = np.isfinite(t)
    t = np.where(hit, t, (background_z - origin[2]) / dirs[:, 2])
    index[~hit] = -1
    points = origin + t[:, None] * dirs
    color = np.empty_like(points)
    # background: a smooth wave between two colours, fixed on the plane (multi-view consistent)
    bg = ~hit
    wave = p.background_wave[0] * points[bg, 0] + p.background_wave[1] * points[bg, 1]
    s = 0.5 + 0.5 * np.sin(2.0 * math.pi * wave + p.background_phase)
    a, b = np.asarray(p.background_a), np.asarray(p.background_b)
    color[bg] = a + (b - a) * s[:, None]
    # surfaces: Lambert + ambient with the normal of the ellipsoid (flipped to face the camera)
    k = index[hit]
    ph = points[hit]
    normal = (ph - prims.center[k]) / prims.radii[k] ** 2
    normal /= np.linalg.norm(normal, axis=1, keepdims=True)
    normal *= np.where(np.einsum("pi,pi->p", normal, dirs[hit]) > 0.0, -1.0, 1.0)[:, None]
    albedo = prims.albedo[k]
    eye = prims.part[k] == Part.EYE
    if eye.any():  # iris and pupil: discs around the gaze direction −Z on the eye sphere
        cos_gaze = -(ph[eye, 2] - prims.center[k[eye], 2]) / prims.radii[k[eye], 2]
        eye_albedo = np.where((cos_gaze > math.cos(p.iris_angle))[:, None], np.asarray(p.iris_color), _SCLERA)
        albedo[eye] = np.where((cos_gaze > math.cos(p.pupil_angle))[:, None], _PUPIL, eye_albedo)
    lambert = np.clip(normal @ np.asarray(p.light), 0.0, None)
    color[hit] = albedo * (p.ambient + (1.0 - p.ambient) * lambert)[:, None]
    return color, t, index


@functools.lru_cache(maxsize=16)
def _camera_rays(fov_deg: float, res: int) -> np.ndarray:
    """Camera-frame unit ray directions [res·res, 3] through pixel centres (float64, read-only)."""
    dirs = pixel_ray_directions(fov_deg, res, res).to(torch.float64).reshape(-1, 3).numpy().copy()
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    dirs.flags.writeable = False
    return dirs


def _camera_to_world(yaw: float, pitch: float, camera: CameraConfig) -> np.ndarray:
    """c2w [4, 4] float64 of the sphere camera (docs/method.md §1.3)."""
    yp = torch.tensor([[yaw, pitch]], dtype=torch.float64)
    c2w = camera_c2w(camera, yp[:, 0], yp[:, 1])
    return c2w[0].to(torch.float64).numpy()


def background_depth(camera: CameraConfig) -> float:
    """World z of the background plane: just before ``d_far`` so it lies inside the MPI range."""
    return camera.d_far - _BACKGROUND_GAP


def render_head(
    identity_params: HeadParams,
    yaw: float,
    pitch: float,
    res: int,
    camera: CameraConfig | None = None,
    antialias: int = 2,
) -> HeadSample:
    """Ray cast one head from the sphere camera at (yaw, pitch) (docs/method.md §1.3) at ``res``² with
    ``camera``'s intrinsics (default: the FFHQ preset). Depth, mask, parts and landmarks use exactly one ray
    through each pixel centre (docs/method.md §1.2); image pixels on silhouettes, part borders and eyes
    average ``antialias``² stratified rays (the grid of ``pixel_ray_directions`` at ``antialias·res``), the
    smooth rest keeps the centre ray."""
    if not isinstance(res, int) or res < 4:
        raise ValueError(f"res must be an int >= 4 (pixels per side), got {res!r}")
    if not isinstance(antialias, int) or not 1 <= antialias <= 8:
        raise ValueError(f"antialias must be an int in 1..8 (rays per pixel side), got {antialias!r}")
    if not (math.isfinite(yaw) and math.isfinite(pitch)):
        raise ValueError(f"yaw and pitch must be finite radians, got yaw={yaw}, pitch={pitch}")
    camera = camera or preset("FFHQ256").camera
    c2w = _camera_to_world(float(yaw), float(pitch), camera)
    rot, origin = c2w[:3, :3], c2w[:3, 3]
    prims = head_primitives(identity_params)
    z_bg = background_depth(camera)

    dirs_cam = _camera_rays(camera.fov_deg, res)
    color, t, index = _trace(identity_params, prims, origin, dirs_cam @ rot.T, z_bg)
    depth = (t * dirs_cam[:, 2]).reshape(res, res).astype(np.float32)  # camera z = ray length · cos
    index = index.reshape(res, res)
    parts = np.where(index >= 0, prims.part[index], int(Part.BACKGROUND)).astype(np.uint8)
    color = color.reshape(res, res, 3)
    if antialias > 1:  # adaptive: re-shade pixels at silhouettes, part borders and on the eyes' texture
        s = antialias
        near = np.pad(index, 1, mode="edge")
        edge = parts == Part.EYE
        for dy, dx in ((0, 0), (0, 1), (0, 2), (1, 0), (1, 2), (2, 0), (2, 1), (2, 2)):
            edge |= near[dy : dy + res, dx : dx + res] != index
        v, u = np.nonzero(edge)
        fine = _camera_rays(camera.fov_deg, res * s).reshape(res, s, res, s, 3)  # pixel (v, u) → [s, s] rays
        sub = fine[v, :, u, :, :].reshape(-1, 3)
        sub_color, _, _ = _trace(identity_params, prims, origin, sub @ rot.T, z_bg)
        color[v, u] = sub_color.reshape(len(v), s * s, 3).mean(axis=1)
    image = np.round(np.clip(color, 0.0, 1.0) * 255.0).astype(np.uint8)
    mask = np.isin(parts, [int(q) for q in FACE_PARTS])

    # landmarks: pinhole projection u = f x/z + W/2 (method §1.2); hidden when a surface is hit before them
    points = landmarks_3d(identity_params)
    cam = (points - origin) @ rot  # world → camera: R^T (X − C)
    focal = res / (2.0 * math.tan(math.radians(camera.fov_deg) / 2.0))
    landmarks = focal * cam[:, :2] / cam[:, 2:] + res / 2.0
    offsets = points - origin
    dist = np.linalg.norm(offsets, axis=1)
    t_first, _ = _first_hits(prims, origin, offsets / dist[:, None])
    inside = np.all((landmarks >= 0.0) & (landmarks < res), axis=1)
    visible = inside & (t_first >= dist - _LANDMARK_TOLERANCE)
    return HeadSample(image, depth, mask, landmarks, visible, parts)


# --- datasets --------------------------------------------------------------------------------------------


def identity_and_pose(seed: int, index: int, camera: CameraConfig) -> tuple[HeadParams, float, float]:
    """Identity ``index`` of dataset ``seed`` and its (yaw, pitch) from the truncated-Gaussian prior of
    ``camera`` (docs/method.md §1.4); depends only on (seed, index)."""
    params = sample_identity(np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(index, 0))))
    state = np.random.SeedSequence(seed, spawn_key=(index, 1)).generate_state(2, np.uint32)
    generator = torch.Generator().manual_seed((int(state[0]) << 31) ^ int(state[1]))
    yaw, pitch = sample_sphere_poses(
        1,
        camera.yaw_std,
        camera.pitch_std,
        camera.truncation_k,
        camera.yaw_mean,
        camera.pitch_mean,
        generator,
    )
    return params, float(yaw[0]), float(pitch[0])


class _Chunk(NamedTuple):
    out: Path
    seed: int
    start: int
    stop: int
    res: int
    camera: CameraConfig
    antialias: int


class _Rendered(NamedTuple):
    name: str
    image: np.ndarray
    yaw: float
    pitch: float
    landmarks_ok: bool


def _render_chunk(chunk: _Chunk) -> list[_Rendered]:
    """Render images [start, stop) and write their pose, depth, mask and landmark files (runs in workers,
    or in the caller's process for ``workers=1``: its torch thread count is restored afterwards)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _render_chunk_files(chunk)
    finally:
        torch.set_num_threads(threads)


def _render_chunk_files(chunk: _Chunk) -> list[_Rendered]:
    rendered = []
    cam = chunk.camera
    for index in range(chunk.start, chunk.stop):
        params, yaw, pitch = identity_and_pose(chunk.seed, index, cam)
        sample = render_head(params, yaw, pitch, chunk.res, cam, antialias=chunk.antialias)
        stem = dataset_tool_name(index, "")
        c2w = torch.from_numpy(_camera_to_world(yaw, pitch, cam))
        angle, trans = w2c_to_deep3dface(torch.linalg.inv(c2w)[None], cam.sphere_center_z)
        write_deep3dface_mat(chunk.out / "poses" / f"{stem}.mat", angle[0].tolist(), trans[0].tolist())
        for folder in ("depth", "mask", "landmarks/detections/results"):
            (chunk.out / folder / stem).parent.mkdir(parents=True, exist_ok=True)
        np.save(chunk.out / "depth" / f"{stem}.npy", sample.depth)
        PIL.Image.fromarray(sample.mask.astype(np.uint8) * 255).save(chunk.out / "mask" / f"{stem}.png")
        pixels = np.floor(sample.landmarks).astype(np.int64)
        text = "".join(f"{x}\t{y}\n" for x, y in pixels)
        (chunk.out / "landmarks/detections/results" / f"{stem}.txt").write_text(text, encoding="utf-8")
        rendered.append(
            _Rendered(f"{stem}.png", sample.image, yaw, pitch, bool(sample.landmarks_visible.all()))
        )
    return rendered


def _chunks_in_order(chunks: Sequence[_Chunk], workers: int) -> Iterator[list[_Rendered]]:
    if workers == 1:
        yield from map(_render_chunk, chunks)
        return
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        yield from pool.imap(_render_chunk, chunks)


def _check_dataset_args(
    res: int, n: int, seed: int, workers: int, antialias: int, camera: CameraConfig
) -> None:
    def is_int(v: object) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    if not is_int(res) or not MIN_DATASET_RES <= res <= MAX_DATASET_RES or res & (res - 1):
        raise ValueError(
            f"res must be a power of two in {MIN_DATASET_RES}..{MAX_DATASET_RES} (the generator's "
            f"resolutions), got {res!r}; e.g. --res 64"
        )
    if not is_int(n) or n <= 0:
        raise ValueError(f"n (number of images) must be a positive int, got {n!r}")
    if not is_int(seed) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    if not is_int(workers) or workers < 1:
        raise ValueError(f"workers must be an int >= 1 (processes), got {workers!r}")
    if not is_int(antialias) or not 1 <= antialias <= 8:
        raise ValueError(f"antialias must be an int in 1..8 (rays per pixel side), got {antialias!r}")
    if not (camera.d_near <= HEAD_Z_RANGE[0] and background_depth(camera) >= HEAD_Z_RANGE[1]):
        raise ValueError(
            f"the synthetic heads fill world z {HEAD_Z_RANGE[0]}…{HEAD_Z_RANGE[1]} (modelled for the FFHQ "
            f"camera); the camera planes {camera.d_near}…{camera.d_far} must enclose them and the background "
            f"plane at d_far − {_BACKGROUND_GAP} — use preset('FFHQ256').camera or MetFaces'"
        )


def _prepare_destination(out: Path, overwrite: bool) -> None:
    if not out.exists():
        return
    if out.is_dir() and not any(out.iterdir()):
        out.rmdir()
        return
    ours = synthetic_images_zip(out) is not None
    if overwrite and ours:
        shutil.rmtree(out)
        return
    what = "a synthetic dataset" if ours else "not a synthetic dataset (no meta.json + images.zip)"
    hint = (
        "pass --overwrite (overwrite=True) to replace it, or choose another output folder"
        if ours
        else "choose a new or empty output folder"
    )
    raise FileExistsError(f"{out} already exists and is {what}; {hint}")


def synthesize_dataset(
    out: str | os.PathLike[str],
    res: int = 64,
    n: int = 1000,
    seed: int = 0,
    workers: int = 1,
    camera: CameraConfig | None = None,
    progress: bool = True,
    *,
    antialias: int = 2,
    overwrite: bool = False,
) -> Path:
    """Render ``n`` synthetic heads at ``res``² into ``out`` in the FFHQ layouts (module docstring). Output
    depends only on (res, n, seed, camera, antialias), not on ``workers``. Everything is written to a
    temporary sibling folder first and renamed into place, so ``out`` is either complete or absent.
    ``workers > 1`` starts spawn processes: call it from under ``if __name__ == "__main__":`` in scripts."""
    camera = camera or preset("FFHQ256").camera
    _check_dataset_args(res, n, seed, workers, antialias, camera)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    _prepare_destination(out, overwrite)
    # renamed into place when complete (a plain rename: out is absent now, and a folder that appeared
    # meanwhile is refused, not replaced), removed if anything fails
    with staged_dir(out, swap=os.replace) as tmp:
        step = max(1, min(64, -(-n // (4 * workers))))
        chunks = [_Chunk(tmp, seed, a, min(a + step, n), res, camera, antialias) for a in range(0, n, step)]
        records: list[_Rendered] = []

        def images() -> Iterator[tuple[str, np.ndarray]]:
            from tqdm.auto import tqdm

            with tqdm(total=n, disable=not progress, desc="gmpi data synth", unit="img") as bar:
                for rendered in _chunks_in_order(chunks, workers):
                    for r in rendered:
                        records.append(r._replace(image=np.empty(0, np.uint8)))  # keep no pixels around
                        yield r.name, r.image
                    bar.update(len(rendered))

        write_dataset_zip(tmp / "images.zip", images(), labels=None)
        hidden = [r.name for r in records if not r.landmarks_ok]
        (tmp / "poses" / "fail_list.txt").write_text("\n", encoding="utf-8")
        detections = tmp / "landmarks" / "detections"
        (detections / "fail_list.txt").write_text("".join(f"{m}\n" for m in hidden) or "\n", encoding="utf-8")
        poses = {"poses": {r.name: {"yaw": r.yaw, "pitch": r.pitch} for r in records}, "fail_list": []}
        (tmp / "poses.json").write_text(json.dumps(poses, indent=1), encoding="utf-8")
        meta = {
            "generator": GENERATOR_VERSION,
            "resolution": res,
            "n": n,
            "seed": seed,
            "antialias": antialias,
            "camera": camera.model_dump(),
            "background_depth": background_depth(camera),
            "landmark_order": list(LANDMARK_NAMES),
            "landmarks_hidden": len(hidden),
            "files": {
                "images": "images.zip",
                "poses": "poses/<member>.mat (Deep3DFace angle/trans of the true camera) and poses.json",
                "depth": "depth/<member>.npy float32 [H, W] camera z-depth",
                "mask": "mask/<member>.png uint8 0/255 face mask",
                "landmarks": "landmarks/detections/results/<member>.txt",
            },
        }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1), encoding="utf-8")
    return out


DATASET_RESOLUTIONS = tuple(
    2**k for k in range(MIN_DATASET_RES.bit_length() - 1, MAX_DATASET_RES.bit_length())
)


def main(argv: Sequence[str] | None = None) -> int:
    """``gmpi data synth --out DIR --res 64 --n 20000 --seed 0 [--workers K]``."""
    parser = argparse.ArgumentParser(
        prog="gmpi data synth", description=__doc__.split("\n\n")[0] if __doc__ else None
    )
    parser.add_argument(
        "--out",
        required=True,
        help="output folder: must be new or empty (a synthetic dataset there is replaced with --overwrite)",
    )
    parser.add_argument(
        "--res",
        type=int,
        default=64,
        help=f"image side in pixels, one of {', '.join(map(str, DATASET_RESOLUTIONS))} "
        f"(default: %(default)s; `gmpi prep landmarks` (MTCNN) needs 64 or more: it misses about a quarter "
        f"of the heads at 32)",
    )
    parser.add_argument("--n", type=int, default=1000, help="number of images (default: %(default)s)")
    parser.add_argument(
        "--seed", type=int, default=0, help="identity i and its pose depend only on (seed, i) (default: 0)"
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=max(1, (os.cpu_count() or 1) - 1),
        help="rendering processes (default: the CPU count minus one, here %(default)s)",
    )
    parser.add_argument(
        "--preset",
        default="FFHQ256",
        help="camera preset (intrinsics, planes, pose prior) (default: %(default)s)",
    )
    parser.add_argument(
        "--antialias",
        type=int,
        default=2,
        help="rays per pixel side for the images, 1..8 (default: %(default)s)",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace an existing synthetic dataset in --out"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)

    def fail(message: str) -> int:
        print(f"gmpi data synth: error: {message}", file=sys.stderr)
        return 2

    if args.res not in DATASET_RESOLUTIONS:
        return fail(
            f"--res {args.res} is not supported; choose one of {', '.join(map(str, DATASET_RESOLUTIONS))} "
            f"(powers of two: the generator's resolutions), e.g. --res 64"
        )
    try:
        camera = preset(args.preset).camera
        out = synthesize_dataset(
            args.out, res=args.res, n=args.n, seed=args.seed, workers=args.workers, camera=camera,
            progress=not args.no_progress, antialias=args.antialias, overwrite=args.overwrite,
        )  # fmt: skip
    except (ValueError, OSError) as e:
        return fail(str(e))
    print(f"[gmpi data synth] wrote {args.n} images at {args.res}² to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
