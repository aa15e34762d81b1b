"""Benchmark MTCNN landmark detection (``gmpi prep landmarks``, method §8.1): images/s per CPU core at 256².

Two image sets: synthetic heads (``gmpi_core.data.synthetic``) and 256² crops of ``skimage.data.astronaut()``
at random offsets (a real face; needs scikit-image). Rows: the detector alone at several batch sizes with
one torch thread, and the whole dataset step (zip decode + detect + atomic writes) with ``workers`` one-thread
processes. Prints a markdown table.

    python scripts/bench/landmarks.py --quick       # < 1 min on 2 CPU cores
    python scripts/bench/landmarks.py --n 128 --batches 1 8 16 32 --workers 1 2
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from gmpi_core.data.datasets import dataset_tool_name, write_dataset_zip
from gmpi_core.data.synthetic import synthesize_dataset
from gmpi_core.preprocess.landmarks import run_landmarks
from gmpi_core.preprocess.mtcnn import MTCNN


def astronaut_crops(n: int, res: int, seed: int = 0) -> list[np.ndarray]:
    """``n`` 256² crops of the astronaut at random offsets (the face inside), resized to res²."""
    try:
        import skimage.data
    except ImportError as e:
        raise SystemExit("the astronaut set needs scikit-image: pip install scikit-image") from e
    import PIL.Image

    image = skimage.data.astronaut()  # 512², face around x 180…270, y 60…175
    rng = np.random.default_rng(seed)
    crops = []
    for top, left in zip(rng.integers(0, 50, n), rng.integers(40, 140, n)):
        crop = PIL.Image.fromarray(image[top : top + 256, left : left + 256])
        crops.append(np.asarray(crop if res == 256 else crop.resize((res, res), PIL.Image.BICUBIC)))
    return crops


def synthetic_heads(n: int, res: int, folder: Path) -> tuple[list[np.ndarray], Path]:
    import io
    import zipfile

    import PIL.Image

    root = synthesize_dataset(folder / "syn", res=res, n=n, progress=False)
    with zipfile.ZipFile(root / "images.zip") as zf:
        names = sorted(m for m in zf.namelist() if m.endswith(".png"))
        images = [np.asarray(PIL.Image.open(io.BytesIO(zf.read(m))).convert("RGB")) for m in names]
    return images, root / "images.zip"


def time_detector(detector: MTCNN, images: list[np.ndarray], batch: int, repeats: int) -> tuple[float, float]:
    """Median images/s of ``detector.detect`` over ``repeats`` passes, and the fraction with a face."""
    detector.detect(images[:batch])  # warm-up
    rates, found = [], 0
    for _ in range(repeats):
        t0 = time.perf_counter()
        found = 0
        for a in range(0, len(images), batch):
            found += sum(len(f) > 0 for f in detector.detect(images[a : a + batch]))
        rates.append(len(images) / (time.perf_counter() - t0))
    return statistics.median(rates), found / len(images)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="32 images, batches 1 and 16, one repeat")
    parser.add_argument("--res", type=int, default=256)
    parser.add_argument("--n", type=int, default=64, help="images per set")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 16, 32])
    parser.add_argument(
        "--workers", type=int, nargs="+", default=[1, 2], help="process counts of the step rows"
    )
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if args.quick:
        args.n, args.batches, args.repeats, args.workers = 32, [1, 16], 1, [1]
    torch.set_num_threads(1)  # per core
    detector = MTCNN.pretrained()
    cores = os.cpu_count()
    print(
        f"MTCNN (gmpi_core.preprocess.mtcnn), {args.res}², {args.n} images per set, "
        f"torch {torch.__version__}, 1 torch thread per process, {cores} CPU cores on this machine\n"
    )
    print("| images | what | batch | processes | images/s | images/s per core | with a face |")
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        heads, heads_zip = synthetic_heads(args.n, args.res, Path(tmp))
        crops = astronaut_crops(args.n, args.res)
        crops_zip = write_dataset_zip(
            Path(tmp) / "crops.zip", [(dataset_tool_name(i), c) for i, c in enumerate(crops)]
        )
        for label, images, zip_path in (
            ("synthetic heads", heads, heads_zip),
            ("astronaut crops", crops, crops_zip),
        ):
            for batch in args.batches:
                rate, found = time_detector(detector, images, batch, args.repeats)
                print(f"| {label} | detector | {batch} | 1 | {rate:.1f} | {rate:.1f} | {found:.0%} |")
            for workers in args.workers:
                out = Path(tmp) / f"out_{label[:4]}_{workers}"
                summary = run_landmarks(zip_path, out, batch=16, progress=False, workers=workers)
                rate = summary["images"] / summary["seconds"]
                found = summary["detected"] / summary["images"]
                print(
                    f"| {label} | `gmpi prep landmarks` (incl. process start) | 16 | {workers} | "
                    f"{rate:.1f} | {rate / workers:.1f} | {found:.0%} |"
                )


if __name__ == "__main__":
    main()
