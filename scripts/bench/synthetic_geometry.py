"""Geometry benchmark on the synthetic heads: does GMPI learn the depth of the faces it draws?

Trains on the synthetic heads at 64² for a fixed training-time budget, in two stages as the method does
(docs/method.md §0, §4.5): a plain 2D StyleGAN2 (``--two-d-fraction`` of the budget, at StyleGAN2's lr 0.002,
``--two-d-lr``), then GMPI initialised from it (the rest, at the preset's lr: 0.001 for the synthetic
presets, half the official rate, which is tuned for 64 images per step over 8 GPUs). Then, for fresh
latents rendered at random prior poses (docs/method.md §1.4), it reports the depth error of docs/method.md
§9.3 (z-scored MSE inside a face mask) between each render's MPI depth and the pose-matched ground truth: the
mean true depth map and face mask of the training views within ±0.05 rad of the same yaw AND pitch
(``gmpi_core.eval.geometry.PoseMatchedDepth``; all heads share one layout, so this pseudo ground truth
is meaningful). Rows of the final table:

* GMPI — the EMA generator, 32 planes (``cfg.eval.n_planes``), rendered at 64² with depth.
* flat, camera-facing — the 2D stage's image as one opaque plane facing the camera: constant depth, so
  exactly 1.0 by construction of the metric; measured with the same code as a check.
* flat, world plane — the 2D stage's image on the frontmost MPI plane, all alphas 1 (the official
  ``stylegan2_sanity_check`` of docs/method.md §9.1): a plane fixed in the world, seen from the rotated
  camera. Its depth is a ramp along the pose, and the metric equals 2(1 − ρ) with ρ the correlation inside the
  mask; the face's curvature dominates its tilt, so ρ is small and this row scores *above* 1 (and near
  the frontal pose, where the ramp is rounding noise, close to 2).
* control — fresh true heads turned into 32-plane MPIs (each texel opaque when it lies behind the head's
  surface seen from the frontal camera) and rendered like GMPI: what a generator with the right geometry
  scores through the same renderer and metric, and a check of the pose and depth conventions end to end.
* oracle — true depth maps of training views against the pose-matched mean of the *other* views: the
  floor set by the spread of head shapes.

Target: GMPI depth error ≤ 0.5 (half the flat baseline). Also the curve of the GMPI error over stage-2
steps on the first ``--curve-latents`` of the evaluation set.

Image quality (docs/method.md §9.2): FID and KID of ``--fid-images`` GMPI renders at random prior poses, and
of as many 2D-stage images, against as many *held-out* synthetic heads (dataset seed 1: identities and poses
never trained on), TF-Inception features as ``gmpi eval`` computes them (real features cached). With a
few hundred images FID is biased upwards (KID is not): compare rows of one report, not with papers.
``--fid-images 0`` skips it.

    python scripts/bench/synthetic_geometry.py --budget-min 30 --out runs/geometry     # the benchmark
    python scripts/bench/synthetic_geometry.py --quick --out runs/geometry-quick       # ~3 min smoke run

The budget counts training only (optimiser steps and checkpoints); dataset synthesis, loading the ground
truth and evaluations are timed and reported separately. Steps per budget depend on the machine and on
it being quiet: with other processes on the cores, torch's multi-threaded kernels slow down several-fold
(``--threads 1`` then helps), and 2-core machines of the same kind have differed 2.5–3.4× in step time;
``report.json`` records steps, seconds and threads. ``--reference-clock`` makes the budget
machine-independent: it trains the step counts the reference machine trains in ``--budget-min``
(``REFERENCE_S_PER_STEP``), and ``--steps N1 N2`` fixes them directly:

    python scripts/bench/synthetic_geometry.py --reference-clock --budget-min 30 --out runs/geometry

Rerunning with the same ``--out`` resumes: the Trainer continues from its latest checkpoint and
``progress.json`` holds the training time spent up to it; a larger budget or step count extends stage 2.
Outputs in ``--out``: ``report.json``, ``curve.csv``, ``curve.png``, ``samples.png`` (rows: GMPI render,
its depth, the pose-matched GT depth, the 2D stage's image; depths z-scored inside the metric mask as the
metric sees them, near = bright, grey outside), ``stage1/`` and ``stage2/`` (Trainer outputs).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import math
import os
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

from gmpi_core.camera import sample_sphere_poses
from gmpi_core.config import ExperimentConfig, preset
from gmpi_core.eval.geometry import MetricSummary, PoseMatchedDepth, zscore_masked, zscored_depth_mse
from gmpi_core.pipeline import GMPI, MPI, plane_layout
from gmpi_core.render.io import grid, save_png, to_uint8
from gmpi_core.train.loop import Trainer

RESOLUTION = 64
PRESET = "synthetic64"
EVAL_SEED0 = 10_000  # latents of the evaluation set: torch.manual_seed(10_000 + i) (method §9.1 style)
POSE_SEED = 20_000  # generator seed of the evaluation poses
HELDOUT_SEED = 1  # dataset seed of the FID/KID reals (training data is seed 0)
NOISE_SEED = 30_000  # synthesis noise of the evaluation renders (fixed: the curve is not noisy by noise)
TARGET = 0.5
# Seconds per training step of the two stages on the reference machine (the 2-core machine with 2 torch
# threads, run r2 of EXPERIMENTS.md: 1025 steps in 450 s, 1908 steps in 1350 s). ``--reference-clock``
# turns a time budget into step counts with them, so a slower machine trains exactly as much.
REFERENCE_S_PER_STEP = (0.439, 0.708)


def reference_steps(stage1_s: float, stage2_s: float) -> list[int]:
    """Steps the reference machine trains in ``stage1_s`` and ``stage2_s`` seconds (at least one each)."""
    return [max(1, round(t / s)) for t, s in zip((stage1_s, stage2_s), REFERENCE_S_PER_STEP, strict=True)]


_BIG = 10**9  # max_steps / ckpt_every of the Trainers: this script decides when to stop and save


# -- bookkeeping ---------------------------------------------------------------------------------------


class Progress:
    """``progress.json``: training seconds spent at each checkpointed step, stage completion, the curve."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.data: dict[str, Any] = {"stage1": {}, "stage2": {}, "curve": []}
        if path.is_file():
            self.data.update(json.loads(path.read_text(encoding="utf-8")))
        for stage in ("stage1", "stage2"):
            self.data[stage].setdefault("elapsed_at_step", {})
            self.data[stage].setdefault("done", False)

    def save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1) + "\n", encoding="utf-8")
        os.replace(tmp, self.path)

    def elapsed_at(self, stage: str, step: int) -> float:
        """Training seconds of ``stage`` at checkpoint ``step`` (the newest record at or before it)."""
        records = {int(k): float(v) for k, v in self.data[stage]["elapsed_at_step"].items()}
        earlier = [s for s in records if s <= step]
        return records[max(earlier)] if earlier else 0.0

    def last_recorded_step(self, stage: str) -> int:
        return max((int(k) for k in self.data[stage]["elapsed_at_step"]), default=-1)

    def record(self, stage: str, step: int, elapsed: float) -> None:
        self.data[stage]["elapsed_at_step"][str(step)] = elapsed
        self.save()

    def curve(self, up_to_step: int) -> list[dict[str, float]]:
        """Curve points of stage 2 up to ``up_to_step`` (later ones belong to an interrupted run)."""
        kept = [p for p in self.data["curve"] if p["step"] <= up_to_step]
        self.data["curve"] = kept
        return kept


