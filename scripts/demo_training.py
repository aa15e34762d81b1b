"""The long CPU training of the demo model (issue 16), carried across sessions through the repository.

A session's machine keeps nothing outside git, so the run's exact resume state (the newest training
checkpoint, its log and its sample grids) lives in ``docs/benchmarks/demo_training/state/`` between
sessions. Each session:

    python scripts/demo_training.py restore   # data (re-synthesized: identical bytes) + state -> runs/demo2d
    python scripts/demo_training.py train &   # continue with the recorded settings (log: runs/demo2d.log)
    ...                                       # work; pause it (kill -STOP) while timing anything
    python scripts/demo_training.py quality   # demo_quality.py on the snapshots not yet measured
    python scripts/demo_training.py save      # newest checkpoint, log, samples, curves -> docs/benchmarks/...

The settings are those of ``docs/benchmarks/demo_training/TRAINING.md`` (stage 1: a 2D StyleGAN2 at
``synthetic64``, R1 γ = 1 every 16th step, lr 0.002). ``train`` copies ``runs/demo2d/model`` to
``runs/demo2d/snapshots/STEP`` at every multiple of ``--snapshot-every`` steps for ``quality``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RUN = ROOT / "runs" / "demo2d"
DATA = ROOT / "runs" / "synth64-n20000"
RECORD = ROOT / "docs" / "benchmarks" / "demo_training"
STATE = RECORD / "state"
OVERRIDES = {"train": {"lr_g": 0.002, "lr_d": 0.002, "r1_gamma": 1.0}}
TRAIN_ARGS = [
    "--mode", "stylegan2", "--preset", "synthetic64", "--r1-interval", "16", "--steps", "200000",
    "--ckpt-every", "1000", "--sample-every", "1000", "--log-every", "50", "--workers", "1", "--seed", "0",
]  # fmt: skip


def _gmpi(*args: str) -> list[str]:
    return [sys.executable, "-m", "gmpi_core.cli", *args]


def restore() -> int:
    if not (DATA / "images.zip").is_file():
        subprocess.run(
            _gmpi("data", "synth", "--out", str(DATA), "--res", "64", "--n", "20000", "--seed", "0"),
            check=True,
        )
    ckpts = RUN / "checkpoints"
    if ckpts.is_dir() and any(ckpts.glob("ckpt_*.pt")):
        print(f"{ckpts} already holds checkpoints; nothing restored")
        return 0
    saved = sorted(STATE.glob("ckpt_*.pt"))
    if not saved:
        print(f"no saved state in {STATE}: `train` starts the run from scratch")
        return 0
    ckpts.mkdir(parents=True, exist_ok=True)
    shutil.copy2(saved[-1], ckpts / saved[-1].name)
    (ckpts / "latest").write_text(saved[-1].name + "\n", encoding="utf-8")
    for name in ("log.jsonl",):
        if (STATE / name).is_file():
            shutil.copy2(STATE / name, RUN / name)
    print(f"restored {saved[-1].name} into {ckpts}")
    return 0


def _snapshot(every: int) -> None:
    config = RUN / "model" / "config.json"
    try:
        step = int(json.loads(config.read_text(encoding="utf-8"))["extra"]["step"])
    except (OSError, ValueError, KeyError):
        return
    target = RUN / "snapshots" / str(step)
    if step % every or target.exists():
        return
    tmp = target.with_name(f".{step}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(RUN / "model", tmp)
    copied = json.loads((tmp / "config.json").read_text(encoding="utf-8"))["extra"]["step"]
    if copied == step:  # not overwritten by the next export while copying
        os.replace(tmp, target)
        print(f"[demo_training] snapshot {step}", flush=True)
    else:
        shutil.rmtree(tmp, ignore_errors=True)


def train(snapshot_every: int) -> int:
    RUN.mkdir(parents=True, exist_ok=True)
    overrides = RUN.parent / "demo2d.overrides.json"
    overrides.write_text(json.dumps(OVERRIDES), encoding="utf-8")
    cmd = _gmpi(
        "train", "--data", str(DATA), "--out", str(RUN), "--config-json", str(overrides), "--no-progress",
        *TRAIN_ARGS,
    )  # fmt: skip
    with open(RUN.parent / "demo2d.log", "a", encoding="utf-8") as log:
        # a short OpenMP spin before sleeping: with the default spin, another busy process on a 2-core box
        # slowed this 2-thread run 10-40x at times; OMP_WAIT_POLICY=PASSIVE avoids that but costs 1.55x
        # when the machine is quiet (docs/benchmarks/cpu_train_step.md)
        env = {**os.environ, "GOMP_SPINCOUNT": os.environ.get("GOMP_SPINCOUNT", "30000")}
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            while proc.poll() is None:
                _snapshot(snapshot_every)
                time.sleep(20)
        except KeyboardInterrupt:
            proc.terminate()
        return proc.wait()


def quality(n: int) -> int:
    snaps = sorted((RUN / "snapshots").glob("[0-9]*"), key=lambda p: int(p.name))
    for snap in snaps:
        out = RUN / "quality" / snap.name
        if (out / "report.json").is_file():
            continue
        subprocess.run(
            [sys.executable, str(ROOT / "scripts/bench/demo_quality.py"), "--model", str(snap), "--n", str(n),
             "--out", str(out)],
            check=True,
        )  # fmt: skip
    return 0


def save() -> int:
    ckpts = sorted((RUN / "checkpoints").glob("ckpt_*.pt"))
    if not ckpts:
        print(f"no checkpoint in {RUN / 'checkpoints'}", file=sys.stderr)
        return 2
    STATE.mkdir(parents=True, exist_ok=True)
    for old in STATE.glob("ckpt_*.pt"):
        old.unlink()
    shutil.copy2(ckpts[-1], STATE / ckpts[-1].name)
    shutil.copy2(RUN / "log.jsonl", STATE / "log.jsonl")
    samples = RECORD / "samples"
    samples.mkdir(parents=True, exist_ok=True)
    for png in (RUN / "samples").glob("*.png"):
        step = int(png.name.split("_")[0])
        if step % 2000 == 0 and not (samples / png.name).exists():
            shutil.copy2(png, samples / png.name)
    subprocess.run(
        [sys.executable, str(ROOT / "scripts/bench/training_report.py"), str(RUN), "--quality",
         str(RUN / "quality"), "--out", str(RECORD)],
        check=True,
    )  # fmt: skip
    for report in (RUN / "quality").glob("*/report.json"):
        dest = RECORD / "quality" / report.parent.name
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copy2(report, dest / "report.json")
    print(f"saved {ckpts[-1].name} and the record into {RECORD}")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="action", required=True)
    sub.add_parser("restore", help="synthesize the data if missing and restore the saved state")
    t = sub.add_parser("train", help="continue the run (foreground; put it in the background yourself)")
    t.add_argument("--snapshot-every", type=int, default=2000)
    q = sub.add_parser("quality", help="demo_quality.py on every snapshot without a report")
    q.add_argument("--n", type=int, default=512)
    sub.add_parser("save", help="newest checkpoint, log, samples, curves and quality reports into the record")
    args = p.parse_args(argv)
    if args.action == "restore":
        return restore()
    if args.action == "train":
        return train(args.snapshot_every)
    if args.action == "quality":
        return quality(args.n)
    return save()


if __name__ == "__main__":
    raise SystemExit(main())
