"""MTCNN face detector with 5-point landmarks (Zhang et al. 2016), the detector of docs/method.md §8.1.

Three cascaded networks — P-Net (fully convolutional 12×12 proposals over an image pyramid), R-Net
(24×24 refinement) and O-Net (48×48 output with landmarks) — with the trained weights shipped inside the
``facenet-pytorch`` wheel (``facenet_pytorch/data/{pnet,rnet,onet}.pt``, converted from the original
Caffe model; array for array the weights of the ipazc ``mtcnn`` package the official code used). Only
those weight files are read; the package itself is never imported (it needs torchvision):

    pip install --no-deps facenet-pytorch

Everything around the networks reproduces the original GMPI's detector — ``mtcnn`` 0.1.1 (TensorFlow) with
OpenCV's INTER_AREA resizing — step for step: uint8 pyramid levels, level sizes, crops, box rounding, NMS
arithmetic and order, and the original's quirks, each marked ``original:`` where it is reproduced. Only
the networks' float32 arithmetic differs (PyTorch vs TensorFlow, ~1e-6), so the landmark files are the
original's unless a value falls within that of a pixel edge or a threshold
(``tests/gmpi_core/preprocess/test_mtcnn_original.py`` compares them with files the original wrote,
``scripts/reference/mtcnn_original.py``).

Coordinates are continuous pixel units with the origin at the top-left corner of the top-left pixel
(pixel ``(i, j)`` covers ``[j, j+1) × [i, i+1)``). Boxes are ``[x1, y1, x2, y2]``. Landmarks are
``box_left + p · box_width`` (and likewise in y) exactly as MTCNN reports them, in its order: left eye,
right eye, nose, mouth left, mouth right — "left" meaning the image's left side. (Inside, the detector
works on the original's 1-based inclusive pixel boxes: see "box geometry".)

    >>> detector = MTCNN.pretrained()
    >>> faces = detector.detect([image_uint8_hw3])[0]          # all faces, best first
    >>> faces.landmarks[0]                                     # [5, 2] (x, y) of the most probable face
"""

from __future__ import annotations

import functools
import importlib.util
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "LANDMARK_NAMES",
    "MTCNN",
    "Detection",
    "FaceDetections",
    "ONet",
    "PNet",
    "RNet",
    "apply_box_regression",
    "area_resample",
    "batched_nms",
    "crop_resize",
    "find_weights_dir",
    "integral_image",
    "nms",
    "pairwise_overlap",
    "pnet_boxes",
    "pyramid_scales",
    "pyramid_size",
    "resize_area_columns",
    "resize_area_u8",
    "snap_to_pixels",
    "square_boxes",
]

LANDMARK_NAMES = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")
WEIGHT_FILES = {"pnet": "pnet.pt", "rnet": "rnet.pt", "onet": "onet.pt"}
INSTALL_HINT = "pip install --no-deps facenet-pytorch"
NmsMode = Literal["union", "min"]

# P-Net is a 12×12 window slid with stride 2 (its one 2×2 max-pool).
PNET_WINDOW = 12
PNET_STRIDE = 2


# --- networks --------------------------------------------------------------------------------------------


def _flatten_transposed(x: Tensor) -> Tensor:
    """[N, C, H, W] → [N, W·H·C] in (W, H, C) order: the dense layers were trained on transposed images
    (the Caffe/MATLAB original is column-major), so their inputs are flattened in that order."""
    return x.permute(0, 3, 2, 1).reshape(x.shape[0], -1)


class PNet(nn.Module):
    """Proposal network: fully convolutional, one output cell per 12×12 window at stride 2.

    forward: image [N, 3, H, W] normalised to ≈[-1, 1] → (face probability [N, H', W'], box offsets
    [N, 4, H', W'] as (dx1, dy1, dx2, dy2) in units of the window size), H' = ⌈(H − 2)/2⌉ − 4."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 10, kernel_size=3)
        self.prelu1 = nn.PReLU(10)
        self.conv2 = nn.Conv2d(10, 16, kernel_size=3)
        self.prelu2 = nn.PReLU(16)
        self.conv3 = nn.Conv2d(16, 32, kernel_size=3)
        self.prelu3 = nn.PReLU(32)
        self.conv4_1 = nn.Conv2d(32, 2, kernel_size=1)  # face / not-face logits
        self.conv4_2 = nn.Conv2d(32, 4, kernel_size=1)  # box regression

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = self.prelu1(self.conv1(x.contiguous(memory_format=torch.channels_last)))  # 2-3× faster on CPU
        x = F.max_pool2d(x, kernel_size=2, stride=2, ceil_mode=True)
        x = self.prelu2(self.conv2(x))
        x = self.prelu3(self.conv3(x))
        prob = torch.softmax(self.conv4_1(x), dim=1)[:, 1]
        return prob, self.conv4_2(x)


class RNet(nn.Module):
    """Refinement network on 24×24 crops.

    forward: crops [N, 3, 24, 24] normalised → (face probability [N], box offsets [N, 4])."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 28, kernel_size=3)
        self.prelu1 = nn.PReLU(28)
        self.conv2 = nn.Conv2d(28, 48, kernel_size=3)
        self.prelu2 = nn.PReLU(48)
        self.conv3 = nn.Conv2d(48, 64, kernel_size=2)
        self.prelu3 = nn.PReLU(64)
        self.dense4 = nn.Linear(3 * 3 * 64, 128)
        self.prelu4 = nn.PReLU(128)
        self.dense5_1 = nn.Linear(128, 2)
        self.dense5_2 = nn.Linear(128, 4)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = x.contiguous(memory_format=torch.channels_last)  # 2-4× faster on CPU
        x = F.max_pool2d(self.prelu1(self.conv1(x)), kernel_size=3, stride=2, ceil_mode=True)
        x = F.max_pool2d(self.prelu2(self.conv2(x)), kernel_size=3, stride=2, ceil_mode=True)
        x = self.prelu3(self.conv3(x))
        x = self.prelu4(self.dense4(_flatten_transposed(x)))
        return torch.softmax(self.dense5_1(x), dim=1)[:, 1], self.dense5_2(x)


