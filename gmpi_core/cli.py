"""The ``gmpi`` command line (every command takes ``--help``).

gmpi demo [--out outputs/demo]            novel views, depth and MPI planes from a tiny model (CPU)
gmpi presets [NAME]                       list presets / print one as JSON
gmpi render --model DIR|--preset NAME ... images, sweep videos, meshes, browser exports of chosen seeds
gmpi data synth --out DIR --res 64 --n 20000 --seed 0   the synthetic 3D-heads dataset
gmpi data check ...                                     check a dataset before training
gmpi train --preset synthetic64 --data DIR --out RUN    training (torchrun for several processes)
gmpi prep landmarks --input ZIP --out DIR               MTCNN landmarks in the original layout
gmpi prep poses --landmarks DIR/detections --out DIR    head poses from the landmarks (.mat files)
gmpi eval --model DIR --data DIR ...                    the metric protocol -> report.json
gmpi bench [--list | NAME [args...]]                    the benchmarks in scripts/bench (no NAME: list)
gmpi doctor                                             environment report

``gmpi data`` and ``gmpi prep`` alone (or with ``--help``) list their actions.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import runpy
import sys
import time
from pathlib import Path

import numpy as np

BENCH_DIR = Path(__file__).resolve().parent.parent / "scripts" / "bench"


def render_outputs(
    gmpi, out: Path, seed: int, n_planes: int, n_views: int, truncation_psi: float
) -> list[Path]:
    """Yaw sweep (PNG strip + MP4 + GIF), depth strip and MPI plane grids for one seed."""
    from gmpi_core.render.io import depth_to_uint8, grid, save_png, save_video, to_uint8

    cam = gmpi.config.camera
    mpi = gmpi.generate(
        seeds=[seed], n_planes=n_planes, truncation_psi=truncation_psi, generator=gmpi.noise_generator(seed)
    )
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
    from gmpi_core.pipeline import DEMO_CHECKPOINT
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
    from gmpi_core.pipeline import GMPI

    t0 = time.perf_counter()
    gmpi = GMPI.load(None, seed=args.seed)
    print(f"[gmpi demo] model: {gmpi.describe()}")
    out = Path(args.out)
    written = render_outputs(
        gmpi, out, args.seed, n_planes=args.planes, n_views=args.views, truncation_psi=1.0
    )
    print(f"[gmpi demo] wrote {len(written)} files in {time.perf_counter() - t0:.1f} s:")
    for p in written:
        print(f"  {p}")
    if args.train_seconds > 0:
        try:
            run = demo_training(gmpi, out, args.train_seconds, args.seed)
        except FileExistsError as e:  # OUT/data holds something that is not our synthetic dataset
            print(f"gmpi demo: error: {e}", file=sys.stderr)
            return 2
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


def bench_scripts(folder: Path = BENCH_DIR) -> dict[str, str]:
    """Name → one-line description (the first line of its docstring) of every benchmark script in
    ``folder``, read without running them."""
    scripts: dict[str, str] = {}
    for path in sorted(folder.glob("*.py")):
        if path.name.startswith("_"):
            continue
        try:
            doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
        except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
            doc = ""
        lines = doc.strip().splitlines()
        scripts[path.stem] = lines[0].replace("``", "`") if lines else "(no description)"
    return scripts


def _bench_listing(scripts: dict[str, str]) -> str:
    width = max(map(len, scripts))
    rows = [f"  {name:<{width}}  {text}" for name, text in scripts.items()]
    return "\n".join(
        [
            "usage: gmpi bench NAME [args...]   (gmpi bench NAME --help: the options of one benchmark)",
            "       gmpi bench [--list]         (this list)",
            "",
            f"benchmarks ({BENCH_DIR}):",
            *rows,
        ]
    )


def cmd_bench(argv: list[str]) -> int:
    """``gmpi bench``: no name, ``--list``, ``-h``/``--help`` list the benchmarks (exit 0); ``NAME args...``
    runs ``scripts/bench/NAME.py`` with ``args``; an unknown name lists them on stderr (exit 2)."""
    scripts = bench_scripts() if BENCH_DIR.is_dir() else {}
    if not scripts:
        print(
            f"gmpi bench: no benchmarks found: they are the scripts in scripts/bench of a source checkout "
            f"({BENCH_DIR} does not hold any); run gmpi from a clone of the repository",
            file=sys.stderr,
        )
        return 2
    if not argv or argv[0] in ("--list", "-l", "-h", "--help"):
        print(_bench_listing(scripts))
        return 0
    name, rest = argv[0], argv[1:]
    if name not in scripts:
        print(f"gmpi bench: no benchmark '{name}'\n\n{_bench_listing(scripts)}", file=sys.stderr)
        return 2
    script = BENCH_DIR / f"{name}.py"
    saved_argv = sys.argv
    sys.argv = [str(script), *rest]
    try:
        runpy.run_path(str(script), run_name="__main__")
    except SystemExit as exc:  # the scripts end with `raise SystemExit(main())`; argparse exits too
        if exc.code is None or isinstance(exc.code, int):
            return int(exc.code or 0)
        print(exc.code, file=sys.stderr)
        return 1
    finally:
        sys.argv = saved_argv
    return 0


# Subcommands whose module owns the full argument parser (their --help and options pass through):
# command -> module with ``main(argv)``, or action -> module for two-word commands.
_DELEGATED: dict[str, str | dict[str, str]] = {
    "render": "gmpi_core.render.cli",
    "train": "gmpi_core.train.cli",
    "eval": "gmpi_core.eval.cli",
    "data": {"synth": "gmpi_core.data.synthetic", "check": "gmpi_core.data.check"},
    "prep": {"landmarks": "gmpi_core.preprocess.landmarks", "poses": "gmpi_core.preprocess.pose"},
    "doctor": "gmpi_core.doctor",
}
_DELEGATED_HELP = {
    "render": "images, sweep videos, meshes, browser exports of chosen seeds",
    "train": "train GMPI (or a 2D StyleGAN2), one process or torchrun",
    "eval": "FID/KID, identity consistency, depth and pose accuracy -> report.json",
    "data": "datasets: synth (the synthetic 3D heads), check (a dataset before training)",
    "prep": "preprocessing in the original layouts: landmarks (MTCNN), poses (5-point PnP)",
    "doctor": "environment report: torch/CUDA/GPUs/NCCL/fused kernels; --gpu-selftest",
}
# One line per action of the two-word commands (shown by `gmpi data`, `gmpi prep`, `gmpi --help`).
_ACTION_HELP: dict[str, dict[str, str]] = {
    "data": {
        "synth": "render the synthetic 3D heads: images.zip + true poses, depth, masks, landmarks",
        "check": "check a dataset (images, poses, landmarks) before training",
    },
    "prep": {
        "landmarks": "5 facial landmarks per image with MTCNN "
        "(faces of 20 px or more: synthetic heads at 64² or larger)",
        "poses": "head poses from those landmarks (5-point PnP), written as Deep3DFaceRecon .mat files",
    },
}


def _actions_listing(command: str) -> str:
    actions = _ACTION_HELP[command]
    width = max(map(len, actions))
    return "\n".join(
        [
            f"usage: gmpi {command} {{{','.join(actions)}}} [options]",
            "",
            f"actions of `gmpi {command}` (`gmpi {command} ACTION --help` shows the options of one):",
            *(f"  {name:<{width}}  {text}" for name, text in actions.items()),
        ]
    )


def _two_word_epilog() -> str:
    rows = [(f"gmpi {c} {a}", text) for c, actions in _ACTION_HELP.items() for a, text in actions.items()]
    width = max(len(name) for name, _ in rows)
    return "\n".join(
        [
            "two-word commands:",
            *(f"  {name:<{width}}  {text}" for name, text in rows),
            "",
            "`gmpi COMMAND --help` shows the options of a command; `gmpi bench` lists the benchmarks.",
        ]
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="gmpi",
        description="Generative Multiplane Images: train, evaluate, render.",
        epilog=_two_word_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser(
        "demo",
        help="render novel views, depth and MPI planes from a tiny model on CPU",
        description="Render novel views, depth and MPI planes of the shipped demo model (a random "
        "synthetic64 model when none is shipped), then run a short training from it on synthetic heads. "
        "Files in --out are replaced.",
    )
    d.add_argument(
        "--out",
        default="outputs/demo",
        help="folder for the images and videos; the training run goes to OUT/train and its data to "
        "OUT/data (default: %(default)s)",
    )
    d.add_argument(
        "--seed",
        type=int,
        default=0,
        help="latent seed of the rendered head; also seeds the training run's synthetic data "
        "(default: %(default)s)",
    )
    d.add_argument(
        "--planes", type=int, default=32, help="MPI planes generated and rendered (default: %(default)s)"
    )
    d.add_argument(
        "--views",
        type=int,
        default=9,
        help="novel views across the training yaw range, in the strips and videos (default: %(default)s)",
    )
    d.add_argument(
        "--train-seconds",
        type=float,
        default=60.0,
        help="length in seconds of the demo training run; 0 skips it (default: %(default)s)",
    )
    d.set_defaults(func=cmd_demo)

    pr = sub.add_parser("presets", help="list the presets or print one as JSON")
    pr.add_argument("name", nargs="?", help="print this preset as JSON (default: list them all)")
    pr.set_defaults(func=cmd_presets)

    for name, text in _DELEGATED_HELP.items():
        sub.add_parser(name, help=f"{text}: `gmpi {name} --help`", add_help=False)
    sub.add_parser(
        "bench",
        help="the benchmarks in scripts/bench: `gmpi bench` lists them, `gmpi bench NAME [args...]` runs one",
        add_help=False,
    )
    return p


def _delegate(argv: list[str]) -> int:
    command, rest = argv[0], argv[1:]
    target = _DELEGATED[command]
    if isinstance(target, dict):
        if not rest or rest[0] in ("-h", "--help"):
            print(_actions_listing(command), file=sys.stdout if rest else sys.stderr)
            if not rest:
                print(f"gmpi {command}: error: name an action", file=sys.stderr)
            return 0 if rest else 2
        if rest[0] not in target:
            print(_actions_listing(command), file=sys.stderr)
            print(f"gmpi {command}: error: unknown action '{rest[0]}'", file=sys.stderr)
            return 2
        command = f"{command} {rest[0]}"
        target, rest = target[rest[0]], rest[1:]
    try:
        module = importlib.import_module(target)
    except ModuleNotFoundError as exc:
        if exc.name != target:
            raise
        print(
            f"gmpi {command}: error: not available in this installation ({target} is missing)",
            file=sys.stderr,
        )
        return 2
    return int(module.main(rest) or 0)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in _DELEGATED:
        return _delegate(argv)
    if argv and argv[0] == "bench":
        return cmd_bench(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (ValueError, FileNotFoundError) as exc:
        print(f"gmpi {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
