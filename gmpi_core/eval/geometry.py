"""Geometry metrics: z-scored depth error (docs/method.md §9.3), pose error (docs/method.md §9.4) and the
pose-matched pseudo ground truth of the synthetic heads.

    >>> err = zscored_depth_mse(gmpi_depth, reference_depth, face_mask)   # [B], NaN where nothing to compare
    >>> MetricSummary.of(err)                                             # mean ± std over the finite ones
    >>> table = PoseMatchedDepth("data/synth64")                          # loads depth/ and mask/ once
    >>> ref = table.lookup(yaw=0.1, pitch=-0.05)                          # mean GT depth within ±0.05 rad

The depth error is invariant to positive affine maps of either depth (a·d + b, a > 0), so it compares
shape only. Up to the 1e-8 in the z-score it equals 2·(1 − ρ), ρ the Pearson correlation of the two maps
inside the mask: a perfect prediction scores 0, an inverted one 4, an uncorrelated one 2, and a flat
(constant) one exactly 1 (its z-score is 0) — anything with ρ < 1/2 scores worse than flat. Because
each map is divided by its own standard deviation, a nearly constant map is dominated by its rounding
noise (a "flat" plane that varies by 1e-7 scores about 2, not 1): give truly flat depths as constants.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath
from typing import Literal, NamedTuple

import numpy as np
import PIL.Image
import torch
from torch import Tensor

__all__ = [
    "DEFAULT_MIN_COUNT",
    "MASK_THRESHOLD",
    "MIN_GMPI_DEPTH",
    "POSE_TOLERANCE",
    "ZSCORE_EPS",
    "MetricSummary",
    "PoseMatchedDepth",
    "PoseMatchedReference",
    "pose_error",
    "pose_matched_reference",
    "zscore_masked",
    "zscored_depth_mse",
]

ZSCORE_EPS = 1e-8  # added to the standard deviation (docs/method.md §9.3 step 4)
MIN_GMPI_DEPTH = 1e-8  # GMPI depth below this is "no depth" (the zero padding of the aligned crop, §9.3)
POSE_TOLERANCE = 0.05  # rad: training views within ±tol of a yaw AND a pitch are averaged
DEFAULT_MIN_COUNT = 8  # fewer matching training views: no reference (empty metric mask, image skipped)
MASK_THRESHOLD = 0.5  # a pixel is "face" when at least half of the matching views call it face


# -- depth error (method §9.3) ---------------------------------------------------------------------------


def zscore_masked(values: Tensor, mask: Tensor) -> Tensor:
    """Per row, (v − mean_M v) / (std_M v + 1e-8) over the pixels of ``mask``; 0 outside it (method §9.3).

    values [B, P] float, mask [B, P] bool → [B, P] float64. Population std (divides by |M|); a row with an
    empty mask gives NaN everywhere. Values outside the mask are never read (they may be NaN or inf).
    """
    v = torch.where(mask, values.to(torch.float64), 0.0)
    n = mask.sum(-1, keepdim=True).to(torch.float64)  # [B, 1]
    mean = v.sum(-1, keepdim=True) / n
    centred = torch.where(mask, v - mean, 0.0)
    std = (centred.square().sum(-1, keepdim=True) / n).sqrt()
    return centred / (std + ZSCORE_EPS)


def zscored_depth_mse(
    pred: Tensor,
    ref: Tensor,
    mask: Tensor,
    *,
    gmpi_depth_arg: Literal["pred", "ref"] = "pred",
) -> Tensor:
    """§9.3 step 4: per image, mean over M of (ẑ_pred − ẑ_ref)², ẑ = z-score over M (``zscore_masked``).

    pred, ref [B, H, W] depth maps; mask [B, H, W] bool (the face region). M = mask ∧ (GMPI depth ≥ 1e-8),
    where ``gmpi_depth_arg`` names the argument that holds the GMPI depth (the official script requires
    its aligned GMPI depth to be positive, Deep3DFace's depth is not checked). Returns [B] float64 errors;
    an image whose M is empty gets NaN — count the skipped ones with ``MetricSummary.of`` (``n_skipped``).
    """
    if gmpi_depth_arg not in ("pred", "ref"):
        raise ValueError(f"unknown gmpi_depth_arg '{gmpi_depth_arg}'; choose 'pred' or 'ref'")
    if pred.ndim != 3 or pred.shape != ref.shape or pred.shape != mask.shape:
        raise ValueError(
            f"pred, ref and mask must all be [B, H, W] of one shape, got {tuple(pred.shape)}, "
            f"{tuple(ref.shape)} and {tuple(mask.shape)}; add a batch axis for single images"
        )
    if mask.dtype != torch.bool:
        raise ValueError(f"mask must be a bool tensor, got {mask.dtype}; pass e.g. mask > 0.5")
    gmpi_depth = pred if gmpi_depth_arg == "pred" else ref
    m = (mask & (gmpi_depth >= MIN_GMPI_DEPTH)).flatten(1)  # NaN depth fails the test: excluded
    z_pred = zscore_masked(pred.flatten(1), m)
    z_ref = zscore_masked(ref.flatten(1), m)
    return torch.where(m, z_pred - z_ref, 0.0).square().sum(-1) / m.sum(-1)  # 0/0 = NaN for an empty M


# -- pose error (method §9.4) ----------------------------------------------------------------------------


def pose_error(est_angle: Tensor, pitch: Tensor, yaw: Tensor) -> Tensor:
    """docs/method.md §9.4: (1/3)‖â − (pitch, −yaw, 0)‖² in rad² per image.

    est_angle [B, 3] Deep3DFace Euler angles (x, y, z) estimated from the render; pitch, yaw [B] the GMPI
    camera angles it was rendered at (docs/method.md §1.7: Deep3DFace's y-rotation is −yaw, roll should be 0).
    """
    if est_angle.ndim != 2 or est_angle.shape[-1] != 3:
        raise ValueError(
            f"est_angle must be [B, 3] (Deep3DFace angles x, y, z), got {tuple(est_angle.shape)}"
        )
    pitch, yaw = pitch.reshape(-1).to(est_angle), yaw.reshape(-1).to(est_angle)
    if not pitch.shape[0] == yaw.shape[0] == est_angle.shape[0]:
        raise ValueError(
            f"need one pitch and one yaw per estimated angle: {est_angle.shape[0]} angles, "
            f"{pitch.shape[0]} pitches, {yaw.shape[0]} yaws"
        )
    target = torch.stack([pitch, -yaw, torch.zeros_like(yaw)], dim=-1)
    return (est_angle - target).square().mean(-1)


# -- summaries -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MetricSummary:
    """Mean and population std over the finite per-image errors; NaN entries count as skipped images."""

    mean: float
    std: float
    n_used: int
    n_skipped: int

    @classmethod
    def of(cls, errors: Tensor) -> MetricSummary:
        e = errors.detach().reshape(-1).to(torch.float64).cpu()
        ok = torch.isfinite(e)
        used = e[ok]
        n = int(used.numel())
        mean = float(used.mean()) if n else math.nan
        std = float(used.std(correction=0)) if n else math.nan
        return cls(mean=mean, std=std, n_used=n, n_skipped=int(e.numel()) - n)

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)

    def __str__(self) -> str:
        return f"{self.mean:.4f} ± {self.std:.4f} (n={self.n_used}, skipped {self.n_skipped})"


# -- pose-matched ground truth of the synthetic heads ---------------------------------------------------


class PoseMatchedReference(NamedTuple):
    """Mean ground truth over the training views near one pose: ``depth`` [H, W] float32 (NaN when
    ``n_views`` is 0), ``mean_mask`` [H, W] float32 = fraction of those views whose face covers each pixel."""

    depth: Tensor
    mean_mask: Tensor
    n_views: int

    def metric_mask(self, min_count: int = DEFAULT_MIN_COUNT, threshold: float = MASK_THRESHOLD) -> Tensor:
        """bool [H, W]: mean_mask ≥ threshold, or all False when fewer than ``min_count`` views matched
        (too few heads for a meaningful average: the image is then skipped by ``zscored_depth_mse``)."""
        if self.n_views < min_count:
            return torch.zeros(self.mean_mask.shape, dtype=torch.bool)
        return self.mean_mask >= threshold


class PoseMatchedDepth:
    """The ground-truth depth and face masks of a synthetic dataset in memory, averaged on demand over the
    views within ±``tol`` rad of a query's yaw AND pitch (all heads share one layout, so the average is a
    meaningful pseudo ground truth for any head at that pose).

    ``dataset_dir``: the output of ``gmpi_core.data.synthetic.synthesize_dataset`` — ``poses.json``
    (``{"poses": {member: {"yaw", "pitch"}}, "fail_list": [...]}``, members in the fail list are left
    out), ``depth/<member stem>.npy`` (float32 [H, W] camera z-depth) and ``mask/<member stem>.png``
    (0/255). Memory: 5·H·W bytes per view (20,000 views at 64²: 410 MB).
    """

    def __init__(
        self,
        dataset_dir: str | os.PathLike[str],
        tol: float = POSE_TOLERANCE,
        *,
        min_count: int = DEFAULT_MIN_COUNT,
        mask_threshold: float = MASK_THRESHOLD,
    ) -> None:
        if not tol > 0:
            raise ValueError(f"tol must be a positive angle in radians, got {tol}")
        if min_count < 1:
            raise ValueError(f"min_count must be >= 1 (views per reference), got {min_count}")
        self.root = Path(dataset_dir)
        self.tol = float(tol)
        self.min_count = int(min_count)
        self.mask_threshold = float(mask_threshold)
        self.members, yaw, pitch = _read_pose_table(self.root)
        depths, masks = [], []
        for member in self.members:
            stem = PurePosixPath(member).with_suffix("").as_posix()
            depths.append(_load_depth(self.root / "depth" / f"{stem}.npy"))
            masks.append(_load_mask(self.root / "mask" / f"{stem}.png"))
        shapes = {d.shape for d in depths} | {m.shape for m in masks}
        if len(shapes) != 1:
            raise ValueError(
                f"{self.root}: depth and mask maps differ in size ({sorted(shapes)}); regenerate it"
            )
        self.depth = torch.from_numpy(np.stack(depths))  # [K, H, W] float32
        self.mask = torch.from_numpy(np.stack(masks))  # [K, H, W] bool
        self.yaw = torch.tensor(yaw, dtype=torch.float64)  # [K]
        self.pitch = torch.tensor(pitch, dtype=torch.float64)  # [K]

    def __len__(self) -> int:
        return len(self.members)

    @property
    def resolution(self) -> tuple[int, int]:
        return int(self.depth.shape[1]), int(self.depth.shape[2])

    def matches(self, yaw: float, pitch: float) -> Tensor:
        """bool [K]: the views with |yaw_k − yaw| ≤ tol and |pitch_k − pitch| ≤ tol."""
        return ((self.yaw - yaw).abs() <= self.tol) & ((self.pitch - pitch).abs() <= self.tol)

    def lookup(self, yaw: float, pitch: float, *, exclude: int | None = None) -> PoseMatchedReference:
        """Mean depth and mean mask of the matching views; ``exclude`` leaves view index k out (to score a
        training view against the others)."""
        sel = self.matches(float(yaw), float(pitch))
        if exclude is not None:
            sel[exclude] = False
        count = int(sel.sum())
        if count == 0:
            h, w = self.resolution
            return PoseMatchedReference(torch.full((h, w), math.nan), torch.zeros(h, w), 0)
        depth = self.depth[sel].to(torch.float64).mean(0).to(torch.float32)
        mean_mask = self.mask[sel].to(torch.float64).mean(0).to(torch.float32)
        return PoseMatchedReference(depth, mean_mask, count)

    def references(
        self, yaw: Sequence[float] | Tensor, pitch: Sequence[float] | Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """For B poses: (mean depth [B, H, W], metric mask [B, H, W] bool, count [B] int64), the mask
        per ``PoseMatchedReference.metric_mask`` with this table's ``min_count`` and threshold."""
        yaw_t = torch.as_tensor(yaw, dtype=torch.float64).reshape(-1)
        pitch_t = torch.as_tensor(pitch, dtype=torch.float64).reshape(-1)
        if yaw_t.shape != pitch_t.shape:
            raise ValueError(f"need as many yaws as pitches, got {yaw_t.numel()} and {pitch_t.numel()}")
        refs = [self.lookup(float(y), float(p)) for y, p in zip(yaw_t, pitch_t)]
        depth = torch.stack([r.depth for r in refs])
        mask = torch.stack([r.metric_mask(self.min_count, self.mask_threshold) for r in refs])
        return depth, mask, torch.tensor([r.n_views for r in refs], dtype=torch.int64)


def pose_matched_reference(
    dataset_dir: str | os.PathLike[str], yaw: float, pitch: float, tol: float = POSE_TOLERANCE
) -> PoseMatchedReference:
    """One-off ``PoseMatchedDepth(dataset_dir, tol).lookup(yaw, pitch)`` → (mean_depth [H, W], mean_mask
    [H, W] float, count). Loads the whole dataset: for many poses build one ``PoseMatchedDepth``."""
    return PoseMatchedDepth(dataset_dir, tol).lookup(yaw, pitch)


def _read_pose_table(root: Path) -> tuple[list[str], list[float], list[float]]:
    path = root / "poses.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found; pass the folder written by `gmpi data synth --out DIR` (it holds poses.json, "
            "depth/ and mask/)"
        )
    data = json.loads(path.read_text(encoding="utf-8"))
    poses = data.get("poses") if isinstance(data, dict) else None
    if not isinstance(poses, dict) or not poses:
        raise ValueError(f'{path} has no poses; expected {{"poses": {{member: {{"yaw": .., "pitch": ..}}}}}}')
    failed = set(data.get("fail_list", []))
    members, yaw, pitch = [], [], []
    for member in sorted(poses):
        if member in failed:
            continue
        entry = poses[member]
        if not isinstance(entry, dict) or "yaw" not in entry or "pitch" not in entry:
            raise ValueError(f"{path}: pose of {member!r} needs 'yaw' and 'pitch' (radians), got {entry!r}")
        members.append(member)
        yaw.append(float(entry["yaw"]))
        pitch.append(float(entry["pitch"]))
    if not members:
        raise ValueError(f"{path}: every view is in the fail list; nothing to average")
    return members, yaw, pitch


def _load_depth(path: Path) -> np.ndarray:
    if not path.is_file():
        raise FileNotFoundError(f"ground-truth depth {path} is missing; the synthetic dataset is incomplete")
    depth = np.load(path)
    if depth.ndim != 2:
        raise ValueError(f"{path}: expected a [H, W] depth map, got shape {depth.shape}")
    return depth.astype(np.float32, copy=False)


def _load_mask(path: Path) -> np.ndarray:
    if not path.is_file():
        raise FileNotFoundError(f"face mask {path} is missing; the synthetic dataset is incomplete")
    with PIL.Image.open(path) as im:
        return np.asarray(im.convert("L")) >= 128
