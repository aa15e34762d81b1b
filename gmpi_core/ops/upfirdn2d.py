"""Upsample, FIR-filter, downsample in one op — StyleGAN2's resampling primitive (docs/method.md §4.1, §11.5).

``upfirdn2d`` on every channel of ``x`` [B, C, H, W]:
    1. upsample by zero insertion: x_up[n·up] = x[n], other samples 0 (length H·up, trailing zeros);
    2. pad with zeros (negative padding crops);
    3. filter with ``f`` — a true convolution (``flip_filter=True``: correlation), ``f`` scaled by
       ``gain ** (f.ndim / 2)`` so that a separable 1-D filter gets ``gain`` overall;
    4. downsample by keeping every ``down``-th sample, starting at 0.
Output height: ``(H·up_y + pad_y0 + pad_y1 − f_h) // down_y + 1`` (same for the width).

Conventions: ``up``/``down`` are an int or ``[x, y]``; ``padding`` is an int, ``[x, y]`` or
``[x0, x1, y0, y1]``; filters come from ``setup_filter`` (2-D [fh, fw], or 1-D [n] = separable).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from gmpi_core.ops import kernels
from gmpi_core.ops._build import CheckedKernel
from gmpi_core.ops.bias_act import IMPLS

__all__ = ["downsample2d", "filter2d", "setup_filter", "upfirdn2d", "upsample2d"]

FilterLike = Tensor | np.ndarray | Sequence[float] | Sequence[Sequence[float]] | float | None
Scaling = int | Sequence[int]
Padding = int | Sequence[int]
_CPU = torch.device("cpu")


def setup_filter(
    f: FilterLike,
    device: torch.device | str = _CPU,
    normalize: bool = True,
    flip_filter: bool = False,
    gain: float = 1,
    separable: bool | None = None,
) -> Tensor:
    """Float32 FIR filter for ``upfirdn2d``: [fh, fw], or [n] when separable.

    ``f`` (list/array/tensor, 0-/1-/2-D; ``None`` = [1]). A 1-D filter becomes the 2-D outer product
    ``f ⊗ f`` unless ``separable=True`` (default: separable iff it has >= 8 taps). ``normalize``
    divides by the sum; the result is then multiplied by ``gain ** (ndim / 2)``.
    """
    f_t = torch.as_tensor(1.0 if f is None else f, dtype=torch.float32)
    if f_t.ndim > 2 or f_t.numel() == 0:
        raise ValueError(
            f"setup_filter: expected a non-empty 0-, 1- or 2-D filter, got shape {tuple(f_t.shape)}"
        )
    if f_t.ndim == 0:
        f_t = f_t[None]
    if separable is None:
        separable = f_t.ndim == 1 and f_t.numel() >= 8
    if separable and f_t.ndim != 1:
        raise ValueError(f"setup_filter: separable=True needs a 1-D filter, got shape {tuple(f_t.shape)}")
    if f_t.ndim == 1 and not separable:
        f_t = torch.outer(f_t, f_t)
    if normalize:
        f_t = f_t / f_t.sum()
    if flip_filter:
        f_t = f_t.flip(list(range(f_t.ndim)))
    f_t = f_t * (gain ** (f_t.ndim / 2))
    return f_t.to(device=device)


@dataclass(frozen=True)
class _Resampling:
    """Parsed ``upfirdn2d`` arguments; ``pad`` is (x0, x1, y0, y1)."""

    up: tuple[int, int]  # (x, y)
    down: tuple[int, int]
    pad: tuple[int, int, int, int]


def _parse_scaling(scaling: Scaling, name: str) -> tuple[int, int]:
    sx, sy = (scaling, scaling) if isinstance(scaling, int) else tuple(scaling)
    if not (isinstance(sx, int) and isinstance(sy, int) and sx >= 1 and sy >= 1):
        raise ValueError(
            f"upfirdn2d: {name} must be a positive int or [x, y] of positive ints, got {scaling}"
        )
    return sx, sy


def _parse_padding(padding: Padding) -> tuple[int, int, int, int]:
    if isinstance(padding, int):
        return padding, padding, padding, padding
    pads = [int(p) for p in padding]
    if len(pads) == 2:
        return pads[0], pads[0], pads[1], pads[1]
    if len(pads) == 4:
        return pads[0], pads[1], pads[2], pads[3]
    raise ValueError(f"upfirdn2d: padding must be an int, [x, y] or [x0, x1, y0, y1], got {padding}")


def _filter_size(f: Tensor | None) -> tuple[int, int]:
    """(fw, fh); a 1-D filter is used along both axes."""
    if f is None:
        return 1, 1
    if f.ndim not in (1, 2):
        raise ValueError(f"upfirdn2d: filter must be 1-D (separable) or 2-D, got shape {tuple(f.shape)}")
    return (f.shape[-1], f.shape[0])


def _check_input(x: Tensor, f: Tensor | None) -> None:
    if x.ndim != 4:
        raise ValueError(f"upfirdn2d: x must be [B, C, H, W], got shape {tuple(x.shape)}")
    if f is not None and not f.is_floating_point():
        raise ValueError(f"upfirdn2d: filter must be floating point (use setup_filter), got {f.dtype}")


def upfirdn2d(
    x: Tensor,
    f: Tensor | None,
    up: Scaling = 1,
    down: Scaling = 1,
    padding: Padding = 0,
    flip_filter: bool = False,
    gain: float = 1,
    impl: str = "auto",
) -> Tensor:
    """Zero-insert upsample, pad/crop, FIR filter, decimate: [B, C, H, W] -> [B, C, H', W'] (see module doc).

    ``f`` [fh, fw] or [n] (separable) from ``setup_filter``, or ``None`` for the identity filter.
    ``impl``: ``"auto"`` (fused CUDA kernel on CUDA when it passed its self-check), ``"ref"``, ``"cuda"``.
    """
    _check_input(x, f)
    res = _Resampling(_parse_scaling(up, "up"), _parse_scaling(down, "down"), _parse_padding(padding))
    fw, fh = _filter_size(f)
    out_w = (x.shape[3] * res.up[0] + res.pad[0] + res.pad[1] - fw) // res.down[0] + 1
    out_h = (x.shape[2] * res.up[1] + res.pad[2] + res.pad[3] - fh) // res.down[1] + 1
    if out_w < 1 or out_h < 1:
        raise ValueError(
            f"upfirdn2d: output would be empty ({out_h}x{out_w}) for input {tuple(x.shape)}, "
            f"filter {fh}x{fw}, up={res.up}, down={res.down}, padding={res.pad}; use less cropping"
        )
    if _use_kernel(x, impl, filter_needs_grad=f is not None and f.requires_grad):
        return _upfirdn2d_cuda(x, _correlation_filter(f, flip_filter, gain, x), res)
    return _upfirdn2d_ref(x, f, res, flip_filter, gain)


def _upfirdn2d_ref(x: Tensor, f: Tensor | None, res: _Resampling, flip_filter: bool, gain: float) -> Tensor:
    """Reference path from native ops (pad, grouped conv2d, slicing): differentiable to any order."""
    batch, channels, height, width = x.shape
    (up_x, up_y), (down_x, down_y), (px0, px1, py0, py1) = res.up, res.down, res.pad
    if f is None:
        f = torch.ones([1, 1], dtype=torch.float32, device=x.device)
    # 1. zero insertion: each sample followed by (up - 1) zeros
    if up_x > 1 or up_y > 1:
        x = x.reshape(batch, channels, height, 1, width, 1)
        x = F.pad(x, [0, up_x - 1, 0, 0, 0, up_y - 1])
        x = x.reshape(batch, channels, height * up_y, width * up_x)
    # 2. pad positive amounts, then crop negative ones
    x = F.pad(x, [max(px0, 0), max(px1, 0), max(py0, 0), max(py1, 0)])
    x = x[:, :, max(-py0, 0) : x.shape[2] - max(-py1, 0), max(-px0, 0) : x.shape[3] - max(-px1, 0)]
    # 3. conv2d is a correlation, so a true convolution flips the filter first
    f = (f * gain ** (f.ndim / 2)).to(x.dtype)
    if not flip_filter:
        f = f.flip(list(range(f.ndim)))
    if f.ndim == 2:
        x = F.conv2d(x, f[None, None].expand(channels, 1, *f.shape), groups=channels)
    else:
        x = F.conv2d(x, f[None, None, None, :].expand(channels, 1, 1, f.shape[0]), groups=channels)
        x = F.conv2d(x, f[None, None, :, None].expand(channels, 1, f.shape[0], 1), groups=channels)
    # 4. decimation
    return x[:, :, ::down_y, ::down_x]


def filter2d(
    x: Tensor,
    f: Tensor | None,
    padding: Padding = 0,
    flip_filter: bool = False,
    gain: float = 1,
    impl: str = "auto",
) -> Tensor:
    """FIR-filter ``x`` [B, C, H, W] keeping its size (+ ``padding``): pads fw//2 before, (fw-1)//2 after."""
    px0, px1, py0, py1 = _parse_padding(padding)
    fw, fh = _filter_size(f)
    pad = [px0 + fw // 2, px1 + (fw - 1) // 2, py0 + fh // 2, py1 + (fh - 1) // 2]
    return upfirdn2d(x, f, padding=pad, flip_filter=flip_filter, gain=gain, impl=impl)


def upsample2d(
    x: Tensor,
    f: Tensor | None,
    up: Scaling = 2,
    padding: Padding = 0,
    flip_filter: bool = False,
    gain: float = 1,
    impl: str = "auto",
) -> Tensor:
    """Upsample ``x`` [B, C, H, W] -> [B, C, H·up, W·up] (plus ``padding``) with FIR ``f``.

    Pads (fw+up-1)//2 before and (fw-up)//2 after, and multiplies the gain by up_x·up_y so that a
    constant image stays constant in the interior.
    """
    up_x, up_y = _parse_scaling(up, "up")
    px0, px1, py0, py1 = _parse_padding(padding)
    fw, fh = _filter_size(f)
    pad = [
        px0 + (fw + up_x - 1) // 2,
        px1 + (fw - up_x) // 2,
        py0 + (fh + up_y - 1) // 2,
        py1 + (fh - up_y) // 2,
    ]
    return upfirdn2d(
        x, f, up=(up_x, up_y), padding=pad, flip_filter=flip_filter, gain=gain * up_x * up_y, impl=impl
    )


def downsample2d(
    x: Tensor,
    f: Tensor | None,
    down: Scaling = 2,
    padding: Padding = 0,
    flip_filter: bool = False,
    gain: float = 1,
    impl: str = "auto",
) -> Tensor:
    """Downsample ``x`` [B, C, H, W] -> [B, C, H/down, W/down] (plus ``padding``) with FIR ``f``.

    Pads (fw-down+1)//2 before and (fw-down)//2 after.
    """
    down_x, down_y = _parse_scaling(down, "down")
    px0, px1, py0, py1 = _parse_padding(padding)
    fw, fh = _filter_size(f)
    pad = [
        px0 + (fw - down_x + 1) // 2,
        px1 + (fw - down_x) // 2,
        py0 + (fh - down_y + 1) // 2,
        py1 + (fh - down_y) // 2,
    ]
    return upfirdn2d(x, f, down=(down_x, down_y), padding=pad, flip_filter=flip_filter, gain=gain, impl=impl)


# ------------------------------------------------------------------------------------------------
# Fused CUDA kernel (optional). The kernel computes a *correlation* with a 2-D filter g (flip and gain
# already applied); its adjoint is the same kernel with g flipped, up/down swapped and adjusted padding.


def _correlation_filter(f: Tensor | None, flip_filter: bool, gain: float, x: Tensor) -> Tensor:
    """2-D filter g [fh, fw] such that the op is ``y[i] = Σ_j x_up_pad[i·down + j]·g[j]``."""
    if f is None:
        f = torch.ones([1, 1], dtype=torch.float32, device=x.device)
    g = (torch.outer(f, f) if f.ndim == 1 else f) * gain  # separable: gain**(1/2) per axis
    if not flip_filter:
        g = g.flip([0, 1])
    compute_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    return g.to(device=x.device, dtype=compute_dtype).contiguous()


def _upfirdn2d_cuda(x: Tensor, g: Tensor, res: _Resampling) -> Tensor:
    return _Upfirdn2dCuda.apply(x, g, res)


class _Upfirdn2dCuda(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, g: Tensor, res: _Resampling) -> Tensor:
        module = _KERNEL.module
        assert module is not None, "upfirdn2d: fused kernel used before it was loaded"
        y = module.upfirdn2d(x.contiguous(), g, *res.up, *res.down, *res.pad)
        ctx.save_for_backward(g)
        ctx.res = res
        ctx.in_hw = (x.shape[2], x.shape[3])
        ctx.out_hw = (y.shape[2], y.shape[3])
        return y

    @staticmethod
    def backward(ctx: Any, dy: Tensor) -> tuple[Tensor | None, None, None]:
        if not ctx.needs_input_grad[0]:
            return None, None, None
        (g,) = ctx.saved_tensors
        res: _Resampling = ctx.res
        fh, fw = g.shape
        (in_h, in_w), (out_h, out_w) = ctx.in_hw, ctx.out_hw
        (up_x, up_y), (down_x, down_y), (px0, _, py0, _) = res.up, res.down, res.pad
        # adjoint: zero-insert by `down`, pad f-1-p0 before and just enough after to reach
        # (in-1)·up+1 samples, correlate with the flipped filter, keep every `up`-th sample
        adjoint = _Resampling(
            up=(down_x, down_y),
            down=(up_x, up_y),
            pad=(
                fw - 1 - px0,
                in_w * up_x - out_w * down_x + px0 - up_x + 1,
                fh - 1 - py0,
                in_h * up_y - out_h * down_y + py0 - up_y + 1,
            ),
        )
        return _Upfirdn2dCuda.apply(dy, g.flip([0, 1]).contiguous(), adjoint), None, None


def _self_check() -> str | None:
    """Compare forward, gradient and second-order gradient with the reference on small random inputs."""
    gen = torch.Generator(device="cpu").manual_seed(0)
    cases: list[tuple[Tensor, dict[str, Any]]] = [
        (setup_filter([1, 3, 3, 1]), dict(up=2, padding=[2, 1, 2, 1], gain=4)),
        (setup_filter([1, 3, 3, 1]), dict(down=2, padding=1)),
        (
            setup_filter([1, 2, 3, 4, 5, 6, 7, 8], separable=True),
            dict(up=[2, 1], down=[1, 3], padding=[3, -1, 0, 2]),
        ),
        (torch.randn(3, 2, generator=gen), dict(padding=[1, 0, -1, 2], flip_filter=True)),
    ]
    for f, kwargs in cases:
        x = torch.randn(2, 3, 7, 6, generator=gen).cuda().requires_grad_(True)
        outputs = []
        for impl in ("cuda", "ref"):
            y = upfirdn2d(x, f.cuda(), impl=impl, **kwargs)
            (dx,) = torch.autograd.grad(y.square().sum(), [x], create_graph=True)
            (ddx,) = torch.autograd.grad(dx.square().sum(), [x])
            outputs.append([y, dx, ddx])
        for label, got, want in zip(["y", "dx", "ddx"], *outputs):
            if got.shape != want.shape or not torch.allclose(got, want, rtol=1e-3, atol=1e-4):
                return f"{kwargs}: {label} differs from the reference"
    return None


_KERNEL = CheckedKernel(kernels.UPFIRDN2D, _self_check)


def _use_kernel(x: Tensor, impl: str, filter_needs_grad: bool) -> bool:
    """The fused kernel has no filter gradient, so a trainable filter always takes the reference path."""
    if impl not in IMPLS:
        raise ValueError(f"upfirdn2d: unknown impl '{impl}'; choose one of {IMPLS}")
    if impl == "ref" or (impl == "auto" and (not x.is_cuda or filter_needs_grad)):
        return False
    available = x.is_cuda and not filter_needs_grad and _KERNEL.get() is not None
    if impl == "cuda" and not available:
        raise RuntimeError(
            "upfirdn2d: impl='cuda' needs a CUDA tensor, a filter without requires_grad and a working "
            f"fused kernel (tensor device: {x.device}); use impl='auto' to fall back to the reference"
        )
    return available
