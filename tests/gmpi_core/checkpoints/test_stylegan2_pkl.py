"""StyleGAN2-ADA pickles: safe reading, kwargs, loading into our networks, GMPI initialisation."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from gmpi_core.checkpoints import (
    CheckpointMismatchError,
    LegacyTFPickleError,
    NetworkSnapshot,
    StyleGAN2PickleError,
    init_gmpi_from_stylegan2,
    load_stylegan2_generator,
    read_stylegan2_pkl,
    stylegan2_discriminator_kwargs,
    stylegan2_generator_kwargs,
)
from gmpi_core.networks import StyleGAN2Generator

from .fixtures import SG2Config, SG2Fixture, build_sg2_pickle, build_tf_pickle, executing_module_src

CFG = SG2Config()
C4, C8, C16 = 16, 8, 4  # min(64 // r, 16) for r = 4, 8, 16


@pytest.fixture(scope="module")
def marker(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("sg2") / "module_src-was-executed"


@pytest.fixture(scope="module")
def fx(marker: Path) -> SG2Fixture:
    return build_sg2_pickle(executing_module_src(str(marker)))


@pytest.fixture(scope="module")
def pkl_path(fx: SG2Fixture, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sg2file") / "network-snapshot-000000.pkl"
    path.write_bytes(fx.data)
    return path


def _assert_same_tensors(got: dict[str, Tensor], want: dict[str, Tensor]) -> None:
    assert list(got) == list(want)
    for name, tensor in want.items():
        assert got[name].dtype == tensor.dtype and torch.equal(got[name], tensor), name


# -- reading -------------------------------------------------------------------------------------------


def test_pickle_loads_without_executing_module_src(fx: SG2Fixture, pkl_path: Path, marker: Path) -> None:
    pkl = read_stylegan2_pkl(pkl_path)
    assert not marker.exists()
    assert pkl.G_ema.class_name == "Generator" and pkl.D is not None and pkl.D.class_name == "Discriminator"
    assert pkl.training_set_kwargs == {
        "class_name": "training.dataset.ImageFolderDataset",
        "path": "ffhq.zip",
        "resolution": 16,
        "xflip": True,
    }
    assert pkl.augment_pipe_present is False


def test_every_tensor_of_G_D_and_G_ema_comes_back_bit_exact_in_state_dict_order(fx: SG2Fixture) -> None:
    pkl = read_stylegan2_pkl(fx.data)
    assert pkl.G is not None and pkl.D is not None
    _assert_same_tensors(pkl.G.state_dict, fx.G)
    _assert_same_tensors(pkl.D.state_dict, fx.D)
    _assert_same_tensors(pkl.G_ema.state_dict, fx.G_ema)
    assert not torch.equal(pkl.G.state_dict["synthesis.b4.const"], pkl.G_ema.state_dict["synthesis.b4.const"])


def test_flattened_names_and_shapes_follow_the_sg2_layout(fx: SG2Fixture) -> None:
    pkl = read_stylegan2_pkl(fx.data)
    g, d = pkl.G_ema.state_dict, pkl.D.state_dict  # type: ignore[union-attr]
    expected_g = {
        "synthesis.b4.const": [C4, 4, 4],
        "synthesis.b4.resample_filter": [4, 4],
        "synthesis.b8.conv0.weight": [C8, C4, 3, 3],
        "synthesis.b8.conv0.noise_strength": [],
        "synthesis.b8.conv0.noise_const": [8, 8],
        "synthesis.b8.conv0.affine.weight": [C4, CFG.w_dim],
        "synthesis.b16.conv1.weight": [C16, C16, 3, 3],
        "synthesis.b16.torgb.weight": [3, C16, 1, 1],
        "mapping.fc1.weight": [CFG.w_dim, CFG.w_dim],
        "mapping.w_avg": [CFG.w_dim],
    }
    assert {k: list(g[k].shape) for k in expected_g} == expected_g
    names = list(g)
    assert (
        names.index("synthesis.b16.torgb.affine.bias")
        < names.index("mapping.w_avg")
        < names.index("mapping.fc0.weight")
    )
    expected_d = {
        "b16.fromrgb.weight": [C16, 3, 1, 1],
        "b16.conv1.weight": [C8, C16, 3, 3],
        "b16.skip.weight": [C8, C16, 1, 1],
        "b4.conv.weight": [C4, C4 + 1, 3, 3],
        "b4.fc.weight": [C4, 16 * C4],
        "b4.out.weight": [1, C4],
    }
    assert {k: list(d[k].shape) for k in expected_d} == expected_d
    assert "b16.skip.bias" not in d  # a None parameter is skipped


def test_init_kwargs_are_plain_data_and_map_to_our_constructor_arguments(fx: SG2Fixture) -> None:
    pkl = read_stylegan2_pkl(fx.data)
    kw = pkl.G_ema.init_kwargs
    assert type(kw["synthesis_kwargs"]) is dict and type(kw["mapping_kwargs"]) is dict  # EasyDict → dict
    assert stylegan2_generator_kwargs(pkl.G_ema) == CFG.our_generator_kwargs()
    assert stylegan2_discriminator_kwargs(pkl.D) == {  # type: ignore[arg-type]
        "img_resolution": 16,
        "img_channels": 3,
        "c_dim": 0,
        "channel_base": 64,
        "channel_max": 16,
        "num_fp16_res": 0,
        "conv_clamp": 2.0,
        "cmap_dim": 16,
        "mbstd_group_size": 2,
        "mbstd_num_channels": 1,
    }


def test_paper256_kwargs_and_sg2_defaults_for_kwargs_that_were_not_stored() -> None:
    paper256 = NetworkSnapshot(
        "Generator",
        {
            "z_dim": 512,
            "w_dim": 512,
            "mapping_kwargs": {"num_layers": 8},
            "synthesis_kwargs": {
                "channel_base": 16384,
                "channel_max": 512,
                "num_fp16_res": 4,
                "conv_clamp": 256,
            },
            "c_dim": 0,
            "img_resolution": 256,
            "img_channels": 3,
        },
        {},
    )
    got = stylegan2_generator_kwargs(paper256)
    assert (got["channel_base"], got["num_fp16_res"], got["conv_clamp"], got["mapping_layers"]) == (
        16384,
        4,
        256,
        8,
    )
    bare = NetworkSnapshot(
        "Generator", {"z_dim": 512, "c_dim": 0, "w_dim": 512, "img_resolution": 1024, "img_channels": 3}, {}
    )
    got = stylegan2_generator_kwargs(bare)
    assert (
        got["channel_base"],
        got["channel_max"],
        got["num_fp16_res"],
        got["conv_clamp"],
        got["mapping_layers"],
    ) == (
        32768,
        512,
        0,
        None,
        8,
    )
    d = NetworkSnapshot("Discriminator", {"c_dim": 0, "img_resolution": 256, "img_channels": 3}, {})
    assert stylegan2_discriminator_kwargs(d)["mbstd_group_size"] == 4  # SG2's default epilogue


def test_tf_converter_kwargs_at_default_values_are_accepted_and_others_rejected() -> None:
    kw = {
        "z_dim": 512,
        "c_dim": 0,
        "w_dim": 512,
        "img_resolution": 1024,
        "img_channels": 3,
        "mapping_kwargs": {
            "num_layers": 8,
            "embed_features": None,
            "layer_features": 512,
            "activation": "lrelu",
            "lr_multiplier": 0.01,
            "w_avg_beta": 0.995,
        },
        "synthesis_kwargs": {
            "channel_base": 32768,
            "channel_max": 512,
            "num_fp16_res": 0,
            "conv_clamp": None,
            "architecture": "skip",
            "resample_filter": [1, 3, 3, 1],
            "use_noise": True,
            "activation": "lrelu",
        },
    }
    assert stylegan2_generator_kwargs(NetworkSnapshot("Generator", kw, {}))["img_resolution"] == 1024
    kw["synthesis_kwargs"]["architecture"] = "resnet"  # type: ignore[index]
    with pytest.raises(StyleGAN2PickleError, match="architecture='resnet' is not supported"):
        stylegan2_generator_kwargs(NetworkSnapshot("Generator", kw, {}))


# -- malformed files -----------------------------------------------------------------------------------


def test_tensorflow_pickle_is_detected_with_conversion_advice() -> None:
    with pytest.raises(LegacyTFPickleError, match=r"legacy\.py.*isolated environment") as info:
        read_stylegan2_pkl(build_tf_pickle())
    assert isinstance(info.value, ValueError)


def test_other_persistence_versions_are_refused_clearly() -> None:
    data = build_sg2_pickle("pass", version=5).data
    with pytest.raises(StyleGAN2PickleError, match=r"format version 5.*supports version 6"):
        read_stylegan2_pkl(data)


@pytest.mark.parametrize("keep", [0.5, 0.99, 20])
def test_truncated_file_gives_a_clear_error_not_eof(fx: SG2Fixture, keep: float) -> None:
    cut = int(len(fx.data) * keep) if keep < 1 else int(keep)
    with pytest.raises(StyleGAN2PickleError, match="truncated"):
        read_stylegan2_pkl(fx.data[:cut])


def test_tensor_view_larger_than_its_storage_is_refused() -> None:
    """torch's ``set_`` would silently grow the storage; a file must not make us allocate or invent data."""
    from collections import OrderedDict

    from .fixtures import GlobalRef, Reduce, SG2Builder, dumps

    storage = torch.arange(6.0).untyped_storage()
    typed = torch.storage.TypedStorage(wrap_storage=storage, dtype=torch.float32, _internal=True)
    view = Reduce(
        GlobalRef("torch._utils", "_rebuild_tensor_v2"), typed, 0, (1000,), (1,), False, OrderedDict()
    )
    G_ema = SG2Builder(0, "pass").generator(CFG)
    G_ema.meta["state"]["_buffers"]["oversized"] = view
    with pytest.raises(StyleGAN2PickleError, match=r"size \[1000\].*storage of 6 elements"):
        read_stylegan2_pkl(dumps({"G": None, "D": None, "G_ema": G_ema}))


