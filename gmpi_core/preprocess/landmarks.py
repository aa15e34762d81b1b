"""``gmpi prep landmarks``: 5 facial landmarks per image with MTCNN, in the official layout (method §8.1).

    gmpi prep landmarks --input ffhq256x256.zip --out runtime_dataset/mtcnn_ffhq_256
    gmpi prep landmarks --input metfaces1024x1024_xflip --out runtime_dataset/mtcnn_metfaces --xflip

writes

    DIR/detections/results/<member without extension>.txt   5 lines "x<TAB>y" (int(), origin top-left) of the
                                                               most probable face: left eye, right eye, nose,
                                                               mouth left, mouth right (image left/right)
    DIR/detections/fail_list.txt                              member names with no face or an unreadable
                                                               image, sorted; a single "\\n" if none failed
    DIR/detections/log.jsonl                                  one JSON line per run start/end and per image
                                                               (status ok | no_face | unreadable, reason)

Images are the sorted image members of a ``dataset_tool`` zip or the images of a folder (recursive), read
with ``gmpi_core.data.datasets.ImageSource``. The run is resumable: an image with a result file, or one
whose failure is already in the log, is skipped (``--retry-failed`` retries the failures). Each result is
written atomically; an unreadable image is logged and listed, never stops the run. ``--xflip`` (MetFaces,
folders only) first writes a mirrored copy ``<stem>_xflip.png`` beside every original that has none,
then detects on all images — originals and copies (docs/method.md §8.1, §7).
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import multiprocessing
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import PIL.Image
import PIL.ImageOps

from gmpi_core.atomic import atomic_write
from gmpi_core.data.datasets import IMAGE_EXTENSIONS, ImageSource
from gmpi_core.preprocess.mtcnn import Detection, detect_landmarks, find_weights_dir

__all__ = [
    "XFLIP_SUFFIX",
    "Detection",
    "detect_landmarks",
    "landmark_text",
    "main",
    "result_path",
    "run_landmarks",
    "write_xflip_copies",
]

XFLIP_SUFFIX = "_xflip"
DetectFn = Callable[[Sequence[np.ndarray]], list[Detection | None]]


# --- output format ---------------------------------------------------------------------------------------


def landmark_text(landmarks: np.ndarray) -> str:
    """The result file's text: one ``"x\\ty\\n"`` line per landmark [5, 2], truncated toward zero with
    ``int()`` as the original script does (docs/method.md §8.1)."""
    return "".join(f"{int(x)}\t{int(y)}\n" for x, y in np.asarray(landmarks, dtype=np.float64))


def result_path(results_dir: Path, member: str) -> Path:
    """``results_dir/<member without extension>.txt``, e.g. ``…/00000/img00000000.txt``."""
    return results_dir / f"{PurePosixPath(member).with_suffix('')}.txt"


def _save_png(image: PIL.Image.Image, path: Path) -> None:
    image.save(path, format="PNG")


def _write_atomic(path: Path, data: str | bytes) -> None:
    """Write via a temporary sibling + rename, so a crash never leaves a half-written file."""
    atomic_write(path, data)


def _safe_member(member: str) -> bool:
    p = PurePosixPath(member)
    return not p.is_absolute() and ".." not in p.parts


# --- MetFaces mirrored copies ------------------------------------------------------------------------------


def write_xflip_copies(folder: str | os.PathLike[str], progress: bool = False) -> tuple[int, list[str]]:
    """Write ``<stem>_xflip.png`` (left-right mirror) beside every image of ``folder`` that is not itself a
    copy and has none yet (method §8.1, MetFaces). → (number written, "<file>: <reason>" for unreadable)."""
    from tqdm.auto import tqdm

    root = Path(folder)
    if not root.is_dir():
        raise NotADirectoryError(
            f"--xflip needs an image folder (MetFaces layout), got {root}; the mirrored copies are written "
            f"beside the originals, which a zip cannot hold"
        )
    originals = sorted(
        p
        for p in root.rglob("*")
        if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.stem.endswith(XFLIP_SUFFIX)
    )
    written, errors = 0, []
    for path in tqdm(originals, disable=not progress, desc="gmpi prep landmarks: xflip", unit="img"):
        target = path.with_name(f"{path.stem}{XFLIP_SUFFIX}.png")
        if target.exists():
            continue
        try:
            with PIL.Image.open(path) as image:
                image.load()
                mirrored = PIL.ImageOps.mirror(image)
        except (OSError, SyntaxError, ValueError, PIL.Image.DecompressionBombError) as e:
            errors.append(f"{path.relative_to(root).as_posix()}: {e}")
            continue
        atomic_write(target, functools.partial(_save_png, mirrored))
        written += 1
    return written, errors


# --- one batch of images -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    """What happened to one image: ``status`` ok | no_face | unreadable, ``reason`` for failures."""

    member: str
    status: str
    reason: str = ""
    prob: float | None = None

    def log_record(self) -> dict[str, Any]:
        record: dict[str, Any] = {"event": "image", "member": self.member, "status": self.status}
        if self.reason:
            record["reason"] = self.reason
        if self.prob is not None:
            record["prob"] = round(self.prob, 6)
        return record


def _process_batch(
    source: ImageSource, members: Sequence[str], results_dir: Path, detect: DetectFn
) -> list[Outcome]:
    """Decode, detect and write the result files of ``members``; failures become outcomes, not exceptions."""
    outcomes: dict[str, Outcome] = {}
    images, decoded = [], []
    for member in members:
        if not _safe_member(member):
            outcomes[member] = Outcome(member, "unreadable", "member name escapes the output folder")
            continue
        try:
            images.append(np.asarray(source.read(member), dtype=np.uint8))
            decoded.append(member)
        except Exception as e:  # a corrupt image must never stop the run
            outcomes[member] = Outcome(member, "unreadable", f"{type(e).__name__}: {e}")
    for member, detection in zip(decoded, detect(images) if images else []):
        if detection is None:
            outcomes[member] = Outcome(member, "no_face", "MTCNN found no face")
            continue
        _write_atomic(result_path(results_dir, member), landmark_text(detection.landmarks))
        outcomes[member] = Outcome(member, "ok", prob=detection.prob)
    return [outcomes[m] for m in members]


@dataclass(frozen=True)
class _Job:
    source: ImageSource
    members: list[str]
    results_dir: Path


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)  # one process per core


def _run_job(job: _Job) -> list[Outcome]:
    return _process_batch(job.source, job.members, job.results_dir, detect_landmarks)


def _outcomes(jobs: list[_Job], workers: int, detect: DetectFn) -> Iterator[list[Outcome]]:
    if workers <= 1:
        for job in jobs:
            yield _process_batch(job.source, job.members, job.results_dir, detect)
        return
    with multiprocessing.get_context("spawn").Pool(workers, initializer=_init_worker) as pool:
        yield from pool.imap(_run_job, jobs)


# --- the dataset step --------------------------------------------------------------------------------------


def _logged_failures(log: Path) -> set[str]:
    """Members whose latest logged outcome is a failure."""
    latest: dict[str, str] = {}
    if log.is_file():
        with open(log, encoding="utf-8") as f:
            for line in f:
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut short by a crash
                if isinstance(record, dict) and record.get("event") == "image":
                    latest[str(record.get("member"))] = str(record.get("status"))
    return {m for m, status in latest.items() if status != "ok"}


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def run_landmarks(
    input: str | os.PathLike[str],
    out: str | os.PathLike[str],
    xflip: bool = False,
    batch: int = 16,
    progress: bool = True,
    *,
    workers: int = 1,
    retry_failed: bool = False,
) -> dict[str, Any]:
    """Detect the landmarks of every image of ``input`` (dataset zip or folder) into ``out`` (module
    docstring). ``batch`` images go through the detector together; ``workers > 1`` runs that many spawn
    processes with one thread each (call from under ``if __name__ == "__main__":`` in scripts).

    → summary {"images", "skipped", "processed", "detected", "failed", "fail_list", "xflip_written",
    "seconds", "out"}: counts of this run; ``fail_list`` is the number of names in the final fail list."""
    t0 = time.perf_counter()
    if not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch must be an int >= 1 (images per detector call), got {batch!r}")
    if not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be an int >= 1 (processes), got {workers!r}")
    source_path = Path(input)
    xflip_written, xflip_errors = write_xflip_copies(source_path, progress=progress) if xflip else (0, [])
    source = ImageSource(source_path)
    detections = Path(out) / "detections"
    results_dir = detections / "results"
    results_dir.mkdir(parents=True, exist_ok=True)
    log, fail_list = detections / "log.jsonl", detections / "fail_list.txt"

    known_failures = set() if retry_failed else _logged_failures(log)
    todo = [m for m in source.names if m not in known_failures and not result_path(results_dir, m).is_file()]
    skipped = len(source.names) - len(todo)
    if todo:
        find_weights_dir()  # missing weights fail here, with the install hint, before any work
    jobs = [_Job(source, todo[a : a + batch], results_dir) for a in range(0, len(todo), batch)]
    counts = {"ok": 0, "no_face": 0, "unreadable": 0}
    from tqdm.auto import tqdm

    with open(log, "a", encoding="utf-8") as log_file, open(fail_list, "a", encoding="utf-8") as fails:
        start = {"event": "start", "time": _now(), "input": str(source_path), "images": len(source.names)}
        start |= {"todo": len(todo), "skipped": skipped, "xflip_written": xflip_written}
        log_file.write(json.dumps(start) + "\n")
        for error in xflip_errors:
            log_file.write(json.dumps({"event": "xflip", "status": "unreadable", "reason": error}) + "\n")
        with tqdm(total=len(todo), disable=not progress, desc="gmpi prep landmarks", unit="img") as bar:
            for outcomes in _outcomes(jobs, workers, detect_landmarks):
                for o in outcomes:
                    counts[o.status] += 1
                    log_file.write(json.dumps(o.log_record()) + "\n")
                    if o.status != "ok":
                        fails.write(o.member + "\n")  # as the original appends; rewritten sorted below
                log_file.flush()
                fails.flush()
                bar.update(len(outcomes))
                bar.set_postfix(failed=counts["no_face"] + counts["unreadable"])
        # the final list: every image without a result, sorted; "\n" alone when none failed (method §8.1)
        failed_names = [m for m in source.names if not result_path(results_dir, m).is_file()]
        summary = {
            "images": len(source.names),
            "skipped": skipped,
            "processed": len(todo),
            "detected": counts["ok"],
            "failed": counts["no_face"] + counts["unreadable"],
            "fail_list": len(failed_names),
            "xflip_written": xflip_written,
            "seconds": round(time.perf_counter() - t0, 3),
            "out": str(detections),
        }
        log_file.write(json.dumps({"event": "end", "time": _now(), **summary}) + "\n")
    _write_atomic(fail_list, "".join(f"{m}\n" for m in failed_names) or "\n")
    return summary


# --- command line ----------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="gmpi prep landmarks",
        description="5 facial landmarks per image with MTCNN, in the official GMPI layout (method §8.1).\n"
        "MTCNN finds faces of 20 px or more (min_face_size): for the synthetic heads use 64² images or\n"
        "larger (at 32² a head is ~16 px wide and about one in five of them is missed).",
        epilog=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--input", required=True, help="dataset_tool zip or image folder, e.g. data/synth64/images.zip"
    )
    p.add_argument(
        "--out", required=True, help="output folder (gets detections/results, fail_list.txt, log.jsonl)"
    )
    p.add_argument(
        "--xflip", action="store_true", help="MetFaces: first write mirrored <stem>_xflip.png copies"
    )
    p.add_argument("--batch", type=int, default=16, help="images per detector call (default 16)")
    p.add_argument("--workers", type=int, default=1, help="processes, one CPU thread each (default 1)")
    p.add_argument("--retry-failed", action="store_true", help="run again on images the log lists as failed")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        summary = run_landmarks(
            args.input,
            args.out,
            xflip=args.xflip,
            batch=args.batch,
            progress=not args.quiet,
            workers=args.workers,
            retry_failed=args.retry_failed,
        )
    except (ValueError, OSError) as e:
        print(f"gmpi prep landmarks: error: {e}", file=sys.stderr)
        return 2
    print(
        f"gmpi prep landmarks: {summary['images']} images, {summary['skipped']} already done, "
        f"{summary['detected']} detected, {summary['failed']} failed this run "
        f"({summary['fail_list']} in {summary['out']}/fail_list.txt) in {summary['seconds']:.1f} s"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