@dataclass
class EvalSet:
    """Seeds and prior poses of the evaluation renders (the curve uses the first ``n_curve``)."""

    seeds: list[int]
    yaw: Tensor  # [n]
    pitch: Tensor  # [n]

    @classmethod
    def build(
        cls, cfg: ExperimentConfig, n: int, seed0: int = EVAL_SEED0, pose_seed: int = POSE_SEED
    ) -> EvalSet:
        """Latent seeds seed0 … seed0 + n − 1 at n prior poses drawn with ``pose_seed``."""
        cam = cfg.camera
        g = torch.Generator().manual_seed(pose_seed)
        yaw, pitch = sample_sphere_poses(
            n, cam.yaw_std, cam.pitch_std, cam.truncation_k, cam.yaw_mean, cam.pitch_mean, g
        )
        return cls(list(range(seed0, seed0 + n)), yaw, pitch)

    def head(self, n: int) -> EvalSet:
        return EvalSet(self.seeds[:n], self.yaw[:n], self.pitch[:n])


@dataclass
class Rendered:
    """Per-view results of one evaluation: errors [n] (NaN = skipped), images [n,3,H,W], depths [n,H,W]."""

    errors: Tensor
    images: Tensor
    depths: Tensor


# -- evaluation ----------------------------------------------------------------------------------------


def ema_pipeline(trainer: Trainer) -> GMPI:
    """The trainer's EMA generator as a pipeline (the weights ``export_model`` would write, in memory)."""
    with torch.no_grad():
        trainer.ema.copy_to(trainer.G_ema.parameters())
        for dst, src in zip(trainer.G_ema.buffers(), trainer.G.buffers(), strict=True):
            dst.copy_(src)
    return GMPI(trainer.G_ema, trainer.cfg)  # type: ignore[arg-type]


@torch.no_grad()
def render_chunks(
    gmpi: GMPI, ev: EvalSet, n_planes: int, size: int, noise_seed: int, chunk: int = 32
) -> Iterator[tuple[Tensor, Tensor]]:
    """(image [c, 3, S, S] in [−1, 1], depth [c, S, S]) on the CPU for consecutive chunks of ``ev``; the
    synthesis noise is one stream seeded with ``noise_seed`` in a forked RNG state."""
    devices = [gmpi.device] if gmpi.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(noise_seed)
        for i in range(0, len(ev.seeds), chunk):
            mpi = gmpi.generate(seeds=ev.seeds[i : i + chunk], n_planes=n_planes)
            image, depth = gmpi.render(mpi, ev.yaw[i : i + chunk], ev.pitch[i : i + chunk], size=size)
            yield image.float().cpu(), depth[:, 0].float().cpu()