def test_snapshot_without_G_ema_is_refused() -> None:
    from .fixtures import dumps

    with pytest.raises(StyleGAN2PickleError, match="no 'G_ema'"):
        read_stylegan2_pkl(dumps({"G": None, "D": None}))


def test_protocol_3_pickles_with_an_augment_pipe_load() -> None:
    fx3 = build_sg2_pickle("pass", protocol=3, with_augment_pipe=True)
    pkl = read_stylegan2_pkl(fx3.data)
    assert pkl.augment_pipe_present
    _assert_same_tensors(pkl.G_ema.state_dict, fx3.G_ema)


# -- into our generator --------------------------------------------------------------------------------


def _fc(x: Tensor, t: dict[str, Tensor], prefix: str, lr: float = 1.0, act: str = "linear") -> Tensor:
    """SG2 FullyConnectedLayer in float64: x (g_w W)ᵀ + g_b b, g_w = lr/√in, g_b = lr (method §4.1)."""
    w, b = t[prefix + ".weight"].double(), t[prefix + ".bias"].double()
    y = x @ (w * (lr / math.sqrt(w.shape[1]))).T + b * lr
    return F.leaky_relu(y, 0.2) * math.sqrt(2) if act == "lrelu" else y


def _b4_rgb_reference(t: dict[str, Tensor], ws: Tensor, clamp: float) -> Tensor:
    """Block 4 of SG2 from the raw tensors (float64): const → conv1 (modulated, demodulated, const noise,
    bias, lrelu·√2, clamp) → ToRGB (modulated 1×1 without demodulation, bias, clamp) (docs/method.md §4.1)."""
    ws = ws.double()
    x = t["synthesis.b4.const"].double()[None].expand(ws.shape[0], -1, -1, -1)
    outs = []
    for i in range(ws.shape[0]):
        s = _fc(ws[i : i + 1, 0], t, "synthesis.b4.conv1.affine")[0]  # [C]
        w = t["synthesis.b4.conv1.weight"].double() * s[None, :, None, None]
        w = w * (w.square().sum(dim=[1, 2, 3], keepdim=True) + 1e-8).rsqrt()
        h = F.conv2d(x[i : i + 1], w, padding=1)
        h = h + t["synthesis.b4.conv1.noise_const"].double() * t["synthesis.b4.conv1.noise_strength"].double()
        h = h + t["synthesis.b4.conv1.bias"].double()[None, :, None, None]
        h = (F.leaky_relu(h, 0.2) * math.sqrt(2)).clamp(-clamp, clamp)
        s_rgb = _fc(ws[i : i + 1, 1], t, "synthesis.b4.torgb.affine")[0] / math.sqrt(h.shape[1])
        y = F.conv2d(h, t["synthesis.b4.torgb.weight"].double() * s_rgb[None, :, None, None])
        outs.append((y + t["synthesis.b4.torgb.bias"].double()[None, :, None, None]).clamp(-clamp, clamp))
    return torch.cat(outs)