class ONet(nn.Module):
    """Output network on 48×48 crops.

    forward: crops [N, 3, 48, 48] normalised → (face probability [N], box offsets [N, 4], landmarks
    [N, 10] = (x1..x5, y1..y5) as fractions of the crop's width and height)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, kernel_size=3)
        self.prelu1 = nn.PReLU(32)
        self.conv2 = nn.Conv2d(32, 64, kernel_size=3)
        self.prelu2 = nn.PReLU(64)
        self.conv3 = nn.Conv2d(64, 64, kernel_size=3)
        self.prelu3 = nn.PReLU(64)
        self.conv4 = nn.Conv2d(64, 128, kernel_size=2)
        self.prelu4 = nn.PReLU(128)
        self.dense5 = nn.Linear(3 * 3 * 128, 256)
        self.prelu5 = nn.PReLU(256)
        self.dense6_1 = nn.Linear(256, 2)
        self.dense6_2 = nn.Linear(256, 4)
        self.dense6_3 = nn.Linear(256, 10)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        x = x.contiguous(memory_format=torch.channels_last)  # 2-4× faster on CPU
        x = F.max_pool2d(self.prelu1(self.conv1(x)), kernel_size=3, stride=2, ceil_mode=True)
        x = F.max_pool2d(self.prelu2(self.conv2(x)), kernel_size=3, stride=2, ceil_mode=True)
        x = F.max_pool2d(self.prelu3(self.conv3(x)), kernel_size=2, stride=2, ceil_mode=True)
        x = self.prelu4(self.conv4(x))
        x = self.prelu5(self.dense5(_flatten_transposed(x)))
        return torch.softmax(self.dense6_1(x), dim=1)[:, 1], self.dense6_2(x), self.dense6_3(x)


def find_weights_dir() -> Path:
    """The folder holding ``pnet.pt``, ``rnet.pt``, ``onet.pt``: ``$GMPI_MTCNN_WEIGHTS`` if set, else the
    ``data/`` folder of the installed facenet-pytorch wheel (located without importing the package)."""
    env = os.environ.get("GMPI_MTCNN_WEIGHTS")
    if env:
        candidates = [Path(env)]
    else:
        spec = importlib.util.find_spec("facenet_pytorch")  # finds a top-level package without running it
        locations = list(spec.submodule_search_locations or []) if spec is not None else []
        candidates = [Path(loc) / "data" for loc in locations]
    for folder in candidates:
        if all((folder / name).is_file() for name in WEIGHT_FILES.values()):
            return folder
    where = f"$GMPI_MTCNN_WEIGHTS={env}" if env else "the facenet-pytorch package"
    raise FileNotFoundError(
        f"MTCNN weights (pnet.pt, rnet.pt, onet.pt) not found in {where}; install them with "
        f"`{INSTALL_HINT}` (only its weight files are used) or set GMPI_MTCNN_WEIGHTS to a folder with them"
    )


# --- OpenCV's INTER_AREA, reproduced (the original resizes everything with cv2.resize(..., INTER_AREA)) ---
#
# cv2.resize measures the scale as 1 / (dst / src) in double precision and then takes one of three paths:
# both scales whole numbers → block sums ("area fast"); both ≥ 1 → true area weights, computed per output
# pixel with float32 weights and 1e-3 tolerances at the cell edges; otherwise (some axis grows) a bilinear
# interpolation with "area" coefficients. Ours follow the same rules with our own code, so that the uint8
# pyramid levels are identical to OpenCV's (4.5.5 and 5.0 checked) and the float64 crops agree to float64
# rounding.


def _opencv_scale(src: int, dst: int) -> float:
    return 1.0 / (dst / src)


def _area_fast(src_hw: tuple[int, int], dst_hw: tuple[int, int]) -> tuple[int, int] | None:
    """(k_y, k_x) when OpenCV's whole-number "area fast" path applies (both scales ≥ 1 and integral)."""
    ks = []
    for src, dst in zip(src_hw, dst_hw):
        scale = _opencv_scale(src, dst)
        k = round(scale)  # saturate_cast<int>: round half to even, as Python's round
        if scale < 1 or abs(scale - k) >= float(np.finfo(np.float64).eps):
            return None
        ks.append(k)
    return ks[0], ks[1]


def _inverse_f32(area: int) -> np.float32:
    """OpenCV's ``1.f/area``: the float32 quotient."""
    return np.float32(1.0) / np.float32(area)


def _area_cells(src: int, dst: int) -> list[tuple[int, int, int, float, float, float]]:
    """OpenCV's area weights along one axis, per output pixel: (first, lo, hi, w_first, w_mid, w_last) = the
    partly covered source pixel ``first`` = lo − 1, the fully covered pixels [lo, hi), the partly covered
    pixel hi — each weight a float32 (0.0: no such tap)."""
    scale = _opencv_scale(src, dst)
    cells = []
    for d in range(dst):
        f1 = d * scale
        f2 = f1 + scale
        cell = min(scale, src - f1)
        hi = min(math.floor(f2), src - 1)
        lo = min(math.ceil(f1), hi)
        # cell edges closer than 1e-3 to a pixel edge ignore the sliver (OpenCV's tolerance)
        w_first = float(np.float32((lo - f1) / cell)) if lo - f1 > 1e-3 else 0.0
        w_mid = float(np.float32(1.0 / cell))
        w_last = float(np.float32(min(f2 - hi, 1.0, cell) / cell)) if f2 - hi > 1e-3 else 0.0
        cells.append((lo - 1, lo, hi, w_first, w_mid, w_last))
    return cells


