"""Submission bounds that the gateway enforces before anything is queued: a training job cannot ask for
more GPUs than GMPI_MAX_GPUS_PER_JOB (the schema alone allowed 1024), and the dead-letter list of poison
task messages is readable by admin keys only. Against real Redis and S3, without workers."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from services.common.jobs import JobStore
from services.common.settings import Settings, get_settings
from tests.services.conftest import KEY
from tests.services.test_isolation import ADMIN, _trainable


@pytest.fixture
def settings(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("GMPI_ADMIN_API_KEYS", "admin-key")
    monkeypatch.setenv("GMPI_MAX_GPUS_PER_JOB", "4")
    get_settings.cache_clear()
    return get_settings()


def _submit(client: TestClient, dataset: str, gpus: int | None):  # type: ignore[no-untyped-def]
    params: dict = {"dataset_id": dataset, "steps": 5}
    if gpus is not None:
        params["gpus"] = gpus
    return client.post("/v1/jobs", json={"type": "train", "params": params}, headers=KEY)


def test_a_training_job_above_the_gpu_bound_is_refused_before_it_is_queued(
    client: TestClient, settings: Settings
) -> None:
    dataset = _trainable(client, settings, KEY)
    for gpus in (5, 1024):
        r = _submit(client, dataset, gpus)
        assert r.status_code == 422, r.text
        err = r.json()["error"]
        assert err["code"] == "too_many_gpus" and "GMPI_MAX_GPUS_PER_JOB" in err["message"]
        assert err["details"]["max"] == 4 and err["details"]["field"] == "params.gpus"
    assert client.get("/v1/jobs", headers=KEY).json()["total"] == 0  # nothing was queued
    for gpus in (None, 1, 4):  # at the bound and below it is accepted
        assert _submit(client, dataset, gpus).status_code == 202


def test_dead_letters_are_listed_for_admins_only(client: TestClient, settings: Settings) -> None:
    import redis

    jobs = JobStore(redis.Redis.from_url(settings.redis_url))
    for i in range(3):
        jobs.dead_letter({"task": "gmpi.render.video", "job_id": f"job-{i}", "attempts": 3})
    r = client.get("/v1/jobs/-/dead-letters", headers=KEY)
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
    r = client.get("/v1/jobs/-/dead-letters", params={"limit": 2}, headers=ADMIN)
    assert r.status_code == 200, r.text
    assert [e["job_id"] for e in r.json()["items"]] == ["job-2", "job-1"]  # newest first, limited