def test_loaded_generator_holds_G_ema_and_its_first_block_matches_an_independent_forward(
    fx: SG2Fixture, pkl_path: Path
) -> None:
    G = load_stylegan2_generator(pkl_path)
    assert isinstance(G, StyleGAN2Generator) and not G.training
    _assert_same_tensors(G.state_dict(), fx.G_ema)

    z = torch.randn([3, CFG.z_dim], generator=torch.Generator().manual_seed(1))
    # mapping: w = FC_L ∘ … ∘ FC_1(norm2(z)), lr multiplier 0.01, lrelu (docs/method.md §4.1)
    x = z.double() / (z.double().square().mean(1, keepdim=True) + 1e-8).sqrt()
    for i in range(CFG.mapping_layers):
        x = _fc(x, fx.G_ema, f"mapping.fc{i}", lr=0.01, act="lrelu")
    ws = G.mapping(z, None)
    assert ws.shape == (3, CFG.num_ws, CFG.w_dim)
    torch.testing.assert_close(ws.double(), x[:, None].expand_as(ws), rtol=1e-5, atol=1e-5)

    captured: list[Tensor] = []
    hook = G.synthesis.get_submodule("b4.torgb").register_forward_hook(
        lambda _m, _i, out: captured.append(out)
    )
    try:
        G.synthesis(ws, noise_mode="const")
    finally:
        hook.remove()
    assert CFG.conv_clamp is not None
    want = _b4_rgb_reference(fx.G_ema, ws, CFG.conv_clamp)
    assert want.abs().max() >= CFG.conv_clamp  # the clamp is exercised
    torch.testing.assert_close(captured[0].double(), want, rtol=1e-5, atol=1e-5)


