"""StyleGAN2-ADA building blocks with SG2-compatible parameter and buffer names (docs/method.md §4.1, §11.4).

Every layer uses the equalised learning rate: weights are stored as N(0, 1) samples (divided by the
learning-rate multiplier) and scaled by a constant gain at run time, so that pretrained StyleGAN2-ADA
``state_dict``s load by name. Registration order of parameters and buffers follows SG2, because
optimizer and EMA states of the original are positional (docs/method.md §11.4).

Precision (docs/method.md §4.1): the layers run in whatever dtype their input has. When activations are fp16
and the convolution demodulates, :func:`modulated_conv2d` pre-normalises weights and styles to avoid fp16
overflow; ``conv_clamp`` clamps every output (after activation and gain) to ±``conv_clamp``·gain.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from gmpi_core.ops.bias_act import ACTIVATIONS, bias_act
from gmpi_core.ops.conv2d_resample import conv2d_resample
from gmpi_core.ops.fma import fma
from gmpi_core.ops.upfirdn2d import setup_filter

__all__ = [
    "NOISE_MODES",
    "Conv2dLayer",
    "FullyConnectedLayer",
    "SynthesisLayer",
    "ToRGBLayer",
    "activation_gain",
    "filter_buffer",
    "modulated_conv2d",
    "normalize_2nd_moment",
]

NOISE_MODES = ("random", "const", "none")


def normalize_2nd_moment(x: Tensor, dim: int = 1, eps: float = 1e-8) -> Tensor:
    """``x / sqrt(mean_dim(x²) + eps)`` (docs/method.md §4.1)."""
    return x * (x.square().mean(dim=dim, keepdim=True) + eps).rsqrt()


def activation_gain(activation: str) -> float:
    """The default output gain of an activation (√2 for lrelu/relu, 1 for linear) (docs/method.md §4.1)."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation '{activation}'; choose one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[activation].default_gain


def filter_buffer(resample_filter: Sequence[float]) -> Tensor:
    """The 2-D FIR buffer [k, k] = outer(f, f)/sum² on the current default device (so meta-device
    construction works)."""
    return setup_filter(list(resample_filter), device=torch.empty(0).device)


def _check_resolution_args(name: str, **values: int) -> None:
    for key, value in values.items():
        if value < 1:
            raise ValueError(f"{name}: {key} must be a positive integer, got {value}")


