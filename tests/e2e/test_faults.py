"""Faults against the running stack: a SIGKILLed trainer, a Redis restart, S3 away during an upload,
cancellation, and a retried POST."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import Stack
from tests.timing import scaled

pytestmark = [pytest.mark.e2e, pytest.mark.fault, pytest.mark.slow, pytest.mark.timeout(600)]


def _trainer_processes(job_id: str) -> list[int]:
    """Pids of training processes of this job (their --out holds the job id)."""
    out = subprocess.run(["pgrep", "-f", f"gmpi_core.train.cli.*{job_id}"], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def _tiny_training(trained: dict[str, Any], *, steps: int, ckpt_every: int) -> dict[str, Any]:
    """Train-job params on the happy path's dataset: synthetic32, batch 4, a log line every step."""
    dataset = trained["train"]["params"]["dataset_id"]
    return {"dataset_id": dataset, "preset": "synthetic32", "steps": steps, "ckpt_every": ckpt_every,
            "log_every": 1, "batch": 4}  # fmt: skip


def _wait_gone(job_id: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + scaled(timeout)
    while _trainer_processes(job_id) and time.monotonic() < deadline:
        time.sleep(0.3)
    assert not _trainer_processes(job_id), f"training processes of {job_id} still alive"


def test_sigkilled_trainer_resumes_from_its_last_uploaded_checkpoint(
    stack: Stack, trained: dict[str, Any]
) -> None:
    job = stack.submit("train", _tiny_training(trained, steps=16, ckpt_every=4))
    running = stack.wait(job["id"], until=lambda j: j["info"].get("last_checkpoint_step", 0) >= 4)
    assert running["state"] == "running", running
    stack.sh("stop-worker", "train", "KILL")
    _wait_gone(job["id"])  # the trainer dies with its worker (no orphan keeps writing)
    stack.sh("start-worker", "train")
    done = stack.wait(job["id"], timeout=300)
    assert done["state"] == "succeeded", (done, stack.log("worker-train"))
    assert done["attempts"] >= 2
    assert done["info"]["resumed_from_step"] >= 4, done["info"]
    log = next(a for a in done["artifacts"] if a["key"].endswith("log.jsonl"))
    steps = [json.loads(line)["step"] for line in httpx.get(log["url"]).text.splitlines()]
    assert steps == list(range(1, 17)), steps  # no step lost, none duplicated


def test_cancelling_a_running_training_stops_its_process_group(stack: Stack, trained: dict[str, Any]) -> None:
    job = stack.submit("train", _tiny_training(trained, steps=5000, ckpt_every=1000))
    stack.wait(job["id"], until=lambda j: j["progress"]["step"] >= 1)
    assert _trainer_processes(job["id"])
    r = stack.client.delete(f"/v1/jobs/{job['id']}")
    assert r.status_code == 200 and r.json()["state"] == "cancelled"
    _wait_gone(job["id"])
    time.sleep(1)
    assert stack.client.get(f"/v1/jobs/{job['id']}").json()["state"] == "cancelled"


def test_a_queued_job_survives_a_redis_restart(stack: Stack, trained: dict[str, Any]) -> None:
    stack.sh("stop-worker", "render")
    try:
        job = stack.submit("extract_mesh", {"model_id": trained["model_id"], "seed": 4})
        stack.sh("restart-redis")
        assert stack.client.get(f"/v1/jobs/{job['id']}").json()["state"] == "queued"
    finally:
        stack.sh("start-worker", "render")
    done = stack.wait(job["id"], timeout=120)
    assert done["state"] == "succeeded", (done, stack.log("worker-render"))


def test_an_upload_is_retried_while_s3_is_down_for_a_few_seconds(stack: Stack, synthetic_zip: Path) -> None:
    ds = stack.client.post("/v1/datasets", json={"name": "flaky"}).json()
    stack.sh("stop-s3")
    result: dict[str, Any] = {}

    def upload() -> None:
        result["response"] = stack.client.put(
            f"/v1/datasets/{ds['id']}/images", content=synthetic_zip.read_bytes()
        )

    try:
        t = threading.Thread(target=upload)
        t.start()
        time.sleep(3)
    finally:
        stack.sh("start-s3")
    t.join(scaled(90))
    r = result["response"]
    assert r.status_code == 200, r.text
    assert r.json()["images"].endswith("images.zip")


def test_the_same_idempotency_key_submits_one_job(stack: Stack, trained: dict[str, Any]) -> None:
    params = {"model_id": trained["model_id"], "seed": 5}
    a = stack.submit("extract_mesh", params, **{"Idempotency-Key": "mesh-5"})
    b = stack.submit("extract_mesh", params, **{"Idempotency-Key": "mesh-5"})
    assert a["id"] == b["id"]
    assert stack.wait(a["id"])["state"] == "succeeded"
    jobs = stack.client.get("/v1/jobs", params={"type": "extract_mesh", "limit": 200}).json()["items"]
    assert sum(j["params"].get("seed") == 5 for j in jobs) == 1
