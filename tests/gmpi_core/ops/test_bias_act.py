"""bias_act: y = clamp(act(x + b) * gain, ±clamp) against float64 numpy formulas (method §4.1, §11.5)."""

import math
import warnings
from typing import Any

import numpy as np
import pytest
import torch

from gmpi_core.ops import _build
from gmpi_core.ops import bias_act as bias_act_module
from gmpi_core.ops._build import ExtensionSpec
from gmpi_core.ops.bias_act import ACTIVATIONS, bias_act

SELU_SCALE = 1.0507009873554804934193349852946
SELU_ALPHA = 1.6732632423543772848170429916717


def _np_sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


# (formula(z, alpha), default alpha, default gain) written from the textbook definitions
FORMULAS: dict[str, tuple[Any, float, float]] = {
    "linear": (lambda z, a: z, 0.0, 1.0),
    "relu": (lambda z, a: np.maximum(z, 0.0), 0.0, math.sqrt(2)),
    "lrelu": (lambda z, a: np.where(z > 0, z, a * z), 0.2, math.sqrt(2)),
    "tanh": (lambda z, a: np.tanh(z), 0.0, 1.0),
    "sigmoid": (lambda z, a: _np_sigmoid(z), 0.0, 1.0),
    "elu": (lambda z, a: np.where(z > 0, z, np.expm1(z)), 0.0, 1.0),
    "selu": (lambda z, a: SELU_SCALE * np.where(z > 0, z, SELU_ALPHA * np.expm1(z)), 0.0, 1.0),
    "softplus": (lambda z, a: np.log1p(np.exp(z)), 0.0, 1.0),
    "swish": (lambda z, a: z * _np_sigmoid(z), 0.0, math.sqrt(2)),
}


def _random(shape: tuple[int, ...], seed: int, scale: float = 2.0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-scale, scale, size=shape)


def test_activation_table_lists_exactly_the_nine_stylegan2_activations() -> None:
    assert set(ACTIVATIONS) == set(FORMULAS)


@pytest.mark.parametrize("act", sorted(FORMULAS))
def test_each_activation_with_bias_matches_its_formula_times_default_gain(act: str) -> None:
    formula, alpha, gain = FORMULAS[act]
    x, b = _random((2, 3, 4, 5), seed=1), _random((3,), seed=2)
    want = formula(x + b[None, :, None, None], alpha) * gain
    got = bias_act(torch.from_numpy(x), torch.from_numpy(b), act=act)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("act", sorted(FORMULAS))
def test_default_alpha_and_gain_are_the_stylegan2_ones(act: str) -> None:
    _, alpha, gain = FORMULAS[act]
    assert ACTIVATIONS[act].default_gain == pytest.approx(gain)
    assert ACTIVATIONS[act].default_alpha == pytest.approx(alpha)


def test_lrelu_default_is_slope_0_2_times_sqrt2() -> None:
    y = bias_act(torch.tensor([[-1.0, 2.0]], dtype=torch.float64), act="lrelu")
    np.testing.assert_allclose(y.numpy(), [[-0.2 * math.sqrt(2), 2 * math.sqrt(2)]], rtol=1e-12)


def test_explicit_alpha_and_gain_override_the_defaults() -> None:
    y = bias_act(torch.tensor([[-1.0, 2.0]], dtype=torch.float64), act="lrelu", alpha=0.5, gain=3.0)
    np.testing.assert_allclose(y.numpy(), [[-1.5, 6.0]], rtol=1e-12)


def test_no_bias_and_linear_is_the_identity() -> None:
    x = torch.from_numpy(_random((3, 4), seed=3))
    assert torch.equal(bias_act(x), x)


@pytest.mark.parametrize("act", ["linear", "lrelu", "swish"])
def test_clamp_limits_gained_output_to_plus_minus_clamp(act: str) -> None:
    formula, alpha, gain = FORMULAS[act]
    x, b = _random((4, 6, 3), seed=4, scale=5.0), _random((6,), seed=5)
    want = np.clip(formula(x + b[None, :, None], alpha) * gain, -1.5, 1.5)
    got = bias_act(torch.from_numpy(x), torch.from_numpy(b), act=act, clamp=1.5)
    assert (np.abs(want) == 1.5).any() and (np.abs(want) < 1.5).any()  # the case exercises both branches
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dim", [0, 2, -1])
def test_bias_is_broadcast_along_the_requested_dim(dim: int) -> None:
    x = _random((2, 3, 5), seed=6)
    b = _random((x.shape[dim],), seed=7)
    shape = [1, 1, 1]
    shape[dim] = -1
    want = np.where(x + b.reshape(shape) > 0, x + b.reshape(shape), 0.2 * (x + b.reshape(shape))) * math.sqrt(
        2
    )
    got = bias_act(torch.from_numpy(x), torch.from_numpy(b), dim=dim, act="lrelu")
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-12, atol=1e-12)


