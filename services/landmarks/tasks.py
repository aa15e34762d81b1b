"""``preprocess`` jobs, first half: list the images, detect landmarks chunk by chunk (a chord), merge.

Outputs (layout: services/README.md, "Object store and jobs"):
``datasets/{id}/landmarks/detections/results/<member>.txt`` and ``.../detections/fail_list.txt``. Each
finished chunk leaves a marker ``jobs/{job}/landmark-chunks/NNNNN.json`` (its failures), so a re-delivered
or re-run job skips the chunks already done.
"""

from __future__ import annotations

import shutil
import tempfile
import uuid
import zipfile
from pathlib import Path
from typing import Any

from celery import chord

from services.common import zips
from services.common.artifacts import check_dataset_zip, fetch_dataset_images
from services.common.celery_app import app
from services.common.contracts import PreprocessParams, TaskName
from services.common.keys import dataset_prefix, job_prefix
from services.common.tasks import SINCE_START, TRANSIENT, JobContext, JobInputError, run_job

RESULTS = "landmarks/detections/results/"
FAIL_LIST = "landmarks/detections/fail_list.txt"
_RETRY = dict(bind=True, autoretry_for=TRANSIENT, retry_backoff=2, retry_backoff_max=60, max_retries=8)


def _image_names(source: Path) -> list[str]:
    from gmpi_core.data.datasets import ImageSource

    return list(ImageSource(source).names)


def _chunk_marker(job_id: str, index: int, stage: str) -> str:
    return f"{job_prefix(job_id)}{stage}-chunks/{index:05d}.json"


