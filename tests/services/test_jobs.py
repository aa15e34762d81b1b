from __future__ import annotations

import pytest

from services.common.jobs import JobNotFound, JobStore
from services.common.settings import Settings


@pytest.fixture
def jobs(settings: Settings) -> JobStore:
    store = JobStore.from_url(settings.redis_url)
    store.r.flushdb()
    return store


def test_new_job_is_queued_with_its_params(jobs: JobStore) -> None:
    rec, created = jobs.create("train", {"steps": 3})
    assert created and rec["state"] == "queued"
    assert jobs.get(rec["id"])["params"] == {"steps": 3}


def test_same_idempotency_key_returns_the_first_job(jobs: JobStore) -> None:
    a, created_a = jobs.create("train", {"steps": 3}, idempotency_key="k1", owner="o")
    b, created_b = jobs.create("train", {"steps": 4}, idempotency_key="k1", owner="o")
    assert created_a and not created_b and a["id"] == b["id"]
    c, created_c = jobs.create("train", {"steps": 3}, idempotency_key="k1", owner="someone-else")
    assert created_c and c["id"] != a["id"]


def test_terminal_state_is_never_overwritten(jobs: JobStore) -> None:
    rec, _ = jobs.create("evaluate", {})
    assert jobs.transition(rec["id"], "running")
    assert jobs.transition(rec["id"], "cancelled")
    assert not jobs.transition(rec["id"], "succeeded", result={"x": 1})
    assert not jobs.progress(rec["id"], 5, 10)
    got = jobs.get(rec["id"])
    assert got["state"] == "cancelled" and got["result"] is None and got["finished_at"] is not None


def test_progress_reports_an_eta_once_running(jobs: JobStore) -> None:
    rec, _ = jobs.create("train", {})
    jobs.transition(rec["id"], "running")
    jobs.progress(rec["id"], 5, 10, "training")
    p = jobs.get(rec["id"])["progress"]
    assert p["step"] == 5 and p["total"] == 10 and p["eta_s"] is not None


def test_list_filters_and_paginates_newest_first(jobs: JobStore) -> None:
    ids = [jobs.create("train" if i % 2 else "evaluate", {"i": i})[0]["id"] for i in range(5)]
    page, total = jobs.list(job_type="train", limit=1, offset=0)
    assert total == 2 and [r["id"] for r in page] == [ids[3]]
    page, _ = jobs.list(job_type="train", limit=1, offset=1)
    assert [r["id"] for r in page] == [ids[1]]


def test_unknown_job_raises(jobs: JobStore) -> None:
    with pytest.raises(JobNotFound):
        jobs.get("job-nope")
