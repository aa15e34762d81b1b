"""Fused bias + activation + gain + clamp (docs/method.md §4.1, §11.5).

    y = clamp(act(x + b, alpha) * gain, -clamp, clamp)

``b`` is broadcast along dimension ``dim`` of ``x``. The reference path is plain PyTorch (any order of
derivatives); on CUDA an optional fused kernel (``csrc/bias_act*.{cu,cpp}``) computes the forward and
the first/second-order gradients, after a one-time self-check against the reference; on the CPU a fused
C++ kernel (``csrc/bias_act_cpu.cpp``, float32/float64, same math from ``csrc/bias_act_math.h``) does the
same in one pass over the elements instead of the reference's 4-7 (forward and backward).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from gmpi_core.ops import kernels
from gmpi_core.ops._build import CheckedKernel

__all__ = ["ACTIVATIONS", "ActivationSpec", "bias_act"]

IMPLS = ("auto", "ref", "cuda", "cpu")


@dataclass(frozen=True)
class ActivationSpec:
    """One activation: its formula ``func(z, alpha)``, default ``alpha`` and ``gain``, and kernel code."""

    name: str
    func: Callable[[Tensor, float], Tensor]
    default_alpha: float
    default_gain: float
    kernel_code: int  # must match the ``Act`` enum in csrc/bias_act.h
    piecewise_linear: bool  # second derivative is zero almost everywhere


def _swish(z: Tensor, alpha: float) -> Tensor:
    return torch.sigmoid(z) * z


_SQRT2 = math.sqrt(2.0)
ACTIVATIONS: dict[str, ActivationSpec] = {
    spec.name: spec
    for spec in (
        ActivationSpec("linear", lambda z, alpha: z, 0.0, 1.0, 0, True),
        ActivationSpec("relu", lambda z, alpha: F.relu(z), 0.0, _SQRT2, 1, True),
        ActivationSpec("lrelu", lambda z, alpha: F.leaky_relu(z, alpha), 0.2, _SQRT2, 2, True),
        ActivationSpec("tanh", lambda z, alpha: torch.tanh(z), 0.0, 1.0, 3, False),
        ActivationSpec("sigmoid", lambda z, alpha: torch.sigmoid(z), 0.0, 1.0, 4, False),
        ActivationSpec("elu", lambda z, alpha: F.elu(z), 0.0, 1.0, 5, False),
        ActivationSpec("selu", lambda z, alpha: F.selu(z), 0.0, 1.0, 6, False),
        ActivationSpec("softplus", lambda z, alpha: F.softplus(z), 0.0, 1.0, 7, False),
        ActivationSpec("swish", _swish, 0.0, _SQRT2, 8, False),
    )
}


def bias_act(
    x: Tensor,
    b: Tensor | None = None,
    dim: int = 1,
    act: str = "linear",
    alpha: float | None = None,
    gain: float | None = None,
    clamp: float | None = None,
    impl: str = "auto",
) -> Tensor:
    """``clamp(act(x + b, alpha) * gain, -clamp, clamp)`` with ``b`` [x.shape[dim]] broadcast along ``dim``.

    ``alpha``/``gain`` default to the activation's own (lrelu: 0.2 and √2); ``clamp=None`` disables
    clamping. ``impl``: ``"auto"`` (the fused kernel of ``x``'s device when it built and passed its
    self-check — CUDA any float dtype, CPU float32/float64 — else the reference), ``"ref"`` (always plain
    PyTorch), ``"cuda"`` / ``"cpu"`` (that fused kernel or an error).
    ``b`` is cast to ``x.dtype``; the result has ``x``'s shape and dtype.
    """
    spec = _activation(act)
    alpha = spec.default_alpha if alpha is None else float(alpha)
    gain = spec.default_gain if gain is None else float(gain)
    if clamp is not None and clamp < 0:
        raise ValueError(f"bias_act: clamp must be >= 0 or None (no clamping), got {clamp}")
    if not -x.ndim <= dim < max(x.ndim, 1):
        raise ValueError(f"bias_act: dim={dim} is out of range for a tensor of shape {tuple(x.shape)}")
    dim = dim % x.ndim if x.ndim > 0 else 0
    if b is not None:
        if x.ndim == 0 or b.ndim != 1 or b.shape[0] != x.shape[dim]:
            raise ValueError(
                f"bias_act: bias must be 1-D with x.shape[{dim}] entries for x of shape "
                f"{tuple(x.shape)}, got shape {tuple(b.shape)}"
            )
        b = b.to(x.dtype)
    module = _kernel_for(x, impl)
    if module is not None:
        return _BiasActCuda.apply(x, b, _KernelArgs(dim, spec, alpha, gain, clamp, module))
    return _bias_act_ref(x, b, dim, spec, alpha, gain, clamp)


def _activation(act: str) -> ActivationSpec:
    if act not in ACTIVATIONS:
        raise ValueError(f"unknown activation '{act}'; choose one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[act]


def _bias_act_ref(
    x: Tensor,
    b: Tensor | None,
    dim: int,
    spec: ActivationSpec,
    alpha: float,
    gain: float,
    clamp: float | None,
) -> Tensor:
    """Reference path: every op is native PyTorch, so derivatives of any order work."""
    if b is not None:
        x = x + b.reshape([-1 if i == dim else 1 for i in range(x.ndim)])
    y = spec.func(x, alpha)
    if gain != 1:
        y = y * gain
    if clamp is not None:
        y = y.clamp(-clamp, clamp)
    return y


# ------------------------------------------------------------------------------------------------
# Fused kernels (optional; CUDA, and CPU). Forward: y; backward: dz = dy·gain·act'(z)·mask; double
# backward uses act''(z). The mask is 1 where |gain·act(z)| <= clamp (torch.clamp's convention).


def _self_check(device: str = "cuda") -> str | None:
    """Compare forward, gradient and second-order gradient with the reference on small random inputs."""
    gen = torch.Generator(device="cpu").manual_seed(0)
    for name in ACTIVATIONS:
        for clamp in (None, 0.7):
            x = (torch.randn(2, 5, 3, 4, generator=gen) * 2).to(device).requires_grad_(True)
            b = torch.randn(5, generator=gen).to(device).requires_grad_(True)
            outputs = []
            for impl in (device, "ref"):
                y = bias_act(x, b, dim=1, act=name, clamp=clamp, impl=impl)
                dx, db = torch.autograd.grad(y.square().sum(), [x, b], create_graph=True)
                ddx, ddb = torch.autograd.grad(dx.square().sum() + db.sum(), [x, b])
                outputs.append([y, dx, db, ddx, ddb])
            for label, got, want in zip(["y", "dx", "db", "ddx", "ddb"], *outputs):
                if not torch.allclose(got, want, rtol=1e-3, atol=1e-4):
                    err = (got - want).abs().max().item()
                    return f"act={name}, clamp={clamp}: {label} differs from the reference by {err:.3g}"
    return None


_KERNEL = CheckedKernel(kernels.BIAS_ACT, _self_check)
_CPU_KERNEL = CheckedKernel(kernels.BIAS_ACT_CPU, lambda: _self_check("cpu"))
_CPU_DTYPES = (torch.float32, torch.float64)
_CPU_MIN_NUMEL = 16384  # below it the reference is as fast (measured: [8, 128, 8, 8] 0.24 vs 0.35 ms)


def _kernel_for(x: Tensor, impl: str) -> Any:
    """The fused kernel module to run ``x`` through, or ``None`` for the reference path."""
    if impl not in IMPLS:
        raise ValueError(f"bias_act: unknown impl '{impl}'; choose one of {IMPLS}")
    if impl == "ref":
        return None
    device = x.device.type
    if impl == "auto" and device not in ("cuda", "cpu"):
        return None
    if impl in ("cuda", "cpu") and device != impl:
        raise RuntimeError(
            f"bias_act: impl='{impl}' needs a {impl.upper()} tensor, got one on {x.device}; use impl='auto'"
        )
    if device == "cpu" and x.dtype not in _CPU_DTYPES:
        if impl == "cpu":
            raise RuntimeError(f"bias_act: the fused CPU kernel takes float32/float64, not {x.dtype}")
        return None
    if device == "cpu" and impl == "auto" and x.numel() < _CPU_MIN_NUMEL:
        return None  # tiny tensors: the autograd.Function's Python overhead outweighs the saved passes
    module = (_KERNEL if device == "cuda" else _CPU_KERNEL).get()
    if module is None and impl != "auto":
        raise RuntimeError(
            f"bias_act: impl='{impl}' needs a working fused {impl.upper()} kernel (it did not build or "
            "failed its self-check); use impl='auto' to fall back to the reference"
        )
    return module


@dataclass(frozen=True)
class _KernelArgs:
    dim: int
    spec: ActivationSpec
    alpha: float
    gain: float
    clamp: float | None
    module: Any  # the loaded kernel (CUDA or CPU) of the input's device

    def run(self, x: Tensor, b: Tensor | None, g: Tensor | None, mode: int) -> Tensor:
        """mode 0: y; mode 1: g·gain·act'(z)·mask; mode 2: g·gain·act''(z)·mask (z = x + b)."""
        empty = x.new_empty([0])
        return self.module.bias_act(
            x.contiguous(),
            empty if b is None else b.contiguous(),
            empty if g is None else g.contiguous(),
            self.dim,
            mode,
            self.spec.kernel_code,
            self.alpha,
            self.gain,
            -1.0 if self.clamp is None else self.clamp,
        )

    def reduce_to_bias(self, dz: Tensor) -> Tensor:
        return dz.sum(dim=[i for i in range(dz.ndim) if i != self.dim])