def test_bias_is_cast_to_the_input_dtype() -> None:
    y = bias_act(torch.zeros(2, 3, dtype=torch.float64), torch.ones(3, dtype=torch.float32))
    assert y.dtype == torch.float64


@pytest.mark.parametrize("act", sorted(FORMULAS))
@pytest.mark.parametrize("clamp", [None, 1.0])
def test_first_and_second_order_gradients_pass_finite_difference_checks(
    act: str, clamp: float | None
) -> None:
    # values kept away from the kinks (0 for relu/lrelu, ±clamp) where finite differences are undefined
    rng = np.random.default_rng(8)
    z = rng.uniform(0.2, 1.2, size=(2, 3, 2)) * rng.choice([-1.0, 1.0], size=(2, 3, 2))
    b = np.array([0.05, -0.05, 0.0])
    x = torch.from_numpy(z - b[None, :, None]).requires_grad_(True)
    bt = torch.from_numpy(b).requires_grad_(True)
    if clamp is not None:  # the sample must stay clear of the clamp boundary too
        y0 = bias_act(x.detach(), bt.detach(), act=act).abs()
        assert ((y0 - clamp).abs() > 1e-3).all()

    def fn(x_: torch.Tensor, b_: torch.Tensor) -> torch.Tensor:
        return bias_act(x_, b_, act=act, clamp=clamp)

    assert torch.autograd.gradcheck(fn, (x, bt))
    assert torch.autograd.gradgradcheck(fn, (x, bt))


def test_unknown_activation_error_lists_the_choices() -> None:
    with pytest.raises(ValueError, match=r"unknown activation 'gelu'.*lrelu"):
        bias_act(torch.zeros(1, 2), act="gelu")


def test_bias_of_the_wrong_length_is_rejected() -> None:
    with pytest.raises(ValueError, match=r"x.shape\[1\] entries for x of shape \(2, 3\)"):
        bias_act(torch.zeros(2, 3), torch.zeros(4))


def test_negative_clamp_is_rejected() -> None:
    with pytest.raises(ValueError, match="clamp must be >= 0"):
        bias_act(torch.zeros(2, 3), clamp=-1.0)


def test_forcing_the_cuda_kernel_on_a_cpu_tensor_raises_a_clear_error() -> None:
    with pytest.raises(RuntimeError, match="impl='cuda' needs a CUDA tensor"):
        bias_act(torch.zeros(2, 3), impl="cuda")


class _KernelEmulator:
    """Stands in for the compiled extension on CPU: mode 0 = y, 1 = g·dy/dz, 2 = g·d²y/dz² (by autograd)."""

    @staticmethod
    def bias_act(
        x: torch.Tensor,
        b: torch.Tensor,
        g: torch.Tensor,
        dim: int,
        mode: int,
        code: int,
        alpha: float,
        gain: float,
        clamp: float,
    ) -> torch.Tensor:
        spec = next(s for s in ACTIVATIONS.values() if s.kernel_code == code)
        shape = [-1 if i == dim else 1 for i in range(x.ndim)]
        with torch.enable_grad():
            z = (x.detach() + (b.detach().reshape(shape) if b.numel() else 0)).requires_grad_(True)
            y = bias_act(
                z, act=spec.name, alpha=alpha, gain=gain, clamp=None if clamp < 0 else clamp, impl="ref"
            )
            if mode == 0:
                return y.detach()
            (dy,) = torch.autograd.grad(y.sum(), z, create_graph=True)
            if mode == 1:
                return (g * dy).detach()
            (d2y,) = torch.autograd.grad(dy.sum(), z, allow_unused=True)
            return g * (torch.zeros_like(z) if d2y is None else d2y)