@torch.no_grad()
def two_d_images(gmpi: GMPI, two_d: torch.nn.Module, seeds: list[int]) -> Tensor:
    """The 2D stage's images [n, 3, R, R] in [−1, 1] for the latents of ``seeds`` (constant noise)."""
    z = gmpi.latents(seeds).to(next(two_d.parameters()).device)
    return two_d(z, truncation_psi=1.0, noise_mode="const").float()


def evaluate_gmpi(
    gmpi: GMPI, ev: EvalSet, table: PoseMatchedDepth, n_planes: int, chunk: int = 32
) -> tuple[Rendered, Tensor, Tensor]:
    """GMPI renders of the evaluation set and their depth errors; also (reference depth, metric mask)."""
    ref, mask, _ = table.references(ev.yaw, ev.pitch)
    images, depths = [], []
    for image, depth in render_chunks(gmpi, ev, n_planes, table.resolution[0], NOISE_SEED, chunk):
        images.append(image)
        depths.append(depth)
    depth_all = torch.cat(depths)
    return Rendered(zscored_depth_mse(depth_all, ref, mask), torch.cat(images), depth_all), ref, mask


@torch.no_grad()
def evaluate_flat(
    gmpi: GMPI, two_d: torch.nn.Module, ev: EvalSet, table: PoseMatchedDepth, n_planes: int, chunk: int = 32
) -> tuple[Rendered, Rendered]:
    """The 2D stage's images as (camera-facing plane, frontmost world plane of the MPI) and their errors."""
    ref, mask, _ = table.references(ev.yaw, ev.pitch)
    size = table.resolution[0]
    cam = gmpi.config.camera
    dhw, depth_norm = plane_layout(cam, n_planes)
    images, plane_depths = [], []
    for i in range(0, len(ev.seeds), chunk):
        image = two_d_images(gmpi, two_d, ev.seeds[i : i + chunk])
        # method §9.1 sanity check: every plane = the 2D image with alpha 1, so the frontmost one is seen
        rgba = torch.cat([(image + 1) / 2, torch.ones_like(image[:, :1])], 1).clamp(0, 1)
        rgba = rgba[:, None].expand(-1, n_planes, -1, -1, -1).contiguous()
        mpi = MPI(
            rgba=rgba.to(gmpi.device), plane_dhw=dhw.to(gmpi.device), depth_norm=depth_norm.to(gmpi.device)
        )
        _, depth = gmpi.render(mpi, ev.yaw[i : i + chunk], ev.pitch[i : i + chunk], size=size)
        images.append(image.cpu())
        plane_depths.append(depth[:, 0].float().cpu())
    image_all, plane_all = torch.cat(images), torch.cat(plane_depths)
    facing = torch.full_like(
        plane_all, cam.d_near - (cam.sphere_center_z - cam.sphere_radius)
    )  # exact constant
    return (
        Rendered(zscored_depth_mse(facing, ref, mask), image_all, facing),
        Rendered(zscored_depth_mse(plane_all, ref, mask), image_all, plane_all),
    )


@torch.no_grad()
def true_head_mpi(seed: int, index: int, cfg: ExperimentConfig, n_planes: int, gt_res: int = 128) -> MPI:
    """A fresh synthetic head as an MPI [1, N, 4, T, T]: texel (x, y, d_i) of plane i (method §2.4) is opaque
    when the frontal camera (at the world origin, method §1.3) sees the head's surface in front of it."""
    from gmpi_core.camera import focal_from_fov
    from gmpi_core.data.synthetic import identity_and_pose, render_head

    cam, t = cfg.camera, cfg.generator.img_resolution
    params, _, _ = identity_and_pose(seed, index, cam)
    frontal = torch.from_numpy(render_head(params, 0.0, 0.0, gt_res, cam, antialias=1).depth)[None, None]
    dhw, depth_norm = plane_layout(cam, n_planes)
    ramp = torch.linspace(-1.0, 1.0, t, dtype=torch.float64)  # texel k → x = ramp[k]·w_i/2 (method §2.4)
    f = focal_from_fov(cam.fov_deg, gt_res)
    alphas = []
    for d_i, h_i, w_i in dhw.tolist():
        u = f * ramp * w_i / 2 / d_i / (gt_res / 2)  # normalised pixel coordinate of the projection
        v = f * ramp * h_i / 2 / d_i / (gt_res / 2)
        grid = torch.stack(torch.broadcast_tensors(u[None, :], v[:, None]), -1)[None].float()
        seen = torch.nn.functional.grid_sample(
            frontal, grid, mode="nearest", padding_mode="border", align_corners=False
        )[0, 0]
        alphas.append((seen <= d_i).float())
    alpha = torch.stack(alphas)  # [N, T, T]
    alpha[-1] = 1.0  # the background plane is opaque
    rgba = torch.cat([torch.full((n_planes, 3, t, t), 0.5), alpha[:, None]], 1)[None]
    return MPI(rgba=rgba, plane_dhw=dhw, depth_norm=depth_norm)


