"""Benchmark one training step (docs/method.md §6.4): s/step, CPU-s/step, images/s, peak memory per preset.

Runs the real ``Trainer.step`` on an in-memory dataset of random images and prior poses, after warm-up
steps, and prints a markdown table. Mode ``gmpi``: D step with R1, worst-of-4-views search, G step, EMA;
mode ``stylegan2``: the 2D stage (no poses, planes or views).

    python scripts/bench/train_step.py --quick                  # synthetic32 + synthetic64 on CPU, < 2 min
    python scripts/bench/train_step.py --device cuda            # adds FFHQ256 (batch 8, 32 planes)
    python scripts/bench/train_step.py --presets synthetic64 --batch 4 --planes 8 --steps 5
    python scripts/bench/train_step.py --presets synthetic64 --modes gmpi stylegan2 \\
        --baseline 22e9579 --rounds 3                           # side by side against another commit

**Side by side** (``--baseline REF``): the library of commit REF is checked out into a temporary git
worktree and measured by this same script in a subprocess with ``PYTHONPATH`` pointing at it; the two
trees alternate (REF, HEAD, REF, HEAD, …, ``--rounds`` each), so a machine whose load drifts affects both.
Each row reports wall time and **CPU time** per step (all threads of the process): on a shared machine
the CPU time is the steadier number, and it is what the speed-up column uses. ``--r1-interval`` and
``--threads`` apply to the current tree only where REF's config has no such field (it is then noted).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import Dataset

REPO = Path(__file__).resolve().parents[2]


class RandomPosedImages(Dataset):
    """``n`` random images in [-1, 1] with poses from the training prior: (image, w2c_flat, yaw, pitch)."""

    def __init__(self, cfg, n: int, seed: int = 0) -> None:
        from gmpi_core.camera import sample_sphere_poses, sphere_c2w, w2c_condition

        g = torch.Generator().manual_seed(seed)
        r, cam = cfg.generator.img_resolution, cfg.camera
        self.images = torch.rand(n, 3, r, r, generator=g) * 2 - 1
        self.yaw, self.pitch = sample_sphere_poses(
            n, cam.yaw_std, cam.pitch_std, cam.truncation_k, generator=g
        )
        # sphere_c2w, not camera_c2w: --baseline runs this script on older trees too
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


def bench(
    name: str,
    device: str,
    batch: int | None,
    planes: int | None,
    steps: int,
    warmup: int,
    mode: str = "gmpi",
    r1_interval: int | None = None,
) -> dict:
    from gmpi_core.config import preset
    from gmpi_core.train.loop import Trainer

    cfg = preset(name)
    train: dict = {}
    if batch is not None:
        train.update(batch_size=batch, batch_split=min(cfg.train.batch_split, batch))
    if planes is not None:
        train["n_planes"] = planes
    note = ""
    if r1_interval is not None:
        if "r1_interval" in type(cfg.train).model_fields:
            train["r1_interval"] = r1_interval
        else:
            note = "no r1_interval in this tree"
    cfg = cfg.with_updates(train=train)
    b = cfg.train.batch_size
    data = RandomPosedImages(cfg, n=b * (steps + warmup))
    with tempfile.TemporaryDirectory() as out:
        t = Trainer(
            cfg, out, device=device, mode=mode, progress=False, resume=False, sample_every=0, dataset=data
        )
        dev = t.device
        for _ in range(warmup):
            t.step()
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
            torch.cuda.reset_peak_memory_stats(dev)
        times, cpu = [], []
        for _ in range(steps):
            t0, c0 = time.perf_counter(), time.process_time()
            t.step()
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
        peak = torch.cuda.max_memory_allocated(dev) / 2**20 if dev.type == "cuda" else _peak_rss_mib()
        t.close()
    # lazy R1 makes steps unequal: the mean over whole intervals is the fair per-step cost
    per_step = statistics.fmean if r1_interval and r1_interval > 1 else statistics.median
    med, med_cpu = per_step(times), per_step(cpu)
    return {
        "preset": name,
        "mode": mode,
        "device": str(dev),
        "batch": b,
        "planes": cfg.train.n_planes if mode == "gmpi" else 0,
        "res": cfg.generator.img_resolution,
        "s_per_step": med,
        "cpu_s_per_step": med_cpu,
        "imgs_per_s": b / med,
        "peak_mib": peak,
        "threads": torch.get_num_threads(),
        "note": note,
    }


def _row(tree: str, r: dict, speedup: str = "") -> str:
    peak = "n/a" if r["peak_mib"] is None else f"{r['peak_mib']:.0f}"
    return (
        f"| {tree} | {r['preset']} | {r['mode']} | {r['device']} | {r['res']} | {r['batch']} | {r['planes']} "
        f"| {r['s_per_step']:.3f} | {r['cpu_s_per_step']:.3f} | {r['imgs_per_s']:.1f} | {peak} | {speedup} |"
    )


_HEADER = (
    "| tree | preset | mode | device | res | batch | planes | s/step | CPU-s/step | img/s | peak MiB "
    "| speed-up |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|"
)


def _worktree(ref: str) -> tuple[Path, str]:
    sha = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", ref], check=True, capture_output=True, text=True
    ).stdout.strip()
    path = Path(tempfile.mkdtemp(prefix=f"gmpi-bench-{sha}-"))
    subprocess.run(
        ["git", "-C", str(REPO), "worktree", "add", "--detach", str(path), sha],
        check=True,
        capture_output=True,
        text=True,
    )
    return path, sha


def _measure_in(tree: Path | None, job: dict) -> dict:
    """One measurement in a fresh process, importing gmpi_core from ``tree`` (None: this checkout)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(tree or REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker-json", json.dumps(job)]
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True, cwd=str(tree or REPO))
    return json.loads(out.stdout.strip().splitlines()[-1])


