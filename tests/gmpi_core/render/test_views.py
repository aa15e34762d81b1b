"""Single image, sweeps, plane grids, chunked generation, ψ and the `gmpi render` command (method §10)."""

import imageio.v2 as imageio
import numpy as np
import pytest
import torch
from PIL import Image

from gmpi_core.cli import main as gmpi_main
from gmpi_core.mpi.render import RayOutsideMPIError
from gmpi_core.pipeline import GMPI, MPI, plane_layout
from gmpi_core.render.cli import main
from gmpi_core.render.io import depth_to_uint8, to_uint8
from gmpi_core.render.video import write_sweep_videos
from gmpi_core.render.views import (
    generate_mpi,
    mapping_latents,
    mpi_grids,
    render_views,
    sweep_frames,
    sweep_poses,
    write_single_image,
)


@pytest.fixture(scope="module")
def gmpi():
    return GMPI.random("synthetic32", seed=0)


@pytest.fixture(scope="module")
def mpi(gmpi):
    return generate_mpi(gmpi, seed=3, n_planes=8)


def test_grids_put_eight_planes_per_row_and_normalise_each_alpha_plane_by_its_maximum():
    n, t, pad = 10, 5, 2  # ramp 0, .25, .5, .75, 1: 255·ramp has no integer to round across
    rgba = torch.zeros(n, 4, t, t)
    for i in range(n):
        rgba[i, :3] = torch.tensor([i / 10, 0.5, 1 - i / 10])[:, None, None]
        rgba[i, 3] = (i / 20) * torch.linspace(0, 1, t)[
            None, :
        ]  # ramp along x, peak i/20 (plane 0: all zero)
    grids = mpi_grids(rgba)
    assert grids["mpi_rgb"].shape == (2 * t + pad, 8 * t + 7 * pad, 3)
    assert grids["mpi_alpha"].shape == (2 * t + pad, 8 * t + 7 * pad, 1)
    assert grids["mpi_rgba"].shape == (2 * t + pad, 8 * t + 7 * pad, 4)

    def tile(image, i):
        r, c = divmod(i, 8)
        return image[r * (t + pad) : r * (t + pad) + t, c * (t + pad) : c * (t + pad) + t]

    # plane 9 sits in row 1, column 1 with its own colour: trunc(255 · [0.9, 0.5, 0.1])
    assert np.all(tile(grids["mpi_rgb"], 9) == np.array([229, 127, 25], dtype=np.uint8))
    expected_ramp = np.array([0, 63, 127, 191, 255], dtype=np.uint8)  # every plane → trunc(255 · ramp)
    for i in range(1, n):
        assert np.array_equal(tile(grids["mpi_alpha"], i)[..., 0], np.tile(expected_ramp, (t, 1)))
    assert np.all(tile(grids["mpi_alpha"], 0) == 0)  # an empty plane stays black, no division by zero
    # the RGBA grid keeps the raw (unnormalised) alpha: plane 4 peaks at 0.2
    assert tile(grids["mpi_rgba"], 4)[..., 3].max() == int(0.2 * 255)
    assert np.all(grids["mpi_rgba"][t : t + pad, :, 3] == 0)  # padding is transparent


def test_sweeps_follow_the_original_trajectories():
    yaws, pitches = sweep_poses("horizontal", 100)
    assert len(yaws) == 100 and yaws[0] == 0.5 and yaws[-1] == -0.5 and np.all(pitches == 0)
    assert np.all(np.diff(yaws) < 0)
    yaws, pitches = sweep_poses("vertical", 100)
    assert pitches[0] == 0.3 and pitches[-1] == -0.3 and np.all(yaws == 0)
    with pytest.raises(ValueError, match="unknown sweep 'diagonal'"):
        sweep_poses("diagonal", 10)  # type: ignore[arg-type]


def test_vertical_sweep_frame_at_pitch_zero_equals_a_direct_render_at_the_canonical_pose(gmpi, mpi):
    yaws, pitches = sweep_poses("vertical", 5)
    assert pitches[2] == 0.0 and yaws[2] == 0.0
    rgb, depth = sweep_frames(gmpi, mpi, yaws, pitches, batch_size=2)  # batches of 2: frame 2 starts a batch
    image, depth_ref = gmpi.render(mpi, yaw=0.0, pitch=0.0)
    assert np.array_equal(rgb[2], to_uint8(image[0]))
    cam = gmpi.config.camera
    assert np.array_equal(depth[2], depth_to_uint8(depth_ref[0], cam.d_near, cam.d_far))
    assert not np.array_equal(rgb[0], rgb[2])  # pitch 0.3 is a different view


def test_video_files_decode_with_the_requested_frame_count_and_size(gmpi, mpi, tmp_path):
    written = write_sweep_videos(gmpi, mpi, tmp_path, "horizontal", n_frames=5, size=24)
    names = sorted(p.name for p in written)
    assert names == sorted(f"video_{k}_horizontal.{f}" for k in ("rgb", "depth") for f in ("mp4", "gif"))
    for path in written:
        frames = imageio.mimread(path)
        assert len(frames) == 5, path.name
        assert frames[0].shape[:2] == (24, 24), path.name
    assert not list(tmp_path.glob(".*"))  # no temporary files left behind


