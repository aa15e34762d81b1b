"""conv2d_resample equals the plain "zero-insert + FIR, conv2d, FIR + decimate" composition (method §11.5)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gmpi_core.ops.conv2d_resample import conv2d_resample
from gmpi_core.ops.upfirdn2d import downsample2d, setup_filter, upsample2d

TAPS = np.array([1.0, 3.0, 3.0, 1.0])


def _fir_valid(x: torch.Tensor, f2d: torch.Tensor) -> torch.Tensor:
    """Depthwise 'valid' true convolution of every channel with f2d (conv2d correlates, so flip)."""
    c = x.shape[1]
    return F.conv2d(x, f2d.flip([0, 1])[None, None].expand(c, 1, *f2d.shape), groups=c)


def naive_conv2d_resample(
    x: torch.Tensor, w: torch.Tensor, up: int, down: int, groups: int, flip_weight: bool
) -> torch.Tensor:
    """Written out step by step for the [1,3,3,1] filter and 'same' padding k//2 of a k×k kernel."""
    f2d = torch.from_numpy(np.outer(TAPS, TAPS) / TAPS.sum() ** 2).to(x.dtype)
    fw = len(TAPS)
    k = w.shape[-1]
    p0 = p1 = k // 2
    if down > 1:  # padding for the down FIR is added to the input (before any up FIR)
        p0, p1 = p0 + (fw - down + 1) // 2, p1 + (fw - down) // 2
    if up > 1:
        b, c, h, wd = x.shape
        z = torch.zeros(b, c, h * up, wd * up, dtype=x.dtype)
        z[:, :, ::up, ::up] = x
        p0, p1 = p0 + (fw + up - 1) // 2, p1 + (fw - up) // 2
        x = _fir_valid(F.pad(z, [p0, p1, p0, p1]), f2d * up**2)
    else:
        x = F.pad(x, [p0, p1, p0, p1])
    x = F.conv2d(x, w if flip_weight else w.flip([2, 3]), groups=groups)
    if down > 1:
        x = _fir_valid(x, f2d)[:, :, ::down, ::down]
    return x


@pytest.mark.parametrize("up,down", [(2, 1), (1, 2), (2, 2), (1, 1)])
@pytest.mark.parametrize("kernel", [1, 3])
@pytest.mark.parametrize("groups", [1, 2])
@pytest.mark.parametrize("flip_weight", [True, False])
def test_conv2d_resample_equals_naive_composition(
    up: int, down: int, kernel: int, groups: int, flip_weight: bool
) -> None:
    gen = torch.Generator().manual_seed(up * 100 + down * 10 + kernel + groups)
    x = torch.randn(2, 4, 8, 8, generator=gen)
    w = torch.randn(6, 4 // groups, kernel, kernel, generator=gen)
    got = conv2d_resample(
        x,
        w,
        setup_filter(TAPS),
        up=up,
        down=down,
        padding=kernel // 2,
        groups=groups,
        flip_weight=flip_weight,
    )
    want = naive_conv2d_resample(x.double(), w.double(), up, down, groups, flip_weight)
    assert got.shape == (2, 6, 8 * up // down, 8 * up // down)
    torch.testing.assert_close(got.double(), want, rtol=0, atol=1e-5)


def test_identity_kernel_with_up_reduces_to_upsample2d_and_with_down_to_downsample2d() -> None:
    x = torch.randn(1, 3, 6, 6, dtype=torch.float64)
    delta = torch.zeros(3, 3, 3, 3, dtype=torch.float64)
    delta[range(3), range(3), 1, 1] = 1.0
    f = setup_filter(TAPS)
    torch.testing.assert_close(conv2d_resample(x, delta, f, up=2, padding=1), upsample2d(x, f))
    torch.testing.assert_close(conv2d_resample(x, delta, f, down=2, padding=1), downsample2d(x, f))


def test_flip_weight_false_is_a_true_convolution() -> None:
    # a kernel with a single tap at its top-left: correlation shifts content up-left, convolution down-right
    x = torch.zeros(1, 1, 5, 5)
    x[0, 0, 2, 2] = 1.0
    w = torch.zeros(1, 1, 3, 3)
    w[0, 0, 0, 0] = 1.0
    corr = conv2d_resample(x, w, padding=1, flip_weight=True)
    conv = conv2d_resample(x, w, padding=1, flip_weight=False)
    assert corr[0, 0, 3, 3] == 1.0 and corr.sum() == 1.0
    assert conv[0, 0, 1, 1] == 1.0 and conv.sum() == 1.0


def test_asymmetric_padding_without_resampling_pads_before_the_convolution() -> None:
    x = torch.randn(1, 2, 5, 6, dtype=torch.float64)
    w = torch.randn(3, 2, 3, 3, dtype=torch.float64)
    got = conv2d_resample(x, w, padding=[2, 0, -1, 1])
    want = F.conv2d(F.pad(x, [2, 0, 0, 1])[:, :, 1:], w)
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("up,down,kernel", [(2, 1, 3), (1, 2, 3), (1, 1, 3), (2, 1, 1)])
def test_grouped_resampling_conv_supports_double_backward(up: int, down: int, kernel: int) -> None:
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(1, 2, 2, 2, generator=gen, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 1, kernel, kernel, generator=gen, dtype=torch.float64, requires_grad=True)
    f = setup_filter(TAPS).double()

    def fn(x_: torch.Tensor, w_: torch.Tensor) -> torch.Tensor:
        return conv2d_resample(x_, w_, f, up=up, down=down, padding=kernel // 2, groups=2)

    assert torch.autograd.gradgradcheck(fn, (x, w))


def test_channel_mismatch_error_names_the_shapes() -> None:
    with pytest.raises(ValueError, match="groups=2"):
        conv2d_resample(torch.zeros(1, 4, 4, 4), torch.zeros(6, 3, 3, 3), groups=2)