def test_loaded_generator_renders_like_one_built_by_hand_from_the_same_tensors(
    fx: SG2Fixture, pkl_path: Path
) -> None:
    G = load_stylegan2_generator(pkl_path)
    reference = StyleGAN2Generator(**CFG.our_generator_kwargs()).eval()
    reference.load_state_dict(fx.G_ema)
    z = torch.randn([2, CFG.z_dim], generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        img = G(z, noise_mode="const")
        assert img.shape == (2, 3, 16, 16)
        torch.testing.assert_close(img, reference(z, noise_mode="const"), rtol=0, atol=0)
        wrong_clamp = StyleGAN2Generator(**{**CFG.our_generator_kwargs(), "conv_clamp": None}).eval()
        wrong_clamp.load_state_dict(fx.G_ema)
        assert not torch.allclose(img, wrong_clamp(z, noise_mode="const"))


def test_generator_with_mismatched_tensors_is_refused_with_their_names(fx: SG2Fixture) -> None:
    bad = build_sg2_pickle("pass", config=SG2Config(channel_max=8))  # C_4 = 8 instead of 16 …
    pkl = read_stylegan2_pkl(bad.data)
    G = StyleGAN2Generator(**CFG.our_generator_kwargs())
    from gmpi_core.checkpoints import load_state_dict_strict

    with pytest.raises(
        CheckpointMismatchError, match=r"synthesis\.b4\.const \[8, 4, 4\] \(network: \[16, 4, 4\]\)"
    ):
        load_state_dict_strict(G, pkl.G_ema.state_dict, source="G_ema")


# -- GMPI initialisation (method §4.5) -------------------------------------------------------------------


def test_gmpi_initialisation_copies_G_ema_and_D_by_name_and_broadcasts_b4_out(
    fx: SG2Fixture, pkl_path: Path
) -> None:
    G, D = init_gmpi_from_stylegan2(pkl_path)
    g_state, d_state = G.state_dict(), D.state_dict()
    for name, tensor in fx.G_ema.items():
        assert torch.equal(g_state[name], tensor), name
    new_g = [k for k in g_state if k not in fx.G_ema]
    assert new_g and all(".pos_enc_embed." in k or ".toalpha." in k for k in new_g)
    for name, tensor in fx.D.items():
        if name.startswith("b4.out."):
            continue
        assert torch.equal(d_state[name], tensor), name
    assert d_state["b4.out.weight"].shape == (16, C4) and d_state["b4.out.bias"].shape == (16,)
    assert torch.equal(d_state["b4.out.weight"], fx.D["b4.out.weight"].expand(16, -1))
    assert torch.equal(d_state["b4.out.bias"], fx.D["b4.out.bias"].expand(16))
    assert sorted(k for k in d_state if k not in fx.D) == ["mapping.bias", "mapping.weight"]
    assert D.config["c_dim"] == 16 and D.config["cmap_dim"] == 16 and D.config["mbstd_group_size"] == 1


def test_gmpi_new_tensors_are_deterministic_in_the_seed_and_leave_the_global_rng_alone(
    fx: SG2Fixture,
) -> None:
    state = torch.random.get_rng_state()
    G1, D1 = init_gmpi_from_stylegan2(fx.data, seed=123)
    G2, D2 = init_gmpi_from_stylegan2(fx.data, seed=123)
    G3, D3 = init_gmpi_from_stylegan2(fx.data, seed=7)
    assert torch.equal(torch.random.get_rng_state(), state)
    new = [k for k in G1.state_dict() if k not in fx.G_ema and k.endswith("weight1")]
    assert new
    for name in new:
        assert torch.equal(G1.state_dict()[name], G2.state_dict()[name])
        assert not torch.equal(G1.state_dict()[name], G3.state_dict()[name])
    assert torch.equal(D1.state_dict()["mapping.weight"], D2.state_dict()["mapping.weight"])
    assert not torch.equal(D1.state_dict()["mapping.weight"], D3.state_dict()["mapping.weight"])


def test_gmpi_new_tensors_follow_the_official_rng_sequence(fx: SG2Fixture) -> None:
    """train.py: manual_seed(123), 25 fixed latents on the CPU, then G, then D (docs/method.md §4.5, §6.9)."""
    from gmpi_core.networks import Discriminator, GMPIGenerator

    G, D = init_gmpi_from_stylegan2(fx.data)
    with torch.random.fork_rng():
        torch.manual_seed(123)
        torch.randn([25, CFG.z_dim])
        G_ref = GMPIGenerator(**CFG.our_generator_kwargs())
        D_ref = Discriminator(16, 3, 16, 64, 16, 0, 2.0, 16, 1, 1)
    for name in ("synthesis.b8.pos_enc_embed.weight2", "synthesis.b16.toalpha.affine.weight"):
        assert torch.equal(G.state_dict()[name], G_ref.state_dict()[name]), name
    assert torch.equal(D.state_dict()["mapping.weight"], D_ref.state_dict()["mapping.weight"])


def test_gmpi_planes_carry_the_tanh_of_the_stylegan2_image(
    fx: SG2Fixture, caplog: pytest.LogCaptureFixture
) -> None:
    """Plane RGB = ½(1 + tanh(SG2 image)) for every plane but the background (docs/method.md §4.3)."""
    with caplog.at_level(logging.INFO, logger="gmpi_core.checkpoints"):
        G, _ = init_gmpi_from_stylegan2(fx.data)
    assert any(
        "new (random, seed 123)" in r.getMessage() and "pos_enc_embed" in r.getMessage()
        for r in caplog.records
    )
    sg2 = load_stylegan2_generator(fx.data)
    G.eval()
    z = torch.randn([2, CFG.z_dim], generator=torch.Generator().manual_seed(3))
    planes = torch.linspace(0, 1, 5)
    with torch.no_grad():
        image = sg2(z, noise_mode="const")
        mpi = G(z, planes, noise_mode="const")
        ws = G.mapping(z, None)
        torch.testing.assert_close(G.synthesize_2d(ws, noise_mode="const"), image, rtol=0, atol=0)
    assert mpi.shape == (2, 5, 4, 16, 16)
    want = (torch.tanh(image) + 1) / 2
    for i in range(4):
        torch.testing.assert_close(mpi[:, i, :3], want, rtol=1e-6, atol=1e-6)
    assert torch.equal(mpi[:, -1, 3], torch.ones_like(mpi[:, -1, 3]))


def test_gmpi_initialisation_needs_a_discriminator_in_the_pickle(fx: SG2Fixture) -> None:
    from .fixtures import SG2Builder, dumps

    G_ema = SG2Builder(0, "pass").generator(CFG)
    with pytest.raises(StyleGAN2PickleError, match="no 'D' network"):
        init_gmpi_from_stylegan2(dumps({"G": None, "D": None, "G_ema": G_ema}))
