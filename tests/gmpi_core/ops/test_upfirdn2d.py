"""upfirdn2d and helpers against a float64 numpy model: zero-insert, pad, convolve, decimate (§11.5)."""

from typing import Any

import numpy as np
import pytest
import torch

from gmpi_core.ops import upfirdn2d as upfirdn2d_module
from gmpi_core.ops.upfirdn2d import downsample2d, filter2d, setup_filter, upfirdn2d, upsample2d


def numpy_upfirdn2d(
    x: np.ndarray,
    f: np.ndarray,
    up: tuple[int, int],
    down: tuple[int, int],
    pad: tuple[int, int, int, int],
    flip_filter: bool = False,
    gain: float = 1.0,
) -> np.ndarray:
    """x [H, W], f [fh, fw] (2-D, gain applied here); up/down (x, y); pad (x0, x1, y0, y1)."""
    (ux, uy), (dx, dy), (px0, px1, py0, py1) = up, down, pad
    h, w = x.shape
    u = np.zeros((h * uy, w * ux))
    u[::uy, ::ux] = x  # zero insertion, each sample followed by up-1 zeros
    v = np.pad(u, ((max(py0, 0), max(py1, 0)), (max(px0, 0), max(px1, 0))))
    v = v[max(-py0, 0) : v.shape[0] - max(-py1, 0), max(-px0, 0) : v.shape[1] - max(-px1, 0)]
    fh, fw = f.shape
    out = np.zeros((v.shape[0] - fh + 1, v.shape[1] - fw + 1))
    for i in range(out.shape[0]):
        for j in range(out.shape[1]):
            window = v[i : i + fh, j : j + fw]
            # true convolution: out[n] = sum_k f[k] v[n + fh-1 - k]; correlation: sum_k f[k] v[n + k]
            out[i, j] = (window * (f if flip_filter else f[::-1, ::-1])).sum()
    return gain * out[::dy, ::dx]


def _nonsymmetric_filter(shape: tuple[int, int], seed: int) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0.1, 1.0, size=shape)


CASES: list[dict[str, Any]] = [
    dict(f=np.outer([1, 3, 3, 1], [1, 3, 3, 1]) / 64, up=(2, 2), down=(1, 1), pad=(2, 1, 2, 1)),
    dict(f=np.outer([1, 3, 3, 1], [1, 3, 3, 1]) / 64, up=(1, 1), down=(2, 2), pad=(1, 1, 1, 1)),
    dict(f=_nonsymmetric_filter((3, 2), 0), up=(3, 2), down=(1, 2), pad=(1, 2, 0, 3)),
    dict(f=_nonsymmetric_filter((2, 3), 1), up=(1, 1), down=(1, 1), pad=(-1, 2, 1, -2)),
    dict(f=_nonsymmetric_filter((2, 3), 1), up=(1, 1), down=(1, 1), pad=(-1, 2, 1, -2), flip_filter=True),
    dict(
        f=_nonsymmetric_filter((4, 4), 2),
        up=(2, 2),
        down=(2, 2),
        pad=(0, -1, 3, 0),
        flip_filter=True,
        gain=3.0,
    ),
    dict(f=_nonsymmetric_filter((1, 1), 3), up=(2, 1), down=(1, 3), pad=(0, 0, 0, 0)),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"up{c['up']}-down{c['down']}-pad{c['pad']}")
def test_upfirdn2d_matches_zero_insert_pad_convolve_decimate(case: dict[str, Any]) -> None:
    rng = np.random.default_rng(10)
    x = rng.normal(size=(2, 3, 5, 6))
    flip, gain = case.get("flip_filter", False), case.get("gain", 1.0)
    got = upfirdn2d(
        torch.from_numpy(x),
        torch.from_numpy(case["f"]),
        up=list(case["up"]),
        down=list(case["down"]),
        padding=list(case["pad"]),
        flip_filter=flip,
        gain=gain,
    )
    for bi in range(2):
        for ci in range(3):
            want = numpy_upfirdn2d(x[bi, ci], case["f"], case["up"], case["down"], case["pad"], flip, gain)
            np.testing.assert_allclose(got[bi, ci].numpy(), want, rtol=1e-12, atol=1e-12)


