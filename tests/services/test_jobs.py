from __future__ import annotations

import pytest

from services.common.jobs import IdempotencyConflict, JobNotFound, JobStore, request_sha256
from services.common.keys import owner_id
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


def test_an_idempotency_key_with_another_request_is_refused(jobs: JobStore) -> None:
    first = request_sha256({"type": "train", "params": {"steps": 3, "preset": "synthetic32"}})
    reordered = request_sha256({"params": {"preset": "synthetic32", "steps": 3}, "type": "train"})
    assert first == reordered  # canonical: key order does not matter
    a, created = jobs.create("train", {"steps": 3}, idempotency_key="k2", request_sha256=first, owner="o")
    b, again = jobs.create("train", {"steps": 3}, idempotency_key="k2", request_sha256=reordered, owner="o")
    assert created and not again and b["id"] == a["id"]
    other = request_sha256({"type": "train", "params": {"steps": 4, "preset": "synthetic32"}})
    with pytest.raises(IdempotencyConflict) as e:
        jobs.create("train", {"steps": 4}, idempotency_key="k2", request_sha256=other, owner="o")
    assert e.value.key == "k2" and e.value.job_id == a["id"] and "'k2'" in str(e.value)
    assert jobs.list()[1] == 1  # nothing was created by the refused request


def test_racing_submissions_with_one_key_create_one_job(jobs: JobStore, settings: Settings) -> None:
    """Two gateways (threads with their own connections) submitting the same request with one key at
    once: one job, and every caller gets it."""
    import threading

    n = 8
    barrier = threading.Barrier(n)
    out: list[tuple[str, bool]] = []
    sha = request_sha256({"type": "evaluate", "params": {"model_id": "m"}})

    def submit() -> None:
        store = JobStore.from_url(settings.redis_url)
        barrier.wait()
        rec, created = store.create("evaluate", {}, idempotency_key="race", request_sha256=sha, owner="o")
        out.append((rec["id"], created))

    threads = [threading.Thread(target=submit) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({job_id for job_id, _ in out}) == 1 and sum(created for _, created in out) == 1
    assert jobs.list()[1] == 1


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
    jobs.progress(rec["id"], 6, 10, "step 6/10", eta_s=None, stage="steps")  # the caller knows better
    p = jobs.get(rec["id"])["progress"]
    assert p == {"step": 6, "total": 10, "eta_s": None, "message": "step 6/10", "stage": "steps"}


def test_list_filters_and_paginates_newest_first(jobs: JobStore) -> None:
    ids = [jobs.create("train" if i % 2 else "evaluate", {"i": i})[0]["id"] for i in range(5)]
    page, total = jobs.list(job_type="train", limit=1, offset=0)
    assert total == 2 and [r["id"] for r in page] == [ids[3]]
    page, _ = jobs.list(job_type="train", limit=1, offset=1)
    assert [r["id"] for r in page] == [ids[1]]


def test_unknown_job_raises(jobs: JobStore) -> None:
    with pytest.raises(JobNotFound):
        jobs.get("job-nope")


def _calls(jobs: JobStore, command: str) -> int:
    stats = jobs.r.info("commandstats")
    return int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))


def test_unfiltered_list_reads_only_the_page(jobs: JobStore) -> None:
    ids = [jobs.create("train", {"i": i})[0]["id"] for i in range(120)]
    jobs.r.config_resetstat()
    page, total = jobs.list(limit=10, offset=20)
    assert total == 120 and [r["id"] for r in page] == ids[::-1][20:30]
    assert _calls(jobs, "hgetall") == 10 and _calls(jobs, "hmget") == 0  # not one read per job
    page, total = jobs.list(limit=10, offset=500)
    assert page == [] and total == 120
    assert jobs.list(limit=0)[0] == []


