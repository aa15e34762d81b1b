"""Benchmark the GMPI generator: fast factorised alpha path vs the per-plane reference (docs/method.md §4.2).

Prints a markdown table of median forward times (B=1, default variant) and peak memory for each plane
count, plus the largest difference between the two paths and a 2D StyleGAN2 forward as the floor.

    python scripts/bench/generator.py --quick          # R=256, N in {32, 96}, < 2 min on 2 CPU cores
    python scripts/bench/generator.py --planes 32 96 --repeats 10 --device cuda
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from gmpi_core.networks.generator import GMPIGenerator


def _rss_kib(field: str) -> int | None:
    """``VmRSS``/``VmHWM`` of this process in KiB (Linux), else None."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter (``echo 5 > /proc/self/clear_refs``); False if not allowed."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def measure(
    fn: Callable[[], object], repeats: int, device: torch.device, warmup: bool = True
) -> tuple[float, float | None]:
    """Median wall time [s] of ``fn`` and peak memory above the starting point [MiB] (None if unknown)."""
    if warmup:
        fn()  # allocator and first-call overheads
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start_mem = torch.cuda.memory_allocated()
    else:
        can_reset = _reset_peak_rss()
        start_kib = _rss_kib("VmRSS")
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    peak: float | None
    if device.type == "cuda":
        peak = (torch.cuda.max_memory_allocated() - start_mem) / 2**20
    else:
        peak_kib = _rss_kib("VmHWM")
        peak = (
            None if not can_reset or peak_kib is None or start_kib is None else (peak_kib - start_kib) / 1024
        )
    return statistics.median(times), peak


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="R=256, N in {32, 96}, few repeats")
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--planes", type=int, nargs="+", default=[32, 96])
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per fast-path row")
    parser.add_argument("--reference-repeats", type=int, default=3, help="timed runs per reference row")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    parser.add_argument(
        "--backward-planes", type=int, nargs="*", default=None, help="N for the train-step row (default: all)"
    )
    args = parser.parse_args()
    if args.quick:
        args.resolution, args.planes, args.repeats, args.reference_repeats = 256, [32, 96], 3, 1
        args.backward_planes = [32]
    backward_planes = args.planes if args.backward_planes is None else args.backward_planes
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    torch.manual_seed(0)
    channel_base = 16384 if args.resolution <= 256 else 32768
    g = GMPIGenerator(img_resolution=args.resolution, channel_base=channel_base).to(device).eval()
    z = torch.randn(1, g.z_dim, device=device)
    with torch.no_grad():
        ws = g.mapping(z)

    print(
        f"GMPI generator, default variant, R={args.resolution}, B=1, device={device}, "
        f"threads={torch.get_num_threads()}, torch {torch.__version__}\n"
    )
    print("| what | N | median time [s] | peak memory [MiB] |")
    print("|---|---|---|---|")
    with torch.no_grad():
        t, mem = measure(lambda: g.synthesize_2d(ws, noise_mode="const"), args.repeats, device)
    print(f"| StyleGAN2 2D image (floor) | - | {t:.3f} | {_fmt(mem)} |")

    for n_planes in args.planes:
        depths = torch.linspace(0, 1, n_planes, device=device)
        with torch.no_grad():
            for impl, repeats in (("fast", args.repeats), ("reference", args.reference_repeats)):

                def forward(impl: str = impl, depths: torch.Tensor = depths) -> torch.Tensor:
                    return g.synthesis(ws, depths, noise_mode="const", impl=impl)

                t, mem = measure(forward, repeats, device, warmup=not (args.quick and impl == "reference"))
                print(f"| forward, impl={impl} | {n_planes} | {t:.3f} | {_fmt(mem)} |")
            fast = g.synthesis(ws, depths, noise_mode="const")
            ref = g.synthesis(ws, depths, noise_mode="const", impl="reference")
            max_diff = float((fast - ref).abs().max())
            del fast, ref
        if n_planes in backward_planes:
            g.train()

            def step(depths: torch.Tensor = depths) -> None:
                g.zero_grad(set_to_none=True)
                g(z, depths, noise_mode="const").mean().backward()

            t, mem = measure(step, max(1, args.repeats // 2), device)
            g.eval()
            print(f"| forward+backward (train mode), impl=fast | {n_planes} | {t:.3f} | {_fmt(mem)} |")
        print(f"| max abs difference fast vs reference | {n_planes} | {max_diff:.2e} | |")


def _fmt(mem: float | None) -> str:
    return "n/a" if mem is None else f"{mem:.0f}"


if __name__ == "__main__":
    main()