class _BiasActCuda(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, b: Tensor | None, args: _KernelArgs) -> Tensor:
        ctx.args = args
        ctx.has_bias = b is not None
        ctx.save_for_backward(x, b)
        return args.run(x, b, None, mode=0)

    @staticmethod
    def backward(ctx: Any, dy: Tensor) -> tuple[Tensor | None, Tensor | None, None]:
        x, b = ctx.saved_tensors
        args: _KernelArgs = ctx.args
        dz = _BiasActCudaGrad.apply(dy, x, b, args)
        dx = dz if ctx.needs_input_grad[0] else None
        db = args.reduce_to_bias(dz) if ctx.has_bias and ctx.needs_input_grad[1] else None
        return dx, db, None


class _BiasActCudaGrad(torch.autograd.Function):
    """dz = dy·gain·act'(x + b)·mask, linear in dy; its backward uses act''. No third order."""

    @staticmethod
    def forward(ctx: Any, dy: Tensor, x: Tensor, b: Tensor | None, args: _KernelArgs) -> Tensor:
        ctx.args = args
        ctx.has_bias = b is not None
        ctx.save_for_backward(dy, x, b)
        return args.run(x, b, dy, mode=1)

    @staticmethod
    def backward(ctx: Any, h: Tensor) -> tuple[Tensor | None, Tensor | None, Tensor | None, None]:
        dy, x, b = ctx.saved_tensors
        args: _KernelArgs = ctx.args
        d_dy = _BiasActCudaGrad.apply(h, x, b, args) if ctx.needs_input_grad[0] else None
        d_x = d_b = None
        if not args.spec.piecewise_linear and (ctx.needs_input_grad[1] or ctx.needs_input_grad[2]):
            dzz = args.run(x, b, h * dy, mode=2)
            d_x = dzz if ctx.needs_input_grad[1] else None
            d_b = args.reduce_to_bias(dzz) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return d_dy, d_x, d_b, None