@pytest.mark.parametrize("batch", [3, 500])
def test_filtered_list_walks_the_index_in_batches(jobs: JobStore, monkeypatch, batch: int) -> None:
    import services.common.jobs as jobs_mod

    monkeypatch.setattr(jobs_mod, "_LIST_BATCH", batch)
    made = []
    for i in range(40):
        owner = ("alice", "bob", None)[i % 3]
        rec, _ = jobs.create("train" if i % 2 else "render", {"i": i}, owner=owner)
        if i % 5 == 0:
            jobs.transition(rec["id"], "running")
        made.append(rec)
    newest_first = made[::-1]

    def expect(pred):
        return [r["id"] for r in newest_first if pred(r)]

    # owner filter: a user sees their own jobs only (owner-less ones belong to nobody; admins list without
    # the filter). Owners are stored hashed (keys.owner_id), and the filter takes the raw key or its id
    want = expect(lambda r: r["owner"] == owner_id("alice"))
    jobs.r.config_resetstat()
    page, total = jobs.list(owner="alice", limit=7, offset=4)
    assert total == len(want) and [r["id"] for r in page] == want[4:11]
    assert _calls(jobs, "hgetall") == 7  # whole records only for the page
    assert jobs.list(owner=owner_id("alice"), limit=7, offset=4) == (page, total)

    want = expect(lambda r: r["type"] == "train" and made.index(r) % 5 == 0)
    page, total = jobs.list(job_type="train", state="running", limit=50)
    assert total == len(want) == 4 and [r["id"] for r in page] == want
    assert all(r["state"] == "running" for r in page)


@pytest.mark.parametrize("filtered", [False, True])
def test_list_skips_and_forgets_vanished_records(jobs: JobStore, filtered: bool) -> None:
    ids = [jobs.create("train", {"i": i})[0]["id"] for i in range(4)]
    jobs.r.delete(jobs._key(ids[2]))  # the record went (expired, deleted by hand); its index entry stayed
    page, _ = jobs.list(job_type="train" if filtered else None)
    assert [r["id"] for r in page] == [ids[3], ids[1], ids[0]]
    assert jobs.r.zscore(jobs._index, ids[2]) is None and jobs.list()[1] == 3


def test_concurrent_merges_all_land(jobs: JobStore, settings: Settings) -> None:
    """Workers merge artifacts, metrics and info from several threads (a trainer's checkpoint
    uploader beside its loop): no merge may erase another."""
    import threading

    rec, _ = jobs.create("train", {})
    job_id = rec["id"]
    n_threads, n_each = 6, 25
    barrier = threading.Barrier(n_threads)

    def work(t: int) -> None:
        store = JobStore.from_url(settings.redis_url)
        barrier.wait()
        for i in range(n_each):
            store.add_artifacts(job_id, [f"a/{t}/{i}"])
            store.merge_metrics(job_id, {f"m{t}_{i}": i / 3})
            store.merge_info(job_id, {f"i{t}_{i}": t})

    threads = [threading.Thread(target=work, args=(t,)) for t in range(n_threads)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    got = jobs.get(job_id)
    assert sorted(got["artifacts"]) == sorted(f"a/{t}/{i}" for t in range(n_threads) for i in range(n_each))
    assert len(got["metrics"]) == len(got["info"]) == n_threads * n_each
    assert got["metrics"]["m5_2"] == 2 / 3  # floats keep full precision


def test_attempts_count_atomically_and_missing_jobs_raise(jobs: JobStore) -> None:
    rec, _ = jobs.create("train", {})
    assert [jobs.incr_attempts(rec["id"]) for _ in range(3)] == [1, 2, 3]
    assert jobs.get(rec["id"])["attempts"] == 3
    for call in (
        lambda: jobs.incr_attempts("job-gone"),
        lambda: jobs.add_artifacts("job-gone", ["x"]),
        lambda: jobs.merge_metrics("job-gone", {"a": 1}),
    ):
        with pytest.raises(JobNotFound):
            call()
    assert not jobs.r.exists(jobs._key("job-gone"))  # nothing half-made for a missing job
