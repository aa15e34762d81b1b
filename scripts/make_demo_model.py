"""Package a trained GMPI model directory as the demo model shipped in ``gmpi_core/assets/demo_model``.

Keeps the EMA generator (as ``weights.safetensors``) and the discriminator (so ``gmpi demo``'s short
training run continues a trained pair), both stored in float16 to keep the repository small; they load
into float32 networks. Writes ``TRAINING.md`` from the benchmark's ``report.json`` that trained it.

    python scripts/make_demo_model.py runs/geometry/stage2/model --report runs/geometry/report.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

DEST = Path(__file__).resolve().parent.parent / "gmpi_core" / "assets" / "demo_model"


def _half(srcs: list[Path], dst: Path) -> None:
    """Tensors of ``srcs`` (later files override earlier ones by name) saved in float16."""
    tensors = {}
    for src in srcs:
        tensors.update(load_file(str(src)))
    tensors = {k: v.half() if v.is_floating_point() else v for k, v in tensors.items()}
    save_file(tensors, str(dst), metadata={"format": "pt"})


def training_notes(report: dict) -> str:
    s1, s2, ev = report["stage1"], report["stage2"], report["eval"]
    rows = "\n".join(
        f"| {k} | {v['mean']:.4f} ± {v['std']:.4f} | {v['n_used']} |"
        for k, v in report["depth_error"].items()
    )
    curve = ", ".join(f"{int(p['step'])}: {p['mean']:.3f}" for p in report["curve"])
    command = report.get("command") or (
        f"python scripts/bench/synthetic_geometry.py --budget-min {report['budget_min']:g}"
    )
    threads = report.get("torch_threads", "?")
    quality = ""
    if report.get("image_quality"):
        q = report["image_quality"]
        lines = [
            f"- {key}: FID {r['fid']:.1f}, KID {r['kid_mean']:.4f} ± {r['kid_std']:.4f} ({r['n_fake']} imgs)"
            for key, r in q["rows"].items()
        ]
        head = f"Image quality against {q['real']['n']} held-out synthetic heads (§9.2; few images: FID"
        quality = "\n\n" + head + " is biased up):\n\n" + "\n".join(lines)
    return f"""# The demo model

Preset `{report["preset"]}` ({report["resolution"]}², synthetic 3D heads), trained on CPU
({report["device"]}, {threads} torch threads) by `{command}`:
a 2D StyleGAN2 for {s1["steps"]} steps ({s1["train_s"] / 60:.1f} min),
then GMPI initialised from it for {s2["steps"]} steps ({s2["train_s"] / 60:.1f} min). Shipped: the EMA
generator and the discriminator, stored in float16 (`scripts/make_demo_model.py`).

Depth error (docs/method.md §9.3, z-scored MSE in the pose-matched face mask; {ev["n_latents"]} fresh latents
at prior poses, {ev["n_planes"]} planes; a flat image scores 1.0):

| row | mean ± std | renders |
|---|---|---|
{rows}

Curve over GMPI steps (first latents): {curve}{quality}

This is a tiny model trained for minutes: its heads are blurry. It exists so that `gmpi demo`, the
viewer and the service stack have a real trained GMPI to show on a machine without a GPU.
"""


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", type=Path, help="a native model directory (config.json, ema.safetensors, ...)")
    p.add_argument("--report", type=Path, required=True, help="report.json of synthetic_geometry.py")
    p.add_argument("--dest", type=Path, default=DEST)
    args = p.parse_args()
    src: Path = args.model
    # the EMA file holds parameters only: buffers (filters, noise, w_avg) come from weights.safetensors
    weights = [src / "weights.safetensors", *[p for p in [src / "ema.safetensors"] if p.is_file()]]
    tmp = Path(tempfile.mkdtemp(dir=args.dest.parent, prefix=".demo_model-"))
    shutil.copy(src / "config.json", tmp / "config.json")
    _half(weights, tmp / "weights.safetensors")
    (tmp / "discriminator").mkdir()
    shutil.copy(src / "discriminator" / "config.json", tmp / "discriminator" / "config.json")
    _half([src / "discriminator" / "weights.safetensors"], tmp / "discriminator" / "weights.safetensors")
    report = json.loads(args.report.read_text(encoding="utf-8"))
    (tmp / "TRAINING.md").write_text(training_notes(report), encoding="utf-8")
    # check it loads before it replaces the shipped model
    from gmpi_core.pipeline import GMPI

    gmpi = GMPI.from_pretrained(tmp)
    image, _ = gmpi.render(gmpi.generate(seeds=[0], n_planes=8), yaw=0.0, pitch=0.0)
    assert torch.isfinite(image).all()
    if args.dest.exists():
        shutil.rmtree(args.dest)
    os.replace(tmp, args.dest)
    size = sum(f.stat().st_size for f in args.dest.rglob("*") if f.is_file())
    print(f"wrote {args.dest} ({size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
