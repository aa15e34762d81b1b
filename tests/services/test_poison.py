"""Poison tasks: a task that kills the worker process running it (an OOM kill, a segfault, SIGKILL) is
re-queued by the late acks, but only ``GMPI_MAX_DELIVERIES`` times: the next start fails its job with
``worker_lost_repeatedly``, acks the message and records it on the dead-letter list ``gmpi:deadletter``.

A real Celery worker process runs the test-only tasks of ``services.common.tasks`` (registered only with
``GMPI_TEST_POISON=1`` in the worker's environment); whenever the worker process itself has gone the test
starts it again, as a supervisor would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from services.common.jobs import JobStore
from services.common.settings import Settings
from tests.timing import scaled

pytestmark = pytest.mark.timeout(300)


class Worker:
    """One Celery worker process on a queue of its own, restarted when it has died."""

    def __init__(self, queue: str, log: Path, extra_env: dict[str, str]) -> None:
        self.queue, self.log, self.extra_env = queue, log, extra_env
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        env = {**os.environ, "GMPI_TEST_POISON": "1", "OMP_NUM_THREADS": "1", **self.extra_env}
        cmd = [sys.executable, "-m", "celery", "-A", "services.common.celery_app", "worker", "-Q", self.queue,
               "--concurrency", "1", "--pool", "prefork", "--hostname", f"{self.queue}@%h", "-l", "INFO",
               "--without-gossip", "--without-mingle", "--without-heartbeat"]  # fmt: skip
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
        self.starts += 1

    def keep_alive(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            self.start()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(scaled(30))
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def jobs(settings: Settings) -> JobStore:
    store = JobStore.from_url(settings.redis_url)
    store.r.flushdb()
    return store


@pytest.fixture
def worker_factory(settings: Settings, tmp_path: Path) -> Iterator[Callable[..., Worker]]:
    started: list[Worker] = []

    def make(**extra_env: str) -> Worker:
        w = Worker(f"poison-{uuid.uuid4().hex[:8]}", tmp_path / f"worker-{len(started)}.log", extra_env)
        started.append(w)
        w.start()
        return w

    yield make
    for w in started:
        w.stop()


def _until(worker: Worker, done: Callable[[], Any], timeout: float) -> Any:
    deadline = time.monotonic() + scaled(timeout)
    while time.monotonic() < deadline:
        worker.keep_alive()
        out = done()
        if out:
            return out
        time.sleep(0.3)
    return None


def _no_message_left(r: redis.Redis, queue: str, task_id: str) -> bool:
    unacked = [v for v in r.hvals("unacked") if task_id.encode() in v]
    return r.llen(queue) == 0 and not unacked


def test_a_job_whose_task_kills_its_worker_fails_after_the_cap_and_is_dead_lettered(
    jobs: JobStore, worker_factory: Callable[..., Worker], tmp_path: Path
) -> None:
    from services.common.celery_app import app

    worker = worker_factory()  # the default cap: GMPI_MAX_DELIVERIES=3
    rec, _ = jobs.create("extract_mesh", {"model_id": "m"})
    res = app.send_task("gmpi.test.poison_job", kwargs={"job_id": rec["id"]}, queue=worker.queue)

    got = _until(worker, lambda: (r := jobs.get(rec["id"]))["state"] in ("failed", "succeeded") and r, 180)
    logs = "\n".join(p.read_text(errors="replace")[-3000:] for p in tmp_path.glob("worker-*.log"))
    assert got, f"the job never ended: {jobs.get(rec['id'])} (worker log:\n{logs})"
    assert got["state"] == "failed"
    err = got["error"]
    assert err["code"] == "worker_lost_repeatedly"
    assert "3 times" in err["message"] and "memory" in err["message"] and "log" in err["message"]
    assert err["details"]["attempts"] == 3 and err["details"]["task"] == "gmpi.test.poison_job"
    assert got["attempts"] == 3  # three runs died; the fourth start gave up without running

    letters = jobs.dead_letters()
    assert [(d["job_id"], d["task"], d["task_id"], d["attempts"]) for d in letters] == [
        (rec["id"], "gmpi.test.poison_job", res.id, 3)
    ]
    assert letters[0]["queue"] == worker.queue and letters[0]["at"] > got["created_at"] - 1
    assert json.loads(jobs.r.lindex("gmpi:deadletter", 0))["job_id"] == rec["id"]  # type: ignore[arg-type]

    # acked: nothing left on the queue or un-acked, and no further start happens
    assert _until(worker, lambda: _no_message_left(jobs.r, worker.queue, res.id), 30)
    time.sleep(scaled(2))
    assert jobs.get(rec["id"])["attempts"] == 3
    assert not jobs.r.exists(f"gmpi:delivery:{res.id}")


def test_a_task_without_a_job_record_is_counted_by_task_id_and_dead_lettered(
    jobs: JobStore, worker_factory: Callable[..., Worker]
) -> None:
    """Sync renders and imports have no job record: their starts are counted by task id, and the caller
    gets a failure instead of a render that never comes."""
    from services.common.celery_app import app

    worker = worker_factory(GMPI_MAX_DELIVERIES="2")
    res = app.send_task("gmpi.test.poison", queue=worker.queue)

    letters = _until(worker, jobs.dead_letters, 180)
    assert letters, "the message was never given up on"
    assert [(d["job_id"], d["task"], d["task_id"], d["attempts"]) for d in letters] == [
        (None, "gmpi.test.poison", res.id, 2)
    ]
    with pytest.raises(Exception, match="started 2 times"):
        res.get(timeout=scaled(30))
    assert _until(worker, lambda: _no_message_left(jobs.r, worker.queue, res.id), 30)
    assert not jobs.r.exists(f"gmpi:delivery:{res.id}")
    ttl_key = "gmpi:delivery:never-started"
    jobs.count_delivery("never-started", 60)
    assert 0 < jobs.r.ttl(ttl_key) <= 60  # counters of tasks that never come back expire