@functools.lru_cache(maxsize=512)
def _area_taps(src: int, dst: int) -> tuple[Tensor, Tensor]:
    """The same weights as taps in OpenCV's summation order: index [dst, T] long, weight [dst, T] float32
    (padded with weight 0 at index 0)."""
    rows = []
    for first, lo, hi, w_first, w_mid, w_last in _area_cells(src, dst):
        taps = [(first, w_first)] if w_first else []
        taps += [(s, w_mid) for s in range(lo, hi)]
        taps += [(hi, w_last)] if w_last else []
        rows.append(taps)
    width = max(len(t) for t in rows)
    index = torch.zeros(dst, width, dtype=torch.long)
    weight = torch.zeros(dst, width, dtype=torch.float32)
    for d, taps in enumerate(rows):
        for t, (s, w) in enumerate(taps):
            index[d, t], weight[d, t] = s, w
    return index, weight


def resize_area_u8(images: Tensor, out_hw: tuple[int, int]) -> Tensor:
    """``cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA)`` of uint8 images when shrinking,
    reproduced exactly: float32 sums in OpenCV's order, rounded half to even (saturate_cast<uchar>), 2×2
    blocks as (a + b + c + d + 2) >> 2.

    images [B, C, H, W] float32 holding 0..255 integers → [B, C, h, w] float32 holding 0..255 integers."""
    b, c, h, w = images.shape
    out = resize_area_columns(images.permute(3, 2, 0, 1).reshape(w, h, b * c).contiguous(), out_hw)
    return out.reshape(*out_hw, b, c).permute(2, 3, 0, 1)


def resize_area_columns(columns: Tensor, out_hw: tuple[int, int]) -> Tensor:
    """``resize_area_u8`` on images stored column-major, columns [W, H, N] (N = B·C) → [h, w, N]: each tap
    is then a copy of whole rows of memory (transpose once, resize to every pyramid level)."""
    w, h, n = columns.shape
    oh, ow = out_hw
    if oh > h or ow > w:
        raise ValueError(f"resize_area_u8 only shrinks: {h}×{w} → {oh}×{ow}")
    fast = _area_fast((h, w), (oh, ow))
    if fast is not None:  # also the same size: OpenCV copies, blocks of 1 × 1 do too
        ky, kx = fast
        sums = columns[: ow * kx, : oh * ky].reshape(ow, kx, oh, ky, n).to(torch.int64).sum((1, 3))
        if (ky, kx) == (2, 2):
            blocks = ((sums + 2) >> 2).to(torch.float32)
        else:
            blocks = torch.round(sums.to(torch.float32) * float(_inverse_f32(kx * ky))).clamp_(0, 255)
        return blocks.transpose(0, 1)
    ix, wx = _area_taps(w, ow)
    iy, wy = _area_taps(h, oh)
    across = torch.zeros(ow, h, n)
    for t in range(ix.shape[1]):  # one tap at a time: each product and sum rounded to float32 as OpenCV's
        across = across + columns.index_select(0, ix[:, t]) * wx[:, t, None, None]
    across = across.transpose(0, 1).contiguous()  # [H, ow, N]
    out = wy[:, 0, None, None] * across.index_select(0, iy[:, 0])
    for t in range(1, iy.shape[1]):
        out = out + wy[:, t, None, None] * across.index_select(0, iy[:, t])
    return torch.round(out).clamp_(0, 255)  # torch.round: half to even, as cvRound


def _shrink_matrix(n: int, out: int, mode: str) -> Tensor:
    """Shrinking one axis of an ``n``-pixel crop to ``out`` pixels as a matrix [out, n] of OpenCV's weights
    (float32 values in float64): whole-number blocks of ones (``"fast"``) or the area weights."""
    matrix = torch.zeros(out, n, dtype=torch.float64)
    if mode == "fast":
        k = round(_opencv_scale(n, out))
        for d in range(out):
            matrix[d, d * k : d * k + k] = 1.0
        return matrix
    for d, (first, lo, hi, w_first, w_mid, w_last) in enumerate(_area_cells(n, out)):
        if w_first:
            matrix[d, first] = w_first
        matrix[d, lo:hi] = w_mid
        if w_last:
            matrix[d, hi] = w_last
    return matrix


def _linear_axis(n: int, out: int, columns: bool) -> tuple[Tensor, Tensor]:
    """OpenCV's INTER_AREA when some axis grows: per output pixel two source pixels [out, 2] and their
    float32 weights [out, 2] (float64), with OpenCV's "area" coefficients."""
    scale, inv = _opencv_scale(n, out), out / n
    taps, weights = [], []
    for d in range(out):
        s = math.floor(d * scale)
        f = np.float32((d + 1) - (s + 1) * inv)
        f = np.float32(0.0) if f <= 0 else np.float32(f - np.float32(math.floor(f)))
        if columns and s >= n - 1:
            s, f = n - 1, np.float32(0.0)  # the last column alone
        taps.append([s, min(s + 1, n - 1)])  # rows: the row below the last is the last
        weights.append([float(np.float32(1.0) - f), float(f)])
    return torch.tensor(taps, dtype=torch.long), torch.tensor(weights, dtype=torch.float64)


