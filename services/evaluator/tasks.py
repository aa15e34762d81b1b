"""``evaluate`` jobs: download the model (and the dataset for FID/KID), run ``gmpi_core.eval.protocol``,
store ``jobs/{job}/report.json`` and ``summary.txt``, and copy the metrics into the job record."""

from __future__ import annotations

from typing import Any

from services.common.artifacts import fetch_dataset_images, fetch_model
from services.common.keys import job_prefix
from services.common.tasks import JobContext, job_task


@job_task("gmpi.eval.run")
def evaluate(ctx: JobContext) -> dict[str, Any]:
    """Run the requested metrics of the protocol on the job's model."""
    from gmpi_core.eval.protocol import EvalOptions, ModelInfo, run_eval
    from gmpi_core.pipeline import GMPI

    p = ctx.params
    model_dir = fetch_model(ctx.storage, ctx.settings.cache_dir, p["model_id"])
    data = None
    if p.get("dataset_id"):
        data = str(fetch_dataset_images(ctx.storage, ctx.settings.cache_dir, p["dataset_id"]))
    ctx.progress(0, 1, "evaluating")
    options = EvalOptions(
        **{**p.get("options", {}), "progress": False, "cache_dir": str(ctx.work_dir / "cache")}
    )
    out = ctx.work_dir / "eval"
    gmpi = GMPI.from_pretrained(model_dir)
    info = ModelInfo("native", str(model_dir), gmpi.config.name, extra={"model_id": p["model_id"]})
    ctx.check_cancelled()
    report = run_eval(gmpi, options, out, data=data, model_info=info, print_summary=False)
    keys = []
    for name in ("report.json", "summary.txt"):
        keys.append(ctx.storage.put_file(job_prefix(ctx.job_id) + name, out / name).key)
    metrics = {k: v for k, v in report["metrics"].items() if v is not None}
    ctx.jobs.merge_metrics(ctx.job_id, metrics)
    ctx.jobs.add_artifacts(ctx.job_id, keys)
    ctx.progress(1, 1, "done")
    return {"metrics": report["metrics"], "counts": report["counts"], "report": keys[0]}
