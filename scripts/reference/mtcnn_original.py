"""Reference landmark files from the ORIGINAL detector: the ``mtcnn`` package at the version the original
GMPI pins (0.1.1, TensorFlow), run on real photos shipped inside PyPI packages.

It writes the landmark files exactly as the original ``prepare_landmarks_ffhq.py`` does (5 lines
``"x<TAB>y"``, ``int()`` of the most probable face's keypoints) and ``manifest.json``: for every image its
source (package, version, path, sha256 of the file's bytes), the deterministic edits made to it (crops,
mirror, block means, ...) and the sha256 of the resulting pixels, the detector's settings and the versions
of everything that ran. ``tests/gmpi_core/preprocess/test_mtcnn_original.py`` rebuilds the same images
with ``build_image`` below and requires our MTCNN to write identical files.

Ties: the original's NMS orders candidates with numpy's (unstable) ``argsort``, so two candidates with the
same probability (O-Net saturates at 1.0) are taken in an order that depends on the numpy build. Every
image is therefore run three times: with numpy's own order, and with the ties broken towards the first and
towards the last candidate. When the landmark files differ the image is marked ``tie_ambiguous`` and all
outcomes are recorded as ``alternatives``.

This script never runs in the project's venv (the original needs TensorFlow). The original GMPI's
environment (``virtual_envs/mtcnn_env.yaml``: Python 3.7, tensorflow-gpu 1.15, keras 2.8, numpy 1.21.5,
opencv-python 4.5.5.62) cannot be installed on Python 3.11; the reference venv that produced the committed
fixtures keeps what decides the numbers — mtcnn 0.1.1 itself, OpenCV 4.5.5.62 (a yanked release: pip
takes it when pinned exactly, with a warning), numpy 1.x — with TensorFlow 2.15, the last with Keras 2, the
API mtcnn 0.1.1 was written for (``pkg_resources`` comes from the venv's own setuptools, 65.5 on 3.11):

    python3.11 -m venv /tmp/tfvenv
    /tmp/tfvenv/bin/pip install "tensorflow-cpu==2.15.1" "numpy==1.26.4" \
        "opencv-python-headless==4.5.5.62" "scikit-image==0.26.0" "pillow==13.0.0" "matplotlib==3.11.2"
    /tmp/tfvenv/bin/pip install --no-deps "mtcnn==0.1.1"
    /tmp/tfvenv/bin/python scripts/reference/mtcnn_original.py \
        --out tests/gmpi_core/preprocess/data/mtcnn_original

Importing this module needs only numpy and Pillow (the test uses ``CASES`` and ``build_image``);
TensorFlow and mtcnn are imported by ``main``.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib.metadata
import importlib.util
import io
import json
import os
import platform
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

SETTINGS = {"min_face_size": 20, "steps_threshold": [0.6, 0.7, 0.7], "scale_factor": 0.709}

# One photo, or a deterministic edit of one. ``source``: (package, path inside the package); ``ops`` run in
# order on the decoded array (see ``apply_op``). Sizes include sides that are multiples of 5 (where the
# original's pyramid level sizes ⌈h·s⌉ differ from ⌊h·s + 1⌋) and faces cut by the top/left edge (boxes
# past the edge, where np.fix and floor differ). The LFW faces are 25×25 grey crops, enlarged by whole
# pixels (each pixel a k×k block) so MTCNN's 20 px minimum face fits.
ASTRONAUT = ("skimage", "data/astronaut.png")
CAMERA = ("skimage", "data/camera.png")
LFW = ("skimage", "data/lfw_subset.npy")
GRACE_HOPPER = ("matplotlib", "mpl-data/sample_data/grace_hopper.jpg")


def _lfw(index: int, k: int) -> list[list[Any]]:
    return [["index", index], ["to_uint8"], ["kron", k], ["gray_to_rgb"]]


CASES: list[dict[str, Any]] = [
    {"name": "astronaut", "source": ASTRONAUT, "ops": []},
    {"name": "astronaut_500x500", "source": ASTRONAUT, "ops": [["crop", 0, 500, 0, 500]]},
    {"name": "astronaut_255x320", "source": ASTRONAUT, "ops": [["crop", 25, 280, 110, 430]]},
    {"name": "astronaut_edge_top_left", "source": ASTRONAUT, "ops": [["crop", 75, 375, 190, 440]]},
    {"name": "astronaut_mirror", "source": ASTRONAUT, "ops": [["fliplr"]]},
    {"name": "astronaut_half", "source": ASTRONAUT, "ops": [["block_mean", 2]]},
    {"name": "astronaut_quarter", "source": ASTRONAUT, "ops": [["block_mean", 4]]},
    {
        "name": "astronaut_third_120x120",
        "source": ASTRONAUT,
        "ops": [["block_mean", 3], ["crop", 10, 130, 40, 160]],
    },
    {
        "name": "astronaut_quarter_100x100",
        "source": ASTRONAUT,
        "ops": [["block_mean", 4], ["crop", 0, 100, 0, 100]],
    },
    {"name": "camera", "source": CAMERA, "ops": [["gray_to_rgb"]]},
    {
        "name": "camera_third_150x150",
        "source": CAMERA,
        "ops": [["gray_to_rgb"], ["block_mean", 3], ["crop", 0, 150, 0, 150]],
    },
    {
        "name": "camera_edge_top_left",
        "source": CAMERA,
        "ops": [["gray_to_rgb"], ["crop", 130, 330, 215, 415]],
    },
    {"name": "lfw000_x4", "source": LFW, "ops": _lfw(0, 4)},
    {"name": "lfw001_x5", "source": LFW, "ops": _lfw(1, 5)},
    {"name": "lfw002_x6", "source": LFW, "ops": _lfw(2, 6)},
    {"name": "lfw003_x4", "source": LFW, "ops": _lfw(3, 4)},
    {"name": "lfw006_x3", "source": LFW, "ops": _lfw(6, 3)},
    {"name": "lfw007_x4", "source": LFW, "ops": _lfw(7, 4)},
    {"name": "lfw010_x5", "source": LFW, "ops": _lfw(10, 5)},
    {"name": "lfw011_x4", "source": LFW, "ops": _lfw(11, 4)},
    {
        "name": "lfw_mosaic_3x3",
        "source": LFW,
        "ops": [["mosaic", [0, 1, 2, 3, 5, 6, 7, 8, 10], 3, 4], ["gray_to_rgb"]],
    },
    {"name": "chelsea_no_face", "source": ("skimage", "data/chelsea.png"), "ops": []},
    {"name": "coffee_no_face", "source": ("skimage", "data/coffee.png"), "ops": []},
    {"name": "grace_hopper", "source": GRACE_HOPPER, "ops": []},
    {"name": "grace_hopper_edge_top_left", "source": GRACE_HOPPER, "ops": [["crop", 150, 450, 205, 505]]},
]


# --- the images (numpy + Pillow only: the test imports these) ---------------------------------------------


def source_file(package: str, path: str) -> Path:
    """The file ``path`` inside the installed ``package`` (located without importing it)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"package {package} is not installed")
    for location in spec.submodule_search_locations:
        candidate = Path(location) / path
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"{path} not found in the installed {package}")


