"""The README's picture: novel views of the shipped demo model across the training yaw range, with depth.

For each of ``--seeds`` latents it renders the MPI at ``--views`` yaws spread over ±2σ of the pose prior
(pitch 0) and writes one PNG: per seed a row of views and below it a row of their camera z-depth (near =
bright, normalised over the figure's foreground, background = black where the planes in front of the
opaque background plane cover less than half of the pixel). Everything comes from the model
(``GMPI.load``; the shipped demo model by default) at fixed seeds, so the figure is reproducible byte for
byte and follows the model when it is retrained::

    python scripts/make_readme_figure.py                        # docs/images/demo_yaw_sweep.png
    python scripts/make_readme_figure.py --model runs/gmpi/model --seeds 0 1 2 --scale 4
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from gmpi_core.atomic import atomic_write
from gmpi_core.pipeline import GMPI

REPO = Path(__file__).resolve().parents[1]


def sweep(gmpi: GMPI, seed: int, yaws: list[float], size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(views [V,H,W,3] uint8, depth [V,H,W] float, alpha [V,H,W]) of one latent at the given yaws."""
    mpi = gmpi.generate(seeds=[seed])
    image, depth = gmpi.render(mpi, yaws, [0.0] * len(yaws), size=size, out_of_bounds="clamp")
    # coverage of the head: the planes in white before the opaque background plane in black
    ones = mpi.rgba.clone()
    ones[:, :-1, :3] = 1.0
    ones[:, -1, :3] = 0.0
    cover, _ = gmpi.render(type(mpi)(ones, mpi.plane_dhw, mpi.depth_norm), yaws, [0.0] * len(yaws), size=size)
    views = ((image.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return views, depth[:, 0].numpy(), ((cover[:, 0] + 1) / 2).numpy()


def figure(gmpi: GMPI, seeds: list[int], n_views: int, size: int, scale: int) -> Image.Image:
    cam = gmpi.config.camera
    yaws = np.linspace(-2 * cam.yaw_std, 2 * cam.yaw_std, n_views).tolist()
    rows = [sweep(gmpi, s, yaws, size) for s in seeds]
    fg = np.concatenate([d[a > 0.5] for _, d, a in rows]) if rows else np.zeros(1)
    near, far = (np.percentile(fg, 1), np.percentile(fg, 99)) if fg.size else (0.0, 1.0)
    gap = 2
    w = n_views * size + (n_views - 1) * gap
    h = len(seeds) * (2 * size + gap) + (len(seeds) - 1) * 3 * gap
    canvas = np.full((h, w, 3), 255, np.uint8)
    y = 0
    for views, depth, alpha in rows:
        for i in range(n_views):
            x = i * (size + gap)
            canvas[y : y + size, x : x + size] = views[i]
            d = np.clip((far - depth[i]) / max(far - near, 1e-8), 0, 1)  # near = bright
            d = np.where(alpha[i] > 0.5, d, 0.0)
            canvas[y + size + gap : y + 2 * size + gap, x : x + size] = (
                (d[..., None] * 255).round().astype(np.uint8)
            )
        y += 2 * size + gap + 3 * gap
    img = Image.fromarray(canvas)
    return img.resize((w * scale, h * scale), Image.NEAREST) if scale > 1 else img


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="model source for GMPI.load (default: the shipped demo model)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    p.add_argument("--views", type=int, default=7, help="yaws per seed over ±2σ of the prior")
    p.add_argument("--size", type=int, help="render size (default: the model's resolution)")
    p.add_argument("--scale", type=int, default=2, help="nearest-neighbour upscale of the figure")
    p.add_argument("--out", type=Path, default=REPO / "docs" / "images" / "demo_yaw_sweep.png")
    args = p.parse_args(argv)
    torch.set_grad_enabled(False)
    gmpi = GMPI.load(args.model)
    size = args.size or gmpi.config.generator.img_resolution
    img = figure(gmpi, args.seeds, args.views, size, args.scale)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(args.out, lambda tmp: img.save(tmp, format="PNG", optimize=True))
    print(
        f"wrote {args.out} ({img.width}×{img.height}): {len(args.seeds)} seeds × {args.views} yaws, "
        f"{gmpi.describe()}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
