"""``preprocess`` jobs, second half: head poses from the landmark files, chunk by chunk (a chord).

Outputs: ``datasets/{id}/poses/<member>.mat`` (Deep3DFace angle/trans), ``poses/fail_list.txt`` (landmark
and pose failures) and ``poses/pose_estimator.json``; chunk markers ``jobs/{job}/pose-chunks/NNNNN.json``.

The estimator is the job's ``pose.estimator`` (``contracts.PoseOptions``, default ``auto``): ``dlib68``
(dlib's 68 landmarks of the images, ``gmpi_core.preprocess.pose68``; the worker fetches the dataset's images
once into its cache) where dlib and its model are installed (the prep extra: the pose image has them), else
the 5-point ``mtcnn5``; ``pose_estimator.json`` records which one ran and, for a fallback, why.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from celery import chord

from services.common import zips
from services.common.celery_app import app
from services.common.contracts import PreprocessParams, TaskName
from services.common.keys import dataset_prefix, job_prefix
from services.common.tasks import SINCE_START, TRANSIENT, JobContext, JobInputError, run_job

_RETRY = dict(bind=True, autoretry_for=TRANSIENT, retry_backoff=2, retry_backoff_max=60, max_retries=8)
RESULTS = "landmarks/detections/results/"


def _marker(job_id: str, index: int) -> str:
    return f"{job_prefix(job_id)}pose-chunks/{index:05d}.json"


def fan_out_poses(ctx: JobContext[PreprocessParams]) -> int:
    """Chunk the landmark files of the dataset and start the pose chord; → number of chunks."""
    prefix = dataset_prefix(ctx.params.dataset_id) + RESULTS
    files = [k[len(prefix) :] for k in ctx.storage.list(prefix) if k.endswith(".txt")]
    if not files:
        raise JobInputError("no face was found in any image: the dataset has no landmark files to pose")
    size = ctx.params.chunk_size or ctx.settings.landmark_chunk_size
    chunks = [files[a : a + size] for a in range(0, len(files), size)]
    ctx.jobs.merge_info(ctx.job_id, {"pose_chunks": len(chunks)})
    step = int(ctx.jobs.get(ctx.job_id)["info"].get("chunks", 0))
    ctx.progress(
        step,
        step + len(chunks),
        f"poses: 0/{len(chunks)} chunks done ({len(files)} faces found)",
        stage="poses",
        eta_s=SINCE_START,
    )
    chord([pose_chunk.si(ctx.job_id, i, c) for i, c in enumerate(chunks)])(
        pose_done.si(ctx.job_id, len(chunks))
    )
    return len(chunks)


def _resolution(ctx: JobContext[PreprocessParams]) -> int:
    if ctx.params.resolution:
        return ctx.params.resolution
    import PIL.Image

    from gmpi_core.data.datasets import ImageSource
    from services.common.artifacts import fetch_dataset_images

    src = ImageSource(fetch_dataset_images(ctx.storage, ctx.settings.cache_dir, ctx.params.dataset_id))
    with src.read(src.names[0]) as im:
        assert isinstance(im, PIL.Image.Image)
        return int(im.size[0])


def _chunk(ctx: JobContext[PreprocessParams], index: int, files: list[str]) -> dict[str, Any]:
    from gmpi_core.preprocess.pose import resolve_estimator, run_poses

    marker = _marker(ctx.job_id, index)
    if ctx.storage.exists(marker):
        return ctx.storage.get_json(marker)
    ctx.check_cancelled()
    prefix = dataset_prefix(ctx.params.dataset_id)
    opts = ctx.params.pose
    with tempfile.TemporaryDirectory(dir=ctx.work_dir, prefix=f"pose{index:05d}-") as tmp:
        det, out = Path(tmp) / "detections", Path(tmp) / "poses"
        for rel in files:
            try:  # a listed key is still proven to land inside the scratch folder
                target = zips.safe_target(det / "results", rel)
            except zips.UnsafeZipError as e:
                raise JobInputError(f"landmark file '{rel[:120]}' would be written outside its folder") from e
            target.parent.mkdir(parents=True, exist_ok=True)
            ctx.storage.get_file(prefix + RESULTS + rel, target)
        (det / "fail_list.txt").write_text("\n")
        calibration, estimator = opts.calibration, opts.estimator
        images = None
        if resolve_estimator(estimator, calibration)[0] == "dlib68":  # the 68 landmarks come from the images
            from services.common.artifacts import fetch_dataset_images

            images = fetch_dataset_images(ctx.storage, ctx.settings.cache_dir, ctx.params.dataset_id)
        summary = run_poses(
            det,
            out,
            layout="ffhq",
            resolution=_resolution(ctx),
            template=opts.template,
            calibration=calibration,
            intrinsics=opts.intrinsics,
            progress=False,
            estimator=estimator,
            images=images,
        )
        for mat in sorted(out.rglob("*.mat")):
            ctx.storage.put_file(prefix + "poses/" + mat.relative_to(out).as_posix(), mat)
        if index == 0:
            ctx.storage.put_file(prefix + "poses/pose_estimator.json", out / "pose_estimator.json")
        failures = [ln.split("\t", 1)[0] for ln in (out / "pose_failures.log").read_text().splitlines() if ln]
    result = {"index": index, "written": summary.written, "failed": sorted(failures)}
    ctx.storage.put_json(marker, result)
    step = ctx.jobs.incr_counter(ctx.job_id, "chunks_done")
    done = ctx.jobs.incr_counter(ctx.job_id, "pose_chunks_done")
    info = ctx.jobs.get(ctx.job_id)["info"]
    pose_chunks = int(info.get("pose_chunks", 1))
    total = int(info.get("chunks", 0)) + pose_chunks
    ctx.progress(step, total, f"poses: {done}/{pose_chunks} chunks done", stage="poses", eta_s=SINCE_START)
    return result


@app.task(name=TaskName.POSE_CHUNK.value, **_RETRY)
def pose_chunk(self: Any, job_id: str, index: int, files: list[str]) -> Any:
    return run_job(job_id, lambda ctx: _chunk(ctx, index, files), final=False, entry=False)


def _done(ctx: JobContext[PreprocessParams], n_chunks: int) -> dict[str, Any]:
    prefix = dataset_prefix(ctx.params.dataset_id)
    landmark_failed = [
        ln
        for ln in ctx.storage.get_bytes(prefix + "landmarks/detections/fail_list.txt").decode().splitlines()
        if ln
    ]
    written, pose_failed = 0, []
    for i in range(n_chunks):
        m = ctx.storage.get_json(_marker(ctx.job_id, i))
        written += m["written"]
        pose_failed += m["failed"]
    names = sorted(landmark_failed) + sorted(pose_failed)
    ctx.storage.put_bytes(prefix + "poses/fail_list.txt", ("".join(f"{n}\n" for n in names) or "\n").encode())
    metrics = {"poses_written": written, "pose_failed": len(pose_failed)}
    ctx.jobs.merge_metrics(ctx.job_id, metrics)
    ctx.jobs.add_artifacts(
        ctx.job_id, [prefix + "landmarks/detections/fail_list.txt", prefix + "poses/fail_list.txt"]
    )
    return {"dataset_id": ctx.params.dataset_id, **ctx.jobs.get(ctx.job_id)["metrics"]}


@app.task(name=TaskName.POSE_DONE.value, **_RETRY)
def pose_done(self: Any, job_id: str, n_chunks: int) -> Any:
    """Chord callback: the pose fail list; the ``preprocess`` job succeeds here."""
    return run_job(job_id, lambda ctx: _done(ctx, n_chunks), entry=False)
