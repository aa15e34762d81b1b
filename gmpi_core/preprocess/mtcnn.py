"""MTCNN face detector with 5-point landmarks (Zhang et al. 2016), the detector of spec §8.1.

Three cascaded networks — P-Net (fully convolutional 12×12 proposals over an image pyramid), R-Net
(24×24 refinement) and O-Net (48×48 output with landmarks) — with the trained weights shipped inside the
``facenet-pytorch`` wheel (``facenet_pytorch/data/{pnet,rnet,onet}.pt``, converted from the original
Caffe model; the same model as the ipazc ``mtcnn`` package the official code used). Only those weight
files are read; the package itself is never imported (it needs torchvision):

    pip install --no-deps facenet-pytorch

Coordinates are continuous pixel units with the origin at the top-left corner of the top-left pixel
(pixel ``(i, j)`` covers ``[j, j+1) × [i, i+1)``). Boxes are ``[x1, y1, x2, y2]``. Landmarks are
``box_left + p · box_width`` (and likewise in y) exactly as MTCNN reports them, in its order: left eye,
right eye, nose, mouth left, mouth right — "left" meaning the image's left side.

    >>> detector = MTCNN.pretrained()
    >>> faces = detector.detect([image_uint8_hw3])[0]          # all faces, best first
    >>> faces.landmarks[0]                                     # [5, 2] (x, y) of the most probable face
"""

from __future__ import annotations

import functools
import importlib.util
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

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
    "find_weights_dir",
    "integral_image",
    "nms",
    "pairwise_overlap",
    "pnet_boxes",
    "pyramid_scales",
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


# --- box geometry (pure functions) ---------------------------------------------------------------------


def pyramid_scales(
    height: int, width: int, min_face_size: float = 20.0, factor: float = 0.709
) -> list[float]:
    """Image-pyramid scales: a face of ``min_face_size`` px becomes P-Net's 12 px window at the first
    scale 12/min_face_size; each next scale is ``factor`` times smaller while the short side stays ≥ 12."""
    first = PNET_WINDOW / min_face_size
    short = min(height, width) * first
    scales = []
    k = 0
    while short * factor**k >= PNET_WINDOW:
        scales.append(first * factor**k)
        k += 1
    return scales


def pyramid_size(height: int, width: int, scale: float) -> tuple[int, int]:
    """Size (h, w) of pyramid level ``scale``: ⌊h·s + 1⌋ × ⌊w·s + 1⌋, as MTCNN resizes."""
    return int(height * scale + 1), int(width * scale + 1)


def pnet_boxes(prob: Tensor, offsets: Tensor, scale: float, threshold: float) -> Tensor:
    """Candidate boxes from the pyramid level at ``scale``.

    prob [N, H', W'], offsets [N, 4, H', W'] → [K, 10] rows (image index, x1, y1, x2, y2, score, dx1, dy1,
    dx2, dy2) for every cell with prob ≥ threshold. The box is the cell's 12×12 window mapped back to the
    image with MTCNN's own (1-based, MATLAB) rounding: first pixel ⌊(2j + 1)/s⌋, last pixel ⌊(2j + 12)/s⌋.
    In our 0-based edges that is x1 = ⌊(2j + 1)/s⌋ − 1, x2 = ⌊(2j + 12)/s⌋; it sits up to 1/s − 1 px inside
    the exact window on the left/top, and we keep it because the later stages were tuned on it (using the
    exact window moves the astronaut's final box top by 4 px and its landmarks by 1 px)."""
    n, i, j = torch.nonzero(prob >= threshold, as_tuple=True)
    x1 = torch.floor((PNET_STRIDE * j + 1).to(prob.dtype) / scale) - 1
    y1 = torch.floor((PNET_STRIDE * i + 1).to(prob.dtype) / scale) - 1
    x2 = torch.floor((PNET_STRIDE * j + PNET_WINDOW).to(prob.dtype) / scale)
    y2 = torch.floor((PNET_STRIDE * i + PNET_WINDOW).to(prob.dtype) / scale)
    reg = offsets[n, :, i, j]
    return torch.cat([torch.stack([n.to(prob.dtype), x1, y1, x2, y2, prob[n, i, j]], dim=1), reg], dim=1)


def apply_box_regression(boxes: Tensor, offsets: Tensor) -> Tensor:
    """Refined boxes: each edge moves by its offset times the box's width (x) or height (y).

    boxes [K, 4] (x1, y1, x2, y2), offsets [K, 4] (dx1, dy1, dx2, dy2) → [K, 4]."""
    size = (boxes[:, 2:4] - boxes[:, 0:2]).repeat(1, 2)
    return boxes + offsets * size


