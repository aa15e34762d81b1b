"""StyleGAN2 layers against float64 compositions written out from the equations of method §4.1 / §5."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from gmpi_core.networks.layers import (
    Conv2dLayer,
    FullyConnectedLayer,
    SynthesisLayer,
    ToRGBLayer,
    modulated_conv2d,
    normalize_2nd_moment,
)

SQRT2 = math.sqrt(2.0)
FIR = torch.tensor([1.0, 3.0, 3.0, 1.0], dtype=torch.float64)
FIR2D = torch.outer(FIR, FIR) / 64.0  # setup_filter([1,3,3,1]): outer product normalised to sum 1


def lrelu(z: Tensor, gain: float = SQRT2) -> Tensor:
    return torch.where(z > 0, z, 0.2 * z) * gain


def depthwise(x: Tensor, k: Tensor) -> Tensor:
    """Correlate every channel of x [B, C, H, W] with the same 2-D kernel (valid)."""
    c = x.shape[1]
    return F.conv2d(x, k.to(x).expand(c, 1, *k.shape), groups=c)


def upsample_fir_2x(x: Tensor, pad0: int, pad1: int) -> Tensor:
    """Zero insertion (x at even positions), pad, FIR [1,3,3,1]⊗[1,3,3,1]·4 (symmetric ⇒ conv = corr)."""
    b, c, h, w = x.shape
    z = x.new_zeros(b, c, 2 * h, 2 * w)
    z[:, :, ::2, ::2] = x
    return depthwise(F.pad(z, [pad0, pad1, pad0, pad1]), FIR2D * 4)


def fir_downsample_2x(x: Tensor) -> Tensor:
    """FIR [1,3,3,1]⊗[1,3,3,1] (valid) then keep every second sample."""
    return depthwise(x, FIR2D)[:, :, ::2, ::2]


# ------------------------------------------------------------------------------------------------
# normalize_2nd_moment, FullyConnectedLayer


def test_normalize_2nd_moment_divides_by_root_mean_square() -> None:
    x = torch.tensor([[3.0, 4.0], [0.0, 2.0]])
    want = torch.tensor([[3.0, 4.0], [0.0, 2.0]]) / torch.tensor([[math.sqrt(12.5)], [math.sqrt(2.0)]])
    torch.testing.assert_close(normalize_2nd_moment(x), want)
    y = normalize_2nd_moment(torch.randn(3, 7, 5), dim=1)
    torch.testing.assert_close(y.square().mean(dim=1), torch.ones(3, 5))


def test_fully_connected_layer_applies_equalised_lr_weight_and_bias_gains() -> None:
    torch.manual_seed(0)
    lr = 0.01
    fc = FullyConnectedLayer(6, 4, lr_multiplier=lr, bias_init=0.5)
    with torch.no_grad():
        fc.bias.copy_(torch.randn(4) * 50)
    x = torch.randn(3, 6)
    w64, b64 = fc.weight.detach().double(), fc.bias.detach().double()
    want = x.double() @ (w64 * lr / math.sqrt(6)).T + b64 * lr
    torch.testing.assert_close(fc(x).double(), want, rtol=1e-5, atol=1e-5)


def test_fully_connected_lrelu_is_leaky_relu_times_sqrt2() -> None:
    torch.manual_seed(1)
    fc = FullyConnectedLayer(5, 8, activation="lrelu", lr_multiplier=0.1)
    x = torch.randn(4, 5)
    z = x.double() @ (fc.weight.detach().double() * 0.1 / math.sqrt(5)).T + fc.bias.detach().double() * 0.1
    torch.testing.assert_close(fc(x).double(), lrelu(z), rtol=1e-5, atol=1e-6)


def test_fully_connected_init_is_unit_normal_over_lr_and_constant_bias() -> None:
    torch.manual_seed(2)
    fc = FullyConnectedLayer(256, 256, lr_multiplier=0.01, bias_init=1.0)
    std = (fc.weight.detach() * 0.01).std().item()
    assert abs(std - 1.0) < 0.02  # 65536 samples: std error ≈ 0.003
    assert torch.equal(fc.bias.detach(), torch.ones(256))


def test_fully_connected_rejects_wrong_input_width() -> None:
    with pytest.raises(ValueError, match=r"\[B, 6\]"):
        FullyConnectedLayer(6, 4)(torch.randn(2, 5))


# ------------------------------------------------------------------------------------------------
# modulated_conv2d


def modconv_reference(x: Tensor, weight: Tensor, styles: Tensor, demodulate: bool, padding: int) -> Tensor:
    """Per sample: W'_{oik} = W_{oik} s_i, δ_o = (Σ W'² + 1e-8)^(-1/2), y = corr(x, W' δ) in float64."""
    out = []
    for b in range(x.shape[0]):
        wb = weight.double() * styles[b].double().reshape(1, -1, 1, 1)
        if demodulate:
            wb = wb * (wb.square().sum(dim=[1, 2, 3], keepdim=True) + 1e-8).rsqrt()
        out.append(F.conv2d(x[b : b + 1].double(), wb, padding=padding))
    return torch.cat(out)


@pytest.mark.parametrize("demodulate", [True, False])
@pytest.mark.parametrize("fused", [True, False])
def test_modulated_conv2d_matches_per_sample_float64_convolution(demodulate: bool, fused: bool) -> None:
    torch.manual_seed(3)
    x, weight, styles = torch.randn(3, 4, 6, 6), torch.randn(5, 4, 3, 3), torch.randn(3, 4)
    noise = torch.randn(3, 1, 6, 6)
    got = modulated_conv2d(
        x, weight, styles, noise=noise, padding=1, demodulate=demodulate, fused_modconv=fused
    )
    want = modconv_reference(x, weight, styles, demodulate, padding=1) + noise.double()
    torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(("up", "down"), [(1, 1), (2, 1), (1, 2)])
def test_modulated_conv2d_fused_equals_non_fused(up: int, down: int) -> None:
    torch.manual_seed(4)
    f = FIR2D.float()
    x, weight, styles = torch.randn(2, 3, 8, 8), torch.randn(4, 3, 3, 3), torch.randn(2, 3) + 1
    for demodulate in (True, False):
        kwargs = dict(
            up=up, down=down, padding=1, resample_filter=f, demodulate=demodulate, flip_weight=up == 1
        )
        fused = modulated_conv2d(x, weight, styles, fused_modconv=True, **kwargs)  # type: ignore[arg-type]
        split = modulated_conv2d(x, weight, styles, fused_modconv=False, **kwargs)  # type: ignore[arg-type]
        assert fused.shape == (2, 4, 8 * up // down, 8 * up // down)
        torch.testing.assert_close(fused, split, rtol=1e-4, atol=1e-4)


def test_demodulation_gives_unit_norm_effective_weights_per_output_channel() -> None:
    # Feeding a unit impulse in input channel i at the centre of a 5×5 image returns, in the 3×3
    # neighbourhood, the (flipped) effective kernel W'_{o,i} δ_o. Summing squares over i and the
    # window gives ‖W'_o δ_o‖² = S/(S + 1e-8) with S = Σ W'² — i.e. 1.
    torch.manual_seed(5)
    cin, cout = 4, 3
    weight = torch.randn(cout, cin, 3, 3, dtype=torch.float64) * 0.3
    style = torch.rand(cin, dtype=torch.float64) * 5 + 0.1
    x = torch.zeros(cin, cin, 5, 5, dtype=torch.float64)
    for i in range(cin):
        x[i, i, 2, 2] = 1.0
    y = modulated_conv2d(x, weight, style.expand(cin, cin).clone(), padding=1, demodulate=True)
    norms = y[:, :, 1:4, 1:4].square().sum(dim=[0, 2, 3])
    torch.testing.assert_close(norms, torch.ones(cout, dtype=torch.float64), rtol=1e-7, atol=1e-7)
    # ... and therefore the output is invariant to a positive rescaling of the styles.
    y3 = modulated_conv2d(x, weight, 3 * style.expand(cin, cin), padding=1, demodulate=True)
    torch.testing.assert_close(y3, y, rtol=1e-7, atol=1e-9)


def test_modulated_conv2d_fp16_prenormalisation_avoids_overflow() -> None:
    # Without pre-normalisation x·s ≈ 300·2000 = 6e5 overflows fp16 (max 65504) in the non-fused path.
    torch.manual_seed(6)
    x = torch.randn(2, 4, 5, 5) * 100 + 300
    weight = torch.randn(3, 4, 3, 3) * 50
    styles = torch.rand(2, 4) * 1000 + 1000
    want = modconv_reference(x, weight, styles, demodulate=True, padding=1)
    for fused in (True, False):
        got = modulated_conv2d(x.half(), weight, styles, padding=1, demodulate=True, fused_modconv=fused)
        assert got.dtype == torch.float16
        assert torch.isfinite(got).all()
        torch.testing.assert_close(got.double(), want, rtol=2e-2, atol=0.5)


def test_modulated_conv2d_rejects_mismatched_styles() -> None:
    with pytest.raises(ValueError, match="styles"):
        modulated_conv2d(torch.randn(2, 4, 5, 5), torch.randn(3, 4, 3, 3), torch.randn(2, 5))


# ------------------------------------------------------------------------------------------------
# SynthesisLayer, ToRGBLayer


def _randomise(module: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g))


@pytest.mark.parametrize("gain", [1.0, 2.0])
def test_synthesis_layer_without_noise_equals_float64_composition(gain: float) -> None:
    torch.manual_seed(7)
    layer = SynthesisLayer(4, 5, w_dim=6, resolution=6, conv_clamp=1.5)
    _randomise(layer, 0)
    x, w = torch.randn(2, 4, 6, 6), torch.randn(2, 6)
    got = layer(x, w, noise_mode="none", gain=gain)

    a_w, a_b = layer.affine.weight.detach().double(), layer.affine.bias.detach().double()
    s = w.double() @ (a_w / math.sqrt(6)).T + a_b  # affine: lr 1, gain 1/sqrt(w_dim)
    y = modconv_reference(x, layer.weight.detach(), s, demodulate=True, padding=1)
    y = lrelu(y + layer.bias.detach().double().reshape(1, -1, 1, 1), gain=SQRT2 * gain)
    want = y.clamp(-1.5 * gain, 1.5 * gain)
    assert (want.abs() == 1.5 * gain).any(), "test setup: the clamp must be active"
    torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-4)


