"""Benchmark of the MPI renderer: fused kernel vs reference formulation (docs/method.md §3).

    python scripts/bench/render.py            # full table on the CPU (a few minutes)
    python scripts/bench/render.py --quick    # three rows, < 1 min
    python scripts/bench/render.py --device cuda

Every row runs in a fresh subprocess so that its memory figure is its own:

* time: median over ``--repeats`` calls after one warm-up call, divided by the batch size (ms per view);
* memory (CPU): peak resident set during the first (warm-up) call minus the resident set just before it,
  with the inputs already allocated: outputs, the renderer's temporaries and allocator slack. The peak is
  reset right before the call (``/proc/self/clear_refs`` = 5, Linux ≥ 4.0) and read from ``VmHWM``; where
  that is unavailable the growth of ``ru_maxrss`` is used, which under-reports when freed heap is reused.
  It measures resident pages, not allocations: memory allocated but never touched does not count.
* memory (CUDA): ``torch.cuda.max_memory_allocated`` minus the allocation before the first call.

Inputs: random RGBA with the opaque background of a GMPI; the default ``--alpha transparent`` keeps the
other planes' alpha in [0, 0.05], so no pixel becomes opaque before the background and the fused kernel's
early exit never triggers (its worst case). ``--alpha uniform`` (alpha ~ U(0, 1)) shows the early exit.
Poses: random yaw/pitch inside the FFHQ prior box.
"""

from __future__ import annotations

import argparse
import json
import re
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

FOV = 12.6
FULL = [(256, 32), (256, 96), (512, 96)]
BATCHES = [1, 8]


def _scene(size: int, n: int, batch: int, alpha: str, device: str) -> tuple[torch.Tensor, ...]:
    from gmpi_core.camera import sphere_c2w
    from gmpi_core.mpi.planes import confined_extents, plane_depths, plane_dhw

    gen = torch.Generator().manual_seed(0)
    rgba = torch.rand(batch, n, 4, size, size, generator=gen)
    if alpha == "transparent":
        rgba[:, :, 3] *= 0.05
    rgba[:, -1, 3] = 1.0
    box, background = confined_extents(FOV, 1.12, 0.289, 0.127, 2.0, radius=1.0, center_z=1.0)
    dhw = plane_dhw(plane_depths(0.95, 1.12, n), box, background)
    yaw = (torch.rand(batch, generator=gen) * 2 - 1) * 0.578
    pitch = (torch.rand(batch, generator=gen) * 2 - 1) * 0.254
    c2w = sphere_c2w(yaw, pitch, 1.0, 1.0)
    return rgba.to(device), dhw.to(device), c2w.to(device)


def _status_kib(field: str) -> int:
    match = re.search(rf"{field}:\s+(\d+) kB", Path("/proc/self/status").read_text())
    return int(match.group(1)) if match else 0


def _reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS; False where the kernel does not allow it."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return _status_kib("VmHWM") > 0


def _worker(args: argparse.Namespace) -> None:
    """One row: time and peak memory of one (impl, size, planes, batch, pass) configuration."""
    from gmpi_core.mpi.render import fused_available, render_mpi

    device = args.device
    if args.impl == "fused" and not fused_available(device):
        print(json.dumps({"error": "fused renderer unavailable"}))
        return
    rgba, dhw, c2w = _scene(args.size, args.planes, args.batch, args.alpha, device)
    if args.backward:
        rgba.requires_grad_(True)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def call() -> None:
        image, depth = render_mpi(rgba, dhw, c2w, FOV, args.size, impl=args.impl)
        if args.backward:
            (image.sum() + depth.sum()).backward()
            rgba.grad = None
        sync()

    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    hwm = _reset_peak_rss()
    rss_before = _status_kib("VmRSS") if hwm else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    call()  # warm-up (and the peak-memory measurement)
    if device == "cuda":
        extra_mib = (torch.cuda.max_memory_allocated() - base) / 2**20
    else:
        peak = _status_kib("VmHWM") if hwm else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        extra_mib = (peak - rss_before) / 1024
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    print(json.dumps({"ms_per_view": 1e3 * statistics.median(times) / args.batch, "extra_mib": extra_mib}))


def _accuracy(size: int, n: int) -> dict[str, float]:
    """max |Δimage| of fused float32 and reference float32 against the reference in float64."""
    from gmpi_core.mpi.render import render_mpi

    rgba, dhw, c2w = _scene(size, n, 1, "transparent", "cpu")
    fused, _ = render_mpi(rgba, dhw, c2w, FOV, size, impl="fused")
    ref32, _ = render_mpi(rgba, dhw, c2w, FOV, size, impl="reference")
    ref64, _ = render_mpi(rgba.double(), dhw.double(), c2w.double(), FOV, size, impl="reference")
    return {
        "fused32_vs_ref32": (fused - ref32).abs().max().item(),
        "fused32_vs_ref64": (fused.double() - ref64).abs().max().item(),
        "ref32_vs_ref64": (ref32.double() - ref64).abs().max().item(),
    }


def _run_row(args: argparse.Namespace, impl: str, size: int, n: int, batch: int, backward: bool) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        f"--impl={impl}",
        f"--size={size}",
        f"--planes={n}",
        f"--batch={batch}",
        f"--device={args.device}",
        f"--alpha={args.alpha}",
        f"--repeats={args.repeats}",
    ] + (["--backward"] if backward else [])
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    if out.returncode != 0 or not lines:
        return {"error": (out.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(lines[-1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="three rows, fewer repeats (< 1 min)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--alpha", default="transparent", choices=["transparent", "uniform"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--impl", default="fused", help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, default=256, help=argparse.SUPPRESS)
    parser.add_argument("--planes", type=int, default=96, help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--backward", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    if args.worker:
        _worker(args)
        return

    if args.quick:
        args.repeats = min(args.repeats, 3)
        rows = [("fused", 256, 32, 1, False), ("fused", 256, 96, 1, False), ("reference", 256, 96, 1, False)]
    else:
        rows = [("fused", r, n, b, False) for r, n in FULL for b in BATCHES]
        rows += [("reference", r, n, 1, False) for r, n in FULL] + [("reference", 256, 96, 8, False)]
        rows += [("fused", 256, 32, 8, True), ("fused", 256, 96, 1, True), ("reference", 256, 32, 8, True)]
    threads = torch.get_num_threads() if args.device == "cpu" else "-"
    print(f"MPI renderer benchmark — device {args.device}, threads {threads}, alpha '{args.alpha}', ", end="")
    print(f"median of {args.repeats} after 1 warm-up")
    print(
        f"{'impl':10s} {'pass':8s} {'R':>5s} {'N':>4s} {'batch':>5s} {'ms/view':>10s} {'peak extra MiB':>15s}"
    )
    for impl, size, n, batch, backward in rows:
        res = _run_row(args, impl, size, n, batch, backward)
        kind = "fwd+bwd" if backward else "forward"
        if "error" in res:
            print(f"{impl:10s} {kind:8s} {size:5d} {n:4d} {batch:5d}   {res['error']}")
        else:
            print(
                f"{impl:10s} {kind:8s} {size:5d} {n:4d} {batch:5d} {res['ms_per_view']:10.1f} "
                f"{res['extra_mib']:15.1f}"
            )
    if args.device == "cpu" and not args.quick:
        acc = _accuracy(256, 96)
        print("accuracy at R=256, N=96 (max |Δ image|): " + ", ".join(f"{k} {v:.2e}" for k, v in acc.items()))


if __name__ == "__main__":
    main()