@pytest.mark.parametrize("act", ["lrelu", "tanh", "swish"])
def test_fused_path_autograd_wiring_gives_reference_first_and_second_order_gradients(act: str) -> None:
    rng = np.random.default_rng(9)
    x = torch.from_numpy(rng.normal(size=(2, 3, 4))).requires_grad_(True)
    b = torch.from_numpy(rng.normal(size=(3,))).requires_grad_(True)
    spec = ACTIVATIONS[act]
    args = bias_act_module._KernelArgs(1, spec, spec.default_alpha, 1.7, 1.2, _KernelEmulator())
    results = []
    for fused in (True, False):
        if fused:
            y = bias_act_module._BiasActCuda.apply(x, b, args)
        else:
            y = bias_act(x, b, act=act, gain=1.7, clamp=1.2, impl="ref")
        dx, db = torch.autograd.grad(y.square().sum(), [x, b], create_graph=True)
        ddx, ddb = torch.autograd.grad((dx.square().sum() + (db * db.detach()).sum()), [x, b])
        results.append([y, dx, db, ddx, ddb])
    for got, want in zip(*results):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_fused_kernel_failing_its_self_check_is_disabled_after_one_warning(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake_module = object()
    monkeypatch.setattr(_build, "load_registered", lambda spec: fake_module)
    demo = ExtensionSpec("demo", [], cuda=True)  # not registered: stays out of prebuild
    failing = _build.CheckedKernel(demo, lambda: "y differs")
    with pytest.warns(RuntimeWarning, match=r"failed its self-check \(y differs\)"):
        assert failing.get() is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert failing.get() is None  # no second warning, no second attempt
    passing = _build.CheckedKernel(demo, lambda: None)
    assert passing.get() is fake_module


def test_fused_kernel_that_crashes_in_its_self_check_is_disabled(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_build, "load_registered", lambda spec: object())

    def crash() -> str | None:
        raise RuntimeError("illegal memory access")

    with pytest.warns(RuntimeWarning, match="illegal memory access"):
        assert _build.CheckedKernel(ExtensionSpec("demo", [], cuda=True), crash).get() is None


# --- the fused CPU kernel (csrc/bias_act_cpu.cpp) -----------------------------------------------------


def _cpu_kernel_or_skip() -> None:
    if bias_act_module._CPU_KERNEL.get() is None:
        pytest.skip("the fused CPU bias_act kernel did not build here (no C++ compiler?)")


@pytest.mark.parametrize("act", sorted(ACTIVATIONS))
@pytest.mark.parametrize("clamp", [None, 0.7])
@pytest.mark.parametrize(
    ("shape", "dim"), [((3, 5, 4, 6), 1), ((7, 5), 0), ((2, 3, 9), 2), ((4, 6, 5), None)]
)
def test_cpu_kernel_matches_the_reference_to_second_order_in_float64(act, clamp, shape, dim) -> None:
    """y, ∂/∂x, ∂/∂b and the second-order terms (what R1's double backward uses) of the one-pass CPU
    kernel equal the plain-PyTorch composition of the formula, for every activation, with and without
    clamping and bias, the bias along the first, a middle or the last dimension."""
    _cpu_kernel_or_skip()
    g = torch.Generator().manual_seed(3)
    x = (torch.randn(*shape, generator=g, dtype=torch.float64) * 2).requires_grad_(True)
    b = None
    if dim is not None:
        b = torch.randn(shape[dim], generator=g, dtype=torch.float64).requires_grad_(True)
    leaves = [x] if b is None else [x, b]
    results = []
    for impl in ("cpu", "ref"):
        y = bias_act(x, b, dim=0 if dim is None else dim, act=act, gain=1.3, clamp=clamp, impl=impl)
        grads = torch.autograd.grad((y**3).sum(), leaves, create_graph=True)
        second = torch.autograd.grad(sum(gr.square().sum() for gr in grads), leaves, allow_unused=True)
        zeros_if_unused = [torch.zeros_like(v) if s is None else s for s, v in zip(second, leaves)]
        results.append([y, *grads, *zeros_if_unused])
    for got, want in zip(*results):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_cpu_kernel_forward_and_gradient_of_lrelu_equal_the_reference_bit_for_bit_in_float32() -> None:
    """The StyleGAN2 layer case (lrelu, gain √2, clamp 256·√2 style) does the reference's operations in the
    reference's order, so training on CPU gives the same numbers with and without the kernel."""
    _cpu_kernel_or_skip()
    g = torch.Generator().manual_seed(5)
    x = (torch.randn(4, 16, 8, 8, generator=g) * 300).requires_grad_(True)
    b = torch.randn(16, generator=g).requires_grad_(True)
    dy = torch.randn(4, 16, 8, 8, generator=g)
    outs = []
    for impl in ("cpu", "ref"):
        y = bias_act(x, b, act="lrelu", clamp=256.0, impl=impl)
        dx, db = torch.autograd.grad(y, [x, b], dy)
        outs.append((y, dx, db))
    assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1])
    torch.testing.assert_close(outs[0][2], outs[1][2], rtol=1e-5, atol=1e-4)  # a sum: order may differ


def test_auto_uses_the_cpu_kernel_for_float_and_the_reference_for_other_dtypes() -> None:
    _cpu_kernel_or_skip()
    x = torch.randn(2, 3, 4, 1024)
    assert bias_act_module._kernel_for(x, "auto") is bias_act_module._CPU_KERNEL.module
    assert bias_act_module._kernel_for(x[:, :, :, :2], "auto") is None  # tiny: the reference is as fast
    assert bias_act_module._kernel_for(x[:, :, :, :2], "cpu") is bias_act_module._CPU_KERNEL.module
    assert bias_act_module._kernel_for(x.to(torch.bfloat16), "auto") is None
    assert bias_act_module._kernel_for(x, "ref") is None
    with pytest.raises(RuntimeError, match="float32/float64"):
        bias_act(x.to(torch.bfloat16), act="lrelu", impl="cpu")
    with pytest.raises(RuntimeError, match="needs a CUDA tensor"):
        bias_act(x, act="lrelu", impl="cuda")