class _CropTable(NamedTuple):
    """How cv2.resize turns a tmph × tmpw crop into size × size. ``linear`` (some axis grows): ``rows`` and
    ``cols`` are two taps per output pixel [size, 2], with their weights [size, 2]. Shrinking: ``rows`` and
    ``cols`` are the weight matrices [size, tmph] and [size, tmpw] (``_shrink_matrix``). ``post``: the final
    factor (``1.f/area`` on OpenCV's whole-number path, else 1)."""

    linear: bool
    rows: Tensor
    row_weights: Tensor
    cols: Tensor
    col_weights: Tensor
    post: float


@functools.lru_cache(maxsize=4096)
def _crop_table(tmph: int, tmpw: int, size: int) -> _CropTable:
    fast = _area_fast((tmph, tmpw), (size, size))
    if fast is None and (tmph < size or tmpw < size):
        ty, wy = _linear_axis(tmph, size, columns=False)
        tx, wx = _linear_axis(tmpw, size, columns=True)
        return _CropTable(True, ty, wy, tx, wx, 1.0)
    mode = "fast" if fast is not None else "area"
    post = float(_inverse_f32(fast[0] * fast[1])) if fast is not None else 1.0
    unused = torch.zeros(0)
    return _CropTable(
        False, _shrink_matrix(tmph, size, mode), unused, _shrink_matrix(tmpw, size, mode), unused, post
    )


def crop_resize(image: Tensor, boxes: Tensor, size: int) -> Tensor:
    """The original's crops: each 1-based inclusive box [X1, Y1, X2, Y2] (whole numbers) cut from the image,
    zero outside it, resized to size × size as ``cv2.resize(float64 crop, INTER_AREA)`` does. Shrinking:
    OpenCV's float32 weights as matrices, applied in float64 (OpenCV's result to float64 rounding; whole-
    number blocks exactly); enlarging: OpenCV's two-tap interpolation in its order (identical).

    image [C, H, W] (0..255), boxes [K, 4] → float64 [K, C, size, size]."""
    c, h, w = image.shape
    boxes = boxes.to(torch.long).reshape(-1, 4)
    out = torch.zeros(boxes.shape[0], c, size, size, dtype=torch.float64)
    if boxes.shape[0] == 0:
        return out
    pixels = image.to(torch.float64)
    dims, inverse = torch.unique(boxes[:, [3, 2]] - boxes[:, [1, 0]] + 1, dim=0, return_inverse=True)
    tables = [_crop_table(th, tw, size) for th, tw in dims.tolist()]
    corners = boxes[:, :2].tolist()
    stretched = []
    for u, ((th, tw), table) in enumerate(zip(dims.tolist(), tables)):
        members = torch.nonzero(inverse == u).flatten().tolist()
        if table.linear:
            stretched += members
            continue
        inside, crops = [], []
        for i in members:
            # crop pixel p is image pixel (X1 − 1) + p; the parts outside the image are zeros
            left, top = corners[i][0] - 1, corners[i][1] - 1
            if top >= 0 and left >= 0 and top + th <= h and left + tw <= w:
                inside.append(i)
                crops.append(pixels[:, top : top + th, left : left + tw])
                continue
            r0, r1, c0, c1 = max(0, -top), min(th, h - top), max(0, -left), min(tw, w - left)
            if r1 > r0 and c1 > c0:
                crop = pixels[:, top + r0 : top + r1, left + c0 : left + c1]
                out[i] = table.rows[:, r0:r1] @ (crop @ table.cols[:, c0:c1].T) * table.post
        # along the rows first, as OpenCV (exact: float32 weights times whole numbers), then down the columns
        if crops:
            out[inside] = table.rows @ (torch.stack(crops) @ table.cols.T) * table.post
    if stretched:
        rows = torch.tensor(stretched)
        picked = [tables[u] for u in inverse[rows].tolist()]
        # crop pixel p is image pixel (X1 − 1) + p
        ty = torch.stack([t.rows for t in picked]) + (boxes[rows, 1] - 1)[:, None, None]
        tx = torch.stack([t.cols for t in picked]) + (boxes[rows, 0] - 1)[:, None, None]
        wy = torch.stack([t.row_weights for t in picked])
        wx = torch.stack([t.col_weights for t in picked])
        out[rows] = _crop_linear(pixels, ty, wy, tx, wx)
    return out


def _crop_linear(pixels: Tensor, ty: Tensor, wy: Tensor, tx: Tensor, wx: Tensor) -> Tensor:
    """Enlarging crops: pixels [C, H, W] float64, two taps [k, size, 2] per output row and column and their
    weights → [k, C, size, size], summed in OpenCV's order (along each row, then down)."""
    c, h, w = pixels.shape
    k, size = ty.shape[:2]
    flat = pixels.permute(1, 2, 0).reshape(h * w, c)  # gathers copy one pixel's channels
    index = ty.clamp(0, h - 1)[:, :, :, None, None] * w + tx.clamp(0, w - 1)[:, None, None, :, :]
    inside = ((ty >= 0) & (ty < h))[:, :, :, None, None] & ((tx >= 0) & (tx < w))[:, None, None, :, :]
    values = flat[index.flatten()].reshape(k, size, 2, size, 2, c)
    values = torch.where(inside[..., None], values, 0.0)  # zero outside the image
    cols = wx[:, None, None, :, :, None]
    across = values[:, :, :, :, 0] * cols[..., 0, :] + values[:, :, :, :, 1] * cols[..., 1, :]
    down = across[:, :, 0] * wy[:, :, 0, None, None] + across[:, :, 1] * wy[:, :, 1, None, None]
    return down.permute(0, 3, 1, 2)


