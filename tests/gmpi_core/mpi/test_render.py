"""The MPI renderer (method §3): analytic scenes, fused == reference, gradients, out-of-bounds handling.

Analytic expectations are derived by hand in the tests: for a camera at yaw θ on the FFHQ sphere (c = r = 1)
the centre is C = (sin θ, 0, 1 − cos θ) and the axes x_c = (cos θ, 0, sin θ), y_c = (0, 1, 0),
z_c = (−sin θ, 0, cos θ), so pixel (px, py) with camera direction (x, y, 1), x = (px + ½ − W/2)/f, sees
along q = (x cos θ − sin θ, y, x sin θ + cos θ) and hits plane z = d at C + (d − C_z)/q_z · q.
"""

from __future__ import annotations

import math

import pytest
import torch

from gmpi_core.camera import focal_from_fov, sphere_c2w
from gmpi_core.mpi.planes import confined_extents, plane_depths, plane_dhw
from gmpi_core.mpi.render import RayOutsideMPIError, fused_available, render_mpi, render_mpi_reference

FOV = 12.6
D = torch.float64
FUSED = pytest.param(
    "fused", marks=pytest.mark.skipif(not fused_available("cpu"), reason="fused CPU renderer did not build")
)
IMPLS = ["reference", FUSED]


def _render(impl: str, *args, **kwargs):  # type: ignore[no-untyped-def]
    return render_mpi(*args, impl=impl, **kwargs)