def decode(path: Path) -> np.ndarray:
    """The file's pixels as the original script reads them: ``np.array(PIL.Image.open(f))`` (``.npy``:
    the stored array)."""
    data = path.read_bytes()
    if path.suffix == ".npy":
        return np.load(io.BytesIO(data))
    import PIL.Image

    with PIL.Image.open(io.BytesIO(data)) as image:
        return np.array(image)


def apply_op(image: np.ndarray, op: list[Any]) -> np.ndarray:
    """One deterministic, integer-exact edit (identical results with any numpy version):

    ``index i`` (one image of a stack), ``to_uint8`` ([0, 1] floats → round(255·x)), ``gray_to_rgb``,
    ``crop y0 y1 x0 x1``, ``fliplr``, ``block_mean k`` (k×k means, rounded half up), ``kron k`` (each pixel
    a k×k block), ``mosaic [indices] columns k`` (stack images, each ``kron k``, in a grid)."""
    kind, args = op[0], op[1:]
    if kind == "index":
        return image[args[0]]
    if kind == "to_uint8":
        return np.round(image * 255).astype(np.uint8)
    if kind == "gray_to_rgb":
        return np.repeat(image[..., None], 3, axis=-1) if image.ndim == 2 else image
    if kind == "crop":
        y0, y1, x0, x1 = args
        return image[y0:y1, x0:x1]
    if kind == "fliplr":
        return image[:, ::-1]
    if kind == "block_mean":
        k = args[0]
        h, w = image.shape[0] // k * k, image.shape[1] // k * k
        blocks = image[:h, :w].astype(np.int64).reshape(h // k, k, w // k, k, *image.shape[2:])
        return ((blocks.sum(axis=(1, 3)) + k * k // 2) // (k * k)).astype(np.uint8)
    if kind == "kron":
        return np.repeat(np.repeat(image, args[0], axis=0), args[0], axis=1)
    if kind == "mosaic":
        indices, columns, k = args
        tiles = [apply_op(apply_op(image[i], ["to_uint8"]), ["kron", k]) for i in indices]
        rows = [np.concatenate(tiles[r : r + columns], axis=1) for r in range(0, len(tiles), columns)]
        return np.concatenate(rows, axis=0)
    raise ValueError(f"unknown image op {op!r}")


def build_image(case: dict[str, Any]) -> tuple[np.ndarray, Path]:
    """The case's RGB uint8 [H, W, 3] image (C-contiguous) and the source file it came from."""
    path = source_file(*case["source"])
    image = decode(path)
    for op in case["ops"]:
        image = apply_op(image, op)
    return np.ascontiguousarray(image), path


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def pixels_sha256(image: np.ndarray) -> str:
    """Hash of the pixels with their shape, e.g. to check that a rebuilt image is the one of the manifest."""
    return sha256(repr((image.shape, str(image.dtype))).encode() + np.ascontiguousarray(image).tobytes())


# --- the original detector --------------------------------------------------------------------------------


def landmark_file_text(result: list[dict[str, Any]]) -> str | None:
    """The original's result file for ``detect_faces`` output: the keypoints of ``result[0]`` (None: no
    face, the image goes to the fail list)."""
    if not result:
        return None
    return "".join(f"{x}\t{y}\n" for x, y in result[0]["keypoints"].values())


class _NumpyProxy:
    """numpy, except ``argsort``: lets the original's NMS break score ties in a chosen direction."""

    def __init__(self, argsort: Callable[[np.ndarray], np.ndarray]) -> None:
        self._argsort = argsort

    def argsort(self, a: np.ndarray, *args: Any, **kwargs: Any) -> np.ndarray:
        return self._argsort(np.asarray(a))

    def __getattr__(self, name: str) -> Any:
        return getattr(np, name)


def _ties_last_first(s: np.ndarray) -> np.ndarray:
    return np.argsort(s, kind="stable")  # NMS takes from the end: among ties the last candidate first


def _ties_first_first(s: np.ndarray) -> np.ndarray:
    return np.lexsort((-np.arange(len(s)), s))  # among ties the first candidate sorts last → taken first


@contextlib.contextmanager
def _tie_order(module: Any, argsort: Callable[[np.ndarray], np.ndarray] | None) -> Iterator[None]:
    if argsort is None:
        yield
        return
    saved = module.np
    module.np = _NumpyProxy(argsort)
    try:
        yield
    finally:
        module.np = saved


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, type=Path, help="fixture folder (results/*.txt + manifest.json)")
    p.add_argument("--only", nargs="*", default=None, help="case names (default: all)")
    args = p.parse_args(argv)

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    tf.keras.utils.disable_interactive_logging()  # mtcnn calls predict() with its progress bar
    import cv2
    import mtcnn
    import mtcnn.mtcnn

    detector = mtcnn.MTCNN(**SETTINGS)
    variants: dict[str, Callable[[np.ndarray], np.ndarray] | None] = {
        "numpy": None,
        "ties_last_candidate_first": _ties_last_first,
        "ties_first_candidate_first": _ties_first_first,
    }
    results_dir = args.out / "results"
    results_dir.mkdir(parents=True, exist_ok=True)
    images = []
    for case in CASES:
        if args.only and case["name"] not in args.only:
            continue
        package, inner = case["source"]
        try:
            image, path = build_image(case)
        except (ModuleNotFoundError, FileNotFoundError) as e:
            print(f"{case['name']}: skipped ({e})", file=sys.stderr)
            continue
        t0 = time.perf_counter()
        outcomes = {}
        for variant, argsort in variants.items():
            with _tie_order(mtcnn.mtcnn, argsort):
                result = detector.detect_faces(image.copy())
            outcomes[variant] = (landmark_file_text(result), result)
        text, result = outcomes["numpy"]
        alternatives = sorted({t or "" for t, _ in outcomes.values()} - {text or ""})
        record: dict[str, Any] = {
            "name": case["name"],
            "source": {
                "package": package,
                "version": _version({"skimage": "scikit-image"}.get(package, package)),
                "path": inner,
                "sha256": sha256(path.read_bytes()),
            },
            "ops": case["ops"],
            "shape": list(image.shape),
            "pixels_sha256": pixels_sha256(image),
            "status": "ok" if text is not None else "no_face",
            "faces": len(result),
        }
        target = results_dir / f"{case['name']}.txt"
        if text is not None:
            target.write_text(text)
            record["result"] = f"results/{target.name}"
            record["confidence"] = float(result[0]["confidence"])
            record["box"] = [int(v) for v in result[0]["box"]]
        else:
            target.unlink(missing_ok=True)
        record["tie_ambiguous"] = bool(alternatives)
        if alternatives:
            record["alternatives"] = {
                variant: t or "" for variant, (t, _) in outcomes.items() if (t or "") != (text or "")
            }
        images.append(record)
        print(
            f"{case['name']}: {image.shape} {record['status']} faces={len(result)}"
            f"{' TIE-AMBIGUOUS' if alternatives else ''} ({time.perf_counter() - t0:.1f} s)",
            file=sys.stderr,
        )

    manifest = {
        "generator": "scripts/reference/mtcnn_original.py",
        "detector": {"package": "mtcnn", "version": _version("mtcnn"), "settings": SETTINGS},
        "landmark_file": "5 lines 'x<TAB>y': int() of result[0]['keypoints'] (left_eye, right_eye, nose, "
        "mouth_left, mouth_right), as data_preprocess/prepare_landmarks_ffhq.py writes them",
        "tie_variants": list(variants),
        "versions": {
            "python": platform.python_version(),
            "mtcnn": _version("mtcnn"),
            "tensorflow-cpu": _version("tensorflow-cpu") or _version("tensorflow"),
            "keras": _version("keras"),
            "numpy": np.__version__,
            "opencv": cv2.__version__,
            "pillow": _version("pillow"),
            "scikit-image": _version("scikit-image"),
            "matplotlib": _version("matplotlib"),
        },
        "machine": platform.machine(),
        "images": images,
    }
    (args.out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
