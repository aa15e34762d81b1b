"""The ``gmpi`` command line.

gmpi demo [--out outputs/demo]            novel views, depth and MPI planes from a tiny model (CPU)
gmpi presets [NAME]                       list presets / print one as JSON
gmpi render --model DIR|--preset NAME ... images, sweep videos, meshes, browser exports of chosen seeds
gmpi data synth --out DIR --res 64 --n 20000 --seed 0   the synthetic 3D-heads dataset
gmpi train --preset synthetic64 --data DIR --out RUN    training (torchrun for several processes)
gmpi prep landmarks|poses ...                           preprocessing in the original layouts
gmpi eval --model DIR --data DIR ...                    the metric protocol -> report.json
gmpi bench render|generator|train_step|... [args...]    the benchmarks in scripts/bench
"""

from __future__ import annotations

import argparse
import importlib
import runpy
import sys
import time
from pathlib import Path

import numpy as np

DEMO_CHECKPOINT = Path(__file__).parent / "assets" / "demo_model"


def _load_model(model: str | None, preset_name: str | None, seed: int):
    from gmpi_core.pipeline import GMPI

    if model:
        return GMPI.from_pretrained(model), f"checkpoint {model}"
    if preset_name:
        return GMPI.random(
            preset_name, seed=seed
        ), f"randomly initialised '{preset_name}' model (seed {seed})"
    if (DEMO_CHECKPOINT / "config.json").exists():
        return GMPI.from_pretrained(DEMO_CHECKPOINT), f"shipped demo checkpoint {DEMO_CHECKPOINT}"
    return GMPI.random(
        "synthetic64", seed=seed
    ), "randomly initialised 'synthetic64' model (no demo checkpoint shipped yet)"


def render_outputs(
    gmpi, out: Path, seed: int, n_planes: int, n_views: int, truncation_psi: float
) -> list[Path]:
    """Yaw sweep (PNG strip + MP4 + GIF), depth strip and MPI plane grids for one seed."""
    from gmpi_core.render.io import depth_to_uint8, grid, save_png, save_video, to_uint8

    cam = gmpi.config.camera
    mpi = gmpi.generate(seeds=[seed], n_planes=n_planes, truncation_psi=truncation_psi)
    lo, hi = cam.yaw_range
    yaws = np.linspace(lo, hi, n_views)
    frames, depths = [], []
    for yaw in yaws:
        image, depth = gmpi.render(mpi, yaw=float(yaw), pitch=0.0)
        frames.append(to_uint8(image[0]))
        depths.append(depth_to_uint8(depth[0], cam.d_near, cam.d_far))
    rgb = mpi.rgba[0, :, :3]
    alpha = mpi.rgba[0, :, 3:]
    written = [
        save_png(out / "views_yaw_sweep.png", grid(frames, ncols=n_views)),
        save_png(out / "depth_yaw_sweep.png", grid(depths, ncols=n_views)),
        save_png(out / "mpi_rgb.png", grid([to_uint8(p, (0, 1)) for p in rgb], ncols=8, pad=2)),
        save_png(out / "mpi_alpha.png", grid([to_uint8(p, (0, 1)) for p in alpha], ncols=8, pad=2)),
        save_video(out / "video_rgb_horizontal.mp4", frames + frames[::-1], fps=8),
        save_video(out / "video_rgb_horizontal.gif", frames + frames[::-1], fps=8),
        save_video(out / "video_depth_horizontal.mp4", depths + depths[::-1], fps=8),
    ]
    return written


def demo_training(gmpi, out: Path, seconds: float, seed: int) -> Path:
    """A short GMPI training run from the demo model on freshly generated synthetic heads."""
    from gmpi_core.data.synthetic import synthesize_dataset
    from gmpi_core.train.loop import Trainer

    res = gmpi.config.generator.img_resolution
    print(f"[gmpi demo] generating 256 synthetic heads at {res}² for a {seconds:.0f} s training run ...")
    data = synthesize_dataset(out / "data", res=res, n=256, seed=seed, progress=False, overwrite=True)
    cfg = gmpi.config.with_updates(dataset={"images": str(data), "poses": None}, train={"batch_size": 4})
    init = f"native:{DEMO_CHECKPOINT}" if (DEMO_CHECKPOINT / "config.json").exists() else "random"
    trainer = Trainer(cfg, out / "train", init=init, resume=False, progress=True, log_every=5,
                      sample_every=0, n_sample_latents=8, max_steps=10**6)  # fmt: skip
    trainer.train(max_seconds=seconds)
    trainer.write_samples()
    trainer.close()
    return out / "train"


