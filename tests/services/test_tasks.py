"""The job lifecycle every task shares (``services.common.tasks``), run in-process against the real Redis
and S3: what counts as an attempt, the progress a finished job shows, the ETA of a stage."""

from __future__ import annotations

import time
from typing import Any

import pytest

from services.common.jobs import JobStore
from services.common.settings import Settings


@pytest.fixture
def jobs(settings: Settings) -> JobStore:
    store = JobStore.from_url(settings.redis_url)
    store.r.flushdb()
    return store


def test_attempts_count_runs_of_the_jobs_own_task_not_its_sub_tasks(jobs: JobStore) -> None:
    """A preprocess job runs its entry task once and fans out into chunk tasks and chord callbacks: one
    attempt. Running the entry task again (a Celery retry, a re-delivery) is the second."""
    from services.common.tasks import run_job

    rec, _ = jobs.create("preprocess", {})
    run_job(rec["id"], lambda ctx: None, final=False)  # gmpi.landmarks.start
    for _ in range(5):  # landmark chunks, their callback, pose chunks, the pose callback
        run_job(rec["id"], lambda ctx: None, final=False, entry=False)
    assert jobs.get(rec["id"])["attempts"] == 1
    run_job(rec["id"], lambda ctx: None, final=False)  # the entry task delivered again
    assert jobs.get(rec["id"])["attempts"] == 2
    run_job(rec["id"], lambda ctx: {"ok": True}, entry=False)  # the last callback ends the job
    got = jobs.get(rec["id"])
    assert got["state"] == "succeeded" and got["attempts"] == 2


def test_a_finished_job_shows_all_of_its_progress(jobs: JobStore) -> None:
    from services.common.tasks import JobContext, run_job

    rec, _ = jobs.create("extract_mesh", {})

    def body(ctx: JobContext) -> dict[str, Any]:
        ctx.progress(1, 4, "generating the alpha volume", stage="mesh")
        return {"mesh": "x"}

    run_job(rec["id"], body)
    got = jobs.get(rec["id"])
    assert got["state"] == "succeeded"
    assert got["progress"] == {"step": 4, "total": 4, "eta_s": 0.0, "message": "done", "stage": "done"}


def test_the_eta_comes_from_the_rate_of_the_current_stage(jobs: JobStore) -> None:
    """Setup time (downloading, building a model) does not enter the rate: the first report of a stage
    only starts its clock, the next ones estimate from it."""
    from services.common.tasks import JobContext, run_job

    rec, _ = jobs.create("train", {})
    seen: list[dict[str, Any]] = []

    def body(ctx: JobContext) -> None:
        ctx.progress(0, 100, "building the model", stage="setup")
        time.sleep(1.0)  # slow setup: must not make the ETA of the steps ten times too long
        ctx.progress(10, 100, "step 10/100", stage="steps")
        seen.append(jobs.get(ctx.job_id)["progress"])
        time.sleep(0.4)
        ctx.progress(20, 100, "step 20/100", stage="steps")
        seen.append(jobs.get(ctx.job_id)["progress"])

    run_job(rec["id"], body, final=False)
    assert seen[0]["eta_s"] is None and seen[0]["message"] == "step 10/100" and seen[0]["stage"] == "steps"
    # 10 steps in ~0.4 s → 80 steps left ≈ 3.2 s (generous bounds for a loaded machine)
    assert 3.0 <= seen[1]["eta_s"] <= 8.0, seen[1]
