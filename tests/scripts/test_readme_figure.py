"""The README's figure comes from the model at fixed seeds: two runs write the same bytes, in the layout
the script documents (per seed a row of views over a row of depths)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parents[2]


def test_the_readme_figure_is_reproducible_and_laid_out_as_documented(tmp_path: Path) -> None:
    outs = []
    for name in ("a.png", "b.png"):
        out = tmp_path / name
        cmd = [sys.executable, str(REPO / "scripts" / "make_readme_figure.py"), "--seeds", "3", "5"]
        cmd += ["--views", "3", "--scale", "1", "--size", "32", "--out", str(out)]
        subprocess.run(cmd, check=True, capture_output=True, cwd=REPO, timeout=600)
        outs.append(out.read_bytes())
    assert outs[0] == outs[1]
    img = Image.open(tmp_path / "a.png")
    gap = 2
    assert img.size == (3 * 32 + 2 * gap, 2 * (2 * 32 + gap) + 3 * gap)
    depth_row = img.crop((0, 32 + gap, 32, 2 * 32 + gap)).convert("L")
    corner = depth_row.getpixel((0, 0))
    assert corner == 0  # the background of a depth tile is black
    assert max(depth_row.getdata()) > 128  # and the head is bright