def cmd_demo(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    gmpi, what = _load_model(None, None, args.seed)
    print(f"[gmpi demo] model: {what}")
    out = Path(args.out)
    written = render_outputs(
        gmpi, out, args.seed, n_planes=args.planes, n_views=args.views, truncation_psi=1.0
    )
    print(f"[gmpi demo] wrote {len(written)} files in {time.perf_counter() - t0:.1f} s:")
    for p in written:
        print(f"  {p}")
    if args.train_seconds > 0:
        run = demo_training(gmpi, out, args.train_seconds, args.seed)
        print(f"[gmpi demo] training run (checkpoint, samples, log.jsonl) in {run}")
    print(f"[gmpi demo] done in {time.perf_counter() - t0:.1f} s; outputs in {out.resolve()}")
    return 0


def cmd_presets(args: argparse.Namespace) -> int:
    from gmpi_core.config import PRESETS, preset

    if args.name:
        print(preset(args.name).model_dump_json(indent=2))
    else:
        for name, cfg in PRESETS.items():
            g = cfg.generator
            print(
                f"{name:12s} {g.img_resolution:5d}²  fov {cfg.camera.fov_deg:5.2f}°  "
                f"batch {cfg.train.batch_size}"
            )
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    script = Path(__file__).resolve().parent.parent / "scripts" / "bench" / f"{args.name}.py"
    if not script.exists():
        print(
            f"gmpi bench: no benchmark '{args.name}' ({script} not found; run from a source checkout)",
            file=sys.stderr,
        )
        return 2
    sys.argv = [str(script), *args.rest]
    runpy.run_path(str(script), run_name="__main__")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="gmpi", description="Generative Multiplane Images: train, evaluate, render."
    )
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo", help="render novel views, depth and MPI planes from a tiny model on CPU")
    d.add_argument("--out", default="outputs/demo")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--planes", type=int, default=32)
    d.add_argument("--views", type=int, default=9)
    d.add_argument(
        "--train-seconds", type=float, default=60.0, help="length of the demo training run (0: skip)"
    )
    d.set_defaults(func=cmd_demo)

    pr = sub.add_parser("presets", help="list the presets or print one as JSON")
    pr.add_argument("name", nargs="?")
    pr.set_defaults(func=cmd_presets)

    for name, text in _DELEGATED_HELP.items():
        sub.add_parser(name, help=f"{text}: `gmpi {name} --help`", add_help=False)

    b = sub.add_parser("bench", help="run a benchmark from scripts/bench (render, generator)")
    b.add_argument("name")
    b.add_argument("rest", nargs=argparse.REMAINDER)
    b.set_defaults(func=cmd_bench)
    return p


# Subcommands whose module owns the full argument parser (their --help and options pass through):
# command -> module with ``main(argv)``, or action -> module for two-word commands.
_DELEGATED: dict[str, str | dict[str, str]] = {
    "render": "gmpi_core.render.cli",
    "train": "gmpi_core.train.cli",
    "eval": "gmpi_core.eval.cli",
    "data": {"synth": "gmpi_core.data.synthetic"},
    "prep": {"landmarks": "gmpi_core.preprocess.landmarks", "poses": "gmpi_core.preprocess.pose"},
    "doctor": "gmpi_core.doctor",
}
_DELEGATED_HELP = {
    "render": "images, sweep videos, meshes, browser exports of chosen seeds",
    "train": "train GMPI (or a 2D StyleGAN2), one process or torchrun",
    "eval": "FID/KID, identity consistency, depth and pose accuracy -> report.json",
    "data": "datasets: synth (the synthetic 3D heads)",
    "prep": "preprocessing: landmarks (MTCNN), poses (5-point PnP) in the original layouts",
    "doctor": "environment report: torch/CUDA/GPUs/NCCL/fused kernels; --gpu-selftest",
}


def _delegate(argv: list[str]) -> int:
    target = _DELEGATED[argv[0]]
    rest = argv[1:]
    if isinstance(target, dict):
        if not rest or rest[0] not in target:
            got = f"'{rest[0]}'" if rest else "nothing"
            print(f"gmpi {argv[0]}: expected one of {', '.join(target)}, got {got}", file=sys.stderr)
            return 2
        target, rest = target[rest[0]], rest[1:]
    module = importlib.import_module(target)
    return int(module.main(rest) or 0)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in _DELEGATED:
        return _delegate(argv)
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (ValueError, FileNotFoundError) as exc:
        print(f"gmpi {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
