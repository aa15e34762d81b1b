"""``gmpi render``: single images, sweep videos, meshes and browser exports of chosen seeds (spec §9.6, §10).

    gmpi render --model DIR|--preset NAME [--seed S ...] [--planes N] [--psi PSI] [--zero-w-avg]
                [--mode image video mesh export | all] [--frames N] [--out DIR] ...

Each seed's MPI is generated once and written under ``OUT/seed_{S:04d}/``:
``image``  rendered.png, rendered_depth.png, rendered.json, mpi_rgb.png, mpi_alpha.png, mpi_rgba.png;
``video``  video_{rgb|depth}_{horizontal|vertical}.{mp4|gif};
``mesh``   mesh_{ψ}.ply (its own uniformly spaced planes, spec §9.6);
``export`` export/ (mpi.json + planes/*.webp) for the browser viewer.
Sweep poses beyond the pose prior render with ``--out-of-bounds clamp`` (the original would exit).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from gmpi_core.mpi.render import OUT_OF_BOUNDS
from gmpi_core.pipeline import GMPI
from gmpi_core.render.export import IMAGE_FORMATS, LAYOUTS, export_mpi
from gmpi_core.render.mesh import DEFAULT_SIGMA, MESH_LEVEL, SMOOTHINGS, extract_mesh
from gmpi_core.render.video import VIDEO_FORMATS, VIDEO_FPS, write_sweep_videos
from gmpi_core.render.views import SWEEPS, generate_mpi, single_view_pose, write_single_image

__all__ = ["MODES", "build_parser", "main"]

MODES = ("image", "video", "mesh", "export")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="gmpi render",
        description="Render single images, sweep videos, meshes and browser exports of a GMPI model.",
    )
    src = p.add_mutually_exclusive_group()
    src.add_argument("--model", help="native checkpoint directory (default: the shipped demo model)")
    src.add_argument("--preset", help="randomly initialised model of this preset (smoke tests)")
    p.add_argument("--init-seed", type=int, default=0, help="seed of the random initialisation (--preset)")
    p.add_argument("--seed", type=int, nargs="+", default=[0], help="latent seed(s): torch.manual_seed(S)")
    p.add_argument(
        "--planes", type=int, default=None, help="MPI planes (default: the config's eval count, 96)"
    )
    p.add_argument("--psi", type=float, default=1.0, help="truncation ψ")
    p.add_argument(
        "--zero-w-avg",
        action="store_true",
        help="truncate toward w = 0 like the official renders (their w_avg buffer is never loaded, spec §10)",
    )
    p.add_argument("--mode", nargs="+", choices=[*MODES, "all"], default=["image", "video"])
    p.add_argument("--out", default="outputs/render")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--noise-mode", choices=["random", "const"], default="random", help="per-layer noise")
    p.add_argument("--chunk-n-planes", type=int, default=0, help="generate planes in chunks (0: all at once)")

    v = p.add_argument_group("image and video")
    v.add_argument("--size", type=int, default=None, help="render size (default: the model resolution)")
    v.add_argument("--yaw", type=float, default=None, help="single image yaw (default: U(-0.5, 0.5) by seed)")
    v.add_argument(
        "--pitch", type=float, default=None, help="single image pitch (default: U(-0.3, 0.3) by seed)"
    )
    v.add_argument("--frames", type=int, default=100, help="frames per sweep")
    v.add_argument("--sweeps", nargs="+", choices=SWEEPS, default=list(SWEEPS))
    v.add_argument("--video-formats", nargs="+", choices=VIDEO_FORMATS, default=list(VIDEO_FORMATS))
    v.add_argument("--fps", type=int, default=VIDEO_FPS)
    v.add_argument("--batch", type=int, default=16, help="views per renderer call")
    v.add_argument(
        "--out-of-bounds", choices=OUT_OF_BOUNDS, default="clamp", help="rays missing the background"
    )

    m = p.add_argument_group("mesh")
    m.add_argument("--mesh-chunk-n-planes", type=int, default=64)
    m.add_argument("--mesh-smoothing", choices=SMOOTHINGS, default="gaussian")
    m.add_argument("--mesh-sigma", type=float, default=DEFAULT_SIGMA, help="Gaussian σ in voxels")
    m.add_argument("--mesh-level", type=float, default=MESH_LEVEL, help="iso-level of smooth(alpha - 0.5)")
    m.add_argument("--no-mesh-colors", action="store_true", help="write the PLY without vertex colours")

    e = p.add_argument_group("export")
    e.add_argument("--export-format", choices=IMAGE_FORMATS, default="webp")
    e.add_argument("--export-layout", choices=LAYOUTS, default="planes")
    e.add_argument("--export-size", type=int, default=None, help="texture size (default: as generated)")
    return p


def _render_seed(gmpi: GMPI, args: argparse.Namespace, modes: list[str], seed: int, out: Path) -> list[Path]:
    written: list[Path] = []
    if {"image", "video", "export"} & set(modes):
        mpi = generate_mpi(
            gmpi,
            seed,
            n_planes=args.planes,
            truncation_psi=args.psi,
            zero_w_avg=args.zero_w_avg,
            chunk_n_planes=args.chunk_n_planes,
            noise_mode=args.noise_mode,
        )
        if "image" in modes:
            yaw, pitch = single_view_pose(seed)
            yaw = yaw if args.yaw is None else args.yaw
            pitch = pitch if args.pitch is None else args.pitch
            written += write_single_image(
                gmpi, mpi, out, yaw, pitch, size=args.size, out_of_bounds=args.out_of_bounds
            )
        if "video" in modes:
            for sweep in args.sweeps:
                written += write_sweep_videos(
                    gmpi,
                    mpi,
                    out,
                    sweep,
                    n_frames=args.frames,
                    formats=args.video_formats,
                    fps=args.fps,
                    size=args.size,
                    batch_size=args.batch,
                    out_of_bounds=args.out_of_bounds,
                )
        if "export" in modes:
            extra = {"seed": seed, "truncation_psi": args.psi, "zero_w_avg": args.zero_w_avg}
            written.append(
                export_mpi(
                    mpi,
                    gmpi.config.camera,
                    out / "export",
                    fmt=args.export_format,
                    size=args.export_size,
                    layout=args.export_layout,
                    extra=extra,
                )
                / "mpi.json"
            )
    if "mesh" in modes:
        written.append(
            extract_mesh(
                gmpi,
                seed,
                out,
                truncation_psi=args.psi,
                zero_w_avg=args.zero_w_avg,
                chunk_n_planes=args.mesh_chunk_n_planes,
                noise_mode=args.noise_mode,
                smoothing=args.mesh_smoothing,
                sigma=args.mesh_sigma,
                level=args.mesh_level,
                colors=not args.no_mesh_colors,
            )
        )
    return written


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    modes = list(MODES) if "all" in args.mode else list(dict.fromkeys(args.mode))
    try:
        from gmpi_core.cli import _load_model

        gmpi, what = _load_model(args.model, args.preset, args.init_seed)
        gmpi.to(args.device)
        print(f"[gmpi render] model: {what}; modes: {', '.join(modes)}")
        for seed in args.seed:
            t0 = time.perf_counter()
            out = Path(args.out) / f"seed_{seed:04d}"
            written = _render_seed(gmpi, args, modes, seed, out)
            print(f"[gmpi render] seed {seed}: {len(written)} files in {time.perf_counter() - t0:.1f} s")
            for path in written:
                print(f"  {path}")
    except (ValueError, FileNotFoundError, FileExistsError, ImportError, RuntimeError) as exc:
        print(f"gmpi render: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