def test_separable_filter_equals_its_outer_product_with_the_same_total_gain() -> None:
    taps = np.arange(1.0, 9.0)
    f_sep = setup_filter(taps, separable=True, gain=2.0).double()
    x = np.random.default_rng(11).normal(size=(1, 2, 6, 7))
    got = upfirdn2d(torch.from_numpy(x), f_sep, up=2, down=[1, 2], padding=[4, 3, 2, 5])
    f2d = np.outer(taps, taps) / taps.sum() ** 2
    for ci in range(2):
        want = numpy_upfirdn2d(x[0, ci], f2d, (2, 2), (1, 2), (4, 3, 2, 5), gain=2.0)
        np.testing.assert_allclose(got[0, ci].numpy(), want, rtol=1e-6, atol=1e-6)


def test_no_filter_means_identity_filter() -> None:
    x = torch.arange(12.0).reshape(1, 1, 3, 4)
    y = upfirdn2d(x, None, up=2, padding=[0, -1, 1, 0])
    want = numpy_upfirdn2d(x[0, 0].numpy(), np.ones((1, 1)), (2, 2), (1, 1), (0, -1, 1, 0))
    np.testing.assert_allclose(y[0, 0].numpy(), want)


def test_setup_filter_short_1d_becomes_normalised_outer_product() -> None:
    f = setup_filter([1, 3, 3, 1])
    assert f.dtype == torch.float32 and f.shape == (4, 4)
    np.testing.assert_allclose(f.numpy(), np.outer([1, 3, 3, 1], [1, 3, 3, 1]) / 64.0, rtol=1e-7)


def test_setup_filter_eight_taps_stays_separable_unless_told_otherwise() -> None:
    taps = list(range(1, 9))
    f1 = setup_filter(taps)
    assert f1.shape == (8,)
    np.testing.assert_allclose(f1.numpy(), np.array(taps) / 36.0, rtol=1e-7)
    assert setup_filter(taps, separable=False).shape == (8, 8)
    assert setup_filter([1, 2, 1], separable=True).shape == (3,)


def test_setup_filter_gain_scales_the_sum_by_gain_in_2d_and_sqrt_gain_per_axis_in_1d() -> None:
    assert setup_filter([1, 3, 3, 1], gain=4).sum().item() == pytest.approx(4.0)
    assert setup_filter(list(range(1, 9)), gain=4).sum().item() == pytest.approx(2.0)


def test_setup_filter_without_normalisation_keeps_values_and_flip_reverses() -> None:
    f = setup_filter([[1, 2], [3, 4]], normalize=False, flip_filter=True)
    np.testing.assert_array_equal(f.numpy(), [[4, 3], [2, 1]])
    assert setup_filter(None).numpy().tolist() == [[1.0]]


def test_upsample2d_of_a_constant_is_constant_inside_and_three_quarters_on_the_border() -> None:
    # per axis the filter is [1,3,3,1]/8 with gain 2 (=[1,3,3,1]/4); inside, every output sees taps
    # 1+3 or 3+1 of the zero-inserted signal (4/4); at the border the outer sample is padding, so
    # only the tap of weight 3 hits data: 3/4. Corners get (3/4)^2.
    c = 2.5
    y = upsample2d(torch.full((1, 1, 4, 5), c, dtype=torch.float64), setup_filter([1, 3, 3, 1]))[0, 0].numpy()
    assert y.shape == (8, 10)
    np.testing.assert_allclose(y[1:-1, 1:-1], c, rtol=1e-7)
    for edge in (y[0, 1:-1], y[-1, 1:-1], y[1:-1, 0], y[1:-1, -1]):
        np.testing.assert_allclose(edge, 0.75 * c, rtol=1e-7)
    np.testing.assert_allclose(y[[0, 0, -1, -1], [0, -1, 0, -1]], 0.5625 * c, rtol=1e-7)