def control_errors(cfg: ExperimentConfig, ev: EvalSet, table: PoseMatchedDepth, n_planes: int) -> Tensor:
    """True heads (dataset seed 1: not training identities) as MPIs at the evaluation poses [n]."""
    from gmpi_core.camera import camera_c2w
    from gmpi_core.mpi.render import render_mpi

    ref, mask, _ = table.references(ev.yaw, ev.pitch)
    cam = cfg.camera
    c2w = camera_c2w(cam, ev.yaw, ev.pitch)
    depths = []
    for i in range(len(ev.seeds)):
        mpi = true_head_mpi(1, i, cfg, n_planes)
        _, depth = render_mpi(mpi.rgba, mpi.plane_dhw, c2w[i : i + 1], cam.fov_deg, table.resolution[0])
        depths.append(depth[0, 0])
    return zscored_depth_mse(torch.stack(depths), ref, mask)


def oracle_errors(table: PoseMatchedDepth, n: int) -> Tensor:
    """True depth of the first ``n`` training views vs the pose-matched mean of the other views [n]."""
    n = min(n, len(table))
    errors = []
    for k in range(n):
        ref = table.lookup(float(table.yaw[k]), float(table.pitch[k]), exclude=k)
        mask = ref.metric_mask(table.min_count, table.mask_threshold)
        errors.append(zscored_depth_mse(table.depth[k][None], ref.depth[None], mask[None])[0])
    return torch.stack(errors)


@torch.no_grad()
def image_quality(
    gmpi: GMPI, two_d: torch.nn.Module, cfg: ExperimentConfig, n: int, heldout: Path, n_planes: int
) -> dict[str, Any]:
    """FID/KID (docs/method.md §9.2) of ``n`` GMPI renders at prior poses and ``n`` 2D-stage images against
    ``n`` held-out synthetic heads; the seeds follow the geometry evaluation set's (no overlap with it)."""
    from gmpi_core.data.synthetic import synthesize_dataset
    from gmpi_core.eval.fid import (
        RealFeatureCache,
        TFInceptionFeatures,
        default_cache_dir,
        extract_features,
        fid_kid_from_features,
        real_features,
    )
    from gmpi_core.eval.protocol import to_uint8_batch

    if not (heldout / "meta.json").is_file():
        print(f"[fid] synthesizing {n} held-out heads (seed {HELDOUT_SEED}) into {heldout}", flush=True)
        synthesize_dataset(heldout, res=RESOLUTION, n=n, seed=HELDOUT_SEED, workers=1, camera=cfg.camera)
    extractor = TFInceptionFeatures(device=gmpi.device)
    t0 = time.perf_counter()
    real, info = real_features(
        heldout, extractor, n=n, resolution=RESOLUTION, seed=0, cache=RealFeatureCache(default_cache_dir())
    )
    real_s = time.perf_counter() - t0
    # latents and poses disjoint from the depth evaluation set's
    ev = EvalSet.build(cfg, n, seed0=EVAL_SEED0 + 100_000, pose_seed=POSE_SEED + 1)
    chunk = 32

    def as_uint8(image: Tensor) -> Tensor:
        return torch.from_numpy(to_uint8_batch(image)).permute(0, 3, 1, 2)

    def gmpi_batches() -> Iterator[Tensor]:
        for image, _ in render_chunks(gmpi, ev, n_planes, RESOLUTION, NOISE_SEED + 1, chunk):
            yield as_uint8(image)

    def two_d_batches() -> Iterator[Tensor]:
        for i in range(0, n, chunk):
            yield as_uint8(two_d_images(gmpi, two_d, ev.seeds[i : i + chunk]))

    rows: dict[str, Any] = {}
    for key, batches in (("gmpi", gmpi_batches), ("two_d_stage", two_d_batches)):
        t = time.perf_counter()
        fake = extract_features(extractor, batches(), total=n, desc=f"fid: {key}", progress=False)
        rows[key] = {**fid_kid_from_features(real, fake).as_dict(), "seconds": time.perf_counter() - t}
        print(f"[fid] {key}: FID {rows[key]['fid']:.1f}, KID {rows[key]['kid_mean']:.4f}", flush=True)
    return {
        "real": {
            "dataset": str(heldout),
            "seed": HELDOUT_SEED,
            "n": info["n"],
            "cached": info["cached"],
            "seconds": real_s,
        },
        "extractor": extractor.extractor_id,
        "rows": rows,
    }


# -- pictures ------------------------------------------------------------------------------------------


def _zscored_tile(depth: Tensor, mask: Tensor, scale: int) -> np.ndarray:
    """Depth [H, W] z-scored inside ``mask`` as the metric sees it: ẑ ∈ [−2.5, 2.5] → near bright."""
    if not mask.any():
        tile = np.full(depth.shape, 64, np.uint8)
    else:
        z = zscore_masked(depth.reshape(1, -1), mask.reshape(1, -1)).reshape(depth.shape).float()
        shade = ((2.5 - z) / 5.0).clamp(0, 1) * 255
        tile = torch.where(mask, shade, torch.full_like(shade, 64)).to(torch.uint8).numpy()
    return np.repeat(np.repeat(tile, scale, 0), scale, 1)[..., None].repeat(3, -1)