def test_poses_beyond_the_prior_render_with_clamp_instead_of_raising(gmpi):
    dhw, depth_norm = plane_layout(gmpi.config.camera, 4)
    rgba = torch.zeros(1, 4, 4, 8, 8)
    rgba[:, -1, :3], rgba[:, -1, 3] = 0.25, 1.0  # transparent planes in front of a uniform opaque background
    mpi = MPI(rgba=rgba, plane_dhw=dhw, depth_norm=depth_norm)
    with pytest.raises(RayOutsideMPIError):
        gmpi.render(mpi, yaw=0.9, pitch=0.0)  # yaw 0.9 is far outside the FFHQ prior (±0.578)
    ((image, depth),) = render_views(gmpi, mpi, [0.9], [0.0])
    # clamping extends the background's border texels: every pixel sees the background colour
    assert torch.allclose(image, torch.full_like(image, 2 * 0.25 - 1), atol=1e-5)
    assert torch.isfinite(depth).all()


def test_chunked_generation_equals_one_call_over_all_planes(gmpi):
    whole = generate_mpi(gmpi, seed=5, n_planes=8)
    chunked = generate_mpi(gmpi, seed=5, n_planes=8, chunk_n_planes=3)
    assert torch.allclose(whole.rgba, chunked.rgba, atol=1e-6)
    # the original's chunk bug would make planes 2 and 5 (ends of chunks) opaque backgrounds
    assert torch.all(chunked.rgba[0, -1, 3] == 1) and not torch.all(chunked.rgba[0, 2, 3] == 1)
    assert torch.equal(chunked.rgba[0, 2, :3], chunked.rgba[0, 0, :3])
    again = generate_mpi(gmpi, seed=5, n_planes=8)
    assert torch.equal(whole.rgba, again.rgba)  # noise is seeded: renders are reproducible


def test_zero_w_avg_truncates_toward_zero_and_restores_the_buffer():
    gmpi = GMPI.random("synthetic32", seed=1)
    mapping = gmpi.generator.mapping
    w_avg = torch.randn(mapping.w_avg.shape, generator=torch.Generator().manual_seed(0))
    mapping.w_avg.copy_(w_avg)
    z = gmpi.latents([0, 1])
    w = mapping_latents(gmpi.generator, z, truncation_psi=1.0)
    psi = 0.6
    assert torch.allclose(mapping_latents(gmpi.generator, z, psi, zero_w_avg=True), psi * w, atol=1e-6)
    assert torch.allclose(mapping_latents(gmpi.generator, z, psi), w_avg + psi * (w - w_avg), atol=1e-5)
    assert torch.equal(mapping.w_avg, w_avg)  # restored after the zeroed call
    real = generate_mpi(gmpi, seed=0, n_planes=4, truncation_psi=psi)
    zeroed = generate_mpi(gmpi, seed=0, n_planes=4, truncation_psi=psi, zero_w_avg=True)
    mapping.w_avg.zero_()
    official = generate_mpi(gmpi, seed=0, n_planes=4, truncation_psi=psi)
    assert torch.equal(zeroed.rgba, official.rgba) and not torch.allclose(real.rgba, zeroed.rgba)


def test_single_image_writes_the_render_its_depth_pose_and_the_grids(gmpi, mpi, tmp_path):
    written = write_single_image(gmpi, mpi, tmp_path, yaw=0.2, pitch=-0.1)
    names = {p.name for p in written}
    assert names == {"rendered.png", "rendered_depth.png", "rendered.json", "mpi_rgb.png", "mpi_alpha.png",
                     "mpi_rgba.png"}  # fmt: skip
    image, _ = gmpi.render(mpi, yaw=0.2, pitch=-0.1)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "rendered.png")), to_uint8(image[0]))
    assert Image.open(tmp_path / "mpi_rgba.png").mode == "RGBA"


def test_render_command_writes_each_seed_into_its_own_folder(tmp_path, capsys):
    args = ["--preset", "synthetic32", "--seed", "1", "2", "--planes", "6", "--mode", "image", "video",
            "--frames", "3", "--sweeps", "vertical", "--video-formats", "gif"]  # fmt: skip
    args += ["--out", str(tmp_path)]
    assert gmpi_main(["render", *args]) == 0  # `gmpi render` delegates to gmpi_core.render.cli
    printed = capsys.readouterr().out
    for seed in (1, 2):
        folder = tmp_path / f"seed_{seed:04d}"
        for name in ("rendered.png", "mpi_alpha.png", "video_rgb_vertical.gif", "video_depth_vertical.gif"):
            assert (folder / name).exists() and str(folder / name) in printed
    a = np.asarray(Image.open(tmp_path / "seed_0001" / "mpi_rgb.png"))
    b = np.asarray(Image.open(tmp_path / "seed_0002" / "mpi_rgb.png"))
    assert not np.array_equal(a, b)  # different seeds, different MPIs


def test_render_command_reports_bad_arguments_with_exit_code_2(tmp_path, capsys):
    assert main(["--preset", "synthetic32", "--planes", "1", "--mode", "image", "--out", str(tmp_path)]) == 2
    assert "at least 2 planes" in capsys.readouterr().err
