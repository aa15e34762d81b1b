"""``gmpi train``: parse arguments, build the configuration, run the :class:`Trainer` (docs/method.md §6.1).

    gmpi train --preset synthetic32 --data data/synth32 --out runs/s32 --steps 2000
    gmpi train --preset FFHQ256 --data ffhq256x256.zip --poses ffhq256_deep3dface_coeffs \\
        --init stylegan2_pkl:ffhq-res256-mirror-paper256-noaug.pkl --nproc-per-node 8 --out runs/ffhq256

With ``--nproc-per-node K > 1`` outside torchrun the command re-executes itself under
``python -m torch.distributed.run`` (``--standalone``, or ``--master_port P`` on localhost). The official
launcher's flags are accepted as aliases: ``--run_dataset`` (= ``--preset``), ``--nproc_per_node``,
``--master_port``. A run whose ``--out`` holds a checkpoint resumes from it unless ``--no-resume``.

Before the first step every image of ``--data`` is checked (``gmpi_core.data.check``: readable, an intact
image, R×R, with a pose); the run refuses to start with the list of bad images, or trains without them
with ``--skip-bad``. ``--exclude FILE`` leaves out the keys of an exclude list.
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
from pathlib import Path

from gmpi_core.config import ExperimentConfig, preset

__all__ = ["build_config", "build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="gmpi train",
        description="Train GMPI (or a plain 2D StyleGAN2 with --mode stylegan2); resumes from --out.",
    )
    p.add_argument(
        "--preset", "--run_dataset", dest="preset", default="synthetic32", help="experiment preset"
    )
    p.add_argument(
        "--data", help="dataset: a dataset_tool zip or an image folder (synthetic: the output folder)"
    )
    p.add_argument("--poses", help="pose data (Deep3DFace folder, EG3D dataset.json, poses.json)")
    p.add_argument("--out", required=True, help="run directory: checkpoints/, model/, samples/, log.jsonl")
    p.add_argument(
        "--init",
        default="random",
        help="random | stylegan2_pkl:<pkl> | native2d:<dir> (a --mode stylegan2 run's model/) | native:<dir>",
    )
    p.add_argument("--mode", choices=["gmpi", "stylegan2"], default="gmpi")
    p.add_argument("--steps", type=int, help="optimiser steps in total (default: the preset's total_iters)")
    p.add_argument("--kimg", type=float, help="train for this many thousand real images instead of --steps")
    p.add_argument("--batch", type=int, help="per-process batch size")
    p.add_argument("--batch-split", type=int, help="chunks of the generator forward per step")
    p.add_argument("--planes", type=int, help="MPI planes during training")
    p.add_argument("--seed", type=int, help="base seed (rank r uses seed + r)")
    p.add_argument(
        "--r1-interval",
        type=int,
        help="R1 every k-th D step with weight γ·k (lazy regularisation; default 1 = every step as GMPI)",
    )
    p.add_argument("--nproc-per-node", "--nproc_per_node", dest="nproc", type=int, default=1)
    p.add_argument("--master-port", "--master_port", dest="master_port", type=int)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--workers", type=int, default=2, help="data loader workers per process")
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--ckpt-every", type=int, help="steps between checkpoints (default: sample_interval)")
    p.add_argument("--sample-every", type=int, help="steps between sample grids (0: never)")
    p.add_argument(
        "--config-json", help="JSON file: a full experiment config, or {section: {field: value}} overrides"
    )
    check = p.add_argument_group(
        "data check", "before the first step every image is checked (headers, pose, size; gmpi data check)"
    )
    check.add_argument(
        "--skip-bad", action="store_true", help="train without the bad images (warned) instead of refusing"
    )
    check.add_argument("--full-data-check", action="store_true", help="decode every image (slower)")
    check.add_argument("--no-data-check", action="store_true", help="do not check the images first")
    check.add_argument(
        "--exclude", metavar="FILE", help="image keys never to draw (gmpi data check --write-exclude)"
    )
    p.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True)
    return p


def build_config(args: argparse.Namespace) -> ExperimentConfig:
    """The preset, then ``--config-json``, then the individual flags."""
    cfg = preset(args.preset)
    if args.config_json:
        path = Path(args.config_json)
        if not path.is_file():
            raise ValueError(f"--config-json: {path} does not exist")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ValueError(f"--config-json: {path} is not valid JSON ({e})") from e
        if not isinstance(data, dict):
            raise ValueError(f"--config-json: {path} must hold a JSON object")
        full = {"name", "camera", "generator", "discriminator", "train", "dataset"} <= set(data)
        cfg = ExperimentConfig.model_validate(data) if full else cfg.with_updates(**data)
    train: dict = {}
    if args.batch is not None:
        train["batch_size"] = args.batch
        if args.batch_split is None and cfg.train.batch_split > args.batch:
            train["batch_split"] = args.batch
    if args.batch_split is not None:
        train["batch_split"] = args.batch_split
    if args.planes is not None:
        train["n_planes"] = args.planes
    if args.seed is not None:
        train["seed"] = args.seed
    if args.r1_interval is not None:
        train["r1_interval"] = args.r1_interval
    dataset: dict = {}
    if args.data is not None:
        dataset["images"] = args.data
    if args.poses is not None:
        dataset["poses"] = args.poses
    return cfg.with_updates(train=train, dataset=dataset)


def _relaunch_under_torchrun(args: argparse.Namespace, argv: list[str]) -> int:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(args.nproc)]
    if args.master_port is not None:
        cmd += ["--nnodes", "1", "--master_addr", "127.0.0.1", "--master_port", str(args.master_port)]
    else:
        cmd += ["--standalone"]
    cmd += ["-m", "gmpi_core.train.cli", *argv]
    print(f"[gmpi train] launching {args.nproc} processes: {' '.join(cmd)}", file=sys.stderr)
    return subprocess.call(cmd)


def main(argv: list[str] | None = None) -> int:
    from gmpi_core.train import distributed as dist_utils

    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if args.nproc < 1:
        print("gmpi train: error: --nproc-per-node must be >= 1", file=sys.stderr)
        return 2
    if args.nproc > 1 and not dist_utils.inside_torchrun():
        return _relaunch_under_torchrun(args, argv)

    from gmpi_core.train.loop import Trainer

    logging.basicConfig(level=logging.INFO, format="[gmpi train] %(message)s")
    try:
        cfg = build_config(args)
        exclude: set[str] = set()
        if args.exclude:
            from gmpi_core.data.check import read_exclude_list

            exclude = read_exclude_list(args.exclude)
        trainer = Trainer(
            cfg,
            args.out,
            init=args.init,
            mode=args.mode,
            device=args.device,
            num_workers=args.workers,
            log_every=args.log_every,
            ckpt_every=args.ckpt_every,
            sample_every=args.sample_every,
            max_steps=args.steps,
            max_kimg=args.kimg,
            resume=args.resume,
            progress=args.progress,
            data_check="off" if args.no_data_check else "skip" if args.skip_bad else "error",
            data_check_full=args.full_data_check,
            exclude=exclude,
        )
        try:
            trainer.train()
        finally:
            trainer.close()
    except (ValueError, FileNotFoundError) as exc:
        print(f"gmpi train: error: {exc}", file=sys.stderr)
        return 2
    finally:
        dist_utils.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