def _rgb_tile(image: Tensor, scale: int) -> np.ndarray:
    return np.repeat(np.repeat(to_uint8(image), scale, 0), scale, 1)


def sample_strip(
    path: Path, gmpi_r: Rendered, two_d_images: Tensor, ref: Tensor, mask: Tensor, n: int = 8
) -> None:
    n = min(n, gmpi_r.images.shape[0])
    scale = max(1, 128 // gmpi_r.images.shape[-1])
    rows = [
        [_rgb_tile(gmpi_r.images[i], scale) for i in range(n)],
        [_zscored_tile(gmpi_r.depths[i], mask[i], scale) for i in range(n)],
        [_zscored_tile(ref[i], mask[i], scale) for i in range(n)],
        [_rgb_tile(two_d_images[i], scale) for i in range(n)],
    ]
    save_png(path, grid([t for row in rows for t in row], ncols=n, pad=2))


def _ticks(limit: float, target: int = 5) -> list[float]:
    """Round tick values 0, s, 2s, … ≤ limit with s ∈ {1, 2, 5}·10^k and about ``target`` intervals."""
    raw = limit / target
    base = 10.0 ** math.floor(math.log10(raw))
    step = next(m * base for m in (1, 2, 5, 10) if m * base >= raw)
    return [k * step for k in range(int(limit / step + 1e-9) + 1)]


def draw_curve(
    path: Path, points: Sequence[dict[str, float]], flat: float, world_plane: float | None
) -> None:
    """Depth error over stage-2 steps as a PIL line plot with the flat (1.0) and target (0.5) levels."""
    w, h, left, right, top, bottom = 640, 400, 60, 20, 30, 45
    img = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    steps = [p["step"] for p in points] or [0.0]
    values = [p["mean"] for p in points if math.isfinite(p["mean"])]
    x_max = max(max(steps), 1.0)
    y_max = max([1.2, *values, flat, world_plane or 0.0]) * 1.05

    def xy(step: float, value: float) -> tuple[float, float]:
        return left + (w - left - right) * step / x_max, h - bottom - (h - top - bottom) * value / y_max

    d.rectangle([left, top, w - right, h - bottom], outline="black")
    for v in _ticks(y_max):
        _, y = xy(0, v)
        d.line([left - 4, y, left, y], fill="black")
        d.text((8, y - 6), f"{v:.2g}", fill="black", font=font)
    for s in _ticks(x_max):
        x, _ = xy(s, 0)
        d.line([x, h - bottom, x, h - bottom + 4], fill="black")
        d.text((x - 10, h - bottom + 8), f"{s:g}", fill="black", font=font)
    levels = [(flat, (150, 150, 150), "flat (camera-facing)"), (TARGET, (0, 150, 0), "target 0.5")]
    if world_plane is not None and math.isfinite(world_plane):
        levels.append((world_plane, (200, 120, 0), "flat world plane"))
    for value, colour, label in levels:
        _, y = xy(0, value)
        for x0 in range(left, w - right, 12):  # dashed
            d.line([x0, y, min(x0 + 6, w - right), y], fill=colour)
        d.text((w - right - 130, y - 13), label, fill=colour, font=font)
    line = [xy(p["step"], p["mean"]) for p in points if math.isfinite(p["mean"])]
    if len(line) > 1:
        d.line(line, fill=(30, 60, 200), width=2)
    for x, y in line:
        d.ellipse([x - 2, y - 2, x + 2, y + 2], fill=(30, 60, 200))
    d.text(
        (left, 8), "GMPI depth error (spec 9.3, EMA generator) over stage-2 steps", fill="black", font=font
    )
    d.text((w // 2 - 30, h - 16), "stage-2 step", fill="black", font=font)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)


# -- training ------------------------------------------------------------------------------------------


def ensure_dataset(path: Path, n: int) -> Path:
    meta = path / "meta.json"
    if meta.is_file():
        info = json.loads(meta.read_text(encoding="utf-8"))
        if info.get("resolution") != RESOLUTION:
            sys.exit(
                f"{path} holds {info.get('resolution')}² images; this benchmark needs {RESOLUTION}² (--data)"
            )
        if info.get("n") != n:
            print(
                f"[data] using {path} with {info.get('n')} images (asked for {n}; another --data to change)"
            )
        return path
    from gmpi_core.data.synthetic import synthesize_dataset

    t0 = time.perf_counter()
    print(f"[data] synthesizing {n} heads at {RESOLUTION}² into {path} (2 workers)", flush=True)
    synthesize_dataset(path, res=RESOLUTION, n=n, seed=0, workers=2, progress=True)
    print(f"[data] done in {time.perf_counter() - t0:.0f} s", flush=True)
    return path


def train_stage(
    stage: str,
    trainer: Trainer,
    budget_s: float,
    progress: Progress,
    ckpt_every_s: float,
    on_step: Any = None,
    max_steps: int | None = None,
) -> dict[str, float]:
    """Call ``trainer.step()`` until ``budget_s`` training seconds are spent (or, with ``max_steps``, until
    the trainer reaches that step, whatever the time); checkpoint on the way and at the end.
    ``on_step(trainer)`` runs after every step outside the clock (the curve evaluations)."""
    elapsed = progress.elapsed_at(stage, trainer.step_idx)
    if trainer.resumed_from is not None:
        print(f"[{stage}] resumed at step {trainer.step_idx}, {elapsed:.0f} s of {budget_s:.0f} s spent")

    def more() -> bool:
        return elapsed < budget_s if max_steps is None else trainer.step_idx < max_steps

    last_ckpt, last_print = elapsed, time.perf_counter()
    stats: dict[str, float] = {}
    if on_step is not None:
        on_step(trainer)
    while more():
        t0 = time.perf_counter()
        stats = trainer.step()
        if elapsed + (time.perf_counter() - t0) - last_ckpt >= ckpt_every_s:
            trainer.save_checkpoint()
            elapsed += time.perf_counter() - t0
            last_ckpt = elapsed
            progress.record(stage, trainer.step_idx, elapsed)
        else:
            elapsed += time.perf_counter() - t0
        if time.perf_counter() - last_print > 30:
            last_print = time.perf_counter()
            goal = (
                f"{elapsed:6.0f}/{budget_s:.0f} s"
                if max_steps is None
                else f"of {max_steps}, {elapsed:6.0f} s"
            )
            print(
                f"[{stage}] step {trainer.step_idx:5d}  {goal}  "
                f"loss_d {stats['loss_d']:.3f} loss_g {stats['loss_g']:.3f} {stats['step_time']:.2f} s/step",
                flush=True,
            )
        if on_step is not None:
            on_step(trainer)
    if trainer.step_idx != progress.last_recorded_step(stage) or not (trainer.out / "model").is_dir():
        t0 = time.perf_counter()
        trainer.save_checkpoint()
        elapsed += time.perf_counter() - t0
        progress.record(stage, trainer.step_idx, elapsed)
    with contextlib.suppress(Exception):  # sample grids are a convenience; never fail the benchmark on them
        trainer.write_samples()
    progress.data[stage]["done"] = True
    progress.data[stage]["steps"] = trainer.step_idx
    progress.data[stage]["train_s"] = elapsed
    progress.save()
    print(f"[{stage}] done: {trainer.step_idx} steps in {elapsed:.0f} s of training", flush=True)
    return stats


# -- main ----------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--budget-min", type=float, default=30.0, help="training minutes, both stages together")
    p.add_argument(
        "--steps",
        type=int,
        nargs=2,
        metavar=("STAGE1", "STAGE2"),
        default=None,
        help="fixed step counts of the two stages instead of a time budget (machine-independent)",
    )
    p.add_argument(
        "--reference-clock",
        action="store_true",
        help="turn --budget-min and --two-d-fraction into fixed step counts at the reference machine's "
        f"measured step times (stage 1 {REFERENCE_S_PER_STEP[0]} s, stage 2 {REFERENCE_S_PER_STEP[1]} s): "
        "the same training on a slower or busy machine",
    )
    p.add_argument("--out", type=Path, default=Path("runs/geometry"))
    p.add_argument("--data", type=Path, default=None, help="synthetic dataset (default runs/synth64-n<N>)")
    p.add_argument("--n-images", type=int, default=20_000, help="heads to synthesize when --data is missing")
    p.add_argument("--device", default="cpu", help="cpu | cuda | auto")
    p.add_argument(
        "--two-d-lr",
        type=float,
        default=0.002,
        help="Adam lr of the 2D stage (StyleGAN2's; the GMPI stage uses the preset's)",
    )
    p.add_argument("--two-d-fraction", type=float, default=0.25, help="share of the budget for the 2D stage")
    p.add_argument("--n-eval", type=int, default=256, help="fresh latents of the final evaluation")
    p.add_argument(
        "--curve-latents", type=int, default=64, help="latents per curve point (first of --n-eval)"
    )
    p.add_argument("--n-control", type=int, default=64, help="true heads rendered as MPIs (control row)")
    p.add_argument("--eval-every", type=int, default=100, help="stage-2 steps between curve points")
    p.add_argument("--ckpt-every-min", type=float, default=5.0, help="training minutes between checkpoints")
    p.add_argument("--tol", type=float, default=0.05, help="pose window (rad) of the pose-matched GT")
    p.add_argument("--min-count", type=int, default=8, help="fewest matching views for a GT (else skipped)")
    p.add_argument(
        "--fid-images", type=int, default=512, help="images per FID/KID row (held-out reals too); 0 = skip"
    )
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--quick", action="store_true", help="smoke run: 3 min, 2000 heads, curve every 25 steps")
    args = p.parse_args(argv)
    if args.quick:
        args.budget_min, args.n_images, args.eval_every, args.curve_latents = 3.0, 2000, 25, 32
        args.fid_images = min(args.fid_images, 64)
        args.ckpt_every_min = 1.0
    if args.reference_clock:
        if args.steps is not None:
            p.error("--reference-clock and --steps are alternatives; give one")
        budget = args.budget_min * 60
        args.steps = reference_steps(budget * args.two_d_fraction, budget * (1 - args.two_d_fraction))
    if args.steps is not None and min(args.steps) < 1:
        p.error(f"--steps needs two positive step counts, got {args.steps}")
    if not 0 < args.two_d_fraction < 1:
        p.error(f"--two-d-fraction must lie in (0, 1), got {args.two_d_fraction}")
    if args.curve_latents > args.n_eval:
        p.error("--curve-latents cannot exceed --n-eval")
    args.data = args.data or Path("runs") / f"synth{RESOLUTION}-n{args.n_images}"
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    argv_used = list(sys.argv[1:] if argv is None else argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    wall0 = time.perf_counter()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    progress = Progress(out / "progress.json")
    progress.data["args"] = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    progress.save()
    data = ensure_dataset(args.data, args.n_images)
    cfg = preset(PRESET).with_updates(dataset={"images": str(data)})
    n_planes = cfg.eval.n_planes
    budget_s = args.budget_min * 60
    budget1 = budget_s * args.two_d_fraction
    common = {
        "device": args.device,
        "progress": False,
        "sample_every": 0,
        "ckpt_every": _BIG,
        "max_steps": _BIG,
    }

    # stage 1: 2D StyleGAN2 -------------------------------------------------------------------------
    if not progress.data["stage1"]["done"]:
        cfg1 = cfg.with_updates(train={"lr_g": args.two_d_lr, "lr_d": args.two_d_lr})
        t1 = Trainer(cfg1, out / "stage1", mode="stylegan2", **common)  # type: ignore[arg-type]
        steps1 = None if args.steps is None else args.steps[0]
        train_stage("stage1", t1, budget1, progress, args.ckpt_every_min * 60, max_steps=steps1)
        t1.close()
        del t1
    model1 = out / "stage1" / "model"

    # ground truth + evaluation set -----------------------------------------------------------------
    t0 = time.perf_counter()
    table = PoseMatchedDepth(data, args.tol, min_count=args.min_count)
    gt_load_s = time.perf_counter() - t0
    print(f"[gt] {len(table)} ground-truth views loaded in {gt_load_s:.1f} s", flush=True)
    ev = EvalSet.build(cfg, args.n_eval)
    curve_set = ev.head(args.curve_latents)
    eval_s = 0.0

    # stage 2: GMPI from the 2D stage ---------------------------------------------------------------
    t2 = Trainer(cfg, out / "stage2", mode="gmpi", init=f"native2d:{model1}", **common)  # type: ignore[arg-type]
    stage2_budget = budget_s - progress.data["stage1"]["train_s"]
    curve = progress.curve(t2.step_idx)

    def curve_point(trainer: Trainer, force: bool = False) -> None:
        nonlocal eval_s
        s = trainer.step_idx
        if (s % args.eval_every and not force) or any(p["step"] == s for p in curve):
            return
        t = time.perf_counter()
        r, _, _ = evaluate_gmpi(ema_pipeline(trainer), curve_set, table, n_planes)
        summary = MetricSummary.of(r.errors)
        curve.append({"step": s, **summary.to_dict()})
        progress.save()
        eval_s += time.perf_counter() - t
        print(f"[curve] stage-2 step {s:5d}: depth error {summary}", flush=True)

    # a rerun with a larger --budget-min extends stage 2 (stage 1 is final once stage 2 started from it)
    s2 = progress.data["stage2"]
    steps2 = None if args.steps is None else args.steps[1]
    unfinished = (
        s2.get("train_s", 0.0) < stage2_budget - 1.0 if steps2 is None else s2.get("steps", 0) < steps2
    )
    if not s2["done"] or unfinished:
        train_stage(
            "stage2",
            t2,
            stage2_budget,
            progress,
            args.ckpt_every_min * 60,
            on_step=curve_point,
            max_steps=steps2,
        )
    curve_point(t2, force=True)  # the last step, unless already measured

    # final evaluation ------------------------------------------------------------------------------
    t = time.perf_counter()
    gmpi = ema_pipeline(t2)
    final, ref, mask = evaluate_gmpi(gmpi, ev, table, n_planes)
    from gmpi_core.checkpoints.native import load_pretrained

    two_d = load_pretrained(model1, use_ema=True).to(gmpi.device)
    facing, world = evaluate_flat(gmpi, two_d, ev, table, n_planes)
    control = control_errors(cfg, ev.head(args.n_control), table, n_planes)
    oracle = oracle_errors(table, args.n_eval)
    eval_s += time.perf_counter() - t
    quality = None
    if args.fid_images > 0:
        t = time.perf_counter()
        heldout = args.data.parent / f"synth{RESOLUTION}-heldout-n{args.fid_images}"
        quality = image_quality(gmpi, two_d, cfg, args.fid_images, heldout, n_planes)
        eval_s += time.perf_counter() - t
    rows = {
        "gmpi": MetricSummary.of(final.errors),
        "flat_camera_facing": MetricSummary.of(facing.errors),
        "flat_world_plane": MetricSummary.of(world.errors),
        "control_true_heads_as_mpi": MetricSummary.of(control),
        "oracle_training_views": MetricSummary.of(oracle),
    }
    curve.sort(key=lambda p: p["step"])
    progress.data["curve"] = curve
    progress.save()

    # outputs ---------------------------------------------------------------------------------------
    sample_strip(out / "samples.png", final, facing.images, ref, mask)
    draw_curve(out / "curve.png", curve, rows["flat_camera_facing"].mean, rows["flat_world_plane"].mean)
    with open(out / "curve.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["step", "mean", "std", "n_used", "n_skipped"])
        writer.writeheader()
        writer.writerows(curve)
    s1, s2 = progress.data["stage1"], progress.data["stage2"]
    report = {
        "benchmark": "synthetic_geometry",
        "preset": PRESET,
        "resolution": RESOLUTION,
        "dataset": str(data),
        "n_ground_truth_views": len(table),
        "device": str(gmpi.device),
        "torch_threads": torch.get_num_threads(),
        "budget_min": None if args.steps is not None else args.budget_min,
        "fixed_steps": args.steps,
        "command": "python scripts/bench/synthetic_geometry.py " + " ".join(argv_used),
        "stage1": {"mode": "stylegan2", "steps": s1["steps"], "train_s": s1["train_s"]},
        "note": "train_s counts optimiser steps and checkpoints only; other processes on the CPU slow it",
        "stage2": {
            "mode": "gmpi",
            "steps": s2["steps"],
            "train_s": s2["train_s"],
            "init": f"native2d:{model1}",
        },
        "eval": {
            "n_latents": args.n_eval,
            "seeds": [ev.seeds[0], ev.seeds[-1]],
            "pose_seed": POSE_SEED,
            "noise_seed": NOISE_SEED,
            "n_planes": n_planes,
            "truncation_psi": 1.0,
            "pose_tolerance_rad": args.tol,
            "min_matching_views": args.min_count,
            "metric": "§9.3 z-scored depth MSE in the pose-matched face mask; std over images (ddof 0)",
            "eval_s": eval_s,
            "gt_load_s": gt_load_s,
        },
        "depth_error": {k: v.to_dict() for k, v in rows.items()},
        "image_quality": quality,
        "target": TARGET,
        "passed": rows["gmpi"].mean <= TARGET,
        "curve": curve,
        "wall_s_this_run": time.perf_counter() - wall0,
    }
    (out / "report.json").write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")

    names = {
        "gmpi": f"GMPI (EMA, {n_planes} planes)",
        "flat_camera_facing": "flat: 2D image, camera-facing plane",
        "flat_world_plane": "flat: 2D image, front MPI plane (§9.1)",
        "control_true_heads_as_mpi": f"control: true heads as {n_planes}-plane MPIs",
        "oracle_training_views": "oracle: true depth of training views",
    }
    print()
    print(f"stage 1 (2D StyleGAN2): {s1['steps']} steps, {s1['train_s'] / 60:.1f} min of training")
    print(f"stage 2 (GMPI):         {s2['steps']} steps, {s2['train_s'] / 60:.1f} min of training")
    print(
        f"evaluation: {eval_s:.0f} s; GT from {len(table)} views (±{args.tol} rad, ≥{args.min_count} views)"
    )
    print()
    print("| depth error (docs/method.md §9.3) | mean ± std | used | skipped |")
    print("|---|---|---|---|")
    for key, summary in rows.items():
        print(
            f"| {names[key]} | {summary.mean:.4f} ± {summary.std:.4f} "
            f"| {summary.n_used} | {summary.n_skipped} |"
        )
    if quality is not None:
        real = quality["real"]
        print()
        print(f"| image quality vs {real['n']} held-out heads (docs/method.md §9.2) | FID | KID × 10³ |")
        print("|---|---|---|")
        for key, label in (("gmpi", names["gmpi"]), ("two_d_stage", "2D stage (StyleGAN2)")):
            r = quality["rows"][key]
            kid = f"{1e3 * r['kid_mean']:.1f} ± {1e3 * r['kid_std']:.1f}"
            print(f"| {label}, {r['n_fake']} images | {r['fid']:.1f} | {kid} |")
    print()
    print("curve (stage-2 step: mean error on the first", args.curve_latents, "latents):")
    print("  " + ", ".join(f"{int(p['step'])}: {p['mean']:.3f}" for p in curve))
    verdict = "PASS" if report["passed"] else "FAIL"
    print(
        f"\ntarget: GMPI depth error ≤ {TARGET} → {verdict} ({rows['gmpi'].mean:.4f}); "
        f"wrote {out / 'report.json'}"
    )
    t2.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
