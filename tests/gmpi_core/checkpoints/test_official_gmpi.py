"""Official GMPI checkpoints: config.pth / generator.pth / ema.pth (method §6.8, §6.9, §9.1, §11.4)."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor

from gmpi_core.checkpoints import (
    CheckpointMismatchError,
    ForbiddenGlobalError,
    OfficialCheckpointError,
    load_official_gmpi,
    official_generator_kwargs,
    read_official_config,
)
from gmpi_core.networks import GMPIGenerator

from .fixtures import GlobalRef, Reduce, fixture_pickle_module, official_config, write_official_checkpoint

# What train.py builds for the tiny FFHQ256 fixture config, written out by hand (docs/method.md §4.1, §6.2):
# channel_base = fmaps(256) = 0.5 × 2048, fp16/clamp on above 128², z = w = 512, 2 mapping layers.
TINY_FFHQ256: dict[str, Any] = {
    "z_dim": 512,
    "c_dim": 0,
    "w_dim": 512,
    "img_resolution": 256,
    "img_channels": 3,
    "channel_base": 1024,
    "channel_max": 8,
    "num_fp16_res": 4,
    "conv_clamp": 256,
    "mapping_layers": 2,
    "alpha_head": "normalize_add_z",
    "alpha_largest_res": 256,
    "n_train_planes": 32,
    "depth2alpha_n_z_bins": 256,
}


def _random_generator_state(seed: int = 0) -> dict[str, Tensor]:
    """A 'trained' official generator state: every tensor random, w_avg non-zero."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        G = GMPIGenerator(**TINY_FFHQ256)
    gen = torch.Generator().manual_seed(seed)
    return {k: torch.randn(v.shape, generator=gen) for k, v in G.state_dict().items()}


def _param_names() -> list[str]:
    return [n for n, _ in GMPIGenerator(**TINY_FFHQ256).named_parameters()]


@pytest.fixture(scope="module")
def official(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Tensor]]:
    directory = tmp_path_factory.mktemp("official") / "checkpoints"
    state = _random_generator_state()
    shadow = [state[name] + 1 for name in _param_names()]  # EMA = raw + 1, so the two are distinguishable
    write_official_checkpoint(directory, state, shadow, official_config("FFHQ256"))
    return directory, state


def test_ema_parameters_land_on_their_names_and_buffers_stay_fresh(
    official: tuple[Path, dict[str, Tensor]],
) -> None:
    directory, state = official
    G, info = load_official_gmpi(directory)
    assert isinstance(G, GMPIGenerator) and not G.training
    assert (info.dataset, info.ema_step) == ("FFHQ256", 5001)
    assert info.generator_kwargs == {**TINY_FFHQ256}
    loaded = G.state_dict()
    params = set(_param_names())
    assert len(params) == 20 * 7 + 14 * 6 + 10 + 2 * 2  # per block ≤256: 20 GMPI + SG2's; 2 mapping layers
    for name in params:
        torch.testing.assert_close(loaded[name], state[name] + 1, rtol=0, atol=0, msg=name)
    assert torch.equal(loaded["mapping.w_avg"], torch.zeros(512))  # the official evaluation quirk (§9.1)
    assert not torch.equal(loaded["synthesis.b8.conv0.noise_const"], state["synthesis.b8.conv0.noise_const"])


def test_restore_buffers_loads_w_avg_and_noise_from_generator_pth(
    official: tuple[Path, dict[str, Tensor]],
) -> None:
    directory, state = official
    G, _ = load_official_gmpi(directory / "generator.pth", restore_buffers=True)  # a file means its directory
    loaded = G.state_dict()
    for name, _ in G.named_buffers():
        assert torch.equal(loaded[name], state[name]), name
    assert torch.equal(loaded["synthesis.b4.const"], state["synthesis.b4.const"] + 1)


def test_raw_generator_weights_without_ema(official: tuple[Path, dict[str, Tensor]]) -> None:
    directory, state = official
    G, info = load_official_gmpi(directory, use_ema=False)
    assert info.ema_step is None
    loaded = G.state_dict()
    for name in _param_names():
        assert torch.equal(loaded[name], state[name]), name
    assert torch.equal(loaded["mapping.w_avg"], torch.zeros(512))


def test_ema_list_follows_generator_pth_order_when_it_differs(tmp_path: Path) -> None:
    state = _random_generator_state(1)
    order = list(state)
    order = order[-20:] + order[:-20]  # mapping first: a different registration order
    reordered = {k: state[k] for k in order}
    params = set(_param_names())
    shadow = [state[k] + 1 for k in order if k in params]
    write_official_checkpoint(tmp_path, reordered, shadow, official_config("FFHQ256"))
    G, _ = load_official_gmpi(tmp_path)
    for name in params:
        assert torch.equal(G.state_dict()[name], state[name] + 1), name


def test_config_with_yacs_nodes_is_read_through_stand_ins(tmp_path: Path) -> None:
    config = official_config("FFHQ256")
    torch.save({"config": config}, tmp_path / "plain.pth")
    from .fixtures import to_cfg_nodes

    torch.save({"config": to_cfg_nodes(config)}, tmp_path / "yacs.pth", pickle_module=fixture_pickle_module())
    with pytest.raises(pickle.UnpicklingError):  # PyTorch's weights-only loader alone cannot read it
        torch.load(tmp_path / "yacs.pth", weights_only=True)
    for name in ("plain.pth", "yacs.pth"):
        got = read_official_config(tmp_path / name)
        assert got == config and type(got["GMPI"]["MODEL"]) is dict


