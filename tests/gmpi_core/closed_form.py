"""Independent numpy references the tests check the library against (written from the spec, not the code)."""

from __future__ import annotations

import math

import numpy as np


def sphere_c2w(yaw: float, pitch: float, r: float = 1.0, c: float = 1.0) -> np.ndarray:
    """docs/method.md §1.3 closed form: camera-to-world of a camera at C on the sphere of radius r around
    S = (0, 0, c), looking at S with zero roll."""
    horizontal = r * abs(math.cos(pitch))
    centre = np.array([horizontal * math.sin(yaw), -r * math.sin(pitch), c - horizontal * math.cos(yaw)])
    z = np.array([0.0, 0.0, c]) - centre
    z /= np.linalg.norm(z)
    x = np.cross([0.0, 1.0, 0.0], z)
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    c2w = np.eye(4)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = x, y, z, centre
    return c2w


def sphere_w2c(yaw: float, pitch: float, r: float = 1.0, c: float = 1.0) -> np.ndarray:
    """The inverse of :func:`sphere_c2w` written out (§1.5): [Rᵀ | −Rᵀ C]."""
    c2w = sphere_c2w(yaw, pitch, r, c)
    w2c = np.eye(4)
    w2c[:3, :3] = c2w[:3, :3].T
    w2c[:3, 3] = -c2w[:3, :3].T @ c2w[:3, 3]
    return w2c
