"""Lighting augmentation (docs/method.md §6.6): texture-space depth, blur, normals, ramp, shading."""

import numpy as np
import pytest
import torch

from gmpi_core.config import LightingConfig, preset
from gmpi_core.pipeline import plane_layout
from gmpi_core.train.lighting import (
    LightingAugmentation,
    blur_sigma,
    gaussian_blur,
    surface_normals,
    texture_space_depth,
)


def test_texture_space_depth_of_an_opaque_plane_is_its_depth_and_half_alpha_mixes_by_closed_form():
    depths = torch.tensor([1.0, 2.0, 3.0])
    alpha = torch.zeros(1, 3, 2, 2)
    alpha[:, 1] = 1.0
    assert torch.allclose(texture_space_depth(alpha, depths), torch.full((1, 2, 2), 2.0))
    alpha = torch.tensor([0.5, 0.5, 1.0]).view(1, 3, 1, 1)
    # w = (0.5, 0.5·(0.5+1e-10), 1·(0.5+1e-10)²) ≈ (0.5, 0.25, 0.25)
    assert texture_space_depth(alpha, depths).item() == pytest.approx(0.5 * 1 + 0.25 * 2 + 0.25 * 3, abs=1e-6)


def test_blur_sigma_matches_torchvision_default_for_kernel_9():
    assert blur_sigma(9) == pytest.approx(1.7)


def test_gaussian_blur_matches_an_explicit_reflect_padded_convolution():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(1, 1, 12, 10, generator=g, dtype=torch.float64)
    k, sigma = 5, 1.1
    t = np.arange(k) - (k - 1) / 2
    w = np.exp(-0.5 * (t / sigma) ** 2)
    w /= w.sum()
    xp = np.pad(x[0, 0].numpy(), k // 2, mode="reflect")
    expected = np.zeros((12, 10))
    for i in range(12):
        for j in range(10):
            expected[i, j] = (np.outer(w, w) * xp[i : i + k, j : j + k]).sum()
    assert np.allclose(gaussian_blur(x, k, sigma)[0, 0].numpy(), expected, atol=1e-12)


def test_normals_of_a_fronto_parallel_surface_face_the_camera_and_a_slanted_one_tilts_by_its_slope():
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, 6), torch.linspace(-1, 1, 7), indexing="ij")
    flat = torch.stack([xs, ys, torch.full_like(xs, 2.0)], -1)[None]
    assert torch.allclose(surface_normals(flat), torch.tensor([0.0, 0.0, -1.0]).expand(1, 6, 7, 3), atol=1e-6)
    a = 0.5  # surface z = 2 + a·x: normal facing the camera ∝ (a, 0, −1)
    slanted = torch.stack([xs, ys, 2.0 + a * xs], -1)[None]
    expected = torch.tensor([a, 0.0, -1.0]) / np.sqrt(1 + a * a)
    assert torch.allclose(surface_normals(slanted), expected.expand(1, 6, 7, 3), atol=1e-6)


def _flat_mpi(t=8, n=4):
    camera = preset("synthetic32").camera
    dhw, _ = plane_layout(camera, n)
    rgba = torch.full((2, n, 4, t, t), 0.6)
    rgba[:, :, 3] = 0.0
    rgba[:, -1, 3] = 1.0  # only the (flat) background plane is visible
    return camera, dhw, rgba


def test_official_ramp_starts_black_and_frontal_light_on_a_flat_mpi_leaves_colours_after_the_ramp():
    camera, dhw, rgba = _flat_mpi()
    cfg = LightingConfig(grow_n_iters=10, light_yaw_std=0.0, light_pitch_mean=0.0, light_pitch_std=0.0)
    shader = LightingAugmentation(cfg, camera)
    first = shader(rgba, dhw)
    assert torch.equal(first[:, :, :3], torch.zeros_like(first[:, :, :3]))  # k_a = k_d = 0 (method §12.2.1)
    assert torch.equal(first[:, :, 3], rgba[:, :, 3])
    shader.n_calls = 10
    rho, ka, kd = shader.coefficients()
    assert (rho, ka, kd) == (1.0, pytest.approx(0.9), pytest.approx(0.1))
    # light at the canonical camera: ℓ = (0,0,1), flat normals (0,0,−1) → diffuse 1 → shade k_a + k_d = 1
    shaded = shader(rgba, dhw)
    assert torch.allclose(shaded, rgba, atol=1e-5)


def test_non_official_ramp_starts_at_identity():
    camera, dhw, rgba = _flat_mpi()
    shader = LightingAugmentation(LightingConfig(official_ramp=False), camera)
    assert torch.allclose(shader(rgba, dhw), rgba)


def test_light_from_the_side_darkens_a_flat_mpi_by_the_cosine():
    camera, dhw, rgba = _flat_mpi()
    yaw = 0.3
    cfg = LightingConfig(grow_n_iters=1, light_yaw_std=0.0, light_pitch_mean=0.0, light_pitch_std=0.0)
    shader = LightingAugmentation(cfg, camera)
    shader.n_calls = 1
    shader.light_directions = lambda b, generator=None: (
        torch.tensor([[-np.sin(yaw), 0.0, np.cos(yaw)]]).float().expand(b, 3)
    )
    shaded = shader(rgba, dhw)
    expected = 0.6 * (0.9 + 0.1 * np.cos(yaw))
    assert torch.allclose(shaded[:, :, :3], torch.full_like(shaded[:, :, :3], expected), atol=1e-5)