class FullyConnectedLayer(nn.Module):
    """``y = act(x (g_w W)ᵀ + g_b b)`` with ``g_w = lr/sqrt(in)``, ``g_b = lr`` (docs/method.md §4.1).

    Parameters: ``weight`` [out, in] initialised N(0, 1)/lr, ``bias`` [out] initialised ``bias_init``.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        activation: str = "linear",
        lr_multiplier: float = 1.0,
        bias_init: float = 0.0,
    ) -> None:
        super().__init__()
        activation_gain(activation)  # validates the name
        self.in_features = in_features
        self.out_features = out_features
        self.activation = activation
        self.weight = nn.Parameter(torch.randn([out_features, in_features]) / lr_multiplier)
        self.bias = nn.Parameter(torch.full([out_features], float(bias_init))) if bias else None
        self.weight_gain = lr_multiplier / math.sqrt(in_features)
        self.bias_gain = lr_multiplier

    def forward(self, x: Tensor) -> Tensor:
        """``x`` [B, in] → [B, out]."""
        if x.ndim != 2 or x.shape[1] != self.in_features:
            raise ValueError(
                f"FullyConnectedLayer expects input [B, {self.in_features}], got {tuple(x.shape)}"
            )
        w = self.weight.to(x.dtype) * self.weight_gain
        b = None if self.bias is None else self.bias.to(x.dtype)
        if b is not None and self.bias_gain != 1:
            b = b * self.bias_gain
        if self.activation == "linear" and b is not None:
            return torch.addmm(b.unsqueeze(0), x, w.t())  # one kernel for x·Wᵀ + b, as SG2
        return bias_act(x.matmul(w.t()), b, act=self.activation)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"activation={self.activation}, lr_multiplier={self.bias_gain}"
        )


def modulated_conv2d(
    x: Tensor,
    weight: Tensor,
    styles: Tensor,
    noise: Tensor | None = None,
    up: int = 1,
    down: int = 1,
    padding: int = 0,
    resample_filter: Tensor | None = None,
    demodulate: bool = True,
    flip_weight: bool = True,
    fused_modconv: bool = True,
) -> Tensor:
    """Style-modulated convolution (docs/method.md §4.1): ``W'_{b,o,i,k} = W_{o,i,k} s_{b,i}``, optionally
    demodulated by ``δ_{b,o} = (Σ_{i,k} W'² + 1e-8)^{-1/2}``, then ``conv(x, W') [+ noise]``.

    ``x`` [B, Cin, H, W], ``weight`` [Cout, Cin, kh, kw], ``styles`` [B, Cin], ``noise`` broadcastable
    to the output [B, Cout, H', W']. ``fused_modconv=True`` runs one grouped convolution with per-sample
    weights; ``False`` scales the activations instead (``conv(x·s, W)·δ``) — the two are equal up to
    rounding. With fp16 activations and demodulation, weights and styles are first divided by their
    max-norms (``W / (sqrt(Cin·kh·kw)·max|W_o|)``, ``s / max|s_b|``); demodulation cancels both factors.
    """
    batch, in_channels = x.shape[0], x.shape[1]
    out_channels, w_in, kh, kw = weight.shape
    if w_in != in_channels:
        raise ValueError(f"modulated_conv2d: weight expects {w_in} input channels, x has {in_channels}")
    if styles.shape != (batch, in_channels):
        raise ValueError(
            f"modulated_conv2d: styles must be [B={batch}, Cin={in_channels}], got {tuple(styles.shape)}"
        )

    if x.dtype == torch.float16 and demodulate:  # docs/method.md §4.1: avoid fp16 overflow
        weight = weight * (
            1 / math.sqrt(in_channels * kh * kw) / weight.abs().amax(dim=[1, 2, 3], keepdim=True)
        )
        styles = styles / styles.abs().amax(dim=1, keepdim=True)

    w = None
    dcoefs = None
    if demodulate or fused_modconv:
        w = weight.unsqueeze(0) * styles.reshape(batch, 1, -1, 1, 1)  # [B, Cout, Cin, kh, kw]
    if demodulate:
        assert w is not None
        dcoefs = (w.square().sum(dim=[2, 3, 4]) + 1e-8).rsqrt()  # [B, Cout]

    if not fused_modconv:
        x = x * styles.to(x.dtype).reshape(batch, -1, 1, 1)
        x = conv2d_resample(
            x,
            weight.to(x.dtype),
            f=resample_filter,
            up=up,
            down=down,
            padding=padding,
            flip_weight=flip_weight,
        )
        if dcoefs is not None and noise is not None:
            return fma(x, dcoefs.to(x.dtype).reshape(batch, -1, 1, 1), noise.to(x.dtype))
        if dcoefs is not None:
            return x * dcoefs.to(x.dtype).reshape(batch, -1, 1, 1)
        if noise is not None:
            return x + noise.to(x.dtype)
        return x

    assert w is not None
    if dcoefs is not None:
        w = w * dcoefs.reshape(batch, -1, 1, 1, 1)
    # One grouped convolution: the batch becomes the group dimension.
    y = conv2d_resample(
        x.reshape(1, batch * in_channels, *x.shape[2:]),
        w.reshape(batch * out_channels, in_channels, kh, kw).to(x.dtype),
        f=resample_filter,
        up=up,
        down=down,
        padding=padding,
        groups=batch,
        flip_weight=flip_weight,
    )
    y = y.reshape(batch, out_channels, *y.shape[2:])
    if noise is not None:
        y = (y + noise).to(y.dtype)  # SG2 adds in place: promoted sum, rounded to y's dtype
    return y


class SynthesisLayer(nn.Module):
    """Modulated 3×3 convolution (optionally 2× up) + noise + bias + activation + clamp (docs/method.md §4.1).

    ``y = clamp(act(modconv(x, W, affine(w)) + γ·n + b)·gain_act·gain, ±conv_clamp·gain)`` with
    ``n`` ~ N(0, 1) of shape [B, 1, r, r] (``noise_mode='random'``), ``noise_const`` (``'const'``) or
    0 (``'none'``), ``γ`` = ``noise_strength``.
    """

    resample_filter: Tensor
    noise_const: Tensor

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        w_dim: int,
        resolution: int,
        kernel_size: int = 3,
        up: int = 1,
        use_noise: bool = True,
        activation: str = "lrelu",
        resample_filter: Sequence[float] = (1, 3, 3, 1),
        conv_clamp: float | None = None,
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        _check_resolution_args("SynthesisLayer", resolution=resolution, up=up, kernel_size=kernel_size)
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.w_dim = w_dim
        self.resolution = resolution
        self.up = up
        self.use_noise = use_noise
        self.activation = activation
        self.conv_clamp = conv_clamp
        self.register_buffer("resample_filter", filter_buffer(resample_filter))
        self.padding = kernel_size // 2
        self.act_gain = activation_gain(activation)

        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.weight = nn.Parameter(
            torch.randn([out_channels, in_channels, kernel_size, kernel_size]).to(memory_format=memory_format)
        )
        if use_noise:
            self.register_buffer("noise_const", torch.randn([resolution, resolution]))
            self.noise_strength = nn.Parameter(torch.zeros([]))
        self.bias = nn.Parameter(torch.zeros([out_channels]))

    def forward(
        self, x: Tensor, w: Tensor, noise_mode: str = "random", fused_modconv: bool = True, gain: float = 1.0
    ) -> Tensor:
        """``x`` [B, Cin, r/up, r/up], ``w`` [B, w_dim] → [B, Cout, r, r]."""
        if noise_mode not in NOISE_MODES:
            raise ValueError(f"unknown noise_mode '{noise_mode}'; choose one of {NOISE_MODES}")
        in_res = self.resolution // self.up
        if x.ndim != 4 or tuple(x.shape[1:]) != (self.in_channels, in_res, in_res):
            raise ValueError(
                f"SynthesisLayer expects x [B, {self.in_channels}, {in_res}, {in_res}], got {tuple(x.shape)}"
            )
        styles = self.affine(w)

        noise = None
        if self.use_noise and noise_mode == "random":
            n = torch.randn([x.shape[0], 1, self.resolution, self.resolution], device=x.device)
            noise = n * self.noise_strength
        elif self.use_noise and noise_mode == "const":
            noise = self.noise_const * self.noise_strength

        x = modulated_conv2d(
            x,
            self.weight,
            styles,
            noise=noise,
            up=self.up,
            padding=self.padding,
            resample_filter=self.resample_filter,
            flip_weight=self.up == 1,  # the transposed-conv path for up=2 expects an unflipped kernel
            fused_modconv=fused_modconv,
        )
        clamp = None if self.conv_clamp is None else self.conv_clamp * gain
        return bias_act(x, self.bias.to(x.dtype), act=self.activation, gain=self.act_gain * gain, clamp=clamp)

    def extra_repr(self) -> str:
        return (
            f"in_channels={self.in_channels}, out_channels={self.out_channels}, w_dim={self.w_dim}, "
            f"resolution={self.resolution}, up={self.up}, activation={self.activation}, "
            f"conv_clamp={self.conv_clamp}"
        )


class ToRGBLayer(nn.Module):
    """Modulated k×k convolution without demodulation + bias + clamp, linear (docs/method.md §4.1).

    ``y = clamp(conv(x, W ⊙ s) + b, ±conv_clamp)`` with ``s = affine(w) / sqrt(Cin·k²)``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        w_dim: int,
        kernel_size: int = 1,
        conv_clamp: float | None = None,
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.w_dim = w_dim
        self.conv_clamp = conv_clamp
        self.padding = kernel_size // 2  # 0 for the 1×1 ToRGB of StyleGAN2
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.weight = nn.Parameter(
            torch.randn([out_channels, in_channels, kernel_size, kernel_size]).to(memory_format=memory_format)
        )
        self.bias = nn.Parameter(torch.zeros([out_channels]))
        self.weight_gain = 1 / math.sqrt(in_channels * kernel_size**2)

    def styles(self, w: Tensor) -> Tensor:
        """``w`` [B, w_dim] → styles [B, Cin] = affine(w)·weight_gain (the equalised-lr weight gain)."""
        return self.affine(w) * self.weight_gain

    def forward(self, x: Tensor, w: Tensor, fused_modconv: bool = True) -> Tensor:
        """``x`` [B, Cin, H, W], ``w`` [B, w_dim] → [B, Cout, H, W]."""
        y = modulated_conv2d(
            x,
            self.weight,
            self.styles(w),
            padding=self.padding,
            demodulate=False,
            fused_modconv=fused_modconv,
        )
        return bias_act(y, self.bias.to(y.dtype), clamp=self.conv_clamp)

    def extra_repr(self) -> str:
        return (
            f"in_channels={self.in_channels}, out_channels={self.out_channels}, w_dim={self.w_dim}, "
            f"conv_clamp={self.conv_clamp}"
        )