@pytest.mark.parametrize("taps", [[1, 3, 3, 1], [1, 2, 1], [1, 1], [1]])
@pytest.mark.parametrize("factor", [2, 4])
def test_upsample2d_and_downsample2d_scale_the_size_exactly(taps: list[int], factor: int) -> None:
    f = setup_filter(taps)
    x = torch.zeros(1, 2, 8, 12)
    assert upsample2d(x, f, up=factor).shape == (1, 2, 8 * factor, 12 * factor)
    assert downsample2d(x, f, down=factor).shape == (1, 2, 8 // factor, 12 // factor)
    assert filter2d(x, f).shape == x.shape
    assert upsample2d(x, f, up=[factor, 1]).shape == (1, 2, 8, 12 * factor)


def test_downsample2d_averages_a_constant_to_the_same_constant_inside() -> None:
    y = downsample2d(torch.full((1, 1, 8, 8), 3.0, dtype=torch.float64), setup_filter([1, 3, 3, 1]))[0, 0]
    np.testing.assert_allclose(y[1:-1, 1:-1].numpy(), 3.0, rtol=1e-7)
    np.testing.assert_allclose(y[0, 1:-1].numpy(), 3.0 * 7 / 8, rtol=1e-7)  # one tap of weight 1 is padding


def test_filter2d_with_odd_filter_is_centred_same_size_convolution() -> None:
    f = _nonsymmetric_filter((3, 3), 4)
    x = np.random.default_rng(12).normal(size=(1, 1, 5, 6))
    got = filter2d(torch.from_numpy(x), torch.from_numpy(f))
    want = numpy_upfirdn2d(x[0, 0], f, (1, 1), (1, 1), (1, 1, 1, 1))
    np.testing.assert_allclose(got[0, 0].numpy(), want, rtol=1e-12)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(up=2, padding=[2, 1, 2, 1]),
        dict(down=2, padding=[1, 0, -1, 2]),
        dict(up=[1, 2], down=[2, 1], flip_filter=True),
    ],
)
def test_upfirdn2d_first_and_second_order_gradients_pass_finite_difference_checks(
    kwargs: dict[str, Any],
) -> None:
    f = torch.from_numpy(_nonsymmetric_filter((3, 2), 5))
    x = torch.from_numpy(np.random.default_rng(13).normal(size=(1, 2, 4, 3))).requires_grad_(True)

    def fn(x_: torch.Tensor) -> torch.Tensor:
        return upfirdn2d(x_, f, **kwargs)

    assert torch.autograd.gradcheck(fn, (x,))
    assert torch.autograd.gradgradcheck(fn, (x,))


def test_bad_padding_and_empty_output_are_rejected_with_explanations() -> None:
    with pytest.raises(ValueError, match=r"\[x0, x1, y0, y1\]"):
        upfirdn2d(torch.zeros(1, 1, 4, 4), None, padding=[1, 2, 3])
    with pytest.raises(ValueError, match="output would be empty"):
        upfirdn2d(torch.zeros(1, 1, 4, 4), None, padding=-2)
    with pytest.raises(ValueError, match="unknown impl"):
        upfirdn2d(torch.zeros(1, 1, 4, 4), None, impl="triton")


class _KernelEmulator:
    """Stands in for the compiled extension on CPU: correlation with a 2-D filter, as the kernel computes."""

    @staticmethod
    def upfirdn2d(
        x: torch.Tensor, g: torch.Tensor, ux: int, uy: int, dx: int, dy: int, *pad: int
    ) -> torch.Tensor:
        out = np.stack(
            [
                numpy_upfirdn2d(plane, g.numpy(), (ux, uy), (dx, dy), pad, flip_filter=True)  # type: ignore[arg-type]
                for plane in x.detach().reshape(-1, *x.shape[2:]).numpy()
            ]
        )
        return torch.from_numpy(out).reshape(*x.shape[:2], *out.shape[1:])


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"up{c['up']}-down{c['down']}-pad{c['pad']}")
def test_fused_path_backward_is_the_adjoint_upfirdn2d(
    case: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    # checks the kernel-side filter preparation and the adjoint's up/down/padding on CPU
    monkeypatch.setattr(upfirdn2d_module._KERNEL, "module", _KernelEmulator())
    x = torch.from_numpy(np.random.default_rng(14).normal(size=(1, 2, 5, 4))).requires_grad_(True)
    f = torch.from_numpy(case["f"])
    flip, gain = case.get("flip_filter", False), case.get("gain", 1.0)
    res = upfirdn2d_module._Resampling(case["up"], case["down"], case["pad"])
    fused = upfirdn2d_module._upfirdn2d_cuda(x, upfirdn2d_module._correlation_filter(f, flip, gain, x), res)
    ref = upfirdn2d(x, f, list(case["up"]), list(case["down"]), list(case["pad"]), flip, gain, impl="ref")
    torch.testing.assert_close(fused, ref)
    (g_fused,) = torch.autograd.grad(fused.square().sum(), x, create_graph=True)
    (g_ref,) = torch.autograd.grad(ref.square().sum(), x, create_graph=True)
    torch.testing.assert_close(g_fused, g_ref)
    (gg_fused,) = torch.autograd.grad(g_fused.square().sum(), x)  # R1-style double backward
    (gg_ref,) = torch.autograd.grad(g_ref.square().sum(), x)
    torch.testing.assert_close(gg_fused, gg_ref)
