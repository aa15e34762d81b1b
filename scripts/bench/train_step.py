"""Benchmark one GMPI training step (spec §6.4): steps/s, images/s and peak memory per preset.

Runs the real ``Trainer.step`` (D step with R1, worst-of-4-views search, G step, EMA) on an in-memory
dataset of random images and prior poses, after warm-up steps, and prints a markdown table.

    python scripts/bench/train_step.py --quick                  # synthetic32 + synthetic64 on CPU, < 2 min
    python scripts/bench/train_step.py --device cuda            # adds FFHQ256 (batch 8, 32 planes)
    python scripts/bench/train_step.py --presets synthetic64 --batch 4 --planes 8 --steps 5
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import Dataset

from gmpi_core.camera import sample_sphere_poses, sphere_c2w, w2c_condition
from gmpi_core.config import ExperimentConfig, preset
from gmpi_core.train.loop import Trainer


class RandomPosedImages(Dataset):
    """``n`` random images in [-1, 1] with poses from the training prior: (image, w2c_flat, yaw, pitch)."""

    def __init__(self, cfg: ExperimentConfig, n: int, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        r, cam = cfg.generator.img_resolution, cfg.camera
        self.images = torch.rand(n, 3, r, r, generator=g) * 2 - 1
        self.yaw, self.pitch = sample_sphere_poses(
            n, cam.yaw_std, cam.pitch_std, cam.truncation_k, generator=g
        )
        c2w = sphere_c2w(self.yaw, self.pitch, radius=cam.sphere_radius, center_z=cam.sphere_center_z)
        self.w2c = w2c_condition(c2w).float()

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        return self.images[i], self.w2c[i], self.yaw[i : i + 1], self.pitch[i : i + 1]


def _peak_rss_mib() -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def bench(name: str, device: str, batch: int | None, planes: int | None, steps: int, warmup: int) -> dict:
    cfg = preset(name)
    train: dict = {}
    if batch is not None:
        train.update(batch_size=batch, batch_split=min(cfg.train.batch_split, batch))
    if planes is not None:
        train["n_planes"] = planes
    cfg = cfg.with_updates(train=train)
    b = cfg.train.batch_size
    data = RandomPosedImages(cfg, n=b * (steps + warmup))
    with tempfile.TemporaryDirectory() as out:
        t = Trainer(cfg, out, device=device, progress=False, resume=False, sample_every=0, dataset=data)
        dev = t.device
        for _ in range(warmup):
            t.step()
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
            torch.cuda.reset_peak_memory_stats(dev)
        times = []
        for _ in range(steps):
            t0 = time.perf_counter()
            t.step()
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            times.append(time.perf_counter() - t0)
        peak = torch.cuda.max_memory_allocated(dev) / 2**20 if dev.type == "cuda" else _peak_rss_mib()
        t.close()
    med = statistics.median(times)
    return {
        "preset": name,
        "device": str(dev),
        "batch": b,
        "planes": cfg.train.n_planes,
        "res": cfg.generator.img_resolution,
        "s_per_step": med,
        "steps_per_s": 1 / med,
        "imgs_per_s": b / med,
        "peak_mib": peak,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", nargs="+", help="default: synthetic32 synthetic64 (+ FFHQ256 on cuda)")
    p.add_argument("--device", default="cpu", help="cpu | cuda")
    p.add_argument("--batch", type=int, help="per-process batch (default: the preset's)")
    p.add_argument("--planes", type=int, help="training planes (default: the preset's)")
    p.add_argument("--steps", type=int, default=5, help="timed steps")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="batch 4, 3 timed steps after 1 warm-up")
    args = p.parse_args(argv)
    presets = args.presets or ["synthetic32", "synthetic64"] + (
        ["FFHQ256"] if args.device.startswith("cuda") else []
    )
    if args.quick:
        args.batch, args.steps, args.warmup = args.batch or 4, 3, 1
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    print("| preset | device | res | batch | planes | s/step | steps/s | img/s | peak MiB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name in presets:
        # the official FFHQ256 setting: batch 8 per GPU, 32 planes (spec §6.2)
        batch = 8 if name == "FFHQ256" and args.batch is None else args.batch
        r = bench(name, args.device, batch, args.planes, args.steps, args.warmup)
        peak = "n/a" if r["peak_mib"] is None else f"{r['peak_mib']:.0f}"
        print(
            f"| {r['preset']} | {r['device']} | {r['res']} | {r['batch']} | {r['planes']} "
            f"| {r['s_per_step']:.3f} | {r['steps_per_s']:.2f} | {r['imgs_per_s']:.1f} | {peak} |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