def square_boxes(boxes: Tensor) -> Tensor:
    """The square with the box's centre and side max(width, height). boxes [K, 4] → [K, 4]."""
    centre = (boxes[:, 0:2] + boxes[:, 2:4]) / 2
    half = (boxes[:, 2:4] - boxes[:, 0:2]).max(dim=1, keepdim=True).values / 2
    return torch.cat([centre - half, centre + half], dim=1)


def snap_to_pixels(boxes: Tensor) -> Tensor:
    """Corners moved down to whole pixels: MTCNN's crops are whole-pixel windows. [K, 4] → [K, 4]."""
    return torch.floor(boxes)


def pairwise_overlap(a: Tensor, b: Tensor, mode: NmsMode) -> Tensor:
    """Overlap of every box of ``a`` [K, 4] with every box of ``b`` [M, 4]: intersection over union
    (``"union"``) or over the smaller of the two areas (``"min"``). → [K, M]."""
    lo = torch.maximum(a[:, None, :2], b[None, :, :2])
    hi = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (hi - lo).clamp(min=0).prod(dim=2)
    area_a = (a[:, 2:] - a[:, :2]).clamp(min=0).prod(dim=1)[:, None]
    area_b = (b[:, 2:] - b[:, :2]).clamp(min=0).prod(dim=1)[None, :]
    denom = area_a + area_b - inter if mode == "union" else torch.minimum(area_a, area_b)
    return inter / denom.clamp(min=torch.finfo(denom.dtype).tiny)


