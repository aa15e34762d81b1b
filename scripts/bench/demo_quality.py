"""Quality of a trained model against issue 16's goals: faces appear, realism, geometry, 3D consistency.

Measures one model — a GMPI model (anything ``GMPI.load`` opens; default: the shipped demo model) or a 2D
StyleGAN2 from ``gmpi train --mode stylegan2`` (its ``model/`` folder) — against synthetic heads it never
saw (dataset seed 1 = ``synthetic_geometry.HELDOUT_SEED``; training data is seed 0). All renders use the
model's own resolution R and the truncation ψ = 1.

1. **Faces appear.** Our MTCNN (``gmpi_core.preprocess.mtcnn.default_detector``: the preprocessing
   default, min face 20 px, thresholds 0.6/0.7/0.7) on ``--n`` renders at poses drawn from the model's pose
   prior (docs/method.md §1.4; a 2D model: its samples) and on the first ``--n`` held-out heads (their poses
   come from the same prior). Both sets are first upsampled (bicubic) to ``--face-size``² (default 128²)
   when R is smaller, identically, since MTCNN misses many faces of 32² images. Reported: the share of
   images with at least one face, per set, and model rate / real rate (goal ≥ 0.80).
2. **Realism.** FID and KID (docs/method.md §9.2, TF-Inception features as ``gmpi eval``) of the same
   ``--n`` renders against the first ``--n`` held-out heads, and the floor: the same reals against the
   next ``--n`` held-out heads (disjoint identities and poses). Goal FID ≤ 60. With a few hundred images
   FID is biased upwards (KID is not); compare with the floor of the same N. KID's subsets hold
   min(1000, N) images, so for N ≤ 1000 every subset is the whole set and its ± is 0. The reals are the
   heads of the dataset's ``images.zip`` (its folder also holds the PNG face masks of ``mask/``).
3. **Geometry** (GMPI only). The depth error of docs/method.md §9.3 exactly as
   ``scripts/bench/synthetic_geometry.py`` computes it (its ``EvalSet``, ``PoseMatchedDepth`` and
   ``evaluate_gmpi``): ``--n-geometry`` latents at prior poses against the pose-matched mean true depth of a
   synthetic dataset at R (``--gt-data``), with its control (true heads as MPIs, ≈ 0.12) beside; a flat
   image scores exactly 1.0. Goal ≤ 0.35. With ``--seed 0`` and 256 latents these are exactly that
   benchmark's evaluation latents, poses and noise.
4. **3D consistency** (GMPI only). Cosine similarity of FaceNet embeddings (``gmpi_core.eval.identity``,
   MTCNN-located crops as ``gmpi eval``'s identity metric) of the yaw −0.3 and yaw +0.3 views (pitch 0) of
   one MPI, over ``--n-identity`` latents, beside the same for real heads: held-out identities ray cast at
   yaw ∓0.3 (``gmpi_core.data.synthetic.render_head``). No target: reported beside the real value, and
   beside the same cosine between two *different* identities (view i at −0.3 against view i + 1 at
   +0.3), the scale: FaceNet finds any two of these small heads fairly similar.

    python scripts/bench/demo_quality.py --n 256 --out runs/demo-quality            # the shipped demo model
    python scripts/bench/demo_quality.py --model runs/x/model --out runs/x-quality   # a GMPI or 2D model
    gmpi bench demo_quality --n 256

Outputs in ``--out``: ``report.json`` (atomic), ``faces.png`` (renders, then held-out heads, MTCNN's face
box in green, a red frame where none was found), and for a GMPI model ``sweep.png`` (per latent a yaw sweep
−0.45…0.45 at pitch 0 and under it its depth, d_near white … d_far black), for a 2D model
``samples.png``. The table goes to stdout. Same arguments → same numbers (fixed seeds throughout; the
held-out heads depend only on their index). Held-out heads are synthesized on first use into ``--heldout``
(default ``runs/synth<R>-heldout-seed1-n<2N>``, or any larger such folder already there), the depth
ground truth into ``--gt-data`` (default: the model's training set when it is a synthetic set at R, else
``runs/synth<R>-n20000``); real Inception features are cached as ``gmpi eval`` caches them.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import re
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import PIL.ImageDraw
import torch
from torch import Tensor

from gmpi_core.atomic import atomic_write
from gmpi_core.config import ExperimentConfig
from gmpi_core.pipeline import GMPI
from gmpi_core.progress import format_duration
from gmpi_core.render.io import grid, save_png, to_uint8


def _import_geometry_bench() -> Any:
    """``scripts/bench/synthetic_geometry.py`` as a module (its evaluation is reused, not copied)."""
    name = "synthetic_geometry_bench"
    if name in sys.modules:
        return sys.modules[name]
    path = Path(__file__).resolve().parent / "synthetic_geometry.py"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


sg = _import_geometry_bench()

HELDOUT_SEED: int = sg.HELDOUT_SEED  # dataset seed of the held-out heads (training data: seed 0)
FID_SEED0 = sg.EVAL_SEED0 + 100_000  # latents of the FID/faces renders (synthetic_geometry's FID set)
FID_POSE_SEED = sg.POSE_SEED + 1
FID_NOISE_SEED = sg.NOISE_SEED + 1
IDENTITY_SEED0 = sg.EVAL_SEED0 + 200_000  # latents of the yaw ±0.3 pairs
IDENTITY_NOISE_SEED = sg.NOISE_SEED + 2
SEED_STRIDE = 1_000_000  # --seed s shifts every latent seed by s·SEED_STRIDE (and pose seeds by s·1000)
IDENTITY_YAW = 0.3
SWEEP_YAWS = (-0.45, -0.3, -0.15, 0.0, 0.15, 0.3, 0.45)
GT_N = 20_000
CHUNK = 32

TARGETS = {"faces_ratio": 0.80, "fid": 60.0, "depth_error": 0.35}


# -- progress ------------------------------------------------------------------------------------------


class Eta:
    """``[phase] done/total unit, elapsed, ETA`` lines: at most one per ``every`` seconds, and at the end."""

    def __init__(self, phase: str, total: int, unit: str = "img", every: float = 15.0) -> None:
        self.phase, self.total, self.unit, self.every = phase, total, unit, every
        self.done = 0
        self.t0 = self.last = time.perf_counter()
        print(f"[{phase}] {total} {unit}", flush=True)

    def update(self, k: int) -> None:
        self.done += k
        now = time.perf_counter()
        if now - self.last < self.every and self.done < self.total:
            return
        self.last = now
        elapsed = now - self.t0
        left = elapsed / self.done * (self.total - self.done) if self.done else math.nan
        eta = "done" if self.done >= self.total else f"ETA {format_duration(left)}"
        print(
            f"[{self.phase}] {self.done}/{self.total} {self.unit}, {format_duration(elapsed)}, {eta}",
            flush=True,
        )

    def wrap(self, batches: Iterable[Tensor]) -> Iterator[Tensor]:
        for batch in batches:
            yield batch
            self.update(int(batch.shape[0]))


# -- the model -----------------------------------------------------------------------------------------


class TwoDLatents:
    """What ``synthetic_geometry.two_d_images`` needs of a GMPI: ``latents(seeds)``, drawn exactly as
    ``GMPI.latents`` draws them (``torch.manual_seed(seed)`` per image), for a 2D generator."""

    latents = GMPI.latents

    def __init__(self, generator: torch.nn.Module) -> None:
        self.generator = generator

    @property
    def device(self) -> torch.device:
        return next(self.generator.parameters()).device


@dataclass
class Model:
    """The model under test: ``gmpi`` for a GMPI model, ``two_d`` for a 2D StyleGAN2 (one of them)."""

    kind: str  # "gmpi" | "stylegan2"
    config: ExperimentConfig
    source: str
    gmpi: GMPI | None = None
    two_d: torch.nn.Module | None = None
    step: int | None = None

    @property
    def resolution(self) -> int:
        return int(self.config.generator.img_resolution)


def load_model(source: str | None, device: str = "cpu") -> Model:
    """A native 2D StyleGAN2 folder (``config.json`` of a ``StyleGAN2Generator``), or what GMPI.load opens."""
    from gmpi_core.checkpoints.native import load_pretrained, read_native_config

    path = Path(source) if source else None
    if path is not None and (path / "config.json").is_file():
        meta = read_native_config(path)
        extra = meta.get("extra") or {}
        if meta.get("class") != "GMPIGenerator":
            if "experiment" not in extra:
                sys.exit(f"{path} holds a {meta.get('class')} without an experiment config; not a gmpi model")
            net = load_pretrained(path, use_ema=None).eval().requires_grad_(False).to(device)
            cfg = ExperimentConfig.model_validate(extra["experiment"])
            return Model("stylegan2", cfg, str(path), two_d=net, step=extra.get("step"))
    gmpi = GMPI.load(source, map_location=device)
    src = gmpi.source.path if gmpi.source is not None else None
    step = None
    if src is not None and (Path(src) / "config.json").is_file():
        step = (read_native_config(src).get("extra") or {}).get("step")
    return Model("gmpi", gmpi.config, gmpi.describe(), gmpi=gmpi, step=step)


# -- data ----------------------------------------------------------------------------------------------


def as_uint8(images: Tensor) -> np.ndarray:
    """[B, 3, H, W] in [−1, 1] → uint8 [B, H, W, 3] (method §9.1's conversion)."""
    from gmpi_core.eval.protocol import to_uint8_batch

    return to_uint8_batch(images)


def _dataset_meta(path: Path) -> dict[str, Any] | None:
    meta = path / "meta.json"
    return json.loads(meta.read_text(encoding="utf-8")) if meta.is_file() else None


def default_heldout(resolution: int, n_needed: int, runs: Path = Path("runs")) -> Path:
    """An existing ``runs/synth<R>-heldout-seed1-n<M>`` with M ≥ ``n_needed`` (its first images are the same
    heads: a head depends only on its index), else ``…-n<n_needed>``."""
    pattern = re.compile(rf"synth{resolution}-heldout-seed{HELDOUT_SEED}-n(\d+)$")
    found = []
    for p in runs.glob(f"synth{resolution}-heldout-seed{HELDOUT_SEED}-n*") if runs.is_dir() else []:
        m = pattern.match(p.name)
        if m and int(m.group(1)) >= n_needed and (p / "meta.json").is_file():
            found.append((int(m.group(1)), p))
    return min(found)[1] if found else runs / f"synth{resolution}-heldout-seed{HELDOUT_SEED}-n{n_needed}"


def ensure_heldout(path: Path, cfg: ExperimentConfig, n_needed: int) -> dict[str, Any]:
    """The held-out set's meta (synthesized with seed 1 at the model's resolution and camera if missing)."""
    res = int(cfg.generator.img_resolution)
    meta = _dataset_meta(path)
    if meta is None:
        from gmpi_core.data.synthetic import synthesize_dataset

        t0 = time.perf_counter()
        print(
            f"[heldout] synthesizing {n_needed} heads (seed {HELDOUT_SEED}) at {res}² into {path}", flush=True
        )
        synthesize_dataset(
            path, res=res, n=n_needed, seed=HELDOUT_SEED, workers=1, camera=cfg.camera, progress=False
        )
        print(f"[heldout] done in {format_duration(time.perf_counter() - t0)}", flush=True)
        meta = _dataset_meta(path)
        assert meta is not None
    if meta.get("resolution") != res:
        sys.exit(f"{path} holds {meta.get('resolution')}² heads; this model renders {res}² (--heldout)")
    if int(meta.get("n", 0)) < n_needed:
        sys.exit(f"{path} holds {meta.get('n')} heads; 2 × --n = {n_needed} are needed (another --heldout)")
    if meta.get("seed") == 0:
        print(f"[heldout] warning: {path} is dataset seed 0, the training data's seed", flush=True)
    if meta.get("camera") not in (None, cfg.camera.model_dump(mode="json")):
        print(f"[heldout] warning: {path} was rendered with another camera than the model's", flush=True)
    return meta


def image_file(path: Path) -> Path:
    """The images of a synthetic dataset: its ``images.zip``. Never the folder itself: an image folder's
    listing would take in the PNG face masks of ``mask/`` (``ImageSource`` walks every image file)."""
    return path / "images.zip" if (path / "images.zip").is_file() else path


def read_images(path: Path, names: Sequence[str], resolution: int) -> np.ndarray:
    """uint8 [n, R, R, 3] of the named members of a dataset."""
    from gmpi_core.data.datasets import ImageSource
    from gmpi_core.eval.fid import iter_image_batches

    batches = iter_image_batches(ImageSource(image_file(path)), names, resolution, CHUNK)
    return np.concatenate([b.permute(0, 2, 3, 1).numpy() for b in batches])


def gt_dataset(arg: Path | None, cfg: ExperimentConfig, n: int = GT_N) -> Path:
    """The depth ground truth: ``arg``, else the model's training set (a synthetic set at R), else
    ``runs/synth<R>-n20000``; synthesized (seed 0) when missing."""
    res = int(cfg.generator.img_resolution)
    if arg is None:
        trained = Path(cfg.dataset.images) if cfg.dataset.images else None
        meta = _dataset_meta(trained) if trained is not None else None
        usable = meta is not None and meta.get("resolution") == res and (trained / "depth").is_dir()  # type: ignore[operator]
        arg = trained if usable else Path("runs") / f"synth{res}-n{n}"
    assert arg is not None
    if _dataset_meta(arg) is None:
        from gmpi_core.data.synthetic import synthesize_dataset

        t0 = time.perf_counter()
        print(f"[gt] synthesizing {n} heads (seed 0) at {res}² into {arg}", flush=True)
        synthesize_dataset(arg, res=res, n=n, seed=0, workers=1, camera=cfg.camera, progress=False)
        print(f"[gt] done in {format_duration(time.perf_counter() - t0)}", flush=True)
    return arg


# -- 1. faces ------------------------------------------------------------------------------------------


def upsample(images: np.ndarray, size: int) -> np.ndarray:
    """uint8 [n, R, R, 3] → [n, S, S, 3] (PIL bicubic) when R < S; unchanged otherwise."""
    if images.shape[1] >= size:
        return images
    return np.stack(
        [
            np.asarray(PIL.Image.fromarray(im).resize((size, size), PIL.Image.Resampling.BICUBIC))
            for im in images
        ]
    )


def detect_faces(images: np.ndarray, face_size: int, phase: str) -> list[np.ndarray | None]:
    """MTCNN (the preprocessing default) on every image, upsampled to ``face_size``: the most probable face's
    box [4] in the upsampled image, or None."""
    from gmpi_core.preprocess.mtcnn import default_detector

    detector = default_detector()
    eta = Eta(phase, len(images))
    boxes: list[np.ndarray | None] = []
    for i in range(0, len(images), CHUNK):
        for faces in detector.detect(list(upsample(images[i : i + CHUNK], face_size))):
            boxes.append(faces.boxes[0].copy() if len(faces) else None)
        eta.update(min(CHUNK, len(images) - i))
    return boxes


def face_rate(boxes: Sequence[np.ndarray | None]) -> dict[str, Any]:
    n_found = sum(b is not None for b in boxes)
    return {"rate": n_found / len(boxes) if boxes else math.nan, "detected": n_found, "n": len(boxes)}


def faces_metric(
    model_boxes: Sequence[np.ndarray | None], real_boxes: Sequence[np.ndarray | None]
) -> dict[str, Any]:
    """Detection rates and their ratio model / real (NaN when no real face was found)."""
    model, real = face_rate(model_boxes), face_rate(real_boxes)
    ratio = model["rate"] / real["rate"] if real["rate"] > 0 else math.nan
    return {"model": model, "real": real, "ratio": ratio}


def detector_settings(face_size: int, resolution: int) -> dict[str, Any]:
    from gmpi_core.preprocess.mtcnn import default_detector

    d = default_detector()
    return {
        "detector": "gmpi_core.preprocess.mtcnn.default_detector (MTCNN, preprocessing default)",
        "min_face_size": d.min_face_size,
        "thresholds": list(d.thresholds),
        "nms_thresholds": list(d.nms_thresholds),
        "face_size": max(face_size, resolution),
        "upsampled": resolution < face_size,
        "upsampling": "PIL bicubic, both sets alike" if resolution < face_size else None,
    }


# -- 2. realism ----------------------------------------------------------------------------------------


def inception() -> Any:
    from gmpi_core.eval.fid import TFInceptionFeatures

    return TFInceptionFeatures(device=torch.device("cpu"))


def features(extractor: Any, images: np.ndarray, phase: str) -> np.ndarray:
    """TF-Inception features [n, 2048] of uint8 images [n, R, R, 3]."""
    from gmpi_core.eval.fid import extract_features

    def batches() -> Iterator[Tensor]:
        for i in range(0, len(images), CHUNK):
            yield torch.from_numpy(np.ascontiguousarray(images[i : i + CHUNK])).permute(0, 3, 1, 2)

    eta = Eta(phase, len(images))
    return extract_features(extractor, eta.wrap(batches()), total=len(images), progress=False)


def real_features_cached(
    extractor: Any, heldout: Path, part: str, names: Sequence[str], images: np.ndarray, resolution: int
) -> tuple[np.ndarray, bool]:
    """``features`` of held-out images, cached (``gmpi eval``'s cache folder) under the dataset's fingerprint,
    the part (``first``/``second`` N) and N."""
    from gmpi_core.eval.fid import RealFeatureCache, dataset_fingerprint, default_cache_dir

    cache = RealFeatureCache(default_cache_dir())
    fingerprint = {
        **dataset_fingerprint(image_file(heldout)),
        "demo_quality_part": part,
        "first": names[0],
        "last": names[-1],
    }
    key = RealFeatureCache.key(fingerprint, resolution, extractor.extractor_id, len(names), 0)
    cached = cache.load(key)
    if cached is not None and cached.shape == (len(names), extractor.num_features):
        print(f"[fid] real features ({part} {len(names)} held-out heads): cached", flush=True)
        return cached, True
    feats = features(extractor, images, f"fid: real features, {part} {len(names)} held-out heads")
    cache.save(key, feats, {"dataset": fingerprint, "resolution": resolution, "n": len(names)})
    return feats, False


def fid_kid(real: np.ndarray, fake: np.ndarray) -> dict[str, Any]:
    from gmpi_core.eval.fid import fid_kid_from_features

    return fid_kid_from_features(real, fake).as_dict()


# -- 3. geometry ---------------------------------------------------------------------------------------


def geometry_metric(
    gmpi: GMPI, table: Any, n: int, n_planes: int, n_control: int, seed: int
) -> tuple[dict[str, Any], Any]:
    """synthetic_geometry's evaluation: (report section, its Rendered) for ``n`` latents."""
    from gmpi_core.eval.geometry import MetricSummary

    ev = sg.EvalSet.build(
        gmpi.config, n, seed0=sg.EVAL_SEED0 + seed * SEED_STRIDE, pose_seed=sg.POSE_SEED + seed * 1000
    )
    eta = Eta("geometry: GMPI renders + depth error", n)
    rendered, _, _ = sg.evaluate_gmpi(gmpi, ev, table, n_planes)
    eta.update(n)
    summary = MetricSummary.of(rendered.errors)
    control = None
    if n_control > 0:
        eta = Eta("geometry: control (true heads as MPIs)", min(n_control, n))
        control = MetricSummary.of(sg.control_errors(gmpi.config, ev.head(n_control), table, n_planes))
        eta.update(min(n_control, n))
    section = {
        "metric": "docs/method.md §9.3 z-scored depth MSE in the pose-matched face mask "
        "(scripts/bench/synthetic_geometry.py evaluate_gmpi); std over images (ddof 0)",
        "gmpi": summary.to_dict(),
        "control_true_heads_as_mpi": control.to_dict() if control is not None else None,
        "flat": 1.0,
        "n_latents": n,
        "seeds": [ev.seeds[0], ev.seeds[-1]],
        "pose_seed": sg.POSE_SEED + seed * 1000,
        "noise_seed": sg.NOISE_SEED,
        "n_planes": n_planes,
        "ground_truth": str(table.root),
        "n_ground_truth_views": len(table),
        "pose_tolerance_rad": table.tol,
        "min_matching_views": table.min_count,
        "target": TARGETS["depth_error"],
        "passed": bool(summary.mean <= TARGETS["depth_error"]),
    }
    return section, rendered


# -- 4. 3D consistency ---------------------------------------------------------------------------------


def build_embedder() -> Any:
    """FaceNet with MTCNN-located crops (``gmpi eval``'s identity setting: no face → whole image)."""
    from gmpi_core.eval.identity import FaceNetEmbedder
    from gmpi_core.preprocess.mtcnn import detect_landmarks

    return FaceNetEmbedder(detector=detect_landmarks)


def embed_all(embedder: Any, images: np.ndarray, face_size: int, phase: str) -> list[np.ndarray | None]:
    """The embedder's unit embedding of every image (upsampled to ``face_size``), None where it failed."""
    eta = Eta(phase, len(images))
    out: list[np.ndarray | None] = []
    for i in range(0, len(images), CHUNK):
        out.extend(embedder.embed(upsample(images[i : i + CHUNK], face_size)))
        eta.update(min(CHUNK, len(images) - i))
    return out


def pair_cosines(
    emb_a: Sequence[np.ndarray | None], emb_b: Sequence[np.ndarray | None], shift: int = 0
) -> list[float]:
    """cos(a_i, b_(i + shift) mod n) per i, NaN where an embedding failed: ``shift`` 0 pairs the two views
    of one identity, 1 the view of the next identity (the unrelated-pair baseline)."""
    from gmpi_core.eval.identity import cosine_similarity

    n = len(emb_a)
    scores = []
    for i in range(n):
        a, b = emb_a[i], emb_b[(i + shift) % n]
        scores.append(math.nan if a is None or b is None else float(cosine_similarity(a[None], b[None])[0]))
    return scores


def identity_metric(
    embedder: Any, left: np.ndarray, right: np.ndarray, face_size: int, what: str
) -> dict[str, Any]:
    """Same-identity cosine (yaw −0.3 vs +0.3 of one identity) and, as the scale, the cosine of the −0.3
    view with the +0.3 view of the *next* identity."""
    from gmpi_core.eval.identity import IdentityResult

    emb_l = embed_all(embedder, left, face_size, f"identity: {what} at yaw -{IDENTITY_YAW}")
    emb_r = embed_all(embedder, right, face_size, f"identity: {what} at yaw +{IDENTITY_YAW}")
    same = IdentityResult.of(pair_cosines(emb_l, emb_r)).as_dict()
    other = IdentityResult.of(pair_cosines(emb_l, emb_r, shift=1)).as_dict() if len(left) > 1 else None
    return {**same, "different_identities": other}


def gmpi_yaw_pairs(gmpi: GMPI, n: int, n_planes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """uint8 views of ``n`` latents at (yaw −0.3, pitch 0) and (+0.3, 0), each pair from one MPI."""
    from gmpi_core.eval.protocol import render_views

    res = int(gmpi.config.generator.img_resolution)
    seed0 = IDENTITY_SEED0 + seed * SEED_STRIDE
    left, right = [], []
    for i in range(0, n, CHUNK):
        seeds = list(range(seed0 + i, seed0 + min(i + CHUNK, n)))
        zero = torch.zeros(len(seeds))
        views = render_views(
            gmpi, seeds, [(zero - IDENTITY_YAW, zero), (zero + IDENTITY_YAW, zero)], n_planes=n_planes,
            truncation_psi=1.0, sizes=[res, res], noise_seed=IDENTITY_NOISE_SEED + seed * SEED_STRIDE + i,
        )  # fmt: skip
        left.append(views[0][0])
        right.append(views[1][0])
    return np.concatenate(left), np.concatenate(right)


def real_yaw_pairs(cfg: ExperimentConfig, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Held-out identities 0 … n − 1 (seed 1) ray cast at (∓0.3, 0) at R², as the dataset renders them."""
    from gmpi_core.data.synthetic import identity_and_pose, render_head

    res = int(cfg.generator.img_resolution)
    left, right = [], []
    for i in range(n):
        params, _, _ = identity_and_pose(HELDOUT_SEED, i, cfg.camera)
        left.append(render_head(params, -IDENTITY_YAW, 0.0, res, cfg.camera).image)
        right.append(render_head(params, IDENTITY_YAW, 0.0, res, cfg.camera).image)
    return np.stack(left), np.stack(right)


# -- pictures ------------------------------------------------------------------------------------------


def _tile(image: np.ndarray, size: int) -> np.ndarray:
    if image.shape[0] == size:
        return image
    return np.asarray(PIL.Image.fromarray(image).resize((size, size), PIL.Image.Resampling.NEAREST))


def faces_picture(
    path: Path,
    model: np.ndarray,
    model_boxes: list,
    real: np.ndarray,
    real_boxes: list,
    face_size: int,
    n: int = 16,
) -> None:
    """Rows of renders, then rows of held-out heads, at ``face_size``: MTCNN's box green, none: red frame."""
    tiles = []
    for images, boxes in ((model, model_boxes), (real, real_boxes)):
        for im, box in zip(upsample(images[:n], face_size), boxes[:n]):
            pil = PIL.Image.fromarray(im)
            draw = PIL.ImageDraw.Draw(pil)
            if box is None:
                draw.rectangle([0, 0, pil.width - 1, pil.height - 1], outline=(220, 30, 30), width=3)
            else:
                draw.rectangle([float(v) for v in box], outline=(30, 220, 30), width=2)
            tiles.append(np.asarray(pil))
    save_png(path, grid(tiles, ncols=8, pad=2))


@torch.no_grad()
def sweep_picture(path: Path, gmpi: GMPI, n_planes: int, seed: int, n: int = 6) -> None:
    """Per latent: a yaw sweep at pitch 0 and under it its depth (d_near white … d_far black)."""
    res = int(gmpi.config.generator.img_resolution)
    size = max(res, 128)
    seed0 = sg.EVAL_SEED0 + seed * SEED_STRIDE
    yaws = torch.tensor(SWEEP_YAWS)
    rows = []
    for k in range(n):
        mpi = gmpi.generate(
            seeds=[seed0 + k], n_planes=n_planes, generator=gmpi.noise_generator(sg.NOISE_SEED + k)
        )
        image, depth = gmpi.render(mpi, yaws, torch.zeros_like(yaws), size=res)
        rgb = as_uint8(image.float().cpu())
        rows.append([_tile(im, size) for im in rgb])
        # depth over the MPI's range (method §10's scale, inverted): d_near white, d_far black
        near, far = gmpi.config.camera.d_near, gmpi.config.camera.d_far
        d = depth[:, 0].float().cpu()
        rows.append([_tile(to_uint8(x, value_range=(far, near)).repeat(3, -1), size) for x in d])
    save_png(path, grid([t for row in rows for t in row], ncols=len(SWEEP_YAWS), pad=2))


def samples_picture(path: Path, images: np.ndarray, n: int = 32) -> None:
    size = max(images.shape[1], 128)
    save_png(path, grid([_tile(im, size) for im in images[:n]], ncols=8, pad=2))


# -- main ----------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    add = p.add_argument
    add("--model", default=None, help="a GMPI model (any GMPI.load source) or a 2D StyleGAN2 model folder "
        "(default: the shipped demo model)")  # fmt: skip
    add("--n", type=int, default=1024, help="renders and held-out heads of faces and FID/KID")
    add("--n-geometry", type=int, default=256, help="latents of the depth error (GMPI; 0: skip)")
    add("--n-control", type=int, default=64, help="true heads as MPIs, the depth control (0: skip)")
    add("--n-identity", type=int, default=256, help="yaw ±0.3 pairs of the identity metric (0: skip)")
    add("--heldout", type=Path, default=None, help="held-out synthetic heads (≥ 2N; made if missing)")
    add("--gt-data", type=Path, default=None, help="synthetic dataset of the depth ground truth")
    add("--gt-n", type=int, default=GT_N, help="heads to synthesize when the ground truth is missing")
    add("--tol", type=float, default=0.05, help="pose window (rad) of the pose-matched depth GT")
    add("--min-count", type=int, default=8, help="fewest matching GT views, else the render is skipped")
    add("--face-size", type=int, default=128, help="smaller images are upsampled to this for MTCNN")
    add("--planes", type=int, default=None, help="MPI planes (default: the config's eval.n_planes)")
    add("--seed", type=int, default=0, help="shifts every latent and pose seed (held-out heads fixed)")
    add("--out", type=Path, default=Path("runs/demo-quality"))
    add("--device", default="cpu", help="cpu | cuda")
    add("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = p.parse_args(argv)
    if args.n < 2:
        p.error("--n must be ≥ 2 (FID needs two images per set)")
    if min(args.n_geometry, args.n_control, args.n_identity) < 0:
        p.error("--n-geometry, --n-control and --n-identity must be ≥ 0")
    return args


def _fmt(x: float | None, digits: int = 2) -> str:
    return "—" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.{digits}f}"


def _mark(passed: bool | None) -> str:
    return "—" if passed is None else ("PASS" if passed else "FAIL")


def _pm(d: dict[str, Any] | None, digits: int = 3, scale: float = 1.0) -> str:
    if d is None:
        return "—"
    mean, std = d.get("mean", d.get("kid_mean")), d.get("std", d.get("kid_std"))
    mean_s = _fmt(None if mean is None else scale * mean, digits)
    return f"{mean_s} ± {_fmt(None if std is None else scale * std, digits)}"


def table(report: dict[str, Any]) -> str:
    """The markdown table of the four goals."""
    f, r = report["faces"], report["realism"]
    fm, fr = f["model"], f["real"]
    rows = [
        "| goal | metric | model | real heads | target | |",
        "|---|---|---|---|---|---|",
        f"| faces appear | MTCNN detection rate, {fm['n']} images at {f['detector']['face_size']}² "
        f"| {_fmt(fm['rate'], 3)} ({fm['detected']}) | {_fmt(fr['rate'], 3)} ({fr['detected']}) "
        f"| ratio {_fmt(f['ratio'], 3)} ≥ {TARGETS['faces_ratio']:g} | {_mark(f['passed'])} |",
        f"| realism | FID vs {r['model']['n_real']} held-out heads (real: the next {r['floor']['n_fake']}) "
        f"| {_fmt(r['model']['fid'], 1)} | {_fmt(r['floor']['fid'], 1)} | ≤ {TARGETS['fid']:g} "
        f"| {_mark(r['passed'])} |",
        f"| realism | KID × 10³ | {_pm(r['model'], 1, 1e3)} | {_pm(r['floor'], 1, 1e3)} | — | |",
    ]
    g = report.get("geometry")
    if g is not None:
        ctrl = g["control_true_heads_as_mpi"]
        rows.append(
            f"| geometry | depth error §9.3, {g['gmpi']['n_used']} renders "
            f"({g['gmpi']['n_skipped']} skipped); "
            f"flat = 1.0 | {_pm(g['gmpi'])} | control (true heads as MPIs) {_pm(ctrl)} "
            f"| ≤ {TARGETS['depth_error']:g} | {_mark(g['passed'])} |"
        )
    c = report.get("consistency")
    if c is not None:
        m, rr = c["model"], c["real"]
        rows.append(
            f"| 3D consistency | identity cos ({c['embedder_name']}), "
            f"yaw −{IDENTITY_YAW} vs +{IDENTITY_YAW}, "
            f"{m['n_pairs']} pairs | {_pm(m)} | {_pm(rr)} | beside real | |"
        )
        rows.append(
            f"| 3D consistency | the same, two different identities (scale) "
            f"| {_pm(m['different_identities'])} | {_pm(rr['different_identities'])} | — | |"
        )
    return "\n".join(rows)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    argv_used = list(sys.argv[1:] if argv is None else argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    wall0 = time.perf_counter()
    timings: dict[str, float] = {}
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)

    model = load_model(args.model, args.device)
    cfg, res, n = model.config, model.resolution, args.n
    n_planes = args.planes or cfg.eval.n_planes
    print(f"[model] {model.kind}: {model.source} ({cfg.name}, {res}², step {model.step})", flush=True)
    face_size = max(args.face_size, res)

    # held-out heads: the first N are the reals, the next N the floor's second set ----------------------
    heldout = args.heldout or default_heldout(res, 2 * n)
    heldout_meta = ensure_heldout(heldout, cfg, 2 * n)
    from gmpi_core.data.datasets import ImageSource

    names = list(ImageSource(image_file(heldout)).names)
    names_a, names_b = names[:n], names[n : 2 * n]
    t = time.perf_counter()
    real_a, real_b = read_images(heldout, names_a, res), read_images(heldout, names_b, res)
    timings["read_heldout_s"] = time.perf_counter() - t

    # the model's images: N renders at prior poses (GMPI) or N samples (2D) -----------------------------
    t = time.perf_counter()
    ev = sg.EvalSet.build(
        cfg, n, seed0=FID_SEED0 + args.seed * SEED_STRIDE, pose_seed=FID_POSE_SEED + args.seed * 1000
    )
    chunks: list[np.ndarray] = []
    if model.gmpi is not None:
        eta = Eta("renders at prior poses", n)
        for image, _ in sg.render_chunks(
            model.gmpi, ev, n_planes, res, FID_NOISE_SEED + args.seed * SEED_STRIDE, CHUNK
        ):
            chunks.append(as_uint8(image))
            eta.update(image.shape[0])
    else:
        assert model.two_d is not None
        latents = TwoDLatents(model.two_d)
        eta = Eta("2D samples", n)
        for i in range(0, n, CHUNK):
            image = sg.two_d_images(latents, model.two_d, ev.seeds[i : i + CHUNK]).cpu()
            chunks.append(as_uint8(image))
            eta.update(image.shape[0])
    fake = np.concatenate(chunks)
    timings["model_images_s"] = time.perf_counter() - t

    # 1. faces ----------------------------------------------------------------------------------------
    t = time.perf_counter()
    fake_boxes = detect_faces(fake, face_size, "faces: MTCNN on the model's images")
    real_boxes = detect_faces(real_a, face_size, "faces: MTCNN on held-out heads")
    faces = faces_metric(fake_boxes, real_boxes)
    faces.update(
        detector=detector_settings(args.face_size, res),
        target=TARGETS["faces_ratio"],
        passed=bool(faces["ratio"] >= TARGETS["faces_ratio"]),
        poses=f"model: prior poses (pose seed {ev_pose_seed(args.seed)}); real: the held-out heads' own "
        "prior poses"
        if model.gmpi is not None
        else "model: 2D samples (no camera); real: the held-out heads' own prior poses",
    )
    timings["faces_s"] = time.perf_counter() - t
    print(
        f"[faces] model {faces['model']['rate']:.3f}, real {faces['real']['rate']:.3f}, "
        f"ratio {faces['ratio']:.3f}",
        flush=True,
    )

    # 2. realism --------------------------------------------------------------------------------------
    t = time.perf_counter()
    extractor = inception()
    feat_a, cached_a = real_features_cached(extractor, heldout, "first", names_a, real_a, res)
    feat_b, cached_b = real_features_cached(extractor, heldout, "second", names_b, real_b, res)
    feat_fake = features(extractor, fake, "fid: features of the model's images")
    realism = {
        "extractor": extractor.extractor_id,
        "real": {
            "dataset": str(heldout),
            "seed": heldout_meta.get("seed"),
            "members": [names_a[0], names_a[-1]],
            "n": n,
            "cached": cached_a,
        },
        "floor_set": {"members": [names_b[0], names_b[-1]], "n": n, "cached": cached_b},
        "model": fid_kid(feat_a, feat_fake),
        "floor": fid_kid(feat_a, feat_b),
        "target_fid": TARGETS["fid"],
    }
    realism["passed"] = bool(realism["model"]["fid"] <= TARGETS["fid"])
    timings["realism_s"] = time.perf_counter() - t
    print(f"[fid] model FID {realism['model']['fid']:.1f}, floor {realism['floor']['fid']:.1f}", flush=True)

    # 3. geometry -------------------------------------------------------------------------------------
    geometry = None
    notes: list[str] = []
    if model.gmpi is not None and args.n_geometry > 0:
        from gmpi_core.eval.geometry import PoseMatchedDepth

        t = time.perf_counter()
        gt = gt_dataset(args.gt_data, cfg, args.gt_n)
        table_gt = PoseMatchedDepth(gt, args.tol, min_count=args.min_count)
        print(
            f"[gt] {len(table_gt)} ground-truth views from {gt} in {time.perf_counter() - t:.0f} s",
            flush=True,
        )
        if table_gt.resolution != (res, res):
            sys.exit(f"{gt} holds {table_gt.resolution} depth maps; this model renders {res}² (--gt-data)")
        geometry, _ = geometry_metric(
            model.gmpi, table_gt, args.n_geometry, n_planes, args.n_control, args.seed
        )
        timings["geometry_s"] = time.perf_counter() - t
        print(f"[geometry] depth error {geometry['gmpi']['mean']:.4f}", flush=True)

    # 4. 3D consistency -------------------------------------------------------------------------------
    consistency = None
    if model.gmpi is not None and args.n_identity > 0:
        t = time.perf_counter()
        try:
            embedder = build_embedder()
        except (ImportError, FileNotFoundError, RuntimeError) as e:
            notes.append(f"3D consistency skipped: {e}")
            print(f"[identity] skipped: {e}", flush=True)
        else:
            m_l, m_r = gmpi_yaw_pairs(model.gmpi, args.n_identity, n_planes, args.seed)
            r_l, r_r = real_yaw_pairs(cfg, args.n_identity)
            m_res = identity_metric(embedder, m_l, m_r, face_size, "model")
            r_res = identity_metric(embedder, r_l, r_r, face_size, "real heads")
            consistency = {
                "metric": f"cosine of FaceNet embeddings, yaw −{IDENTITY_YAW} vs +{IDENTITY_YAW} at pitch 0 "
                "(different_identities: the −0.3 view against the next identity's +0.3 view)",
                "embedder": repr(embedder),
                "embedder_name": embedder.name,
                "face_size": face_size,
                "model": m_res,
                "real": {
                    **r_res,
                    "identities": f"held-out seed {HELDOUT_SEED}, 0…{args.n_identity - 1}",
                },
                "seeds": [
                    IDENTITY_SEED0 + args.seed * SEED_STRIDE,
                    IDENTITY_SEED0 + args.seed * SEED_STRIDE + args.n_identity - 1,
                ],
                "target": None,
            }
            timings["consistency_s"] = time.perf_counter() - t
            print(f"[identity] model {m_res['mean']:.3f}, real {r_res['mean']:.3f}", flush=True)
    if model.gmpi is None:
        notes.append("2D model: geometry and 3D consistency do not apply")

    # pictures ----------------------------------------------------------------------------------------
    pictures = ["faces.png"]
    faces_picture(out / "faces.png", fake, fake_boxes, real_a, real_boxes, face_size)
    if model.gmpi is not None:
        sweep_picture(out / "sweep.png", model.gmpi, n_planes, args.seed)
        pictures.append("sweep.png")
    else:
        samples_picture(out / "samples.png", fake)
        pictures.append("samples.png")

    goals = {
        "faces": faces["passed"],
        "realism": realism["passed"],
        "geometry": None if geometry is None else geometry["passed"],
        "consistency": None,
    }
    report = {
        "benchmark": "demo_quality",
        "command": "python scripts/bench/demo_quality.py " + " ".join(argv_used),
        "model": {
            "kind": model.kind,
            "source": model.source,
            "preset": cfg.name,
            "resolution": res,
            "step": model.step,
        },
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "n": n,
        "n_planes": n_planes if model.gmpi is not None else None,
        "renders": {
            "seeds": [ev.seeds[0], ev.seeds[-1]],
            "pose_seed": ev_pose_seed(args.seed),
            "noise_seed": FID_NOISE_SEED + args.seed * SEED_STRIDE,
            "truncation_psi": 1.0,
        },
        "faces": faces,
        "realism": realism,
        "geometry": geometry,
        "consistency": consistency,
        "goals": goals,
        "passed": all(v for v in goals.values() if v is not None),
        "notes": notes,
        "pictures": pictures,
        "device": args.device,
        "torch_threads": torch.get_num_threads(),
        "timings": {**timings, "wall_s": time.perf_counter() - wall0},
    }
    atomic_write(out / "report.json", json.dumps(_json_safe(report), indent=1) + "\n")
    print()
    print(table(report))
    print()
    for note in notes:
        print(f"note: {note}")
    print(f"wrote {out / 'report.json'} and {', '.join(str(out / p) for p in pictures)} "
          f"in {format_duration(time.perf_counter() - wall0)}")  # fmt: skip
    return 0


def ev_pose_seed(seed: int) -> int:
    return FID_POSE_SEED + seed * 1000


def _json_safe(value: Any) -> Any:
    """NaN/inf → None (strict JSON), recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


if __name__ == "__main__":
    raise SystemExit(main())
