"""The GMPI pipeline wires generator, plane layout and renderer together (method §2, §3, §4.3, §9.1)."""

import pytest
import torch

from gmpi_core.config import preset
from gmpi_core.mpi.planes import normalized_depth, plane_depths
from gmpi_core.pipeline import GMPI, plane_layout


@pytest.fixture(scope="module")
def gmpi():
    return GMPI.random("synthetic32", seed=0)


def test_plane_layout_is_nearest_first_with_the_background_plane_last_and_widest():
    cam = preset("FFHQ256").camera
    dhw, z = plane_layout(cam, 32)
    assert dhw.shape == (32, 3) and z.shape == (32,)
    assert dhw[0, 0].item() == pytest.approx(0.95) and dhw[-1, 0].item() == pytest.approx(1.12)
    assert torch.all(dhw[1:, 0] > dhw[:-1, 0])
    assert dhw[-1, 1] > dhw[0, 1] and dhw[-1, 2] > dhw[0, 2]
    assert z[0].item() == 0.0 and z[-1].item() == pytest.approx(1.0)
    assert torch.allclose(z, normalized_depth(plane_depths(0.95, 1.12, 32), 0.95, 1.12))
    with pytest.raises(ValueError, match="at least 2 planes"):
        plane_layout(cam, 1)


def test_latents_follow_torch_manual_seed_per_image_like_the_official_evaluation(gmpi):
    z = gmpi.latents([3, 7])
    torch.manual_seed(7)
    assert torch.equal(z[1], torch.randn(1, gmpi.generator.z_dim)[0])


def test_generate_gives_mpis_in_unit_range_with_an_opaque_background_plane(gmpi):
    mpi = gmpi.generate(seeds=[0, 1], n_planes=6)
    assert mpi.rgba.shape == (2, 6, 4, 32, 32) and mpi.n_planes == 6
    assert mpi.rgba.min() >= 0 and mpi.rgba.max() <= 1
    assert torch.all(mpi.rgba[:, -1, 3] == 1)


def test_one_mpi_renders_at_many_poses_and_the_canonical_view_is_reproducible(gmpi):
    mpi = gmpi.generate(seeds=[0], n_planes=6, noise_mode="const")
    images, depths = gmpi.render(mpi, yaw=[0.0, 0.3, -0.3], pitch=0.0)
    assert images.shape == (3, 3, 32, 32) and depths.shape == (3, 1, 32, 32)
    again, _ = gmpi.render(mpi, yaw=0.0, pitch=0.0)
    assert torch.allclose(images[0], again[0], atol=1e-6)
    assert not torch.allclose(images[0], images[1])
    # canonical camera: optical axis = world +Z and every pixel hits the opaque background, so the
    # composited camera z-depth lies inside the plane range (yawed views may go below d_near off-axis)
    assert depths[0].min() >= 0.95 - 1e-4 and depths[0].max() <= 1.12 + 1e-4


def test_exactly_one_of_seeds_or_z(gmpi):
    with pytest.raises(ValueError, match="exactly one"):
        gmpi.generate()


def test_save_and_load_pretrained_reproduce_the_same_mpi(gmpi, tmp_path):
    gmpi.save_pretrained(tmp_path / "model")
    loaded = GMPI.from_pretrained(tmp_path / "model")
    assert loaded.config == gmpi.config
    a = gmpi.generate(seeds=[5], n_planes=4, noise_mode="const").rgba
    b = loaded.generate(seeds=[5], n_planes=4, noise_mode="const").rgba
    assert torch.equal(a, b)