def nms(
    boxes: Tensor, scores: Tensor, threshold: float, mode: NmsMode = "union", max_matrix: int = 2048
) -> Tensor:
    """Greedy non-maximum suppression: repeatedly keep the highest-scoring remaining box and drop every
    remaining box whose overlap with it (``pairwise_overlap``) exceeds ``threshold``.

    boxes [K, 4], scores [K] → indices [M] of the kept boxes, by decreasing score (ties: lower index).
    Up to ``max_matrix`` boxes the K × K overlaps are computed at once, beyond that one row per kept box."""
    if mode not in ("union", "min"):
        raise ValueError(f"unknown NMS mode '{mode}'; choose one of union, min")
    order = torch.sort(scores, descending=True, stable=True).indices
    boxes = boxes[order]
    keep = []
    remaining = torch.arange(order.numel())
    suppress = pairwise_overlap(boxes, boxes, mode) > threshold if order.numel() <= max_matrix else None
    while remaining.numel() > 0:
        best = remaining[0]
        keep.append(best)
        rest = remaining[1:]
        if suppress is not None:
            remaining = rest[~suppress[best, rest]]
        else:
            remaining = rest[pairwise_overlap(boxes[best][None], boxes[rest], mode)[0] <= threshold]
    return order[torch.stack(keep)] if keep else torch.zeros(0, dtype=torch.long)


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
    """Exact box-filter (area) resampling of rectangles, as cv2's INTER_AREA does when shrinking.

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
    """uint8-range pixels → MTCNN's input range: (x − 127.5) / 128."""
    return (x - 127.5) / 128.0


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
    """The three-stage cascade. Images are processed as a batch: P-Net runs once per pyramid level on all
    images of the same size, R-Net and O-Net once per stage on the crops of all images.

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

    def _propose(self, integral: Tensor) -> Tensor:
        """Stage 1 on same-size images (``integral_image`` [B, 3, H+1, W+1] of 0..255 pixels) → candidates
        [K, 5] (image, x1, y1, x2, y2)."""
        b, h, w = integral.shape[0], integral.shape[2] - 1, integral.shape[3] - 1
        per_level = []
        for scale in pyramid_scales(h, w, self.min_face_size, self.scale_factor):
            lh, lw = pyramid_size(h, w, scale)
            full = torch.tensor([0.0, 0.0, w, h], dtype=torch.float64).expand(b, 1, 4)
            level = area_resample(integral, full, (lh, lw))[:, 0]
            prob, offsets = self.pnet(normalise_pixels(level))
            cand = pnet_boxes(prob, offsets, scale, self.thresholds[0])
            keep = batched_nms(cand[:, 1:5], cand[:, 5], cand[:, 0].long(), self.nms_thresholds[0])
            per_level.append(cand[keep])
        cand = torch.cat(per_level) if per_level else torch.zeros(0, 10)
        keep = batched_nms(cand[:, 1:5], cand[:, 5], cand[:, 0].long(), self.nms_thresholds[1])
        cand = cand[keep]
        boxes = snap_to_pixels(square_boxes(apply_box_regression(cand[:, 1:5], cand[:, 6:10])))
        return _non_empty(torch.cat([cand[:, :1], boxes], dim=1))

    def _crops(self, integrals: list[Tensor], cand: Tensor, size: int) -> Tensor:
        """Normalised crops [K, 3, size, size] of candidates [K, 5] (image, box) from per-image integrals."""
        out = torch.zeros(cand.shape[0], 3, size, size)
        index = cand[:, 0].long()
        for i, integral in enumerate(integrals):
            rows = torch.nonzero(index == i).flatten()
            if rows.numel():
                out[rows] = area_resample(integral, cand[rows, 1:5][None], (size, size))[0]
        return normalise_pixels(out)

    def _chunked(self, net: nn.Module, crops: Tensor) -> list[Tensor]:
        outs = [net(crops[a : a + self.max_batch]) for a in range(0, crops.shape[0], self.max_batch)]
        return [torch.cat(parts) for parts in zip(*outs)]

    def _refine(self, integrals: list[Tensor], cand: Tensor) -> Tensor:
        """Stage 2: R-Net on 24×24 crops → surviving candidates [K', 5]."""
        if cand.shape[0] == 0:
            return cand
        prob, offsets = self._chunked(self.rnet, self._crops(integrals, cand, 24))
        ok = prob > self.thresholds[1]
        cand, prob, offsets = cand[ok], prob[ok], offsets[ok]
        keep = batched_nms(cand[:, 1:5], prob, cand[:, 0].long(), self.nms_thresholds[2])
        cand, offsets = cand[keep], offsets[keep]
        boxes = snap_to_pixels(square_boxes(apply_box_regression(cand[:, 1:5], offsets)))
        return _non_empty(torch.cat([cand[:, :1], boxes], dim=1))

    def _output(self, integrals: list[Tensor], cand: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Stage 3: O-Net on 48×48 crops → (image index [M], boxes [M, 4], probs [M], landmarks [M, 5, 2])."""
        if cand.shape[0] == 0:
            return cand[:, 0].long(), cand[:, 1:5], cand[:, 0], cand.new_zeros(0, 5, 2)
        prob, offsets, points = self._chunked(self.onet, self._crops(integrals, cand, 48))
        ok = prob > self.thresholds[2]
        cand, prob, offsets, points = cand[ok], prob[ok], offsets[ok], points[ok]
        boxes = cand[:, 1:5]
        size = boxes[:, 2:4] - boxes[:, 0:2]
        landmarks = boxes[:, None, 0:2] + torch.stack([points[:, :5], points[:, 5:]], dim=2) * size[:, None]
        boxes = apply_box_regression(boxes, offsets)
        keep = batched_nms(boxes, prob, cand[:, 0].long(), self.nms_thresholds[3], mode="min")
        return cand[keep, 0].long(), boxes[keep], prob[keep], landmarks[keep]

    @torch.no_grad()
    def detect(self, images: Sequence[np.ndarray]) -> list[FaceDetections]:
        """Faces in each image (uint8 [H, W, 3] RGB; sizes may differ), most probable first."""
        tensors = [_image_tensor(im, i) for i, im in enumerate(images)]
        by_size: dict[tuple[int, int], list[int]] = {}
        for i, t in enumerate(tensors):
            by_size.setdefault((t.shape[1], t.shape[2]), []).append(i)
        integrals: list[Tensor] = [torch.empty(0)] * len(tensors)
        proposals = []
        for members in by_size.values():
            batch = integral_image(torch.stack([tensors[i] for i in members]))
            cand = self._propose(batch)
            cand[:, 0] = torch.tensor(members, dtype=cand.dtype)[cand[:, 0].long()]
            proposals.append(cand)
            for k, i in enumerate(members):
                integrals[i] = batch[k : k + 1]
        cand = torch.cat(proposals) if proposals else torch.zeros(0, 5)
        index, boxes, probs, landmarks = self._output(integrals, self._refine(integrals, cand))
        results = []
        for i in range(len(tensors)):
            rows = torch.nonzero(index == i).flatten()
            rows = rows[torch.sort(probs[rows], descending=True, stable=True).indices]
            results.append(
                FaceDetections(
                    boxes[rows].double().numpy(),
                    probs[rows].double().numpy(),
                    landmarks[rows].double().numpy(),
                )
            )
        return results


def _non_empty(cand: Tensor) -> Tensor:
    """Candidates [K, 5] (image, x1, y1, x2, y2) whose box has positive width and height (a regression can
    turn a box inside out)."""
    return cand[(cand[:, 3] > cand[:, 1]) & (cand[:, 4] > cand[:, 2])]


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
