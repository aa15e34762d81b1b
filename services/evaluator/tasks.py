"""``evaluate`` jobs: download the model (and the dataset: real images for FID/KID, the ground truth it
carries for the depth metrics), run ``gmpi_core.eval.protocol``, store ``jobs/{job}/report.json`` and
``summary.txt`` (and ``geometry.zip`` with ``keep_images``), and copy the metrics into the job record.

The dataset's ground truth (``services.common.groundtruth``) is laid out as ``gmpi eval`` reads it: the
synthetic kind makes the local dataset folder a synthetic dataset (``meta.json``, ``poses.json``,
``depth/``, ``mask/`` next to ``images.zip``: ``--data DIR``), the Deep3DFaceRecon kind is the folder of
``--deep3dface-dir``. Progress follows the protocol's stages (``services.common.evalprogress``).
"""

from __future__ import annotations

import logging
import os
import zipfile
from pathlib import Path
from typing import Any

from services.common.artifacts import fetch_dataset_images, fetch_model
from services.common.contracts import EvalJobParams, TaskName
from services.common.evalprogress import EvalProgress
from services.common.groundtruth import GroundTruthError, extract_ground_truth, ground_truth_key
from services.common.keys import job_prefix
from services.common.storage import Storage, sha256_file
from services.common.tasks import JobContext, JobInputError, job_task

log = logging.getLogger("gmpi.evaluator")


def _fetch_ground_truth(storage: Storage, cache_dir: str, dataset_id: str, kind: str) -> Path | None:
    """The dataset's ``kind`` ground truth extracted in the cache (one folder per zip content), or None."""
    key = ground_truth_key(dataset_id, kind)
    info = storage.stat(key)
    if info is None:
        return None
    root = Path(cache_dir) / "datasets" / dataset_id / "ground-truth"
    local = root / f"{kind}.zip"
    if not (local.is_file() and info.sha256 and info.sha256 == sha256_file(local)):
        storage.get_file(key, local)
    tag = (info.sha256 or sha256_file(local))[:16]
    try:  # names, types and sizes checked; every target proven inside the folder (services.common.zips)
        return extract_ground_truth(local, kind, root / f"{kind}-{tag}")
    except GroundTruthError as e:
        raise JobInputError(f"dataset '{dataset_id}': its {kind} ground truth: {e}") from e


def stage_dataset(ctx: JobContext[Any], dataset_id: str) -> tuple[str, str | None]:
    """(``data`` for run_eval, ``deep3dface_dir`` or None): the images, as a synthetic dataset folder
    when the dataset carries synthetic ground truth."""
    cache = ctx.settings.cache_dir
    images = fetch_dataset_images(ctx.storage, cache, dataset_id)
    data = str(images)
    synthetic = _fetch_ground_truth(ctx.storage, cache, dataset_id, "synthetic")
    if synthetic is not None:
        if images.suffix != ".zip":
            raise JobInputError(
                f"dataset '{dataset_id}' carries synthetic ground truth but its images are a folder; the "
                "depth metric reads a synthetic dataset as images.zip + its ground truth: upload images.zip"
            )
        link = synthetic / "images.zip"
        if not (link.is_symlink() and os.readlink(link) == str(images)):
            tmp = synthetic / ".images.zip.link"
            tmp.unlink(missing_ok=True)
            tmp.symlink_to(images)
            os.replace(tmp, link)
        data = str(synthetic)
    d3d = _fetch_ground_truth(ctx.storage, cache, dataset_id, "deep3dface")
    return data, str(d3d) if d3d is not None else None


def _zip_dir(folder: Path, dest: Path) -> Path:
    from gmpi_core.atomic import atomic_write

    def write(tmp: Path) -> None:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as z:
            for p in sorted(folder.rglob("*")):
                if p.is_file():
                    z.write(p, p.relative_to(folder.parent).as_posix())

    return atomic_write(dest, write)


@job_task(TaskName.EVALUATE)
def evaluate(ctx: JobContext[EvalJobParams]) -> dict[str, Any]:
    """Run the requested metrics of the protocol on the job's model."""
    from gmpi_core.eval.protocol import EvalOptions, ModelInfo, run_eval
    from gmpi_core.pipeline import GMPI

    p = ctx.params
    ctx.progress(0, None, f"downloading model '{p.model_id}'", stage="setup")
    model_dir = fetch_model(ctx.storage, ctx.settings.cache_dir, p.model_id)
    data, deep3dface_dir = None, None
    if p.dataset_id:
        ctx.progress(0, None, f"downloading dataset '{p.dataset_id}'", stage="setup")
        data, deep3dface_dir = stage_dataset(ctx, p.dataset_id)
    ctx.progress(0, None, "building the model", stage="setup")
    options = EvalOptions(
        **{
            **p.eval_options(),
            "progress": False,
            "cache_dir": str(ctx.work_dir / "cache"),
            "deep3dface_dir": deep3dface_dir,
        }
    )
    out = ctx.work_dir / "eval"
    gmpi = GMPI.from_pretrained(model_dir)
    info = ModelInfo("native", str(model_dir), gmpi.config.name, extra={"model_id": p.model_id})
    ctx.check_cancelled()
    progress = EvalProgress(ctx.progress, options, gmpi.config, has_data=data is not None)
    progress.start()
    say = lambda message: log.info("job %s: %s", ctx.job_id, message)  # noqa: E731
    report = run_eval(
        gmpi, options, out, data=data, model_info=info, print_summary=False, on_progress=progress, say=say
    )
    progress.finish("uploading the report")
    names = ["report.json", "summary.txt"]
    if options.keep_images and (out / "geometry").is_dir():
        names.append(_zip_dir(out / "geometry", out / "geometry.zip").name)
    keys = [ctx.storage.put_file(job_prefix(ctx.job_id) + name, out / name).key for name in names]
    metrics = {k: v for k, v in report["metrics"].items() if v is not None}
    ctx.jobs.merge_metrics(ctx.job_id, metrics)
    ctx.jobs.add_artifacts(ctx.job_id, keys)
    return {
        "metrics": report["metrics"],
        "skipped": report["skipped"],
        "counts": report["counts"],
        "report": keys[0],
        # quick/debug/reduced counts: the protocol's own label (report.json and summary.txt carry it too)
        "mode": report.get("mode", "full"),
        "comparable_to_paper": bool(report.get("comparable_to_paper", False)),
        "notice": report.get("notice"),
    }