# --- box geometry (pure functions) ---------------------------------------------------------------------
#
# Boxes of the detector are the original's: 1-based pixel indices, inclusive ([X1, Y1, X2, Y2] covers
# pixels X1..X2), float64. Each quirk of mtcnn 0.1.1 that moves a landmark is reproduced and marked
# "original:". In our 0-based continuous coordinates the box is [X1 − 1, Y1 − 1, X2, Y2].


def pyramid_scales(
    height: int, width: int, min_face_size: float = 20.0, factor: float = 0.709
) -> list[float]:
    """Image-pyramid scales: a face of ``min_face_size`` px becomes P-Net's 12 px window at the first
    scale 12/min_face_size; each next scale is ``factor`` times smaller while the short side stays ≥ 12
    (the short side multiplied by ``factor`` step by step, as the original)."""
    first = PNET_WINDOW / min_face_size
    short = min(height, width) * first
    scales = []
    k = 0
    while short >= PNET_WINDOW:
        scales.append(first * factor**k)
        short = short * factor
        k += 1
    return scales


def pyramid_size(height: int, width: int, scale: float) -> tuple[int, int]:
    """Size (h, w) of pyramid level ``scale``: ⌈h·s⌉ × ⌈w·s⌉ (original: ceil, not ⌊h·s + 1⌋ — they differ
    when h·s is a whole number, e.g. a side that is a multiple of 5 at s = 0.6)."""
    return math.ceil(height * scale), math.ceil(width * scale)


def pnet_boxes(prob: Tensor, offsets: Tensor, scale: float, threshold: float) -> Tensor:
    """Candidate boxes of one image's pyramid level at ``scale``.

    prob [H', W'] float32, offsets [4, H', W'] → float64 [K, 9] rows (X1, Y1, X2, Y2, score, dx1, dy1, dx2,
    dy2) for every cell with prob ≥ threshold (compared in float32), in the original's order: by column,
    then by row. Cell (i, j) is the 12×12 window mapped back to 1-based pixels X1 = fix((2j + 1)/s),
    X2 = fix((2j + 12)/s)."""
    j, i = torch.nonzero(prob.transpose(0, 1) >= threshold, as_tuple=True)  # by column, as the original
    # original: when a level has exactly one cell above the threshold it flips its transposed regression
    # maps upside down first, and so reads the offsets of the cell mirrored left-right
    reg = offsets[:, i, prob.shape[1] - 1 - j if i.numel() == 1 else j]
    cell = torch.stack([j, i], dim=1).to(torch.float64)
    q1 = torch.trunc((PNET_STRIDE * cell + 1) / scale)
    q2 = torch.trunc((PNET_STRIDE * cell + PNET_WINDOW) / scale)
    return torch.cat([q1, q2, prob[i, j, None].double(), reg.T.double()], dim=1)


def apply_box_regression(boxes: Tensor, offsets: Tensor, inclusive: bool = False) -> Tensor:
    """Refined boxes: each edge moves by its offset times the box's width (x) or height (y), the width
    being x2 − x1 (+ 1 with ``inclusive``, for 1-based inclusive boxes).

    boxes [K, 4] (x1, y1, x2, y2), offsets [K, 4] (dx1, dy1, dx2, dy2) → [K, 4]."""
    size = (boxes[:, 2:4] - boxes[:, 0:2] + (1 if inclusive else 0)).repeat(1, 2)
    return boxes + offsets * size


def square_boxes(boxes: Tensor) -> Tensor:
    """The square with the box's centre and side l = max(x2 − x1, y2 − y1): x1' = x1 + (x2 − x1)/2 − l/2,
    x2' = x1' + l (the original's arithmetic, in its order). boxes [K, 4] → [K, 4]."""
    size = boxes[:, 2:4] - boxes[:, 0:2]
    side = size.max(dim=1, keepdim=True).values
    corner = boxes[:, 0:2] + size * 0.5 - side * 0.5
    return torch.cat([corner, corner + side], dim=1)


def snap_to_pixels(boxes: Tensor) -> Tensor:
    """Corners truncated to whole pixels, toward zero (original: ``np.fix`` of 1-based corners; a box past
    the top/left edge has corners ≤ 0, which move right/down, not left/up as with floor). [K, 4] → [K, 4]."""
    return torch.trunc(boxes)


def pairwise_overlap(a: Tensor, b: Tensor, mode: NmsMode, inclusive: bool = False) -> Tensor:
    """Overlap of every box of ``a`` [K, 4] with every box of ``b`` [M, 4]: intersection over union
    (``"union"``) or over the smaller of the two areas (``"min"``). → [K, M].

    ``inclusive``: 1-based inclusive boxes, every extent + 1 — exactly the original's arithmetic (no other
    guard: a degenerate box gives what the original gets)."""
    lo = torch.maximum(a[:, None, :2], b[None, :, :2])
    hi = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    if inclusive:
        inter = (hi - lo + 1).clamp(min=0).prod(dim=2)
        area_a = ((a[:, 2] - a[:, 0] + 1) * (a[:, 3] - a[:, 1] + 1))[:, None]
        area_b = ((b[:, 2] - b[:, 0] + 1) * (b[:, 3] - b[:, 1] + 1))[None, :]
        return inter / (area_a + area_b - inter if mode == "union" else torch.minimum(area_a, area_b))
    inter = (hi - lo).clamp(min=0).prod(dim=2)
    area_a = (a[:, 2:] - a[:, :2]).clamp(min=0).prod(dim=1)[:, None]
    area_b = (b[:, 2:] - b[:, :2]).clamp(min=0).prod(dim=1)[None, :]
    denom = area_a + area_b - inter if mode == "union" else torch.minimum(area_a, area_b)
    return inter / denom.clamp(min=torch.finfo(denom.dtype).tiny)