def _extract(source: Path, names: list[str], dest: Path) -> None:
    """The chunk's images into ``dest`` (which must not exist): from a zip through
    ``zips.extract_members`` (names, types and sizes checked, every target proven inside ``dest``,
    written to a temporary folder and renamed); from a folder, each path proven inside both folders."""
    if source.is_file():
        try:
            zips.extract_members(source, dest, names)
        except zips.UnsafeZipError as e:
            raise JobInputError(f"the dataset's images.zip: {e}") from e
        return
    tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:8]}.part")
    tmp.mkdir(parents=True)
    try:
        for name in names:
            try:
                src, target = zips.safe_target(source, name), zips.safe_target(tmp, name)
            except zips.UnsafeZipError as e:
                raise JobInputError(f"the dataset's image '{name[:120]}' is outside its folder") from e
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(src.read_bytes())
        tmp.rename(dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _check_images_zip(source: Path, dataset_id: str) -> None:
    """Refuse a zip that could escape a scratch folder or decompress without bound, whichever route it
    came by (a presigned PUT is seen by nothing before this; ``fetch_dataset_images`` checks it too). The
    job's error carries the zip check's code (``artifacts.DatasetZipRefused``, a JobInputError)."""
    if source.is_file():
        check_dataset_zip(source, dataset_id)


def _start(ctx: JobContext[PreprocessParams]) -> dict[str, Any]:
    dataset_id = ctx.params.dataset_id
    ctx.progress(0, None, f"downloading the images of dataset '{dataset_id}'", stage="download")
    source = fetch_dataset_images(ctx.storage, ctx.settings.cache_dir, dataset_id)
    _check_images_zip(source, dataset_id)
    try:
        names = _image_names(source)
    except (zipfile.BadZipFile, ValueError) as e:
        raise JobInputError(f"dataset '{dataset_id}': cannot read its images ({e})") from e
    if not names:
        raise JobInputError(f"dataset '{dataset_id}' holds no images")
    size = ctx.params.chunk_size or ctx.settings.landmark_chunk_size
    chunks = [names[a : a + size] for a in range(0, len(names), size)]
    ctx.jobs.merge_info(ctx.job_id, {"images": len(names), "chunks": len(chunks)})
    ctx.progress(
        0,
        2 * len(chunks),
        f"landmarks: 0/{len(chunks)} chunks done ({len(names)} images, up to {size} per chunk)",
        stage="landmarks",
    )
    header = [landmarks_chunk.si(ctx.job_id, i, chunk) for i, chunk in enumerate(chunks)]
    chord(header)(landmarks_done.si(ctx.job_id, len(chunks)))
    return {"chunks": len(chunks)}


@app.task(name=TaskName.LANDMARKS_START.value, **_RETRY)
def start(self: Any, job_id: str) -> Any:
    """Entry of a ``preprocess`` job: split the images into chunks and fan out."""
    return run_job(job_id, _start, final=False)  # the job's own task: each run is an attempt


def _chunk(ctx: JobContext[PreprocessParams], index: int, names: list[str]) -> dict[str, Any]:
    from gmpi_core.preprocess.landmarks import run_landmarks

    marker = _chunk_marker(ctx.job_id, index, "landmark")
    if ctx.storage.exists(marker):
        return ctx.storage.get_json(marker)
    ctx.check_cancelled()
    prefix = dataset_prefix(ctx.params.dataset_id)
    source = fetch_dataset_images(ctx.storage, ctx.settings.cache_dir, ctx.params.dataset_id)
    with tempfile.TemporaryDirectory(dir=ctx.work_dir, prefix=f"lm{index:05d}-") as tmp:
        images, out = Path(tmp) / "images", Path(tmp) / "out"
        _extract(source, names, images)
        run_landmarks(images, out, progress=False, batch=16)
        results = out / "detections" / "results"
        done = []
        for txt in sorted(results.rglob("*.txt")):
            rel = txt.relative_to(results).as_posix()
            ctx.storage.put_file(prefix + RESULTS + rel, txt, "text/plain")
            done.append(rel)
    found = set(done)
    failed = sorted(n for n in names if n.rsplit(".", 1)[0] + ".txt" not in found)
    summary = {"index": index, "images": len(names), "detected": len(done), "failed": failed}
    ctx.storage.put_json(marker, summary)
    step = ctx.jobs.incr_counter(ctx.job_id, "chunks_done")
    n_done = ctx.jobs.incr_counter(ctx.job_id, "landmark_chunks_done")
    chunks = int(ctx.jobs.get(ctx.job_id)["info"].get("chunks", 1))
    message = f"landmarks: {n_done}/{chunks} chunks done"
    ctx.progress(step, 2 * chunks, message, stage="landmarks", eta_s=SINCE_START)
    return summary


@app.task(name=TaskName.LANDMARKS_CHUNK.value, **_RETRY)
def landmarks_chunk(self: Any, job_id: str, index: int, names: list[str]) -> Any:
    return run_job(job_id, lambda ctx: _chunk(ctx, index, names), final=False, entry=False)


def _done(ctx: JobContext[PreprocessParams], n_chunks: int) -> dict[str, Any]:
    from services.pose.tasks import fan_out_poses

    failed: list[str] = []
    detected = 0
    for i in range(n_chunks):
        marker = ctx.storage.get_json(_chunk_marker(ctx.job_id, i, "landmark"))
        failed += marker["failed"]
        detected += marker["detected"]
    prefix = dataset_prefix(ctx.params.dataset_id)
    text = "".join(f"{m}\n" for m in sorted(failed)) or "\n"
    ctx.storage.put_bytes(prefix + FAIL_LIST, text.encode(), "text/plain")
    ctx.jobs.merge_metrics(ctx.job_id, {"landmarks_detected": detected, "landmarks_failed": len(failed)})
    ctx.check_cancelled()
    fan_out_poses(ctx)
    return {"detected": detected, "failed": len(failed)}


@app.task(name=TaskName.LANDMARKS_DONE.value, **_RETRY)
def landmarks_done(self: Any, job_id: str, n_chunks: int) -> Any:
    """Chord callback: the merged fail list, then the pose stage."""
    return run_job(job_id, lambda ctx: _done(ctx, n_chunks), final=False, entry=False)