class Conv2dLayer(nn.Module):
    """Equalised-lr convolution with optional FIR up/down-sampling, bias, activation, clamp (method §5).

    ``y = clamp(act(conv(x, W/sqrt(Cin·k²)) + b)·gain_act·gain, ±conv_clamp·gain)``. The
    ``resample_filter`` buffer is registered even without resampling, as in SG2, so checkpoints load
    by name (docs/method.md §11.4 lists it on ``fromrgb``). ``trainable=False`` stores weight/bias as buffers.
    """

    resample_filter: Tensor

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        bias: bool = True,
        activation: str = "linear",
        up: int = 1,
        down: int = 1,
        resample_filter: Sequence[float] = (1, 3, 3, 1),
        conv_clamp: float | None = None,
        channels_last: bool = False,
        trainable: bool = True,
    ) -> None:
        super().__init__()
        _check_resolution_args("Conv2dLayer", up=up, down=down, kernel_size=kernel_size)
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.activation = activation
        self.up = up
        self.down = down
        self.conv_clamp = conv_clamp
        self.register_buffer("resample_filter", filter_buffer(resample_filter))
        self.padding = kernel_size // 2
        self.weight_gain = 1 / math.sqrt(in_channels * kernel_size**2)
        self.act_gain = activation_gain(activation)

        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        weight = torch.randn([out_channels, in_channels, kernel_size, kernel_size]).to(
            memory_format=memory_format
        )
        bias_init = torch.zeros([out_channels]) if bias else None
        self.weight: Tensor
        self.bias: Tensor | None
        if trainable:
            self.weight = nn.Parameter(weight)
            self.bias = nn.Parameter(bias_init) if bias_init is not None else None
        else:
            self.register_buffer("weight", weight)
            if bias_init is not None:
                self.register_buffer("bias", bias_init)
            else:
                self.bias = None

    def forward(self, x: Tensor, gain: float = 1.0) -> Tensor:
        """``x`` [B, Cin, H, W] → [B, Cout, H·up/down, W·up/down]."""
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"Conv2dLayer expects x [B, {self.in_channels}, H, W], got {tuple(x.shape)}")
        w = self.weight * self.weight_gain
        b = None if self.bias is None else self.bias.to(x.dtype)
        x = conv2d_resample(
            x,
            w.to(x.dtype),
            f=self.resample_filter,
            up=self.up,
            down=self.down,
            padding=self.padding,
            flip_weight=self.up == 1,
        )
        clamp = None if self.conv_clamp is None else self.conv_clamp * gain
        return bias_act(x, b, act=self.activation, gain=self.act_gain * gain, clamp=clamp)

    def extra_repr(self) -> str:
        return (
            f"in_channels={self.in_channels}, out_channels={self.out_channels}, "
            f"activation={self.activation}, up={self.up}, down={self.down}, conv_clamp={self.conv_clamp}"
        )