def side_by_side(args: argparse.Namespace, presets: list[str]) -> int:
    tree, sha = _worktree(args.baseline)
    try:
        head = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
        ).stdout.strip()
        here = f"{head}{'+changes' if dirty else ''}"
        print(f"torch {torch.__version__}; baseline {sha} vs this checkout {here}; {args.rounds} rounds each")
        print(_HEADER)
        for name in presets:
            for mode in args.modes:
                job = dict(
                    name=name, device=args.device, batch=args.batch, planes=args.planes, steps=args.steps,
                    warmup=args.warmup, mode=mode, r1_interval=args.r1_interval, threads=args.threads,
                )  # fmt: skip
                base_job = dict(job, r1_interval=args.baseline_r1_interval)
                runs: dict[str, list[dict]] = {"base": [], "head": []}
                for _ in range(args.rounds):
                    runs["base"].append(_measure_in(tree, base_job))
                    runs["head"].append(_measure_in(None, job))
                agg = {}
                for k, rs in runs.items():
                    r = dict(rs[0])
                    for field in ("s_per_step", "cpu_s_per_step", "imgs_per_s"):
                        r[field] = statistics.median(x[field] for x in rs)
                    r["peak_mib"] = max((x["peak_mib"] or 0) for x in rs) or None
                    agg[k] = r
                speed = agg["base"]["cpu_s_per_step"] / agg["head"]["cpu_s_per_step"]
                wall = agg["base"]["s_per_step"] / agg["head"]["s_per_step"]
                print(_row(sha, agg["base"]), flush=True)
                print(_row(here, agg["head"], f"{speed:.2f}× CPU ({wall:.2f}× wall)"), flush=True)
    finally:
        subprocess.run(
            ["git", "-C", str(REPO), "worktree", "remove", "--force", str(tree)], capture_output=True
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", nargs="+", help="default: synthetic32 synthetic64 (+ FFHQ256 on cuda)")
    p.add_argument("--modes", nargs="+", choices=["gmpi", "stylegan2"], default=["gmpi"])
    p.add_argument("--device", default="cpu", help="cpu | cuda")
    p.add_argument("--batch", type=int, help="per-process batch (default: the preset's)")
    p.add_argument("--planes", type=int, help="training planes (default: the preset's)")
    p.add_argument("--steps", type=int, default=5, help="timed steps")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--r1-interval", type=int, help="lazy R1 every k steps (default: the preset's, 1)")
    p.add_argument("--quick", action="store_true", help="batch 4, 3 timed steps after 1 warm-up")
    p.add_argument("--baseline", metavar="REF", help="also measure commit REF, alternating with this tree")
    p.add_argument("--baseline-r1-interval", type=int, help="--r1-interval for the baseline tree")
    p.add_argument("--rounds", type=int, default=3, help="alternations per row with --baseline")
    p.add_argument("--worker-json", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker_json:  # one measurement for side_by_side, printed as JSON
        job = json.loads(args.worker_json)
        threads = job.pop("threads", None)
        if threads:
            torch.set_num_threads(int(threads))
        torch.manual_seed(0)
        print(json.dumps(bench(**job)))
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    presets = args.presets or ["synthetic32", "synthetic64"] + (
        ["FFHQ256"] if args.device.startswith("cuda") else []
    )
    if args.quick:
        args.batch, args.steps, args.warmup = args.batch or 4, 3, 1
    if args.baseline:
        return side_by_side(args, presets)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    print(_HEADER)
    for name in presets:
        for mode in args.modes:
            # the official FFHQ256 setting: batch 8 per GPU, 32 planes (docs/method.md §6.2)
            batch = 8 if name == "FFHQ256" and args.batch is None else args.batch
            r = bench(name, args.device, batch, args.planes, args.steps, args.warmup, mode, args.r1_interval)
            print(_row("this checkout", r), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
