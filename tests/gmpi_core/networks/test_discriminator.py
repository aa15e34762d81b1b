"""Discriminator: method §5 equations in float64, SG2 names/shapes/order (method §11.4), parameter counts."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from gmpi_core.config import DiscriminatorConfig
from gmpi_core.networks.discriminator import Discriminator, DiscriminatorBlock, MinibatchStdLayer

SQRT2, SQRT_HALF = math.sqrt(2.0), math.sqrt(0.5)
FIR = torch.tensor([1.0, 3.0, 3.0, 1.0], dtype=torch.float64)
FIR2D = torch.outer(FIR, FIR) / 64.0


def lrelu(z: Tensor, gain: float = SQRT2) -> Tensor:
    return torch.where(z > 0, z, 0.2 * z) * gain


def fir_down(x: Tensor) -> Tensor:
    """[1,3,3,1]⊗[1,3,3,1]/64 (valid), then every second sample."""
    c = x.shape[1]
    return F.conv2d(x, FIR2D.to(x).expand(c, 1, 4, 4), groups=c)[:, :, ::2, ::2]


def p64(t: Tensor) -> Tensor:
    return t.detach().double()


def _randomise(module: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.5 if p.ndim > 1 else 1.0))


def block_reference(block: DiscriminatorBlock, x: Tensor, clamp: float) -> Tensor:
    """Resnet block (§5) written out: conv layers are equalised-lr correlations (gain 1/sqrt(Cin k²))."""
    if block.in_channels == 0:
        rgb = block.fromrgb
        z = F.conv2d(x, p64(rgb.weight) / math.sqrt(x.shape[1])) + p64(rgb.bias).reshape(1, -1, 1, 1)
        x = lrelu(z).clamp(-clamp, clamp)
    c = x.shape[1]
    # skip: 1×1, no bias, linear, FIR-downsampled (pad 1 = (4-2+1)//2), gain √½, no clamp
    y = fir_down(F.conv2d(F.pad(x, [1, 1, 1, 1]), p64(block.skip.weight) / math.sqrt(c))) * SQRT_HALF
    # conv0: 3×3 pad 1, lrelu·√2, clamp
    h = F.conv2d(x, p64(block.conv0.weight) / math.sqrt(9 * c), padding=1) + p64(block.conv0.bias).reshape(
        1, -1, 1, 1
    )
    h = lrelu(h).clamp(-clamp, clamp)
    # conv1: 3×3 with 2× FIR down (pad 1 + 1), lrelu·√2·√½, clamp ±clamp·√½
    h = fir_down(F.conv2d(F.pad(h, [2, 2, 2, 2]), p64(block.conv1.weight) / math.sqrt(9 * c)))
    h = lrelu(h + p64(block.conv1.bias).reshape(1, -1, 1, 1), SQRT2 * SQRT_HALF).clamp(
        -clamp * SQRT_HALF, clamp * SQRT_HALF
    )
    return y + h


def tiny_d(c_dim: int = 16, conv_clamp: float | None = 256, **kwargs: object) -> Discriminator:
    torch.manual_seed(0)
    args = dict(img_resolution=16, c_dim=c_dim, channel_base=64, channel_max=8, conv_clamp=conv_clamp)
    return Discriminator(**{**args, **kwargs})  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------------
# Sizes, names, order (docs/method.md §5 table, §11.4)


@pytest.mark.parametrize(
    ("resolution", "channel_base", "want"),
    [(256, 16384, 24_009_056), (512, 32768, 28_990_816), (1024, 32768, 29_020_480)],
)
def test_parameter_count_matches_spec_table(resolution: int, channel_base: int, want: int) -> None:
    with torch.device("meta"):
        d = Discriminator(resolution, channel_base=channel_base)
    assert sum(p.numel() for p in d.parameters()) == want


def expected_state_dict(channels: dict[int, int], c_dim: int) -> list[tuple[str, tuple[int, ...]]]:
    """Names and shapes of docs/method.md §11.4 (SG2 registers ``resample_filter`` in every Conv2dLayer)."""
    res = sorted(channels, reverse=True)
    out: list[tuple[str, tuple[int, ...]]] = []
    for r in res[:-1]:
        c, c2 = channels[r], channels[r // 2]
        out.append((f"b{r}.resample_filter", (4, 4)))
        if r == res[0]:
            out += [(f"b{r}.fromrgb.weight", (c, 3, 1, 1)), (f"b{r}.fromrgb.bias", (c,))]
            out.append((f"b{r}.fromrgb.resample_filter", (4, 4)))
        out += [
            (f"b{r}.conv0.weight", (c, c, 3, 3)),
            (f"b{r}.conv0.bias", (c,)),
            (f"b{r}.conv0.resample_filter", (4, 4)),
        ]
        out += [
            (f"b{r}.conv1.weight", (c2, c, 3, 3)),
            (f"b{r}.conv1.bias", (c2,)),
            (f"b{r}.conv1.resample_filter", (4, 4)),
        ]
        out += [(f"b{r}.skip.weight", (c2, c, 1, 1)), (f"b{r}.skip.resample_filter", (4, 4))]
    if c_dim:
        out += [("mapping.weight", (16, 16)), ("mapping.bias", (16,))]
    c4, n_out = channels[4], 16 if c_dim else 1
    out += [
        ("b4.conv.weight", (c4, c4 + 1, 3, 3)),
        ("b4.conv.bias", (c4,)),
        ("b4.conv.resample_filter", (4, 4)),
    ]
    out += [("b4.fc.weight", (c4, 16 * c4)), ("b4.fc.bias", (c4,))]
    out += [("b4.out.weight", (n_out, c4)), ("b4.out.bias", (n_out,))]
    return out


@pytest.mark.parametrize("c_dim", [16, 0])
def test_state_dict_names_shapes_and_order_match_spec_for_256(c_dim: int) -> None:
    channels = dict(zip([256, 128, 64, 32, 16, 8, 4], [64, 128, 256, 512, 512, 512, 512]))  # method §5 table
    with torch.device("meta"):
        d = Discriminator(256, channel_base=16384, c_dim=c_dim)
    got = [(k, tuple(v.shape)) for k, v in d.state_dict().items()]
    assert got == expected_state_dict(channels, c_dim)
    children = [name for name, _ in d.named_children()]
    assert children == ["b256", "b128", "b64", "b32", "b16", "b8", *(["mapping"] if c_dim else []), "b4"]


def test_channels_for_1024_follow_channel_base_rule() -> None:
    with torch.device("meta"):
        d = Discriminator(1024, channel_base=32768)
    tmp = [getattr(d, f"b{r}").tmp_channels for r in d.block_resolutions] + [d.b4.in_channels]
    assert tmp == [32, 64, 128, 256, 512, 512, 512, 512, 512]  # docs/method.md §5 table, r = 1024 … 4


def test_fp16_blocks_are_the_num_fp16_res_highest_resolutions() -> None:
    with torch.device("meta"):
        d256 = Discriminator(256, channel_base=16384)
        d1024 = Discriminator(1024)
    assert [r for r in d256.block_resolutions if getattr(d256, f"b{r}").use_fp16] == [256, 128, 64, 32]
    assert [r for r in d1024.block_resolutions if getattr(d1024, f"b{r}").use_fp16] == [1024, 512, 256, 128]


def test_resample_filter_buffers_hold_normalised_1331_outer_product() -> None:
    d = tiny_d()
    torch.testing.assert_close(d.b16.resample_filter, FIR2D.float())
    torch.testing.assert_close(d.b4.conv.resample_filter, FIR2D.float())


def test_pose_mapping_is_a_default_initialised_torch_linear() -> None:
    torch.manual_seed(1)
    d = Discriminator(16, channel_base=64, channel_max=8)
    assert type(d.mapping) is torch.nn.Linear
    # PyTorch default init: U(-1/sqrt(in), 1/sqrt(in)) = U(-0.25, 0.25); equalised N(0, 1) would exceed it
    assert d.mapping.weight.abs().max() <= 0.25 and d.mapping.bias.abs().max() <= 0.25


# ------------------------------------------------------------------------------------------------
# Equations


def test_minibatch_std_with_group_size_one_is_the_constant_1e_minus_4() -> None:
    x = torch.randn(3, 5, 4, 4) * 10
    y = MinibatchStdLayer(group_size=1)(x)
    assert y.shape == (3, 6, 4, 4) and torch.equal(y[:, :5], x)
    ulp = torch.finfo(torch.float32).eps * 1e-4
    assert (y[:, 5] - 1e-4).abs().max() <= ulp  # sqrt(0 + 1e-8), up to one float32 ulp


def test_minibatch_std_groups_samples_strided_and_averages_std_over_channel_slices() -> None:
    # N=4, G=2 ⇒ sample g·2 + j belongs to group j: groups {0, 2} and {1, 3}. F=2 splits 4 channels
    # into halves. Population std of two values a, b is |a - b| / 2.
    torch.manual_seed(2)
    x = torch.randn(4, 4, 3, 3, dtype=torch.float64)
    y = MinibatchStdLayer(group_size=2, num_channels=2)(x)
    for i in range(4):
        j = i % 2
        for f in range(2):
            sl = slice(2 * f, 2 * f + 2)
            std = torch.sqrt(((x[j, sl] - x[j + 2, sl]) / 2).square() + 1e-8).mean()
            torch.testing.assert_close(y[i, 4 + f], std.expand(3, 3))
    with pytest.raises(ValueError, match="not divisible"):
        MinibatchStdLayer(group_size=4)(torch.randn(6, 2, 4, 4))


@pytest.mark.parametrize("first", [True, False])
def test_discriminator_block_equals_float64_resnet_composition(first: bool) -> None:
    torch.manual_seed(3)
    block = DiscriminatorBlock(0 if first else 4, 4, 6, resolution=8, conv_clamp=0.8, use_fp16=True)
    _randomise(block, 4)
    x = torch.randn(2, 3 if first else 4, 8, 8) * 2
    got = block(None, x) if first else block(x)
    assert got.dtype == torch.float32, "fp16 blocks stay fp32 on CPU"
    torch.testing.assert_close(
        got.double(), block_reference(block, x.double(), clamp=0.8), rtol=1e-5, atol=1e-5
    )


def discriminator_reference(d: Discriminator, img: Tensor, c: Tensor) -> Tensor:
    """Whole D (docs/method.md §5) in float64 for a 2-block, group-1 mbstd discriminator."""
    x = img.double()
    for r in d.block_resolutions:
        x = block_reference(getattr(d, f"b{r}"), x, clamp=256)
    x = torch.cat([x, torch.full_like(x[:, :1], 1e-4)], dim=1)  # mbstd, group 1
    b4 = d.b4
    h = F.conv2d(x, p64(b4.conv.weight) / math.sqrt(9 * x.shape[1]), padding=1) + p64(b4.conv.bias).reshape(
        1, -1, 1, 1
    )
    h = lrelu(h).flatten(1)
    h = lrelu(h @ (p64(b4.fc.weight) / math.sqrt(h.shape[1])).T + p64(b4.fc.bias))
    o = h @ (p64(b4.out.weight) / math.sqrt(h.shape[1])).T + p64(b4.out.bias)  # [B, 16]
    m = c.double() @ p64(d.mapping.weight).T + p64(d.mapping.bias)  # plain Linear
    m = m / torch.sqrt(m.square().mean(dim=1, keepdim=True) + 1e-8)
    return (o * m).sum(dim=1, keepdim=True) / 4.0  # 1/sqrt(cmap_dim = 16)


def test_discriminator_equals_float64_composition_with_pose_projection() -> None:
    d = tiny_d()
    _randomise(d, 5)
    img, c = torch.randn(3, 3, 16, 16), torch.randn(3, 16)
    logits = d(img, c)
    assert logits.shape == (3, 1)
    torch.testing.assert_close(logits.double(), discriminator_reference(d, img, c), rtol=1e-4, atol=1e-4)


def test_identical_out_rows_give_sg2_logit_times_sum_of_pose_embedding_over_four() -> None:
    # The pretrained SG2 D loads into GMPI's by broadcasting b4.out [1,C] to all 16 rows (docs/method.md §5).
    # Then every o_k equals the unconditional logit u, so logit = u · Σ_k m_k / sqrt(16).
    cond, uncond = tiny_d(c_dim=16), tiny_d(c_dim=0)
    _randomise(uncond, 6)
    sd = uncond.state_dict()
    sd["b4.out.weight"] = sd["b4.out.weight"].expand(16, -1).clone()
    sd["b4.out.bias"] = sd["b4.out.bias"].expand(16).clone()
    sd["mapping.weight"], sd["mapping.bias"] = cond.mapping.weight.detach(), cond.mapping.bias.detach()
    cond.load_state_dict(sd)
    img, c = torch.randn(2, 3, 16, 16), torch.randn(2, 16)
    u = uncond(img, c).double()
    m = c.double() @ p64(cond.mapping.weight).T + p64(cond.mapping.bias)
    m = m / torch.sqrt(m.square().mean(dim=1, keepdim=True) + 1e-8)
    torch.testing.assert_close(
        cond(img, c).double(), u * m.sum(dim=1, keepdim=True) / 4, rtol=1e-5, atol=1e-5
    )


def test_r1_double_backward_reaches_parameters_and_matches_finite_differences() -> None:
    d = tiny_d(channel_max=4).double()
    _randomise(d, 7)
    img, c = torch.randn(2, 3, 16, 16, dtype=torch.float64), torch.randn(2, 16, dtype=torch.float64)

    def r1() -> Tensor:
        x = img.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(d(x, c).sum(), x, create_graph=True)
        return grad.square().sum()

    d.zero_grad()
    r1().backward()
    for name, p in d.named_parameters():
        if name == "b4.out.bias":  # a constant shift of every logit: it has no image gradient
            assert p.grad is None
            continue
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert d.b16.fromrgb.weight.grad is not None and d.b16.fromrgb.weight.grad.abs().sum() > 0
    param, idx, eps = d.b8.conv0.weight, (1, 2, 1, 1), 1e-6
    analytic = param.grad[idx].item()  # type: ignore[index]
    values = []
    for step in (eps, -2 * eps, eps):
        with torch.no_grad():
            param[idx] += step
        values.append(r1().item())
    plus, minus = values[0], values[1]
    assert analytic == pytest.approx((plus - minus) / (2 * eps), rel=1e-4, abs=1e-8)


# ------------------------------------------------------------------------------------------------
# Interface


def test_unconditional_discriminator_has_one_output_and_ignores_c() -> None:
    d = tiny_d(c_dim=0, mbstd_group_size=2)
    assert not hasattr(d, "mapping") and d.b4.out.weight.shape == (1, 8)
    img = torch.randn(4, 3, 16, 16)
    torch.testing.assert_close(d(img, None), d(img, torch.randn(4, 0)))


def test_config_round_trips_through_json_and_the_pydantic_config() -> None:
    d = tiny_d(conv_clamp=None, mbstd_group_size=4)
    rebuilt = Discriminator.from_config(json.loads(json.dumps(d.config)))
    assert rebuilt.config == d.config
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {
        k: v.shape for k, v in d.state_dict().items()
    }
    from_pydantic = Discriminator.from_config(
        DiscriminatorConfig(img_resolution=16, channel_base=64).model_dump()
    )
    assert from_pydantic.config["channel_base"] == 64 and from_pydantic.b4.out.weight.shape == (
        16,
        16,
    )  # C_4 = 64 // 4
    with pytest.raises(ValueError, match="unknown Discriminator config keys"):
        Discriminator.from_config({**d.config, "architecture": "skip"})


def test_discriminator_errors_name_the_problem() -> None:
    d = tiny_d()
    with pytest.raises(ValueError, match="c_dim=16 needs c"):
        d(torch.randn(2, 3, 16, 16), None)
    with pytest.raises(ValueError, match=r"img of shape \[B, 3, 16, 16\]"):
        d(torch.randn(2, 3, 8, 8), torch.randn(2, 16))
    with pytest.raises(ValueError, match="power of two"):
        Discriminator(100)


def test_force_fp32_and_cpu_keep_every_block_in_float32() -> None:
    d = tiny_d(num_fp16_res=2)
    assert d.b16.use_fp16 and d.b8.use_fp16
    dtypes: list[torch.dtype] = []
    hooks = [
        getattr(d, f"b{r}").register_forward_hook(lambda m, i, o: dtypes.append(o.dtype)) for r in (16, 8)
    ]
    img, c = torch.randn(2, 3, 16, 16), torch.randn(2, 16)
    torch.testing.assert_close(d(img, c), d(img, c, force_fp32=True))
    for h in hooks:
        h.remove()
    assert dtypes == [torch.float32] * 4