def test_synthesis_layer_upsampling_is_zero_insertion_fir_and_true_convolution() -> None:
    # SG2 semantics of up=2 (docs/method.md §4.1): upfirdn2d(x, f, up=2, pad=[3,2], gain=4), then a true
    # (flipped) 3×3 convolution without padding: 4×4 → (8+5-3) = 10 → 8.
    torch.manual_seed(8)
    layer = SynthesisLayer(3, 2, w_dim=4, resolution=8, up=2)
    _randomise(layer, 1)
    x, w = torch.randn(2, 3, 4, 4), torch.randn(2, 4)
    for fused in (True, False):
        got = layer(x, w, noise_mode="none", fused_modconv=fused)
        s = w.double() @ (layer.affine.weight.detach().double() / 2).T + layer.affine.bias.detach().double()
        up = upsample_fir_2x(x.double(), 3, 2)
        y = modconv_reference(up, layer.weight.detach().flip([2, 3]), s, demodulate=True, padding=0)
        want = lrelu(y + layer.bias.detach().double().reshape(1, -1, 1, 1))
        torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-4)


def test_synthesis_layer_noise_modes_add_strength_times_noise() -> None:
    torch.manual_seed(9)
    layer = SynthesisLayer(3, 2, w_dim=4, resolution=5, activation="linear")
    with torch.no_grad():
        layer.noise_strength.fill_(0.7)
    x, w = torch.randn(2, 3, 5, 5), torch.randn(2, 4)
    none = layer(x, w, noise_mode="none")
    const = layer(x, w, noise_mode="const")
    torch.testing.assert_close(
        const - none, (0.7 * layer.noise_const).expand(2, 2, 5, 5), rtol=1e-5, atol=1e-5
    )
    rand = layer(x, w, noise_mode="random") - none
    # random noise is shared across channels ([B, 1, r, r]) and differs between samples
    torch.testing.assert_close(rand[:, 0], rand[:, 1], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(rand[0], rand[1])
    with pytest.raises(ValueError, match="noise_mode"):
        layer(x, w, noise_mode="fixed")


def test_synthesis_layer_names_shapes_and_init_follow_sg2() -> None:
    layer = SynthesisLayer(8, 16, w_dim=32, resolution=8, up=2)
    shapes = {k: tuple(v.shape) for k, v in layer.state_dict().items()}
    assert list(shapes) == [
        "weight", "noise_strength", "bias", "resample_filter", "noise_const", "affine.weight", "affine.bias",
    ]  # fmt: skip
    assert (
        shapes["weight"] == (16, 8, 3, 3)
        and shapes["noise_const"] == (8, 8)
        and shapes["noise_strength"] == ()
    )
    assert shapes["affine.weight"] == (8, 32)
    assert torch.equal(layer.affine.bias.detach(), torch.ones(8))  # affine bias init 1
    torch.testing.assert_close(layer.resample_filter, FIR2D.float())


def test_to_rgb_is_unmodulated_demod_free_one_by_one_conv_plus_bias() -> None:
    torch.manual_seed(10)
    layer = ToRGBLayer(6, 3, w_dim=5, conv_clamp=0.8)
    _randomise(layer, 2)
    x, w = torch.randn(2, 6, 4, 4), torch.randn(2, 5)
    a = (
        w.double() @ (layer.affine.weight.detach().double() / math.sqrt(5)).T
        + layer.affine.bias.detach().double()
    )
    s = a / math.sqrt(6)  # weight gain 1/sqrt(Cin·1·1) on the styles
    torch.testing.assert_close(layer.styles(w).double(), s, rtol=1e-5, atol=1e-5)
    W = layer.weight.detach().double()[:, :, 0, 0]
    y = torch.einsum("oi,bi,bihw->bohw", W, s, x.double()) + layer.bias.detach().double().reshape(1, -1, 1, 1)
    want = y.clamp(-0.8, 0.8)
    assert (want.abs() == 0.8).any() and (want.abs() < 0.8).any()
    for fused in (True, False):
        torch.testing.assert_close(layer(x, w, fused_modconv=fused).double(), want, rtol=1e-4, atol=1e-4)
    assert list(layer.state_dict()) == ["weight", "bias", "affine.weight", "affine.bias"]


# ------------------------------------------------------------------------------------------------
# Conv2dLayer


def test_conv2d_layer_equals_scaled_correlation_bias_lrelu_and_clamp() -> None:
    torch.manual_seed(11)
    layer = Conv2dLayer(3, 4, kernel_size=3, activation="lrelu", conv_clamp=0.6)
    _randomise(layer, 3)
    x = torch.randn(2, 3, 5, 5)
    for gain in (1.0, math.sqrt(0.5)):
        z = F.conv2d(x.double(), layer.weight.detach().double() / math.sqrt(27), padding=1)
        z = z + layer.bias.detach().double().reshape(1, -1, 1, 1)
        want = lrelu(z, SQRT2 * gain).clamp(-0.6 * gain, 0.6 * gain)
        assert (want.abs() == 0.6 * gain).any()
        torch.testing.assert_close(layer(x, gain=gain).double(), want, rtol=1e-5, atol=1e-5)


def test_conv2d_layer_downsampling_is_pad_conv_then_fir_decimation() -> None:
    # down=2, k=3: pad 2 (1 + downsample rule (4-2+1)//2), correlate, FIR, keep even samples: 8 → 4.
    torch.manual_seed(12)
    layer = Conv2dLayer(3, 2, kernel_size=3, down=2)
    x = torch.randn(2, 3, 8, 8)
    z = F.conv2d(F.pad(x.double(), [2, 2, 2, 2]), layer.weight.detach().double() / math.sqrt(27))
    want = fir_downsample_2x(z) + layer.bias.detach().double().reshape(1, -1, 1, 1)
    got = layer(x)
    assert got.shape == (2, 2, 4, 4)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)


def test_conv2d_layer_registers_resample_filter_always_and_buffers_when_frozen() -> None:
    layer = Conv2dLayer(3, 4, kernel_size=1)
    assert list(layer.state_dict()) == ["weight", "bias", "resample_filter"]
    frozen = Conv2dLayer(3, 4, kernel_size=3, trainable=False)
    assert list(frozen.parameters()) == [] and set(frozen.state_dict()) == {
        "weight",
        "bias",
        "resample_filter",
    }
    nobias = Conv2dLayer(3, 4, kernel_size=1, bias=False)
    assert nobias.bias is None and list(nobias.state_dict()) == ["weight", "resample_filter"]
