"""GMPI and StyleGAN2 generators: sizes and names (method §4.5, §11.4), the four alpha heads (method §4.4),
output assembly (docs/method.md §4.3) and the fast factorised alpha path against the per-plane reference."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import Tensor

from gmpi_core.networks.alpha import border_background, to_unit_interval
from gmpi_core.networks.generator import GMPIGenerator, StyleGAN2Generator
from gmpi_core.networks.synthesis import MPISynthesisNetwork
from gmpi_core.ops.upfirdn2d import setup_filter, upsample2d

TINY = {
    "z_dim": 16,
    "w_dim": 16,
    "img_resolution": 16,
    "channel_base": 128,
    "channel_max": 16,
    "mapping_layers": 2,
}


def ffhq_train_depth_norm(n: int = 32, near: float = 0.95, far: float = 1.12) -> list[float]:
    """z̃ of N planes uniform in disparity between near and far (docs/method.md §2.2, §2.4)."""
    depths = [1 / (1 / near - i / (n - 1) * (1 / near - 1 / far)) for i in range(n)]
    return [(d - near) / (far - near) for d in depths]


def tiny_generator(seed: int = 0, **kwargs: object) -> GMPIGenerator:
    torch.manual_seed(seed)
    cfg: dict = dict(TINY)
    cfg.update(kwargs)
    return GMPIGenerator(**cfg).eval()


def scale_alpha_weights(g: GMPIGenerator, scale: float) -> None:
    with torch.no_grad():
        for block in g.synthesis.blocks():
            if hasattr(block, "toalpha"):
                block.toalpha.weight.mul_(scale)


def logit(alpha: Tensor) -> Tensor:
    return torch.atanh(2 * alpha.double() - 1)


# --- sizes, names, order ------------------------------------------------------------------------------


def test_parameter_counts_at_256_match_the_official_networks() -> None:
    g = GMPIGenerator(img_resolution=256, channel_base=16384)
    params = list(g.parameters())
    assert sum(p.numel() for p in params) == 30_145_984
    assert len(params) == 250  # the length of the official ema.pth shadow list (docs/method.md §11.4)
    sg2 = StyleGAN2Generator(img_resolution=256, channel_base=16384)
    assert sum(p.numel() for p in sg2.parameters()) == 24_767_458


@pytest.mark.parametrize(
    ("res", "gmpi", "sg2", "tensors"),
    [(512, 36_708_245, 30_276_583, 264), (1024, 36_801_722, 30_370_060, 278)],
)
def test_parameter_counts_at_512_and_1024_match_the_official_networks(
    res: int, gmpi: int, sg2: int, tensors: int
) -> None:
    g = GMPIGenerator(img_resolution=res, channel_base=32768)
    assert sum(p.numel() for p in g.parameters()) == gmpi
    assert len(list(g.parameters())) == tensors
    del g
    assert (
        sum(p.numel() for p in StyleGAN2Generator(img_resolution=res, channel_base=32768).parameters()) == sg2
    )


def _groups(names: list[str], prefix: str) -> list[str]:
    """Ordered distinct second-level names under ``prefix`` (e.g. 'const', 'conv0', 'pos_enc_embed')."""
    out: list[str] = []
    for name in names:
        if name.startswith(prefix):
            head = name[len(prefix) :].split(".")[0]
            if not out or out[-1] != head:
                out.append(head)
    return out


def test_state_dict_order_is_synthesis_then_mapping_with_alpha_tensors_around_the_sg2_ones() -> None:
    g = tiny_generator()
    names = list(g.state_dict())
    assert names[0] == "synthesis.b4.const" and "mapping.w_avg" in names
    assert max(i for i, n in enumerate(names) if n.startswith("synthesis.")) < min(
        i for i, n in enumerate(names) if n.startswith("mapping.")
    )
    assert _groups(names, "synthesis.b4.") == [
        "const",
        "resample_filter",
        "pos_enc_embed",
        "conv1",
        "torgb",
        "toalpha",
    ]
    for res in (8, 16):
        assert _groups(names, f"synthesis.b{res}.") == [
            "resample_filter",
            "pos_enc_embed",
            "conv0",
            "conv1",
            "torgb",
            "toalpha",
        ]


@pytest.mark.parametrize("res", [4, 16])
def test_alpha_head_shapes_follow_spec_4_5(res: int) -> None:
    g = tiny_generator()
    sd = g.state_dict()
    c, w = {4: 16, 16: 8}[res], TINY["w_dim"]
    p = f"synthesis.b{res}."
    expected = {
        "pos_enc_embed.weight1": (c // 4, 1, 1, 1),
        "pos_enc_embed.weight2": (c // 2, c // 4, 1, 1),
        "pos_enc_embed.weight3": (c, c // 2, 1, 1),
        "pos_enc_embed.weight4": (c, c, 1, 1),
        "pos_enc_embed.bias1": (c // 4,),
        "pos_enc_embed.bias4": (c,),
        "pos_enc_embed.affine1.weight": (1, w),
        "pos_enc_embed.affine2.weight": (c // 4, w),
        "pos_enc_embed.affine3.weight": (c // 2, w),
        "pos_enc_embed.affine4.weight": (c, w),
        "pos_enc_embed.affine4.bias": (c,),
        "toalpha.weight": (1, c, 1, 1),
        "toalpha.bias": (1,),
        "toalpha.affine.weight": (c, w),
        "toalpha.affine.bias": (c,),
    }
    for name, shape in expected.items():
        assert tuple(sd[p + name].shape) == shape, name
    for i in range(1, 5):  # affine biases start at 1 (docs/method.md §4.5)
        assert torch.all(sd[p + f"pos_enc_embed.affine{i}.bias"] == 1)


def test_blocks_above_alpha_largest_res_have_no_alpha_tensors() -> None:
    names = list(tiny_generator(img_resolution=32, alpha_largest_res=8).state_dict())
    assert any(n.startswith("synthesis.b8.toalpha.") for n in names)
    for res in (16, 32):
        assert not any(
            n.startswith(f"synthesis.b{res}.") and ("toalpha" in n or "pos_enc" in n) for n in names
        )


def test_pretrained_stylegan2_weights_load_by_name_and_give_the_2d_image_and_plane_rgb() -> None:
    torch.manual_seed(1)
    sg2 = StyleGAN2Generator(**{k: v for k, v in TINY.items()}).eval()
    g = tiny_generator(seed=2)
    result = g.load_state_dict(sg2.state_dict(), strict=False)
    assert not result.unexpected_keys
    assert all(("toalpha" in k or "pos_enc_embed" in k) for k in result.missing_keys)
    z = torch.randn(2, 16)
    with torch.no_grad():
        ws = g.mapping(z)
        image = sg2(z, noise_mode="const")
        torch.testing.assert_close(g.synthesize_2d(ws, noise_mode="const"), image)
        mpi = g(z, torch.linspace(0, 1, 4), noise_mode="const")
    for i in range(3):  # planes 0..N-2 carry ½(1 + tanh(SG2 image)) (docs/method.md §4.3)
        torch.testing.assert_close(mpi[:, i, :3], (torch.tanh(image) + 1) / 2)


def test_config_is_json_and_rebuilds_the_same_architecture() -> None:
    for g in (
        tiny_generator(alpha_head="learnable_param", train_plane_depth_norm=ffhq_train_depth_norm()),
        StyleGAN2Generator(**TINY),
    ):
        cfg = json.loads(json.dumps(g.config))
        clone = type(g).from_config(cfg)
        assert {k: v.shape for k, v in clone.state_dict().items()} == {
            k: v.shape for k, v in g.state_dict().items()
        }


def test_unknown_alpha_head_and_impl_are_rejected_with_the_choices() -> None:
    with pytest.raises(ValueError, match="unknown alpha head 'foo'; choose one of"):
        tiny_generator(alpha_head="foo")
    g = tiny_generator()
    with pytest.raises(ValueError, match="unknown impl 'slow'"):
        g(torch.randn(1, 16), torch.linspace(0, 1, 3), impl="slow")


# --- fast path == reference ------------------------------------------------------------------------


@pytest.mark.parametrize("n_planes", [1, 5, 32])
@pytest.mark.parametrize(
    ("head", "extra"),
    [
        ("normalize_add_z", {}),
        ("normalize_add_z", {"img_resolution": 32, "alpha_largest_res": 8}),
        ("learnable_param", {"train_plane_depth_norm": ffhq_train_depth_norm()}),
    ],
)
def test_fast_path_equals_per_plane_reference(n_planes: int, head: str, extra: dict) -> None:
    g = tiny_generator(alpha_head=head, **extra)
    scale_alpha_weights(g, 0.05)  # keep tanh out of saturation so the comparison has teeth
    z = torch.randn(2, 16)
    depths = torch.linspace(0, 1, n_planes) if n_planes > 1 else torch.tensor([0.4])
    with torch.no_grad():
        fast = g(z, depths, noise_mode="const")
        ref = g(z, depths, noise_mode="const", impl="reference")
    assert fast.shape == (2, n_planes, 4, g.img_resolution, g.img_resolution)
    torch.testing.assert_close(fast, ref, rtol=0, atol=1e-4)
    assert ((ref[:, :-1, 3] > 0.02) & (ref[:, :-1, 3] < 0.98)).float().mean() > 0.5 or n_planes == 1


def _block_contributions(g: GMPIGenerator, ws: Tensor, depths: Tensor) -> list:
    x = None
    out = []
    net = g.synthesis
    for block, block_ws in zip(net.blocks(), net.split_ws(ws)):
        x = block.features(x, block_ws, noise_mode="const")
        out.append(block.alpha_logits(x, block_ws, depths, factorised=True))
    return out


def test_fast_path_falls_back_per_plane_where_the_torgb_clamp_binds_and_still_matches() -> None:
    g = tiny_generator(seed=3, conv_clamp=0.5)
    with torch.no_grad():  # b4 and b16 overshoot the ±0.5 clamp, b8 stays far inside it
        for res, scale in ((4, 100.0), (8, 1e-3), (16, 100.0)):
            getattr(g.synthesis, f"b{res}").toalpha.weight.mul_(scale)
    z = torch.randn(3, 16)
    depths = torch.linspace(0, 1, 5)
    with torch.no_grad():
        ws = g.mapping(z)
        parts = _block_contributions(g, ws, depths)
        assert [p.per_plane is not None for p in parts] == [True, False, True]
        assert parts[1].shared is not None and parts[1].offsets is not None
        assert float(parts[0].per_plane.abs().max()) == pytest.approx(0.5)  # the clamp really binds
        fast = g.synthesis(ws, depths, noise_mode="const")
        ref = g.synthesis(ws, depths, noise_mode="const", impl="reference")
    torch.testing.assert_close(fast, ref, rtol=0, atol=1e-4)


@pytest.mark.parametrize("head", ["normalize_add_z", "learnable_param"])
def test_gradients_through_fast_path_equal_the_reference_and_reach_every_alpha_tensor(head: str) -> None:
    g = tiny_generator(seed=4, alpha_head=head, n_train_planes=6).train()
    scale_alpha_weights(g, 0.05)
    z = torch.randn(2, 16)
    depths = torch.linspace(0, 1, 6)
    weights = torch.randn(2, 6, 4, 16, 16)
    grads = {}
    for impl in ("fast", "reference"):
        g.zero_grad()
        mpi = g(z, depths, noise_mode="const", impl=impl)
        (mpi * weights).sum().backward()
        grads[impl] = {n: p.grad.clone() for n, p in g.named_parameters() if p.grad is not None}
    alpha_names = [n for n, _ in g.named_parameters() if "pos_enc_embed" in n or "toalpha" in n]
    # per block: pos_enc_embed 4 weights + 4 biases + 4 affines x 2, toalpha 4 (or 1 token tensor + toalpha)
    assert len(alpha_names) == 3 * (20 if head == "normalize_add_z" else 5)
    for name in [*alpha_names, "mapping.fc0.weight", "synthesis.b16.conv1.weight"]:
        assert grads["fast"][name].abs().max() > 0, name
        torch.testing.assert_close(grads["fast"][name], grads["reference"][name], rtol=1e-3, atol=1e-5)


# --- output assembly (§4.2 step 8, §4.3) ---------------------------------------------------------------


@pytest.mark.parametrize("head", ["normalize_add_z", "learnable_param", "none", "depth2alpha"])
def test_every_variant_outputs_b_n_4_r_r_in_the_unit_interval(head: str) -> None:
    g = tiny_generator(alpha_head=head, n_train_planes=4)
    with torch.no_grad():
        mpi = g(torch.randn(2, 16), torch.linspace(0, 1, 4))
    assert mpi.shape == (2, 4, 4, 16, 16)
    assert mpi.min() >= 0 and mpi.max() <= 1


def test_last_plane_alpha_is_one_and_stays_generated_when_background_alpha_full_is_false() -> None:
    g = tiny_generator()
    scale_alpha_weights(g, 0.05)
    z = torch.randn(2, 16)
    with torch.no_grad():
        full = g(z, torch.tensor([0.2, 0.7]), noise_mode="const")
        free = g(z, torch.tensor([0.2, 0.7]), noise_mode="const", background_alpha_full=False)
        inner = g(z, torch.tensor([0.7, 1.0]), noise_mode="const")
    assert torch.all(full[:, -1, 3] == 1)
    assert free[:, -1, 3].max() < 0.999
    torch.testing.assert_close(free[:, -1, 3], inner[:, 0, 3])  # the alpha plane 0.7 gets anywhere
    torch.testing.assert_close(free[:, :, :3], full[:, :, :3])


def test_background_plane_rgb_is_the_torgb_skip_sum_of_border_features() -> None:
    g = tiny_generator(seed=5)
    z = torch.randn(2, 16)
    f = setup_filter([1, 3, 3, 1])
    with torch.no_grad():
        ws = g.mapping(z)
        mpi = g.synthesis(ws, torch.linspace(0, 1, 3), noise_mode="const")
        x, total = None, None
        for block, block_ws in zip(g.synthesis.blocks(), g.synthesis.split_ws(ws)):
            x = block.features(x, block_ws, noise_mode="const")
            y = block.torgb(border_background(x), block_ws[:, -1])
            total = y if total is None else upsample2d(total, f) + y
    torch.testing.assert_close(mpi[:, -1, :3], to_unit_interval(total))
    assert (mpi[:, -1, :3] - mpi[:, 0, :3]).abs().max() > 1e-3


@pytest.mark.parametrize("background_alpha_full", [True, False])
def test_default_variant_alpha_of_a_depth_does_not_depend_on_the_other_planes(
    background_alpha_full: bool,
) -> None:
    g = tiny_generator(seed=6)
    scale_alpha_weights(g, 0.05)
    z = torch.randn(2, 16)
    many = torch.linspace(0, 1, 32)
    few = many[::4]  # 8 of the 32 depths; its last plane (0.903) is not the last of the 32
    with torch.no_grad():
        a32 = g(z, many, noise_mode="const", background_alpha_full=background_alpha_full)[:, ::4, 3]
        a8 = g(z, few, noise_mode="const", background_alpha_full=background_alpha_full)[:, :, 3]
    n_compared = 8 if not background_alpha_full else 7
    torch.testing.assert_close(a8[:, :n_compared], a32[:, :n_compared], rtol=0, atol=1e-5)
    assert (a32[:, 0] - a32[:, -1]).abs().max() > 1e-3  # alpha does depend on the plane's own depth


# --- variants (§4.4) ----------------------------------------------------------------------------------------


def test_learnable_tokens_interpolate_linearly_in_logit_between_training_planes() -> None:
    src = ffhq_train_depth_norm()
    g = tiny_generator(seed=7, alpha_head="learnable_param", train_plane_depth_norm=src)
    scale_alpha_weights(g, 0.05)
    mid = (src[3] + src[4]) / 2
    third = src[10] + (src[11] - src[10]) / 3
    z = torch.randn(2, 16)
    with torch.no_grad():
        mpi = g(z, torch.tensor([src[3], mid, src[4], src[10], third, src[11], 1.0]), noise_mode="const")
    lg = logit(mpi[:, :6, 3])
    # toalpha is linear in its input and the tokens enter additively ⇒ logits interpolate like the tokens
    torch.testing.assert_close(lg[:, 1], (lg[:, 0] + lg[:, 2]) / 2, rtol=0, atol=1e-4)
    torch.testing.assert_close(lg[:, 4], (2 * lg[:, 3] + lg[:, 5]) / 3, rtol=0, atol=1e-4)


def test_learnable_tokens_at_the_training_depths_are_used_as_they_are() -> None:
    src = ffhq_train_depth_norm()
    g_interp = tiny_generator(seed=8, alpha_head="learnable_param", train_plane_depth_norm=src)
    g_plain = tiny_generator(seed=8, alpha_head="learnable_param")
    g_plain.load_state_dict(g_interp.state_dict())
    z = torch.randn(1, 16)
    with torch.no_grad():
        a = g_interp(z, torch.tensor(src), noise_mode="const")
        b = g_plain(z, torch.tensor(src), noise_mode="const")
    torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="train_plane_depth_norm"):
        g_plain(z, torch.linspace(0, 1, 7))


def test_learnable_tokens_use_the_official_names_and_order() -> None:
    g = tiny_generator(alpha_head="learnable_param")
    names = list(g.state_dict())
    b4 = [n for n in names if n.startswith("synthesis.b4.")]
    assert b4[:4] == [
        "synthesis.b4.pos_enc_embed_learnable_param",
        "synthesis.b4.const",
        "synthesis.b4.resample_filter",
        "synthesis.b4.pos_enc_embed_learnable_param_left_append",
    ]
    tokens = g.state_dict()["synthesis.b4.pos_enc_embed_learnable_param"]
    assert tokens.shape == (1, 32, 16, 1, 1) and tokens.min() >= 0 and tokens.max() < 1


def test_vanilla_needs_exactly_the_training_plane_count_and_generates_its_background_alpha() -> None:
    g = tiny_generator(alpha_head="none", n_train_planes=6)
    assert g.state_dict()["synthesis.b16.toalpha.weight"].shape == (6, 8, 1, 1)
    z = torch.randn(2, 16)
    with torch.no_grad():
        mpi = g(z, torch.linspace(0, 1, 6), background_alpha_full=True)
        with pytest.raises(ValueError, match="n_train_planes=6"):
            g(z, torch.linspace(0, 1, 5))
    assert mpi[:, -1, 3].min() < 0.999


def test_vanilla_alpha_is_the_tanh_of_the_skip_sum_of_toalpha_on_raw_features() -> None:
    g = tiny_generator(seed=9, alpha_head="none", n_train_planes=3)
    scale_alpha_weights(g, 0.05)
    f = setup_filter([1, 3, 3, 1])
    with torch.no_grad():
        ws = g.mapping(torch.randn(2, 16))
        mpi = g.synthesis(ws, torch.linspace(0, 1, 3), noise_mode="const")
        x, total = None, None
        for block, block_ws in zip(g.synthesis.blocks(), g.synthesis.split_ws(ws)):
            x = block.features(x, block_ws, noise_mode="const")
            y = block.toalpha(x, block_ws[:, -1])
            total = y if total is None else upsample2d(total, f) + y
    torch.testing.assert_close(mpi[:, :, 3], to_unit_interval(total))


def test_depth2alpha_alpha_follows_the_clamped_distance_to_one_depth_map() -> None:
    g = tiny_generator(alpha_head="depth2alpha", depth2alpha_n_z_bins=1)  # Δ = 1: never clamps on [0, 1]
    assert "synthesis.b16.todepth.weight" in g.state_dict()
    z = torch.randn(2, 16)
    with torch.no_grad():
        mpi = g(z, torch.tensor([0.25, 0.75, 1.0]), noise_mode="const")
    torch.testing.assert_close(mpi[:, 1, 3] - mpi[:, 0, 3], torch.full_like(mpi[:, 0, 3], 0.5 / (2 + 1e-8)))
    assert mpi[:, -1, 3].min() < 1  # background alpha generated, not forced


def test_gmpi_synthesis_network_is_the_generator_synthesis_module() -> None:
    g = tiny_generator()
    assert isinstance(g.synthesis, MPISynthesisNetwork)
    assert g.num_ws == 2 * int(math.log2(16)) - 2
