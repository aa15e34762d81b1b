"""Architecture numbers are checked against named bounds before any network is built."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from gmpi_core import config
from gmpi_core.config import (
    PRESETS,
    ArchitectureLimits,
    DiscriminatorConfig,
    GeneratorConfig,
    architecture_errors,
    check_architecture,
)


def test_every_preset_is_within_the_limits() -> None:
    for name, cfg in PRESETS.items():
        assert architecture_errors(cfg.generator.model_dump()) == [], name
        assert architecture_errors(cfg.discriminator.model_dump()) == [], name


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mapping_layers": 100_000}, r"mapping_layers=100000 is outside \[1, 32\] \(MAX_MAPPING_LAYERS\)"),
        ({"w_dim": 4096}, r"w_dim=4096 is outside \[1, 1024\] \(MAX_LATENT_DIM\)"),
        ({"z_dim": -1}, r"z_dim=-1 is outside \[0, 1024\]"),
        ({"c_dim": 10**6}, r"c_dim=1000000 is outside \[0, 4096\] \(MAX_C_DIM\)"),
        ({"channel_base": 1 << 30}, r"\(MAX_CHANNEL_BASE\)"),
        ({"channel_max": 10**6}, r"channel_max=1000000 is outside \[1, 1024\] \(MAX_CHANNEL_MAX\)"),
        ({"img_resolution": 4096}, r"img_resolution=4096 is outside \[4, 2048\] \(MAX_RESOLUTION\)"),
        ({"img_resolution": 48}, r"img_resolution must be a power of two, got 48"),
        ({"img_resolution": 256, "channel_base": 128}, r"channel_base=128 leaves no channels at 256²"),
        ({"n_train_planes": 10**9}, r"n_train_planes=1000000000 is outside \[1, 1024\] \(MAX_PLANES\)"),
        ({"depth2alpha_n_z_bins": 0}, r"depth2alpha_n_z_bins=0 is outside \[1, 4096\] \(MAX_Z_BINS\)"),
        ({"alpha_largest_res": 10**9}, r"alpha_largest_res=1000000000 is outside \[4, 2048\]"),
        ({"img_channels": 1000}, r"img_channels=1000 is outside \[1, 4\]"),
        ({"num_fp16_res": 10**6}, r"\(MAX_FP16_RES\)"),
        ({"cmap_dim": 10**6}, r"cmap_dim=1000000 is outside \[0, 1024\]"),
        ({"mbstd_group_size": 0}, r"mbstd_group_size=0 is outside \[1, 256\]"),
        ({"mbstd_num_channels": 10**4}, r"\(MAX_MBSTD_CHANNELS\)"),
        ({"mapping_layers": 8.0}, r"mapping_layers must be an int, got float"),
        ({"mapping_layers": True}, r"mapping_layers must be an int, got bool"),
        ({"conv_clamp": float("nan")}, r"conv_clamp must be None or a number >= 0"),
        ({"train_plane_depth_norm": [0.0] * 5000}, r"at most 1024 numbers \(MAX_PLANES\)"),
        ({"train_plane_depth_norm": [0.0, float("inf")]}, r"finite numbers"),
    ],
)
def test_out_of_range_numbers_are_named_with_their_bound(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        check_architecture(kwargs, what="test")


def test_limits_can_be_raised_explicitly() -> None:
    big = {"channel_max": 4096, "mapping_layers": 8}
    assert architecture_errors(big) == ["channel_max=4096 is outside [1, 1024] (MAX_CHANNEL_MAX)"]
    assert architecture_errors(big, ArchitectureLimits(max_channel_max=4096)) == []
    assert ArchitectureLimits().max_channel_max == config.MAX_CHANNEL_MAX


def test_configs_enforce_the_same_limits() -> None:
    with pytest.raises(ValidationError, match=r"generator: channel_max=4096 is outside \[1, 1024\]"):
        GeneratorConfig(img_resolution=256, channel_max=4096)
    with pytest.raises(ValidationError, match=r"discriminator: img_resolution=8192 is outside"):
        DiscriminatorConfig(img_resolution=8192)
    with pytest.raises(ValidationError, match="power of two"):
        PRESETS["synthetic32"].with_updates(generator={"img_resolution": 48})


def test_readers_refuse_out_of_range_numbers_of_any_size_with_their_own_error() -> None:
    from gmpi_core.checkpoints import (
        NetworkSnapshot,
        OfficialCheckpointError,
        StyleGAN2PickleError,
        official_generator_kwargs,
        stylegan2_generator_kwargs,
    )

    from .fixtures import SG2Config, official_config

    huge = 10**5000  # beyond int -> str and int -> float conversion
    for value in (huge, 10**400, -1, 2.5, float("inf"), "512", [512], None):
        cfg = official_config("FFHQ256", synthesis_kwargs={"channel_base": value, "channel_max": 8})
        with pytest.raises(OfficialCheckpointError, match="channel_base"):
            official_generator_kwargs(cfg)
        kwargs = {**SG2Config().generator_init_kwargs(), "z_dim": value}
        with pytest.raises(StyleGAN2PickleError, match="z_dim"):
            stylegan2_generator_kwargs(NetworkSnapshot("Generator", kwargs, {}))
    cfg = official_config("FFHQ256", max_out_dim=huge)
    with pytest.raises(OfficialCheckpointError, match=r"max_out_dim=<int of 16610 bits> contradicts"):
        official_generator_kwargs(cfg)