def nms(
    boxes: Tensor,
    scores: Tensor,
    threshold: float,
    mode: NmsMode = "union",
    max_matrix: int = 2048,
    inclusive: bool = False,
) -> Tensor:
    """Greedy non-maximum suppression: repeatedly keep the highest-scoring remaining box and drop every
    remaining box whose overlap with it (``pairwise_overlap``) is not ≤ ``threshold``.

    boxes [K, 4], scores [K] → indices [M] of the kept boxes, by decreasing score. Equal scores are taken in
    the reverse of numpy's default ``argsort`` order of the float64 scores, as the original does (its
    quicksort is not stable: the order among ties depends on the numpy build). Up to ``max_matrix`` boxes
    the K × K overlaps are computed at once, beyond that one row per kept box."""
    if mode not in ("union", "min"):
        raise ValueError(f"unknown NMS mode '{mode}'; choose one of union, min")
    if scores.numel() == 0:
        return torch.zeros(0, dtype=torch.long)
    order = torch.from_numpy(np.argsort(scores.detach().double().cpu().numpy())[::-1].copy())
    boxes = boxes[order]
    keep = []
    remaining = torch.arange(order.numel())
    suppress = (
        ~(pairwise_overlap(boxes, boxes, mode, inclusive) <= threshold)
        if order.numel() <= max_matrix
        else None
    )
    while remaining.numel() > 0:
        best = remaining[0]
        keep.append(best)
        rest = remaining[1:]
        if suppress is not None:
            remaining = rest[~suppress[best, rest]]
        else:
            remaining = rest[
                pairwise_overlap(boxes[best][None], boxes[rest], mode, inclusive)[0] <= threshold
            ]
    return order[torch.stack(keep)]


def batched_nms(
    boxes: Tensor, scores: Tensor, groups: Tensor, threshold: float, mode: NmsMode = "union"
) -> Tensor:
    """``nms`` within each group independently (boxes of different groups never suppress each other).

    boxes [K, 4], scores [K], groups [K] int → kept indices [M] by decreasing score."""
    kept = [
        members[nms(boxes[members], scores[members], threshold, mode)]
        for members in (torch.nonzero(groups == g).flatten() for g in torch.unique(groups))
    ]
    if not kept:
        return torch.zeros(0, dtype=torch.long)
    keep = torch.cat(kept)
    return keep[torch.sort(scores[keep], descending=True, stable=True).indices]


# --- resampling (pure functions) -----------------------------------------------------------------------


def integral_image(images: Tensor) -> Tensor:
    """Summed-area table: images [B, C, H, W] → float64 [B, C, H+1, W+1], S[..., y, x] = Σ I[..., :y, :x]."""
    b, c, h, w = images.shape
    table = torch.zeros(b, c, h + 1, w + 1, dtype=torch.float64)  # 8 bytes per pixel and channel
    table[:, :, 1:, 1:] = images
    return table.cumsum_(dim=2).cumsum_(dim=3)  # the zero first row and column stay zero


def area_resample(integral: Tensor, boxes: Tensor, out_hw: tuple[int, int]) -> Tensor:
    """Exact box-filter (area) resampling of rectangles with real-valued corners (a general tool; the
    detector uses ``resize_area_u8`` and ``crop_resize``, which follow OpenCV's rounding instead).

    The image is piecewise constant, so its integral is bilinear inside each pixel: sampling the
    summed-area table bilinearly at the corners of every output cell gives the exact mean over the
    cell. Parts of a box outside the image count as 0 (zero padding).

    integral [B, C, H+1, W+1] (``integral_image``), boxes [B, K, 4] (x1, y1, x2, y2) in pixels →
    [B, K, C, out_h, out_w] float32."""
    b, c, hp1, wp1 = integral.shape
    k = boxes.shape[1]
    oh, ow = out_hw
    boxes = boxes.to(torch.float64)
    tx = torch.linspace(0, 1, ow + 1, dtype=torch.float64)
    ty = torch.linspace(0, 1, oh + 1, dtype=torch.float64)
    xs = boxes[..., 0:1] + (boxes[..., 2:3] - boxes[..., 0:1]) * tx  # [B, K, ow+1]
    ys = boxes[..., 1:2] + (boxes[..., 3:4] - boxes[..., 1:2]) * ty  # [B, K, oh+1]
    # grid_sample with align_corners=True: −1 ↔ table index 0 (pixel edge 0), +1 ↔ index W (edge W)
    gx = (2 * xs / (wp1 - 1) - 1)[:, :, None, :].expand(b, k, oh + 1, ow + 1)
    gy = (2 * ys / (hp1 - 1) - 1)[:, :, :, None].expand(b, k, oh + 1, ow + 1)
    grid = torch.stack([gx, gy], dim=-1).reshape(b, k * (oh + 1), ow + 1, 2)
    s = F.grid_sample(integral, grid, mode="bilinear", padding_mode="border", align_corners=True)
    s = s.reshape(b, c, k, oh + 1, ow + 1).permute(0, 2, 1, 3, 4)
    sums = s[..., 1:, 1:] - s[..., :-1, 1:] - s[..., 1:, :-1] + s[..., :-1, :-1]
    cell = ((boxes[..., 2] - boxes[..., 0]) / ow * (boxes[..., 3] - boxes[..., 1]) / oh).clamp(min=1e-12)
    return (sums / cell[:, :, None, None, None]).to(torch.float32)