def test_config_with_a_forbidden_global_is_refused_and_nothing_runs(tmp_path: Path) -> None:
    marker = tmp_path / "payload-ran"
    from .fixtures import to_cfg_nodes

    config: dict[str, Any] = to_cfg_nodes(official_config("FFHQ256"))
    config["GMPI"]["TRAIN"]["evil"] = Reduce(GlobalRef("os", "system"), f"touch {marker}")
    torch.save({"config": config}, tmp_path / "config.pth", pickle_module=fixture_pickle_module())
    with pytest.raises(ForbiddenGlobalError, match=r"'os\.system'"):
        read_official_config(tmp_path)
    assert not marker.exists()


def test_official_kwargs_for_the_real_presets() -> None:
    base = {
        "synthesis_kwargs": {"channel_base": 32768, "channel_max": 512},
        "mapping_kwargs": {"num_layers": 8},
    }
    for dataset, res, channel_base in [
        ("FFHQ256", 256, 16384),
        ("AFHQCat", 512, 32768),
        ("MetFaces", 1024, 32768),
    ]:
        name, kw = official_generator_kwargs(official_config(dataset, **base))
        assert name == dataset
        assert (kw["img_resolution"], kw["channel_base"], kw["channel_max"], kw["mapping_layers"]) == (
            res,
            channel_base,
            512,
            8,
        )
        assert (kw["num_fp16_res"], kw["conv_clamp"], kw["z_dim"], kw["w_dim"], kw["c_dim"]) == (
            4,
            256,
            512,
            512,
            0,
        )


def test_variant_dispatch_and_learnable_tokens_get_the_training_plane_depths() -> None:
    heads = {
        ("normalize_add_z", "modulated_lrelu"): "normalize_add_z",
        ("normalize_add_z", "learnable_param"): "learnable_param",
        ("none", "modulated_lrelu"): "none",
        ("depth2alpha", "modulated_lrelu"): "depth2alpha",
    }
    for (cond, embed), head in heads.items():
        cfg = official_config("FFHQ256", torgba_cond_on_pos_enc=cond, torgba_cond_on_pos_enc_embed_func=embed)
        _, kw = official_generator_kwargs(cfg)
        assert kw["alpha_head"] == head
    cfg = official_config("FFHQ256", torgba_cond_on_pos_enc_embed_func="learnable_param")
    depths = official_generator_kwargs(cfg)[1]["train_plane_depth_norm"]
    # FFHQ, 32 planes, inverse spacing in [0.95, 1.12]: z̃ = 0, 0.027496, 0.055265, …, 0.962188, 1 (§2.4)
    assert len(depths) == 32
    assert depths[0] == 0 and depths[-1] == pytest.approx(1, abs=1e-6)
    assert depths[1:3] == pytest.approx([0.027496, 0.055265], abs=2e-6)
    assert depths[-2] == pytest.approx(0.962188, abs=2e-6)


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ({"torgba_cond_on_pos_enc": "add_xyz"}, "unsupported official GMPI variant"),
        ({"G_final_img_act": "sigmoid"}, "G_final_img_act='sigmoid'"),
        ({"max_out_dim": 512}, "contradicts dataset FFHQ256"),
    ],
)
def test_configs_our_generator_cannot_represent_are_refused(override: dict[str, Any], match: str) -> None:
    with pytest.raises(OfficialCheckpointError, match=match):
        official_generator_kwargs(official_config("FFHQ256", **override))


def test_weights_of_another_resolution_are_refused_naming_tensors(
    official: tuple[Path, dict[str, Tensor]], tmp_path: Path
) -> None:
    _, state = official
    shadow = [state[n] + 1 for n in _param_names()]
    write_official_checkpoint(tmp_path, state, shadow, official_config("FFHQ512"))  # config says 512²
    with pytest.raises(CheckpointMismatchError, match=r"ema\.pth holds 238 EMA tensors.*252 parameters"):
        load_official_gmpi(tmp_path)
    with pytest.raises(
        CheckpointMismatchError,
        match=r"missing: synthesis\.b512\.resample_filter, synthesis\.b512\.conv0\.weight.*at 256²",
    ):
        load_official_gmpi(tmp_path, use_ema=False)


def test_ema_tensor_with_a_wrong_shape_is_named(
    official: tuple[Path, dict[str, Tensor]], tmp_path: Path
) -> None:
    _, state = official
    names = _param_names()
    shadow = [state[n] + 1 for n in names]
    i = names.index("synthesis.b16.toalpha.affine.weight")
    shadow[i] = shadow[i][:, :7]
    write_official_checkpoint(tmp_path, state, shadow, official_config("FFHQ256"))
    with pytest.raises(
        CheckpointMismatchError, match=r"#\d+ synthesis\.b16\.toalpha\.affine\.weight \[8, 7\]"
    ):
        load_official_gmpi(tmp_path)


def test_missing_files_are_reported(tmp_path: Path) -> None:
    with pytest.raises(OfficialCheckpointError, match=r"config\.pth"):
        load_official_gmpi(tmp_path)
    torch.save({"config": official_config("FFHQ256")}, tmp_path / "config.pth")
    with pytest.raises(OfficialCheckpointError, match=r"ema\.pth is missing"):
        load_official_gmpi(tmp_path)
