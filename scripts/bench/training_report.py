"""Curves and a table of a training run: losses over kimg from ``log.jsonl`` and, where quality reports of
its snapshots exist (``scripts/bench/demo_quality.py``'s ``report.json``), FID and the faces ratio.

    python scripts/bench/training_report.py runs/demo2d --quality runs/demo2d/quality \
        --out docs/benchmarks/demo_training

Writes ``curves.png`` (losses smoothed over 20 log points; FID and faces on their own axes), ``quality.csv``
and prints a markdown table of the quality points. ``--quality DIR`` holds one folder per snapshot step, each
with a ``report.json``.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont

Series = tuple[str, list[tuple[float, float]], tuple[int, int, int]]


def read_log(run: Path) -> list[dict[str, Any]]:
    """The records of ``run/log.jsonl`` in step order (a resumed run's repeated steps: the last one)."""
    path = run / "log.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: give a training run folder (gmpi train --out)")
    by_step: dict[int, dict[str, Any]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            record = json.loads(line)
            by_step[int(record["step"])] = record
    return [by_step[s] for s in sorted(by_step)]


def smooth(values: Sequence[float], window: int) -> list[float]:
    """Trailing mean over ``window`` values (fewer at the start)."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def read_quality(folder: Path | None) -> list[dict[str, Any]]:
    """One row per ``folder/*/report.json``: step, kimg, FID, KID, faces ratio, real-vs-real FID."""
    if folder is None or not folder.is_dir():
        return []
    rows = []
    for report_path in sorted(folder.glob("*/report.json")):
        r = json.loads(report_path.read_text(encoding="utf-8"))
        realism, faces = r.get("realism") or {}, r.get("faces") or {}
        step = r.get("model", {}).get("step")
        if step is None:
            try:
                step = int(report_path.parent.name)
            except ValueError:
                continue
        rows.append(
            {
                "step": int(step),
                "fid": realism.get("model", {}).get("fid"),
                "kid": realism.get("model", {}).get("kid_mean"),
                "fid_floor": realism.get("floor", {}).get("fid"),
                "faces_ratio": faces.get("ratio"),
                "n": r.get("n"),
            }
        )
    return sorted(rows, key=lambda row: row["step"])


def _ticks(lo: float, hi: float, target: int = 5) -> list[float]:
    span = max(hi - lo, 1e-12)
    raw = span / target
    base = 10.0 ** math.floor(math.log10(raw))
    step = next(m * base for m in (1, 2, 5, 10) if m * base >= raw)
    first = math.ceil(lo / step) * step
    return [first + k * step for k in range(int((hi - first) / step + 1e-9) + 1)]


def line_panel(
    draw: ImageDraw.ImageDraw,
    box: tuple[int, int, int, int],
    series: Sequence[Series],
    title: str,
    x_label: str,
    levels: Sequence[tuple[float, str, tuple[int, int, int]]] = (),
) -> None:
    """Series of (x, y) points as lines in ``box`` (left, top, right, bottom) with axes and a legend."""
    font = ImageFont.load_default()
    left, top, right, bottom = box
    xs = [x for _, pts, _ in series for x, _ in pts] or [0.0, 1.0]
    ys = [y for _, pts, _ in series for _, y in pts if math.isfinite(y)] + [v for v, _, _ in levels]
    ys = ys or [0.0, 1.0]
    x0 = min(0.0, min(xs))
    x1 = max(max(xs), x0 + 1e-9)
    y0, y1 = min(0.0, min(ys)), max(ys) * 1.05 + 1e-9

    def xy(x: float, y: float) -> tuple[float, float]:
        return (
            left + (right - left) * (x - x0) / (x1 - x0),
            bottom - (bottom - top) * (y - y0) / (y1 - y0),
        )

    draw.rectangle([left, top, right, bottom], outline="black")
    for v in _ticks(y0, y1):
        _, y = xy(x0, v)
        draw.line([left - 4, y, left, y], fill="black")
        draw.text((left - 44, y - 6), f"{v:.3g}", fill="black", font=font)
    for v in _ticks(x0, x1):
        x, _ = xy(v, y0)
        draw.line([x, bottom, x, bottom + 4], fill="black")
        draw.text((x - 10, bottom + 8), f"{v:g}", fill="black", font=font)
    for value, label, colour in levels:
        _, y = xy(x0, value)
        for xa in range(left, right, 12):
            draw.line([xa, y, min(xa + 6, right), y], fill=colour)
        draw.text((right - 150, y - 13), label, fill=colour, font=font)
    for i, (name, pts, colour) in enumerate(series):
        line = [xy(x, y) for x, y in pts if math.isfinite(y)]
        if len(line) > 1:
            draw.line(line, fill=colour, width=2)
        if len(line) < 40:
            for x, y in line:
                draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=colour)
        draw.text((left + 8, top + 6 + 13 * i), name, fill=colour, font=font)
    draw.text((left, top - 18), title, fill="black", font=font)
    draw.text(((left + right) // 2 - 20, bottom + 22), x_label, fill="black", font=font)


def draw_report(
    path: Path, log: list[dict[str, Any]], quality: list[dict[str, Any]], window: int = 20
) -> None:
    panels = 2 if quality else 1
    w, h = 720, 330 * panels
    img = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(img)
    kimg = [float(r["kimg"]) for r in log]
    losses: list[Series] = [
        (
            f"{key} (mean of {window} log points)",
            list(zip(kimg, smooth([float(r[key]) for r in log], window))),
            colour,
        )
        for key, colour in (("loss_d", (200, 40, 40)), ("loss_g", (30, 60, 200)))
        if log and key in log[0]
    ]
    line_panel(d, (70, 40, w - 20, 280), losses, "training losses", "kimg (thousands of real images)")
    if quality:
        per_step = float(log[-1]["kimg"]) / max(int(log[-1]["step"]), 1) if log else 0.0
        fid = [(q["step"] * per_step, float(q["fid"])) for q in quality if q["fid"] is not None]
        floors = [q["fid_floor"] for q in quality if q["fid_floor"] is not None]
        levels = [(60.0, "goal FID 60", (0, 150, 0))]
        if floors:
            levels.append((float(floors[-1]), "real vs real", (150, 150, 150)))
        line_panel(
            d, (70, 370, w - 20, 610), [("FID vs held-out heads", fid, (30, 60, 200))], "FID", "kimg", levels
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)


def table(quality: list[dict[str, Any]], per_step: float) -> str:
    head = "| step | kimg | FID | KID | faces ratio | FID real vs real | N |\n|---|---|---|---|---|---|---|"

    def f(v: Any, digits: int) -> str:
        return "—" if v is None else f"{v:.{digits}f}"

    rows = [
        f"| {q['step']} | {q['step'] * per_step:.1f} | {f(q['fid'], 1)} | {f(q['kid'], 4)} | "
        f"{f(q['faces_ratio'], 3)} | {f(q['fid_floor'], 1)} | {q['n']} |"
        for q in quality
    ]
    return "\n".join([head, *rows])


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", type=Path, help="a training run folder (log.jsonl)")
    p.add_argument("--quality", type=Path, help="folder of per-step demo_quality outputs (STEP/report.json)")
    p.add_argument("--out", type=Path, required=True, help="where curves.png and quality.csv go")
    args = p.parse_args(argv)
    try:
        log = read_log(args.run)
    except FileNotFoundError as e:
        print(f"training_report: {e}", file=sys.stderr)
        return 2
    quality = read_quality(args.quality)
    draw_report(args.out / "curves.png", log, quality)
    per_step = float(log[-1]["kimg"]) / max(int(log[-1]["step"]), 1) if log else 0.0
    with open(args.out / "quality.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=["step", "fid", "kid", "fid_floor", "faces_ratio", "n"])
        writer.writeheader()
        writer.writerows(quality)
    last = log[-1] if log else {}
    print(f"{args.run}: {len(log)} log points, last step {last.get('step')} ({last.get('kimg')} kimg)")
    if quality:
        print(table(quality, per_step))
    print(f"wrote {args.out / 'curves.png'} and {args.out / 'quality.csv'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
