"""Presets carry the numbers of the spec tables (§1.2, §1.4, §2.2, §4.1, §6.2) and round-trip through JSON."""

import json

import pytest
from pydantic import ValidationError

from gmpi_core.config import PRESETS, ExperimentConfig, preset

# (fov, near, far, yaw σ, pitch σ, k, c, r, R, channel_base, batch, split) from §1.2/§1.4/§2.2/§4.1/§6.2
SPEC_TABLE = {
    "FFHQ256": (12.6, 0.95, 1.12, 0.289, 0.127, 2, 1.0, 1.0, 256, 16384, 8, 1),
    "FFHQ512": (12.6, 0.95, 1.12, 0.289, 0.127, 2, 1.0, 1.0, 512, 32768, 4, 1),
    "FFHQ1024": (12.6, 0.95, 1.12, 0.289, 0.127, 2, 1.0, 1.0, 1024, 32768, 4, 2),
    "AFHQCat": (13.39, 2.55, 2.8, 0.19, 0.15, 3, 2.7, 2.7, 512, 32768, 4, 1),
    "MetFaces": (12.6, 0.95, 1.12, 0.339, 0.133, 2, 1.0, 1.0, 1024, 32768, 4, 2),
}


@pytest.mark.parametrize("name", sorted(SPEC_TABLE))
def test_official_presets_match_spec_tables(name):
    fov, near, far, ys, ps, k, c, r, res, cb, batch, split = SPEC_TABLE[name]
    cfg = preset(name)
    cam = cfg.camera
    assert (cam.fov_deg, cam.d_near, cam.d_far) == (fov, near, far)
    assert (cam.yaw_std, cam.pitch_std, cam.truncation_k) == (ys, ps, k)
    assert (cam.sphere_center_z, cam.sphere_radius, cam.yaw_mean, cam.pitch_mean) == (c, r, 0.0, 0.0)
    assert cam.plane_spacing == "inverse" and cam.spatial_enlarge_factor == 1.001
    assert cfg.generator.img_resolution == cfg.discriminator.img_resolution == res
    assert cfg.generator.channel_base == cfg.discriminator.channel_base == cb
    assert (cfg.generator.num_fp16_res, cfg.generator.conv_clamp, cfg.generator.channel_max) == (4, 256, 512)
    assert cfg.generator.alpha_head == "normalize_add_z" and cfg.generator.alpha_largest_res == 256
    assert (cfg.discriminator.c_dim, cfg.discriminator.cmap_dim, cfg.discriminator.mbstd_group_size) == (
        16,
        16,
        1,
    )
    t = cfg.train
    assert (t.batch_size, t.batch_split) == (batch, split)
    assert (t.lr_g, t.lr_d, t.betas, t.r1_gamma, t.grad_clip) == (0.002, 0.002, (0.0, 0.9), 10.0, 10.0)
    assert (t.n_planes, cfg.eval.n_planes, t.n_views_per_z, t.total_iters) == (32, 96, 4, 5001)
    assert (t.ema_decay, t.ema2_decay) == (0.999, 0.9999)
    assert (t.lighting.ka_max, t.lighting.kd_max, t.lighting.start_iter, t.lighting.grow_n_iters) == (
        0.9,
        0.1,
        1000,
        1000,
    )


def test_ffhq_pose_ranges_are_k_sigma_boxes():
    cam = preset("FFHQ256").camera
    assert cam.yaw_range == pytest.approx((-0.578, 0.578))
    assert cam.pitch_range == pytest.approx((-0.254, 0.254))


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_round_trips_through_json(name):
    cfg = preset(name)
    text = cfg.model_dump_json()
    assert ExperimentConfig.model_validate_json(text) == cfg
    assert json.loads(text)["name"] == name


def test_unknown_preset_error_lists_the_choices():
    with pytest.raises(ValueError, match=r"unknown preset 'FFHQ128'; choose one of .*FFHQ256.*synthetic64"):
        preset("FFHQ128")


def test_with_updates_revalidates_and_rejects_bad_values():
    cfg = preset("synthetic32")
    assert cfg.with_updates(train={"batch_size": 2}).train.batch_size == 2
    with pytest.raises(ValidationError, match="batch_split"):
        cfg.with_updates(train={"batch_size": 2, "batch_split": 4})
    with pytest.raises(ValidationError, match="power of two"):
        cfg.with_updates(generator={"img_resolution": 48})
    with pytest.raises(ValueError, match="unknown config section"):
        cfg.with_updates(optimiser={"lr": 1})


def test_mismatched_resolutions_are_rejected():
    data = preset("FFHQ256").model_dump()
    data["dataset"]["resolution"] = 512
    with pytest.raises(ValidationError, match="resolutions must agree"):
        ExperimentConfig.model_validate(data)


def test_unknown_fields_are_rejected_with_their_name():
    data = preset("FFHQ256").model_dump()
    data["camera"]["fov"] = 12.6
    with pytest.raises(ValidationError, match="fov"):
        ExperimentConfig.model_validate(data)