def normalise_pixels(x: Tensor) -> Tensor:
    """uint8-range pixels → MTCNN's input range: (x − 127.5) · 0.0078125 (exact in float32 and float64)."""
    return (x - 127.5) * 0.0078125


# --- detector ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Detection:
    """One face: ``box`` float [4] (x1, y1, x2, y2), ``prob`` in [0, 1], ``landmarks`` float [5, 2] (x, y) in
    ``LANDMARK_NAMES`` order."""

    box: np.ndarray
    prob: float
    landmarks: np.ndarray


@dataclass(frozen=True)
class FaceDetections:
    """All faces of one image, most probable first: ``boxes`` [K, 4], ``probs`` [K], ``landmarks`` [K, 5, 2]
    (float64 numpy; K may be 0)."""

    boxes: np.ndarray
    probs: np.ndarray
    landmarks: np.ndarray

    def __len__(self) -> int:
        return len(self.probs)

    def first(self) -> Detection | None:
        """The most probable face, or None if there is none."""
        if len(self) == 0:
            return None
        return Detection(self.boxes[0].copy(), float(self.probs[0]), self.landmarks[0].copy())


class MTCNN(nn.Module):
    """The three-stage cascade, step for step as mtcnn 0.1.1 (the original GMPI's detector). Images are
    processed as a batch: P-Net runs once per pyramid level on all images of the same size, R-Net and
    O-Net once per stage on the crops of all images; boxes and NMS are per image, in float64.

    ``min_face_size``: smallest face searched for (px); ``scale_factor``: pyramid step; ``thresholds``:
    face-probability thresholds of P-, R-, O-Net; ``nms_thresholds``: overlap thresholds of the NMS within
    a pyramid level, across levels, after R-Net (all IoU) and after O-Net (intersection over the smaller
    box); ``max_batch``: most crops per R/O-Net forward (bounds memory)."""

    def __init__(
        self,
        min_face_size: float = 20.0,
        scale_factor: float = 0.709,
        thresholds: Sequence[float] = (0.6, 0.7, 0.7),
        nms_thresholds: Sequence[float] = (0.5, 0.7, 0.7, 0.7),
        max_batch: int = 2048,
    ) -> None:
        super().__init__()
        if not 0.0 < scale_factor < 1.0:
            raise ValueError(f"scale_factor must be in (0, 1) (pyramid step), got {scale_factor}")
        if min_face_size < PNET_WINDOW:
            raise ValueError(
                f"min_face_size must be ≥ {PNET_WINDOW} px (P-Net's window), got {min_face_size}"
            )
        if len(thresholds) != 3 or len(nms_thresholds) != 4:
            raise ValueError(
                f"need 3 thresholds (P, R, O-Net) and 4 NMS thresholds, got {thresholds}, {nms_thresholds}"
            )
        self.min_face_size = float(min_face_size)
        self.scale_factor = float(scale_factor)
        self.thresholds = tuple(float(t) for t in thresholds)
        self.nms_thresholds = tuple(float(t) for t in nms_thresholds)
        self.max_batch = int(max_batch)
        self.pnet = PNet()
        self.rnet = RNet()
        self.onet = ONet()
        self.eval()

    def extra_repr(self) -> str:
        return (
            f"min_face_size={self.min_face_size}, scale_factor={self.scale_factor}, "
            f"thresholds={self.thresholds}, nms_thresholds={self.nms_thresholds}"
        )

    @classmethod
    def pretrained(cls, weights_dir: str | os.PathLike[str] | None = None, **kwargs: Any) -> MTCNN:
        """The detector with the trained weights (``find_weights_dir`` unless ``weights_dir`` is given);
        ``kwargs`` go to the constructor."""
        folder = Path(weights_dir) if weights_dir is not None else find_weights_dir()
        model = cls(**kwargs)
        for attr, name in WEIGHT_FILES.items():
            state = torch.load(folder / name, map_location="cpu", weights_only=True)
            getattr(model, attr).load_state_dict(state, strict=True)
        return model.eval()

    # -- stages --

    def _propose(self, batch: Tensor) -> list[Tensor]:
        """Stage 1 on same-size images (float32 [B, 3, H, W] of 0..255 integers) → per image the candidate
        boxes [K, 4] (1-based inclusive, whole numbers, float64)."""
        b, c, h, w = batch.shape
        columns = batch.permute(3, 2, 0, 1).reshape(w, h, b * c).contiguous()  # see resize_area_columns
        per_image: list[list[Tensor]] = [[] for _ in range(b)]
        for scale in pyramid_scales(h, w, self.min_face_size, self.scale_factor):
            # original: each level is a uint8 image (cv2.resize INTER_AREA, rounded), not float averages
            lh, lw = pyramid_size(h, w, scale)
            level = resize_area_columns(columns, (lh, lw)).reshape(lh, lw, b, c).permute(2, 3, 0, 1)
            prob, offsets = self.pnet(normalise_pixels(level))
            for i in range(b):
                cand = pnet_boxes(prob[i], offsets[i], scale, self.thresholds[0])
                per_image[i].append(
                    cand[nms(cand[:, :4], cand[:, 4], self.nms_thresholds[0], inclusive=True)]
                )
        proposals = []
        for levels in per_image:
            cand = torch.cat(levels) if levels else torch.zeros(0, 9, dtype=torch.float64)
            cand = cand[nms(cand[:, :4], cand[:, 4], self.nms_thresholds[1], inclusive=True)]
            # original: stage 1 measures its 1-based boxes as x2 − x1 (one pixel less than stages 2 and 3)
            boxes = square_boxes(apply_box_regression(cand[:, :4], cand[:, 5:9], inclusive=False))
            proposals.append(_croppable(snap_to_pixels(boxes)))  # original: np.fix, toward zero
        return proposals

    def _run(
        self, net: nn.Module, images: list[Tensor], boxes: list[Tensor], size: int
    ) -> list[list[Tensor]]:
        """``net`` on the size × size crops of every image's boxes → per image its outputs."""
        crops = [crop_resize(image, b, size) for image, b in zip(images, boxes)]
        x = normalise_pixels(torch.cat(crops)).to(torch.float32)  # original: float64 crops, fed as float32
        outs = [net(x[a : a + self.max_batch]) for a in range(0, x.shape[0], self.max_batch)]
        merged = [torch.cat(parts) for parts in zip(*outs)] if outs else []
        counts = [int(b.shape[0]) for b in boxes]
        return [list(parts) for parts in zip(*(m.split(counts) for m in merged))] if merged else []

    def _refine(self, images: list[Tensor], boxes: list[Tensor]) -> list[Tensor]:
        """Stage 2: R-Net on 24×24 crops → per image the refined square boxes (float64, 1-based)."""
        if sum(b.shape[0] for b in boxes) == 0:
            return boxes
        refined = []
        for cand, (prob, offsets) in zip(boxes, self._run(self.rnet, images, boxes, 24)):
            ok = prob > self.thresholds[1]  # float32 comparison, as the original's numpy
            cand, score, reg = cand[ok], prob[ok].double(), offsets[ok].double()
            keep = nms(cand, score, self.nms_thresholds[2], inclusive=True)
            refined.append(square_boxes(apply_box_regression(cand[keep], reg[keep], inclusive=True)))
        return refined

    def _output(self, images: list[Tensor], boxes: list[Tensor]) -> list[FaceDetections]:
        """Stage 3: O-Net on 48×48 crops → per image the faces, in the original's order (its NMS order)."""
        boxes = [_croppable(snap_to_pixels(b)) for b in boxes]  # original: np.fix, toward zero
        if sum(b.shape[0] for b in boxes) == 0:
            return [_no_faces() for _ in boxes]
        results = []
        for cand, (prob, offsets, points) in zip(boxes, self._run(self.onet, images, boxes, 48)):
            ok = prob > self.thresholds[2]
            cand, score, reg, points = cand[ok], prob[ok].double(), offsets[ok].double(), points[ok].double()
            size = cand[:, 2:4] - cand[:, 0:2] + 1
            # original: w·p + X1 − 1 in float64, stored in float32 (the files hold int() of that)
            landmarks = torch.stack([points[:, :5], points[:, 5:]], dim=2) * size[:, None] + cand[:, None, :2]
            landmarks = (landmarks - 1).to(torch.float32).double()
            regressed = apply_box_regression(cand, reg, inclusive=True)
            keep = nms(regressed, score, self.nms_thresholds[3], mode="min", inclusive=True)
            corners = regressed[keep] - torch.tensor([1.0, 1.0, 0.0, 0.0], dtype=torch.float64)  # 0-based
            results.append(FaceDetections(corners.numpy(), score[keep].numpy(), landmarks[keep].numpy()))
        return results

    @torch.no_grad()
    def detect(self, images: Sequence[np.ndarray]) -> list[FaceDetections]:
        """Faces in each image (uint8 [H, W, 3] RGB; sizes may differ), most probable first."""
        tensors = [_image_tensor(im, i) for i, im in enumerate(images)]
        by_size: dict[tuple[int, int], list[int]] = {}
        for i, t in enumerate(tensors):
            by_size.setdefault((t.shape[1], t.shape[2]), []).append(i)
        proposals: list[Tensor] = [torch.empty(0)] * len(tensors)
        for members in by_size.values():
            for i, boxes in zip(members, self._propose(torch.stack([tensors[i] for i in members]))):
                proposals[i] = boxes
        return self._output(tensors, self._refine(tensors, proposals))


