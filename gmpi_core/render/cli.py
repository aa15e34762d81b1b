"""``gmpi render``: single images, sweep videos, meshes and browser exports of chosen seeds (§9.6, §10).

    gmpi render --model DIR|--preset NAME [--seed S ...] [--planes N] [--psi PSI] [--zero-w-avg]
                [--mode image video mesh export | all] [--frames N] [--out DIR] ...

Each seed's MPI is generated once and written under ``OUT/seed_{S:04d}/``:
``image``  rendered.png, rendered_depth.png, rendered.json, mpi_rgb.png, mpi_alpha.png, mpi_rgba.png;
``video``  video_{rgb|depth}_{horizontal|vertical}.{mp4|gif};
``mesh``   mesh_{ψ}.ply (its own uniformly spaced planes, docs/method.md §9.6);
``export`` export/ (mpi.json + planes/*.webp) for the browser viewer.
Sweep poses beyond the pose prior render with ``--out-of-bounds clamp`` (the original would exit).

Existing output is never replaced silently: when ``OUT/seed_{S:04d}/`` already exists (and is not empty)
for a requested seed, the command stops before rendering anything, unless ``--overwrite``, which replaces
that whole folder. Each seed is rendered into a hidden ``OUT/.seed_{S:04d}.*.partial`` folder that is
renamed into place once the seed is complete, so an interrupted render leaves no folder that looks done
(and an earlier one stays intact until the new one is complete).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from gmpi_core.atomic import DIR_MODE, replace_dir, staged_dir
from gmpi_core.checkpoints import CHECKPOINT_ERRORS
from gmpi_core.checkpoints.sources import ModelSource, ModelSourceError, parse_source
from gmpi_core.mpi.render import OUT_OF_BOUNDS
from gmpi_core.pipeline import GMPI
from gmpi_core.render.export import IMAGE_FORMATS, LAYOUTS, export_mpi
from gmpi_core.render.mesh import DEFAULT_SIGMA, MESH_LEVEL, SMOOTHINGS, extract_mesh
from gmpi_core.render.video import VIDEO_FORMATS, VIDEO_FPS, write_sweep_videos
from gmpi_core.render.views import SWEEPS, generate_mpi, single_view_pose, write_single_image

__all__ = ["MODES", "build_parser", "main", "open_model"]

MODES = ("image", "video", "mesh", "export")
MODEL_PATH_HINT = (
    "a model is a native checkpoint folder holding config.json + weights.safetensors, as `gmpi train` "
    "writes it (e.g. runs/gmpi/model) or the shipped gmpi_core/assets/demo_model, an official GMPI "
    "checkpoint folder (config.pth + ema.pth) or a StyleGAN2-ADA .pkl"
)


def open_model(model: str | None, preset_name: str | None, seed: int) -> GMPI:
    """``--model`` (any source :meth:`GMPI.load` opens), else a random ``--preset`` model, else the shipped
    demo model; a path that holds no model is refused with what a model path looks like."""
    if model is None:
        source = None if preset_name is None else ModelSource("random", preset=preset_name)
        return GMPI.load(source, seed=seed)
    path = Path(model)
    if not path.exists():
        raise FileNotFoundError(f"--model {model}: no such file or folder; {MODEL_PATH_HINT}")
    try:
        source = parse_source(model)
    except ModelSourceError:
        if path.is_file():
            raise ValueError(
                f"--model {model} is a file, not a checkpoint folder; {MODEL_PATH_HINT}"
            ) from None
        raise ValueError(
            f"--model {model} is not a checkpoint folder: it has no config.json; {MODEL_PATH_HINT}"
        ) from None
    try:
        return GMPI.load(source)
    except CHECKPOINT_ERRORS as exc:
        if source.kind == "official":  # no config.json, and its official GMPI files do not load
            raise ValueError(
                f"--model {model} is not a checkpoint folder: it has no config.json and its official GMPI "
                f"checkpoint cannot be read ({exc}); {MODEL_PATH_HINT}"
            ) from None
        raise


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="gmpi render",
        description="Render single images, sweep videos, meshes and browser exports of a GMPI model\n"
        "into one folder OUT/seed_SSSS/ per seed (see below).",
        epilog=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    src = p.add_mutually_exclusive_group()
    src.add_argument(
        "--model",
        help="the model: a native checkpoint folder (config.json + weights.safetensors), e.g. "
        "runs/gmpi/model as `gmpi train` writes it, an official GMPI checkpoint folder (config.pth + "
        "ema.pth), a StyleGAN2-ADA .pkl, or KIND:PATH (default: the shipped demo model "
        "gmpi_core/assets/demo_model, or a random synthetic64 model when none is shipped)",
    )
    src.add_argument(
        "--preset", help="render a randomly initialised model of this preset (smoke tests; `gmpi presets`)"
    )
    p.add_argument(
        "--init-seed",
        type=int,
        default=0,
        help="seed of the random initialisation of --preset (or of the fallback model) "
        "(default: %(default)s)",
    )
    p.add_argument(
        "--seed",
        type=int,
        nargs="+",
        default=[0],
        help="latent seed(s), z from torch.manual_seed(S); one folder OUT/seed_SSSS per seed (default: 0)",
    )
    p.add_argument(
        "--planes",
        type=int,
        default=None,
        help="MPI planes of the image, video and export modes (default: the model config's eval.n_planes: "
        "32 for the demo model and the synthetic presets, 96 for the official FFHQ/AFHQ/MetFaces presets; "
        "mesh mode always uses its own planes)",
    )
    p.add_argument(
        "--psi", type=float, default=1.0, help="truncation ψ (default: %(default)s, no truncation)"
    )
    p.add_argument(
        "--zero-w-avg",
        action="store_true",
        help="truncate toward w = 0 like the official renders (their w_avg buffer is never loaded, §10)",
    )
    p.add_argument(
        "--mode",
        nargs="+",
        choices=[*MODES, "all"],
        default=["image", "video"],
        help="what to write per seed; all = every mode (default: image video)",
    )
    p.add_argument(
        "--out",
        default="outputs/render",
        help="output folder; each seed goes to OUT/seed_SSSS/. A seed folder that already exists is not "
        "touched: the command refuses before rendering anything unless --overwrite (default: %(default)s)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the existing OUT/seed_SSSS folders of the seeds rendered (each whole folder is swapped "
        "for the new one once that seed is complete; other seeds' folders are kept)",
    )
    p.add_argument(
        "--device",
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="torch device (default: cuda when available, else cpu; here: %(default)s)",
    )
    p.add_argument(
        "--noise-mode",
        choices=["random", "const"],
        default="random",
        help="per-layer noise: random (seeded by the seed) or the learned constant (default: %(default)s)",
    )
    p.add_argument(
        "--chunk-n-planes",
        type=int,
        default=0,
        help="generate the MPI this many planes at a time to save memory; 0: all at once "
        "(default: %(default)s)",
    )

    v = p.add_argument_group("image and video")
    v.add_argument(
        "--size", type=int, default=None, help="render size in pixels (default: the model resolution)"
    )
    v.add_argument(
        "--yaw", type=float, default=None, help="single image yaw in radians (default: U(-0.5, 0.5) by seed)"
    )
    v.add_argument(
        "--pitch",
        type=float,
        default=None,
        help="single image pitch in radians (default: U(-0.3, 0.3) by seed)",
    )
    v.add_argument("--frames", type=int, default=100, help="frames per sweep (default: %(default)s)")
    v.add_argument(
        "--sweeps",
        nargs="+",
        choices=SWEEPS,
        default=list(SWEEPS),
        help="horizontal: yaw 0.5 → -0.5 at pitch 0; vertical: pitch 0.3 → -0.3 at yaw 0 (default: both)",
    )
    v.add_argument(
        "--video-formats",
        nargs="+",
        choices=VIDEO_FORMATS,
        default=list(VIDEO_FORMATS),
        help=f"video containers written per sweep (default: {' '.join(VIDEO_FORMATS)})",
    )
    v.add_argument("--fps", type=int, default=VIDEO_FPS, help="video frame rate (default: %(default)s)")
    v.add_argument("--batch", type=int, default=16, help="views per renderer call (default: %(default)s)")
    v.add_argument(
        "--out-of-bounds",
        choices=OUT_OF_BOUNDS,
        default="clamp",
        help="rays that miss the background plane (poses beyond the prior): raise an error, clamp to its "
        "border texels, or ignore (black pixels) (default: %(default)s)",
    )

    m = p.add_argument_group("mesh")
    m.add_argument(
        "--mesh-chunk-n-planes",
        type=int,
        default=64,
        help="planes generated at a time for the mesh volume (its own uniformly spaced planes, up to the "
        "model resolution); <= 0: all at once (default: %(default)s)",
    )
    m.add_argument(
        "--mesh-smoothing",
        choices=SMOOTHINGS,
        default="gaussian",
        help="smoothing of the alpha volume before marching cubes (default: %(default)s)",
    )
    m.add_argument(
        "--mesh-sigma", type=float, default=DEFAULT_SIGMA, help="Gaussian σ in voxels (default: %(default)s)"
    )
    m.add_argument(
        "--mesh-level",
        type=float,
        default=MESH_LEVEL,
        help="marching-cubes iso-level of smooth(alpha - 0.5) (default: %(default)s)",
    )
    m.add_argument("--no-mesh-colors", action="store_true", help="write the PLY without vertex colours")

    e = p.add_argument_group("export")
    e.add_argument(
        "--export-format",
        choices=IMAGE_FORMATS,
        default="webp",
        help="texture image format of the browser export (default: %(default)s)",
    )
    e.add_argument(
        "--export-layout",
        choices=LAYOUTS,
        default="planes",
        help="one texture file per plane, or all planes in one atlas image (default: %(default)s)",
    )
    e.add_argument(
        "--export-size", type=int, default=None, help="texture size in texels (default: as generated)"
    )
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


def _seed_dir(out: Path, seed: int) -> Path:
    return out / f"seed_{seed:04d}"


def _holds_outputs(path: Path) -> bool:
    """Whether ``path`` exists as anything but an empty folder (a file, a link, a folder with entries)."""
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        return True
    return path.is_dir() and any(path.iterdir())


def _check_destination(out: Path, seeds: list[int], overwrite: bool) -> None:
    """Refuse, before any work, an ``--out`` that is a file or already holds one of the seeds' folders."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; give a folder (it gets one seed_SSSS/ folder per seed)")
    taken = [_seed_dir(out, s) for s in seeds if _holds_outputs(_seed_dir(out, s))]
    if taken and not overwrite:
        shown = ", ".join(str(t) for t in taken[:5]) + (
            f" and {len(taken) - 5} more" if len(taken) > 5 else ""
        )
        raise FileExistsError(
            f"{out} already holds renders of {'this seed' if len(taken) == 1 else 'these seeds'} ({shown}); "
            f"pass --overwrite to replace {'it' if len(taken) == 1 else 'them'}, or choose another --out"
        )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    modes = list(MODES) if "all" in args.mode else list(dict.fromkeys(args.mode))
    seeds = list(dict.fromkeys(args.seed))
    out_root = Path(args.out)
    try:
        _check_destination(out_root, seeds, args.overwrite)
        gmpi = open_model(args.model, args.preset, args.init_seed).to(args.device)
        print(f"[gmpi render] model: {gmpi.describe()}; modes: {', '.join(modes)}")
        out_root.mkdir(parents=True, exist_ok=True)
        swapped: list[bool] = []  # replace_dir's answers: was an earlier seed folder replaced?

        def swap(staging: Path, final: Path) -> None:
            swapped.append(replace_dir(staging, final))

        for seed in seeds:
            t0 = time.perf_counter()
            final = _seed_dir(out_root, seed)
            # render into a hidden sibling and rename it into place once complete: an interrupted or failed
            # render leaves no seed folder that looks finished (and keeps an earlier one intact until then)
            with staged_dir(final, mode=DIR_MODE, swap=swap) as staging:
                written = _render_seed(gmpi, args, modes, seed, staging)
            note = f" (replaced the earlier {final})" if swapped[-1] else ""
            print(
                f"[gmpi render] seed {seed}: {len(written)} files in {time.perf_counter() - t0:.1f} s{note}"
            )
            for path in written:
                print(f"  {final / path.relative_to(staging)}")
    except (ValueError, FileNotFoundError, FileExistsError, ImportError, RuntimeError) as exc:
        print(f"gmpi render: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
