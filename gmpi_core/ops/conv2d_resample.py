"""2-D convolution with optional FIR up/downsampling, StyleGAN2 semantics (docs/method.md §4.1, §11.5).

Meaning (what every path below computes, up to float rounding), with ``P`` the user padding plus the
``upsample2d``/``downsample2d`` padding rule for the filter size (fw, fh):

    up > 1:    x <- upfirdn2d(x, f, up=up, padding=P, gain=up**2)     (else: x <- pad(x, P))
               x <- conv2d(x, w, groups)                              (no padding of its own)
    down > 1:  x <- upfirdn2d(x, f, down=down)

so with ``padding = k // 2`` a k×k kernel maps H×W to (H·up/down)×(W·up/down). The fast paths use a
transposed stride-``up`` convolution (= zero insertion + convolution) or a strided convolution
(= convolution + decimation), which is exact because FIR filtering and convolution commute.

``flip_weight=True`` (default) means ``conv2d``'s usual correlation; ``False`` a true convolution.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from gmpi_core.ops.upfirdn2d import Padding, _filter_size, _parse_padding, upfirdn2d

__all__ = ["conv2d_resample"]


def conv2d_resample(
    x: Tensor,
    w: Tensor,
    f: Tensor | None = None,
    up: int = 1,
    down: int = 1,
    padding: Padding = 0,
    groups: int = 1,
    flip_weight: bool = True,
    flip_filter: bool = False,
) -> Tensor:
    """Convolve ``x`` [B, Cin, H, W] with ``w`` [Cout, Cin/groups, kh, kw], resampling with FIR ``f``.

    ``f`` from ``setup_filter`` (``None`` = identity); ``padding`` an int, [x, y] or [x0, x1, y0, y1]
    (extra to the resampling padding, see module doc). Returns [B, Cout, H', W'].
    """
    _check_args(x, w, up, down, groups)
    kh, kw = w.shape[2], w.shape[3]
    fw, fh = _filter_size(f)
    px0, px1, py0, py1 = _parse_padding(padding)
    if up > 1:  # upsample2d's padding rule
        px0, px1 = px0 + (fw + up - 1) // 2, px1 + (fw - up) // 2
        py0, py1 = py0 + (fh + up - 1) // 2, py1 + (fh - up) // 2
    if down > 1:  # downsample2d's padding rule
        px0, px1 = px0 + (fw - down + 1) // 2, px1 + (fw - down) // 2
        py0, py1 = py0 + (fh - down + 1) // 2, py1 + (fh - down) // 2
    pad = [px0, px1, py0, py1]
    pointwise = kh == 1 and kw == 1

    if pointwise and down > 1 and up == 1:  # decimate first: the 1×1 conv then runs on fewer pixels
        x = upfirdn2d(x, f, down=down, padding=pad, flip_filter=flip_filter)
        return _conv2d(x, w, groups=groups, flip_weight=flip_weight)

    if pointwise and up > 1 and down == 1:  # 1×1 conv first, on fewer pixels, then upsample
        x = _conv2d(x, w, groups=groups, flip_weight=flip_weight)
        return upfirdn2d(x, f, up=up, padding=pad, gain=up**2, flip_filter=flip_filter)

    if down > 1 and up == 1:  # FIR first, then conv + decimate as one strided conv
        x = upfirdn2d(x, f, padding=pad, flip_filter=flip_filter)
        return _conv2d(x, w, stride=down, groups=groups, flip_weight=flip_weight)

    if up > 1:
        # conv_transpose2d(stride=up, padding=0) = zero insertion, pad (k-1 before, k-up after) and a
        # true convolution; the rest of P becomes padding (or cropping) of its output before the FIR.
        px0, px1, py0, py1 = px0 - (kw - 1), px1 - (kw - up), py0 - (kh - 1), py1 - (kh - up)
        crop_x, crop_y = max(min(-px0, -px1), 0), max(min(-py0, -py1), 0)  # symmetric part done by convT
        x = _conv2d(
            x,
            _transpose_weight(w, groups),
            stride=up,
            padding=(crop_y, crop_x),
            groups=groups,
            flip_weight=not flip_weight,  # conv_transpose2d already convolves (flips)
            transpose=True,
        )
        pad = [px0 + crop_x, px1 + crop_x, py0 + crop_y, py1 + crop_y]
        x = upfirdn2d(x, f, padding=pad, gain=up**2, flip_filter=flip_filter)
        if down > 1:
            x = upfirdn2d(x, f, down=down, flip_filter=flip_filter)
        return x

    if px0 == px1 and py0 == py1 and px0 >= 0 and py0 >= 0:  # plain conv2d handles symmetric padding
        return _conv2d(x, w, padding=(py0, px0), groups=groups, flip_weight=flip_weight)
    x = upfirdn2d(x, None, padding=pad)  # asymmetric or negative padding
    return _conv2d(x, w, groups=groups, flip_weight=flip_weight)


def _check_args(x: Tensor, w: Tensor, up: int, down: int, groups: int) -> None:
    if x.ndim != 4 or w.ndim != 4:
        raise ValueError(
            f"conv2d_resample: x must be [B, Cin, H, W] and w [Cout, Cin/groups, kh, kw], "
            f"got {tuple(x.shape)} and {tuple(w.shape)}"
        )
    if groups < 1 or x.shape[1] != w.shape[1] * groups or w.shape[0] % groups != 0:
        raise ValueError(
            f"conv2d_resample: with groups={groups}, x channels ({x.shape[1]}) must equal "
            f"w.shape[1]*groups ({w.shape[1]}*{groups}) and w.shape[0] ({w.shape[0]}) be divisible by groups"
        )
    if not (isinstance(up, int) and isinstance(down, int) and up >= 1 and down >= 1):
        raise ValueError(f"conv2d_resample: up and down must be positive ints, got up={up}, down={down}")


def _transpose_weight(w: Tensor, groups: int) -> Tensor:
    """[Cout, Cin/g, kh, kw] -> [Cin, Cout/g, kh, kw], the layout conv_transpose2d expects per group."""
    out_channels, in_per_group, kh, kw = w.shape
    w = w.reshape(groups, out_channels // groups, in_per_group, kh, kw).transpose(1, 2)
    return w.reshape(groups * in_per_group, out_channels // groups, kh, kw)


def _conv2d(
    x: Tensor,
    w: Tensor,
    stride: int = 1,
    padding: int | tuple[int, int] = 0,
    groups: int = 1,
    flip_weight: bool = True,
    transpose: bool = False,
) -> Tensor:
    if not flip_weight:  # conv2d correlates; a true convolution needs the flipped kernel
        w = w.flip([2, 3])
    if transpose:
        return F.conv_transpose2d(x, w, stride=stride, padding=padding, groups=groups)
    return F.conv2d(x, w, stride=stride, padding=padding, groups=groups)