def _croppable(boxes: Tensor) -> Tensor:
    """Boxes [K, 4] (1-based inclusive) at least one pixel wide and high. A regression can turn a box
    inside out; the original then fails on the whole image (a numpy error or no face), we drop the box."""
    return boxes[(boxes[:, 2] >= boxes[:, 0]) & (boxes[:, 3] >= boxes[:, 1])]


def _no_faces() -> FaceDetections:
    return FaceDetections(np.zeros((0, 4)), np.zeros(0), np.zeros((0, 5, 2)))


def _image_tensor(image: np.ndarray, position: int) -> Tensor:
    """uint8 [H, W, 3] → float32 [3, H, W] in 0..255 (with a clear error for anything else)."""
    arr = np.asarray(image)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(
            f"image {position} must be RGB uint8 [H, W, 3], got {arr.dtype} {arr.shape}; convert it with "
            f"np.asarray(PIL.Image.open(path).convert('RGB'))"
        )
    return torch.from_numpy(arr.astype(np.float32)).permute(2, 0, 1)  # astype copies (read-only inputs)


@functools.lru_cache(maxsize=1)
def default_detector() -> MTCNN:
    """The pretrained detector with the standard settings, loaded once per process."""
    return MTCNN.pretrained()


def detect_landmarks(images: Sequence[np.ndarray]) -> list[Detection | None]:
    """The most probable face of each image (uint8 [H, W, 3] RGB) with its 5 landmarks, or None."""
    return [faces.first() for faces in default_detector().detect(images)]