def _yaw_c2w(theta: float, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Camera at yaw θ on the FFHQ sphere, written out by hand (see module docstring)."""
    c, s = math.cos(theta), math.sin(theta)
    return torch.tensor([[[c, 0, -s, s], [0, 1, 0, 0], [s, 0, c, 1 - c], [0, 0, 0, 1]]], dtype=dtype)


def _pixel_x(size: int) -> torch.Tensor:
    """Camera-frame x (= y) of the pixel centres, [size], float64."""
    return (torch.arange(size, dtype=D) + 0.5 - size / 2) / focal_from_fov(FOV, size)


def _ffhq_dhw(n: int) -> torch.Tensor:
    box, background = confined_extents(FOV, 1.12, 0.289, 0.127, 2.0, radius=1.0, center_z=1.0)
    return plane_dhw(plane_depths(0.95, 1.12, n), box, background)


def _random_scene(b: int, n: int, t: int | tuple[int, int], seed: int, dtype: torch.dtype = torch.float32):  # type: ignore[no-untyped-def]
    """Random MPIs (opaque background) and poses inside the FFHQ prior box."""
    gen = torch.Generator().manual_seed(seed)
    th, tw = (t, t) if isinstance(t, int) else t
    rgba = torch.rand(b, n, 4, th, tw, generator=gen, dtype=dtype)
    rgba[:, -1, 3] = 1.0
    yaw = (torch.rand(b, generator=gen, dtype=D) * 2 - 1) * 0.578
    pitch = (torch.rand(b, generator=gen, dtype=D) * 2 - 1) * 0.254
    return rgba, _ffhq_dhw(n).to(dtype), sphere_c2w(yaw, pitch, 1.0, 1.0).to(dtype)


# -- analytic scenes ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("impl", IMPLS)
def test_opaque_front_plane_renders_its_texture_from_canonical_pose(impl: str) -> None:
    # a plane of width d(T−1)/f at depth d puts texel centre k under pixel centre k (T = size)
    size, d = 8, 1.0
    f = focal_from_fov(FOV, size)
    extent = d * (size - 1) / f
    texture = torch.rand(3, size, size, generator=torch.Generator().manual_seed(0))
    rgba = torch.zeros(1, 2, 4, size, size)
    rgba[0, 0, :3], rgba[0, 0, 3] = texture, 1.0
    rgba[0, 1] = 0.5  # opaque grey background
    rgba[0, 1, 3] = 1.0
    dhw = torch.tensor([[d, extent, extent], [1.12, 1.0, 1.0]])
    image, depth = _render(impl, rgba, dhw, torch.eye(4)[None], FOV, size)
    torch.testing.assert_close(image[0], 2 * texture - 1, atol=2e-6, rtol=0)
    torch.testing.assert_close(depth, torch.full((1, 1, size, size), d), atol=1e-6, rtol=0)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("theta", [0.0, 0.35])
def test_half_transparent_stack_composites_to_closed_form(impl: str, theta: float) -> None:
    # three planes of alpha ½ in front of an opaque background: weights ½, ¼, ⅛, ⅛ (up to 1e-10 terms)
    size, depths = 9, [0.95, 1.0, 1.05, 1.12]
    colours = torch.tensor([[0.9, 0.1, 0.2], [0.3, 0.8, 0.1], [0.2, 0.4, 0.7], [0.6, 0.6, 0.6]])
    alphas = [0.5, 0.5, 0.5, 1.0]
    rgba = torch.zeros(1, 4, 4, 6, 6)
    for i in range(4):
        rgba[0, i, :3] = colours[i, :, None, None]
        rgba[0, i, 3] = alphas[i]
    dhw = torch.tensor([[d, 3.0, 3.0] for d in depths])  # planes much wider than the view: every ray hits all
    image, depth = _render(impl, rgba, dhw, _yaw_c2w(theta), FOV, size)
    weights = torch.tensor([0.5, 0.25, 0.125, 0.125])
    expected = 2 * (weights @ colours) - 1
    torch.testing.assert_close(image[0], expected[:, None, None].expand(3, size, size), atol=1e-6, rtol=0)
    # camera z-depth of plane i at pixel column px: (d_i − C_z)/q_z with q_z = x sin θ + cos θ
    q_z = _pixel_x(size) * math.sin(theta) + math.cos(theta)
    z = (torch.tensor(depths, dtype=D)[:, None] - (1 - math.cos(theta))) / q_z[None, :]  # [4, W]
    expected_depth = (weights.double()[:, None] * z).sum(0)
    torch.testing.assert_close(depth[0, 0].double(), expected_depth.expand(size, size), atol=1e-6, rtol=0)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("theta", [0.0, -0.4])
def test_depth_of_one_opaque_plane_is_its_camera_z_depth(impl: str, theta: float) -> None:
    size, d = 10, 1.03
    rgba = torch.rand(1, 2, 4, 5, 5, generator=torch.Generator().manual_seed(1))
    rgba[0, :, 3] = 1.0
    dhw = torch.tensor([[d, 3.0, 3.0], [1.12, 3.0, 3.0]])
    _, depth = _render(impl, rgba, dhw, _yaw_c2w(theta), FOV, size)
    q_z = _pixel_x(size) * math.sin(theta) + math.cos(theta)
    expected = ((d - (1 - math.cos(theta))) / q_z).expand(size, size)  # = d everywhere when θ = 0
    torch.testing.assert_close(depth[0, 0].double(), expected, atol=1e-6, rtol=0)


def _ramp_scene(t: int, extent: float, d: float) -> tuple[torch.Tensor, torch.Tensor]:
    """An opaque plane whose red = texel column/(T−1) and green = texel row/(T−1), plus a background."""
    ramp = torch.linspace(0, 1, t)
    rgba = torch.zeros(1, 2, 4, t, t)
    rgba[0, 0, 0], rgba[0, 0, 1] = ramp[None, :].expand(t, t), ramp[:, None].expand(t, t)
    rgba[0, 0, 2], rgba[0, :, 3] = 0.5, 1.0
    return rgba, torch.tensor([[d, extent, extent], [1.12, 3.0, 3.0]])


@pytest.mark.parametrize("impl", IMPLS)
def test_yawed_camera_maps_pixels_to_plane_by_hand_derived_homography(impl: str) -> None:
    size, t, extent, d, theta = 12, 16, 0.6, 1.0, 0.3
    rgba, dhw = _ramp_scene(t, extent, d)
    image, _ = _render(impl, rgba, dhw, _yaw_c2w(theta), FOV, size)
    x = _pixel_x(size)[None, :]  # [1, W] columns
    y = _pixel_x(size)[:, None]  # [H, 1] rows
    q_x, q_z = x * math.cos(theta) - math.sin(theta), x * math.sin(theta) + math.cos(theta)
    s = (d - (1 - math.cos(theta))) / q_z
    hit_x, hit_y = math.sin(theta) + s * q_x, s * y
    # a linear ramp is reproduced exactly by bilinear sampling: red = hit_x/w + ½, green = hit_y/h + ½
    torch.testing.assert_close(
        image[0, 0].double(), (2 * (hit_x / extent + 0.5) - 1).expand(size, size), atol=2e-6, rtol=0
    )
    torch.testing.assert_close(
        image[0, 1].double(), (2 * (hit_y / extent + 0.5) - 1).expand(size, size), atol=2e-6, rtol=0
    )


@pytest.mark.parametrize("impl", IMPLS)
def test_known_texel_lands_where_the_camera_projects_it(impl: str) -> None:
    # project texel (row 7, column 9) world → camera → pixel, then read the rendered ramp there
    size, t, extent, d, theta = 12, 16, 0.6, 1.0, 0.3
    rgba, dhw = _ramp_scene(t, extent, d)
    image, _ = _render(impl, rgba.double(), dhw.double(), _yaw_c2w(theta, D), FOV, size)
    point = torch.tensor(
        [(-1 + 2 * 9 / (t - 1)) * extent / 2, (-1 + 2 * 7 / (t - 1)) * extent / 2, d], dtype=D
    )
    c, s = math.cos(theta), math.sin(theta)
    rel = point - torch.tensor([s, 0, 1 - c], dtype=D)
    cam = torch.stack(
        [rel @ torch.tensor([c, 0, s], dtype=D), rel[1], rel @ torch.tensor([-s, 0, c], dtype=D)]
    )
    f = focal_from_fov(FOV, size)
    u, v = (f * cam[0] / cam[2] + size / 2 - 0.5).item(), (f * cam[1] / cam[2] + size / 2 - 0.5).item()
    u0, v0 = math.floor(u), math.floor(v)
    fu, fv = u - u0, v - v0
    patch = (image[0, :2, v0 : v0 + 2, u0 : u0 + 2] + 1) / 2  # rendered (red, green) around the landing point
    at = (1 - fv) * ((1 - fu) * patch[:, 0, 0] + fu * patch[:, 0, 1]) + fv * (
        (1 - fu) * patch[:, 1, 0] + fu * patch[:, 1, 1]
    )
    torch.testing.assert_close(at, torch.tensor([9 / (t - 1), 7 / (t - 1)], dtype=D), atol=5e-4, rtol=0)


# -- fused vs reference -----------------------------------------------------------------------------------


@pytest.mark.skipif(not fused_available("cpu"), reason="fused CPU renderer did not build")
@pytest.mark.parametrize(
    ("b", "n", "t", "size"),
    [(1, 2, 8, 8), (3, 7, 13, 17), (2, 32, 24, 20), (2, 96, 12, 16), (2, 9, (10, 14), 15)],
)
def test_fused_matches_reference_on_random_mpis_and_prior_poses(b: int, n: int, t: int, size: int) -> None:
    rgba64, dhw64, c2w64 = _random_scene(b, n, t, seed=b * 100 + n, dtype=D)
    rgba, dhw, c2w = rgba64.float(), dhw64.float(), c2w64.float()
    image, depth = render_mpi(rgba, dhw, c2w, FOV, size, impl="fused")
    ref_image, ref_depth = render_mpi_reference(rgba, dhw, c2w, FOV, size)
    assert image.shape == (b, 3, size, size) and depth.shape == (b, 1, size, size)
    torch.testing.assert_close(image, ref_image, atol=1e-5, rtol=0)
    torch.testing.assert_close(depth, ref_depth, atol=1e-5, rtol=0)
    # in float64 both are exact up to rounding
    image64, depth64 = render_mpi(rgba64, dhw64, c2w64, FOV, size, impl="fused")
    ref64, ref_depth64 = render_mpi_reference(rgba64, dhw64, c2w64, FOV, size)
    torch.testing.assert_close(image64, ref64, atol=1e-11, rtol=0)
    torch.testing.assert_close(depth64, ref_depth64, atol=1e-11, rtol=0)


@pytest.mark.skipif(not fused_available("cpu"), reason="fused CPU renderer did not build")
def test_fused_early_exit_behind_opaque_planes_stays_within_1e6_of_exact() -> None:
    rgba, dhw, c2w = _random_scene(2, 96, 12, seed=4)
    rgba[:, 10, 3] = 1.0  # an opaque plane early: everything behind it is skipped in float32
    image, depth = render_mpi(rgba, dhw, c2w, FOV, 16, impl="fused")
    exact_image, exact_depth = render_mpi_reference(rgba.double(), dhw.double(), c2w.double(), FOV, 16)
    torch.testing.assert_close(image.double(), exact_image, atol=1e-6, rtol=0)
    torch.testing.assert_close(depth.double(), exact_depth, atol=1e-6, rtol=0)


def _texture_gradients(impl: str, rgba, dhw, c2w, size, out_of_bounds="raise"):  # type: ignore[no-untyped-def]
    gen = torch.Generator().manual_seed(11)
    b = c2w.shape[0]
    g_image = torch.randn(b, 3, size, size, generator=gen, dtype=D).to(rgba.dtype)
    g_depth = torch.randn(b, 1, size, size, generator=gen, dtype=D).to(rgba.dtype)
    leaf = rgba.clone().requires_grad_(True)
    image, depth = render_mpi(leaf, dhw, c2w, FOV, size, impl=impl, out_of_bounds=out_of_bounds)  # type: ignore[arg-type]
    ((image * g_image).sum() + (depth * g_depth).sum()).backward()
    return leaf.grad


@pytest.mark.skipif(not fused_available("cpu"), reason="fused CPU renderer did not build")
@pytest.mark.parametrize(
    ("b", "n", "t", "size"), [(2, 6, 12, 15), (3, 32, 20, 24), (1, 5, 4, 64), (2, 4, (9, 13), 11)]
)
def test_fused_texture_gradients_match_reference(b: int, n: int, t: int, size: int) -> None:
    # (1, 5, 4, 64): tiny textures seen by many pixel rows take the single-thread scatter path
    rgba, dhw, c2w = _random_scene(b, n, t, seed=n, dtype=D)
    rgba[:, n // 2, 3] = 1.0  # an opaque plane: the gradient must not divide by 1 − α + 1e-10
    got = _texture_gradients("fused", rgba, dhw, c2w, size)
    want = _texture_gradients("reference", rgba, dhw, c2w, size)
    torch.testing.assert_close(got, want, atol=1e-10, rtol=1e-9)
    got32 = _texture_gradients("fused", rgba.float(), dhw.float(), c2w.float(), size)
    torch.testing.assert_close(got32.double(), want, atol=2e-4, rtol=1e-4)


@pytest.mark.skipif(not fused_available("cpu"), reason="fused CPU renderer did not build")
@pytest.mark.parametrize("out_of_bounds", ["raise", "clamp"])
def test_fused_gradcheck_in_float64(out_of_bounds: str) -> None:
    rgba, dhw, c2w = _random_scene(2, 3, 5, seed=3, dtype=D)
    rgba = rgba[:, :, :, :, :3]  # 5 × 3 textures keep the Jacobian small
    if out_of_bounds == "clamp":
        c2w = sphere_c2w(torch.tensor([0.9, -0.2], dtype=D), torch.tensor([0.1, 0.5], dtype=D), 1.0, 1.0)
    rgba = rgba.clamp(0.05, 0.95).requires_grad_(True)

    def fn(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return render_mpi(x, dhw, c2w, FOV, 6, impl="fused", out_of_bounds=out_of_bounds)  # type: ignore[arg-type]

    assert torch.autograd.gradcheck(
        fn, (rgba,), eps=1e-6, atol=1e-7
    )  # full Jacobian: 300 inputs × 288 outputs


@pytest.mark.skipif(not fused_available("cpu"), reason="fused CPU renderer did not build")
def test_one_mpi_shared_by_several_views_equals_per_view_copies() -> None:
    rgba, dhw, _ = _random_scene(1, 6, 10, seed=5, dtype=D)
    c2w = sphere_c2w(
        torch.tensor([0.3, -0.2, 0.0], dtype=D), torch.tensor([0.0, 0.1, -0.2], dtype=D), 1.0, 1.0
    )
    for impl in ("fused", "reference"):
        shared, _ = render_mpi(rgba.expand(3, -1, -1, -1, -1), dhw, c2w, FOV, 12, impl=impl)  # type: ignore[arg-type]
        for v in range(3):
            single, _ = render_mpi(rgba, dhw, c2w[v : v + 1], FOV, 12, impl=impl)  # type: ignore[arg-type]
            torch.testing.assert_close(shared[v : v + 1], single, atol=1e-12, rtol=0)
    got = _texture_gradients("fused", rgba, dhw, c2w, 12)
    want = _texture_gradients("reference", rgba.expand(3, -1, -1, -1, -1).contiguous(), dhw, c2w, 12).sum(
        0, keepdim=True
    )
    torch.testing.assert_close(got, want, atol=1e-10, rtol=1e-9)


@pytest.mark.skipif(not fused_available("cpu"), reason="fused CPU renderer did not build")
def test_fused_results_do_not_depend_on_thread_count() -> None:
    rgba, dhw, c2w = _random_scene(2, 8, 24, seed=6)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = (
            *render_mpi(rgba, dhw, c2w, FOV, 32, impl="fused"),
            _texture_gradients("fused", rgba, dhw, c2w, 32),
        )
        torch.set_num_threads(4)
        four = (
            *render_mpi(rgba, dhw, c2w, FOV, 32, impl="fused"),
            _texture_gradients("fused", rgba, dhw, c2w, 32),
        )
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(one, four):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


def test_auto_differentiates_through_the_camera_with_the_reference() -> None:
    rgba, dhw, c2w = _random_scene(1, 4, 8, seed=7)
    c2w.requires_grad_(True)
    image, _ = render_mpi(rgba, dhw, c2w, FOV, 8)
    image.sum().backward()
    assert c2w.grad is not None and c2w.grad.abs().sum() > 0


# -- geometry checks and out-of-bounds rays -------------------------------------------------------------


@pytest.mark.parametrize("impl", IMPLS)
def test_poses_of_the_prior_never_miss_the_background(impl: str) -> None:
    rgba, dhw, _ = _random_scene(1, 3, 4, seed=8)
    corners = torch.tensor([[-1, -1], [-1, 1], [1, -1], [1, 1], [0, 1], [1, 0]], dtype=torch.float32)
    yaw, pitch = corners[:, 0] * 0.578, corners[:, 1] * 0.254
    c2w = sphere_c2w(yaw, pitch, 1.0, 1.0)
    image, _ = _render(impl, rgba.expand(6, -1, -1, -1, -1), dhw, c2w, FOV, 16)
    assert image.shape == (6, 3, 16, 16)


@pytest.mark.parametrize("impl", IMPLS)
def test_pose_beyond_the_prior_raises_naming_the_rays_and_the_fix(impl: str) -> None:
    rgba, dhw, _ = _random_scene(2, 3, 4, seed=9)
    c2w = sphere_c2w(torch.tensor([0.2, 0.9]), torch.tensor([0.0, 0.0]), 1.0, 1.0)  # yaw 0.9 > 2σ = 0.578
    with pytest.raises(
        RayOutsideMPIError, match=r"rays of view 1 .*yaw 0\.9000.*out_of_bounds='clamp'"
    ) as info:
        _render(impl, rgba, dhw, c2w, FOV, 16)
    n_missed = int(str(info.value).split(" of ")[0])
    assert 0 < n_missed < 256


@pytest.mark.parametrize("impl", IMPLS)
def test_clamp_extends_the_background_border_where_ignore_leaves_black(impl: str) -> None:
    rgba = torch.zeros(1, 3, 4, 6, 6)
    rgba[0, -1, :3] = torch.tensor([0.2, 0.4, 0.6])[:, None, None]
    rgba[0, -1, 3] = 1.0  # only the background is visible
    dhw = _ffhq_dhw(3)
    c2w = sphere_c2w(torch.tensor([0.9]), torch.tensor([0.0]), 1.0, 1.0)
    clamped, _ = _render(impl, rgba, dhw, c2w, FOV, 16, out_of_bounds="clamp")
    expected = (2 * torch.tensor([0.2, 0.4, 0.6]) - 1)[:, None, None].expand(3, 16, 16)
    torch.testing.assert_close(clamped[0], expected, atol=1e-6, rtol=0)
    ignored, _ = _render(impl, rgba, dhw, c2w, FOV, 16, out_of_bounds="ignore")
    assert (ignored[0] == -1).all(0).any()  # some pixels see nothing: black
    torch.testing.assert_close(
        ignored[0, :, :, -1], expected[:, :, -1], atol=1e-6, rtol=0
    )  # right columns hit


@pytest.mark.parametrize("impl", IMPLS)
def test_plane_behind_the_camera_is_rejected(impl: str) -> None:
    rgba, _, _ = _random_scene(1, 2, 4, seed=10)
    dhw = torch.tensor([[-0.1, 1.0, 1.0], [1.12, 1.0, 1.0]])
    with pytest.raises(ValueError, match="not in front of view 0"):
        _render(impl, rgba, dhw, torch.eye(4)[None], FOV, 8, out_of_bounds="ignore")


def test_bad_arguments_are_rejected_with_choices() -> None:
    rgba, dhw, c2w = _random_scene(1, 2, 4, seed=12)
    with pytest.raises(ValueError, match="choose one of"):
        render_mpi(rgba, dhw, c2w, FOV, 8, impl="cuda")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="choose one of"):
        render_mpi(rgba, dhw, c2w, FOV, 8, out_of_bounds="wrap")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"\[N, 3\]"):
        render_mpi(rgba, dhw[:1], c2w, FOV, 8)
    with pytest.raises(ValueError, match="one per pose"):
        render_mpi(rgba.expand(2, -1, -1, -1, -1), dhw, c2w.expand(3, 4, 4), FOV, 8)
