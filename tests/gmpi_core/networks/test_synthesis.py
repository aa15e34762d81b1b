"""Synthesis network and the alpha-head math against formulas written out from docs/method.md §4.1-4.4."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from gmpi_core.networks.alpha import (
    DepthEmbedding,
    PlaneLogits,
    border_background,
    depth_to_alpha,
    instance_normalize,
    token_interpolation_weights,
)
from gmpi_core.networks.synthesis import SynthesisNetwork, assemble_mpi
from gmpi_core.ops.upfirdn2d import setup_filter, upsample2d

SQRT2 = math.sqrt(2.0)


# --- §4.2 step 7: background from border columns ----------------------------------------------------


@pytest.mark.parametrize(("res", "pad"), [(4, 1), (40, 2), (128, 6)])
def test_border_background_copies_p_columns_and_interpolates_between_them(res: int, pad: int) -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 3, res, res, dtype=torch.float64)
    out = border_background(x)
    expected = torch.empty_like(x)
    for j in range(res):
        if j < pad or j >= res - pad:
            expected[..., j] = x[..., j]
        else:
            t = (j - pad) / (res - 2 * pad + 1e-8)
            expected[..., j] = (1 - t) * x[..., pad] + t * x[..., res - pad - 1]
    assert pad == max(1, math.floor(0.05 * res))
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)


def test_border_background_carries_no_gradient_to_the_features() -> None:
    x = torch.randn(1, 2, 8, 8, requires_grad=True)
    assert not border_background(x).requires_grad


# --- §4.2 step 3: instance normalisation -------------------------------------------------------------


def test_instance_normalize_uses_unbiased_variance_and_both_epsilons() -> None:
    torch.manual_seed(1)
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64) * 3 + 1
    out = instance_normalize(x)
    for b in range(2):
        for c in range(3):
            v = x[b, c].flatten()
            mean = v.sum() / v.numel()
            var = ((v - mean) ** 2).sum() / (v.numel() - 1)
            std = math.sqrt(var + 1e-8)
            torch.testing.assert_close(out[b, c], (x[b, c] - mean) / (std + 1e-8), rtol=0, atol=1e-12)


# --- §4.4 depth2alpha ---------------------------------------------------------------------------------


def test_depth_to_alpha_matches_hand_computed_values() -> None:
    delta = 1 / 256
    depth = torch.full((1, 1, 1, 1), 0.5, dtype=torch.float64)
    z = torch.tensor([0.0, 0.5 - delta / 2, 0.5, 0.5 + delta / 2, 0.5 + delta, 1.0], dtype=torch.float64)
    alpha = depth_to_alpha(depth, z, delta)[0, :, 0, 0]
    denom = 2 * delta + 1e-8
    expected = torch.tensor(
        [0.0, (delta / 2) / denom, delta / denom, 1.5 * delta / denom, 2 * delta / denom, 2 * delta / denom],
        dtype=torch.float64,
    )
    torch.testing.assert_close(alpha, expected, rtol=0, atol=1e-12)


# --- §4.4 learnable_param interpolation ------------------------------------------------------------------


def test_token_interpolation_weights_match_hand_computed_rows() -> None:
    src = torch.tensor([0.0, 0.5, 1.0])
    tgt = torch.tensor([0.0, 0.25, 0.75, 1.0])
    weights = token_interpolation_weights(src, tgt)  # columns: [zero, t0, t1, t2, t2 copy]
    eps = 1e-8
    far = 999999.0
    expected = torch.tensor(
        [
            [0.0, 0.5 / (0.5 + eps), 0.0, 0.0, 0.0],
            [0.0, 0.25 / (0.5 + eps), 0.25 / (0.5 + eps), 0.0, 0.0],
            [0.0, 0.0, 0.25 / (0.5 + eps), 0.25 / (0.5 + eps), 0.0],
            [0.0, 0.0, 0.0, (far - 1) / (far - 1 + eps), 0.0],
        ]
    )
    torch.testing.assert_close(weights, expected, rtol=0, atol=1e-7)


def test_token_interpolation_below_the_nearest_plane_blends_towards_the_zero_token() -> None:
    weights = token_interpolation_weights(torch.tensor([0.0, 1.0]), torch.tensor([-0.5]))
    far = 999999.0
    torch.testing.assert_close(
        weights, torch.tensor([[0.5 / (far + 1e-8), (far - 0.5) / (far + 1e-8), 0.0, 0.0]]), rtol=0, atol=1e-9
    )


# --- §4.2 step 2: depth embedding ------------------------------------------------------------------------


@pytest.mark.parametrize("conv_clamp", [None, 0.3])
def test_depth_embedding_matches_four_modulated_layers_written_out(conv_clamp: float | None) -> None:
    torch.manual_seed(2)
    channels, w_dim = 8, 4
    embed = DepthEmbedding(channels, w_dim, conv_clamp=conv_clamp).double()
    with torch.no_grad():
        for idx in range(1, 5):
            getattr(embed, f"bias{idx}").normal_()
    z = torch.tensor([0.0, 0.3, 1.0], dtype=torch.float64)
    w = torch.randn(2, w_dim, dtype=torch.float64)
    embed.requires_grad_(False)
    out = embed(z, w)

    widths = [1, 2, 4, 8, 8]
    for b in range(2):
        for i in range(3):
            h = [float(z[i])]
            for layer in range(1, 5):
                aff = getattr(embed, f"affine{layer}")
                weight, bias = getattr(embed, f"weight{layer}"), getattr(embed, f"bias{layer}")
                fan_in, fan_out = widths[layer - 1], widths[layer]
                style = (aff.weight / math.sqrt(w_dim)) @ w[b] + aff.bias  # FC, bias init 1
                style = style / math.sqrt(fan_in)
                new = []
                for o in range(fan_out):
                    pre = sum(float(weight[o, k, 0, 0] * style[k]) * h[k] for k in range(fan_in)) + float(
                        bias[o]
                    )
                    act = (pre if pre > 0 else 0.2 * pre) * SQRT2
                    if conv_clamp is not None:
                        act = max(-conv_clamp, min(conv_clamp, act))
                    new.append(act)
                h = new
            torch.testing.assert_close(
                out[b, i], torch.tensor(h, dtype=torch.float64), rtol=1e-10, atol=1e-10
            )


def test_depth_embedding_state_dict_follows_the_official_registration_order() -> None:
    names = list(DepthEmbedding(8, 4).state_dict())
    expected = [f"{kind}{i}" for i in range(1, 5) for kind in ("weight", "bias")]
    expected += [f"affine{i}.{p}" for i in range(1, 5) for p in ("weight", "bias")]
    assert names == expected


# --- factorised logits: skip accumulation of a constant map -------------------------------------------


def test_upsampled_unit_map_is_one_inside_and_attenuated_at_the_zero_padded_border() -> None:
    # 1-D by hand: zero-insert, pad 2, filter [1,3,3,1]/8·2 ⇒ first output 3/4, then 1.
    logits = PlaneLogits(offsets=torch.ones(1, 1, 1), units=torch.ones(1, 4, 4))
    units = logits.upsampled(setup_filter([1, 3, 3, 1])).units
    assert units is not None
    edge = torch.tensor([0.75, 1, 1, 1, 1, 1, 1, 0.75])
    torch.testing.assert_close(units[0], torch.outer(edge, edge))


def test_plane_logits_dense_is_shared_plus_offsets_times_units_plus_per_plane() -> None:
    torch.manual_seed(3)
    shared = torch.randn(2, 1, 3, 3)
    offsets = torch.randn(2, 4, 2)
    units = torch.randn(2, 3, 3)
    per_plane = torch.randn(2, 4, 3, 3)
    out = PlaneLogits(shared, offsets, units, per_plane).dense(4)
    for b in range(2):
        for i in range(4):
            expected = (
                shared[b, 0] + offsets[b, i, 0] * units[0] + offsets[b, i, 1] * units[1] + per_plane[b, i]
            )
            torch.testing.assert_close(out[b, i], expected)


def test_plane_logits_sum_concatenates_offsets_and_adds_maps() -> None:
    a = PlaneLogits(torch.ones(1, 1, 2, 2), torch.ones(1, 3, 1), torch.ones(1, 2, 2))
    b = PlaneLogits(torch.ones(1, 1, 2, 2), 2 * torch.ones(1, 3, 1), 3 * torch.ones(1, 2, 2))
    torch.testing.assert_close((a + b).dense(3), torch.full((1, 3, 2, 2), 2 + 1 + 6.0))


# --- MPI assembly (§4.2 step 8, §4.3) -------------------------------------------------------------------


@pytest.mark.parametrize("full", [True, False])
def test_assemble_mpi_puts_background_on_the_last_plane_only(full: bool) -> None:
    rgb, bg = torch.rand(2, 3, 4, 4), torch.rand(2, 3, 4, 4)
    alpha = torch.rand(2, 3, 4, 4)
    mpi = assemble_mpi(rgb, bg, alpha, background_alpha_full=full)
    assert mpi.shape == (2, 3, 4, 4, 4)
    for i in range(2):
        torch.testing.assert_close(mpi[:, i, :3], rgb)
        torch.testing.assert_close(mpi[:, i, 3], alpha[:, i])
    torch.testing.assert_close(mpi[:, 2, :3], bg)
    torch.testing.assert_close(mpi[:, 2, 3], torch.ones_like(alpha[:, 2]) if full else alpha[:, 2])


# --- StyleGAN2 synthesis network (§4.1) -----------------------------------------------------------------


def _tiny_network(**kwargs: object) -> SynthesisNetwork:
    torch.manual_seed(4)
    defaults: dict = {"w_dim": 8, "img_resolution": 32, "channel_base": 128, "channel_max": 16}
    defaults.update(kwargs)
    return SynthesisNetwork(**defaults).eval()


def test_block_channels_and_num_ws_follow_the_stylegan2_table() -> None:
    net = SynthesisNetwork(w_dim=8, img_resolution=256, channel_base=16384, channel_max=512)
    assert [b.out_channels for b in net.blocks()] == [512, 512, 512, 512, 256, 128, 64]
    assert net.num_ws == 14


def test_ws_are_split_per_block_overlapping_by_one() -> None:
    net = _tiny_network()
    ws = torch.randn(2, net.num_ws, 8)
    parts = net.split_ws(ws)
    starts = [0, 1, 3, 5]  # b4 uses ws[0:2], b8 ws[1:4], b16 ws[3:6], b32 ws[5:8]
    assert net.num_ws == 8
    for part, start in zip(parts, starts):
        torch.testing.assert_close(part, ws[:, start : start + part.shape[1]])


def test_image_is_the_skip_sum_of_upsampled_torgb_outputs() -> None:
    net = _tiny_network()
    ws = torch.randn(2, net.num_ws, 8)
    f = setup_filter([1, 3, 3, 1])
    x: Tensor | None = None
    total = None
    with torch.no_grad():
        for block, block_ws in zip(net.blocks(), net.split_ws(ws)):
            x = block.features(x, block_ws, noise_mode="const")
            y = block.torgb(x, block_ws[:, -1])
            total = y if total is None else upsample2d(total, f) + y
        torch.testing.assert_close(net(ws, noise_mode="const"), total)


def test_fp16_blocks_are_the_top_num_fp16_res_and_run_fp32_on_cpu() -> None:
    net = SynthesisNetwork(w_dim=8, img_resolution=64, channel_base=256, channel_max=16, num_fp16_res=2)
    assert [b.use_fp16 for b in net.blocks()] == [False, False, False, True, True]  # r >= 32
    cuda = torch.device("cuda")
    assert [b.compute_dtype(cuda) for b in net.blocks()][-1] == torch.float16
    assert net.blocks()[-1].compute_dtype(cuda, force_fp32=True) == torch.float32
    x = net.blocks()[0].features(None, torch.randn(1, 2, 8))
    assert net.blocks()[-1].compute_dtype(x.device) == torch.float32


def test_noise_modes_random_differs_const_repeats_none_differs_from_const() -> None:
    net = _tiny_network()
    with torch.no_grad():
        for block in net.blocks():
            for layer in (block.conv0, block.conv1):
                if layer is not None:
                    layer.noise_strength.fill_(0.5)
    ws = torch.randn(1, net.num_ws, 8)
    with torch.no_grad():
        assert not torch.equal(net(ws), net(ws))
        torch.testing.assert_close(net(ws, noise_mode="const"), net(ws, noise_mode="const"))
        torch.testing.assert_close(net(ws, noise_mode="none"), net(ws, noise_mode="none"))
        assert (net(ws, noise_mode="none") - net(ws, noise_mode="const")).abs().max() > 1e-3
