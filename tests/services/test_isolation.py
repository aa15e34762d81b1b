"""Isolation between API keys (SECURITY.md, "API keys and ownership"): jobs, datasets and models belong
to the key that made them (admins see everything), shared models (the demo) are readable by every key,
and Redis and the bucket hold only hashes of keys. Against real Redis and S3, without workers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from services.common.settings import Settings, get_settings
from tests.services.conftest import KEY

OTHER = {"X-API-Key": "other-key"}
ADMIN = {"X-API-Key": "admin-key"}
RAW_KEYS = ("good-key", "other-key", "admin-key")


@pytest.fixture
def settings(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """conftest's settings (keys good-key and other-key) plus an admin key."""
    monkeypatch.setenv("GMPI_ADMIN_API_KEYS", "admin-key")
    get_settings.cache_clear()
    return get_settings()


def _storage(settings: Settings):  # type: ignore[no-untyped-def]
    from services.common.storage import get_storage

    return get_storage(settings)


def _trainable(client: TestClient, settings: Settings, headers: dict[str, str]) -> str:
    """A dataset of the key in ``headers`` with images and poses in the store (contents not read)."""
    ds = client.post("/v1/datasets", json={"name": "mine"}, headers=headers)
    assert ds.status_code == 201, ds.text
    dataset = str(ds.json()["id"])
    storage = _storage(settings)
    storage.put_bytes(f"datasets/{dataset}/images.zip", b"PK\x05\x06" + bytes(18), "application/zip")
    storage.put_bytes(f"datasets/{dataset}/poses/00000/a.mat", b"mat", "application/octet-stream")
    return dataset


def _train(client: TestClient, dataset: str, headers: dict[str, str], **extra: str) -> dict:
    body = {"type": "train", "params": {"dataset_id": dataset, "steps": 5}}
    r = client.post("/v1/jobs", json=body, headers={**headers, **extra})
    assert r.status_code == 202, r.text
    return dict(r.json())


def _model(settings: Settings, model_id: str, owner_key: str | None, **extra: object) -> None:
    """A committed model in the store, owned by ``owner_key``'s id (None: no owner, as before ownership)."""
    from services.common.keys import owner_id

    storage = _storage(settings)
    info = storage.put_bytes(f"models/{model_id}/config.json", b"{}", "application/json")
    owner = owner_id(owner_key) if owner_key else None
    storage.commit(
        f"models/{model_id}/", {"config.json": info}, {"model_id": model_id, "owner": owner, **extra}
    )


def test_a_keys_jobs_are_invisible_to_other_keys_and_visible_to_admins(
    client: TestClient, settings: Settings
) -> None:
    job = _train(client, _trainable(client, settings, KEY), KEY)
    mine = client.get("/v1/jobs", headers=KEY).json()
    assert mine["total"] == 1 and [j["id"] for j in mine["items"]] == [job["id"]]
    # another key: not listed, and get/cancel answer as for an unknown id (404, not 403)
    assert client.get("/v1/jobs", headers=OTHER).json() == {"items": [], "total": 0, "limit": 50, "offset": 0}
    for method in ("GET", "DELETE"):
        r = client.request(method, f"/v1/jobs/{job['id']}", headers=OTHER)
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found", (method, r.text)
        assert r.json()["error"]["message"] == f"no job '{job['id']}'"  # as for an id that does not exist
    assert client.get(f"/v1/jobs/{job['id']}", headers=KEY).json()["state"] == "queued"
    # the other key's own job is not listed for the first key
    other_job = _train(client, _trainable(client, settings, OTHER), OTHER)
    assert [j["id"] for j in client.get("/v1/jobs", headers=KEY).json()["items"]] == [job["id"]]
    # an admin key lists both and may cancel any
    assert {j["id"] for j in client.get("/v1/jobs", headers=ADMIN).json()["items"]} == {
        job["id"],
        other_job["id"],
    }
    r = client.delete(f"/v1/jobs/{job['id']}", headers=ADMIN)
    assert r.status_code == 200 and r.json()["state"] == "cancelled"


def test_job_artifacts_are_downloadable_only_by_the_owner(client: TestClient, settings: Settings) -> None:
    job = _train(client, _trainable(client, settings, KEY), KEY)
    _storage(settings).put_bytes(f"jobs/{job['id']}/log.jsonl", b'{"step": 1}\n', "application/jsonl")
    url = f"/v1/files/jobs/{job['id']}/log.jsonl"
    assert client.get(url, headers=KEY).content == b'{"step": 1}\n'
    r = client.get(url, headers=OTHER)
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    assert client.get(url, headers=ADMIN).status_code == 200


def test_a_keys_datasets_are_invisible_to_other_keys(client: TestClient, settings: Settings) -> None:
    from tests.services.test_gateway import tiny_zip

    dataset = _trainable(client, settings, KEY)
    assert [d["id"] for d in client.get("/v1/datasets", headers=KEY).json()["items"]] == [dataset]
    assert client.get("/v1/datasets", headers=OTHER).json()["items"] == []
    assert [d["id"] for d in client.get("/v1/datasets", headers=ADMIN).json()["items"]] == [dataset]
    denied = [
        client.get(f"/v1/datasets/{dataset}", headers=OTHER),
        client.get(f"/v1/datasets/{dataset}/files", headers=OTHER),
        client.put(f"/v1/datasets/{dataset}/images", content=tiny_zip(), headers=OTHER),
        client.post(f"/v1/datasets/{dataset}/upload-url", headers=OTHER),
        client.post(f"/v1/datasets/{dataset}/uploads", json={"size": 10 * 2**20}, headers=OTHER),
        client.post(f"/v1/datasets/{dataset}/register", json={"prefix": "incoming/x"}, headers=OTHER),
        client.delete(f"/v1/datasets/{dataset}/ground-truth/synthetic", headers=OTHER),
        client.get(f"/v1/files/datasets/{dataset}/images.zip", headers=OTHER),
    ]
    for r in denied:
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found", (r.request.url, r.text)
    # nothing was replaced by the other key's upload
    assert _storage(settings).stat(f"datasets/{dataset}/images.zip").size == 22  # type: ignore[union-attr]
    # jobs of the other key cannot name the dataset: it is unknown to them
    for body in (
        {"type": "preprocess", "params": {"dataset_id": dataset}},
        {"type": "train", "params": {"dataset_id": dataset, "steps": 5}},
    ):
        r = client.post("/v1/jobs", json=body, headers=OTHER)
        assert r.status_code == 422 and r.json()["error"]["code"] == "unknown_dataset", r.text
    assert client.get("/v1/jobs", headers=ADMIN).json()["total"] == 0
    # the owner still reads it
    assert client.get(f"/v1/files/datasets/{dataset}/images.zip", headers=KEY).status_code == 200


def test_a_keys_models_are_private_and_the_demo_is_shared(client: TestClient, settings: Settings) -> None:
    from services.__main__ import publish_demo_model

    publish_demo_model(_storage(settings))
    _model(settings, "model-mine", "good-key")
    assert {m["id"] for m in client.get("/v1/models", headers=KEY).json()["items"]} == {"demo", "model-mine"}
    assert {m["id"] for m in client.get("/v1/models", headers=OTHER).json()["items"]} == {"demo"}
    assert {m["id"] for m in client.get("/v1/models", headers=ADMIN).json()["items"]} == {
        "demo",
        "model-mine",
    }
    for path in ("/v1/models/model-mine", "/v1/files/models/model-mine/config.json"):
        r = client.get(path, headers=OTHER)
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found", (path, r.text)
    for path in ("/v1/models/model-mine/render", "/v1/models/model-mine/mpi"):  # before any worker is asked
        r = client.request("POST" if path.endswith("render") else "GET", path, json={}, headers=OTHER)
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found", (path, r.text)
    for job_type in ("render_video", "extract_mesh", "evaluate"):
        r = client.post(
            "/v1/jobs", json={"type": job_type, "params": {"model_id": "model-mine"}}, headers=OTHER
        )
        assert r.status_code == 422 and r.json()["error"]["code"] == "unknown_model", (job_type, r.text)
    # every key reads the demo and its files, and may use it in jobs
    assert client.get("/v1/models/demo", headers=OTHER).status_code == 200
    assert client.get("/v1/files/models/demo/config.json", headers=OTHER).status_code == 200
    r = client.post("/v1/jobs", json={"type": "extract_mesh", "params": {"model_id": "demo"}}, headers=OTHER)
    assert r.status_code == 202, r.text
    # the owner uses its model
    r = client.post(
        "/v1/jobs", json={"type": "extract_mesh", "params": {"model_id": "model-mine"}}, headers=KEY
    )
    assert r.status_code == 202, r.text


def test_trained_models_belong_to_the_key_that_submitted_the_job(
    client: TestClient, settings: Settings
) -> None:
    """The trainer records the job's owner in the model's manifest (services/trainer/tasks.py)."""
    from services.common.artifacts import MODEL_FILES
    from services.common.jobs import JobStore
    from services.common.tasks import JobContext
    from services.trainer.tasks import _publish_model

    job = _train(client, _trainable(client, settings, KEY), KEY)
    jobs = JobStore.from_url(settings.redis_url)
    params = job["params"] | {"preset": "FFHQ256"}
    ctx = JobContext(job["id"], params, jobs, _storage(settings), settings, job_type="train")
    run = Path(settings.cache_dir) / "run"
    (run / "model").mkdir(parents=True)
    for rel in MODEL_FILES:
        (run / "model" / rel).write_bytes(b"{}")
    _publish_model(ctx, run)
    model_id = job["params"]["model_id"]
    assert client.get(f"/v1/models/{model_id}", headers=KEY).status_code == 200
    assert client.get(f"/v1/models/{model_id}", headers=OTHER).status_code == 404
    assert model_id not in {m["id"] for m in client.get("/v1/models", headers=OTHER).json()["items"]}


def test_redis_and_the_bucket_hold_no_raw_api_key(client: TestClient, settings: Settings) -> None:
    import redis

    dataset = _trainable(client, settings, KEY)
    _train(client, dataset, KEY, **{"Idempotency-Key": "retry-1"})
    _train(client, _trainable(client, settings, OTHER), OTHER, **{"Idempotency-Key": "retry-1"})
    for headers in (KEY, OTHER, ADMIN):
        client.post("/v1/models/model-x/render", json={}, headers=headers)  # rate-limit counters
    r = redis.Redis.from_url(settings.redis_url)
    dump: list[Any] = []  # the client does not decode: bytes
    for name in r.scan_iter(count=1000):
        dump.append(name)
        kind = r.type(name)
        if kind == b"hash":
            fields: dict[Any, Any] = r.hgetall(name)
            dump += [k + b"=" + v for k, v in fields.items()]
        elif kind == b"string":
            dump.append(r.get(name) or b"")
    text = b"\n".join(dump).decode(errors="replace")
    assert "gmpi:idem:" in text and "gmpi:ratelimit:" in text  # what is checked below is there
    for raw in RAW_KEYS:
        assert raw not in text, f"Redis holds the API key {raw!r}"
    storage = _storage(settings)
    record = json.loads(storage.get_bytes(f"datasets/{dataset}/dataset.json"))
    assert record["owner"] and all(raw not in json.dumps(record) for raw in RAW_KEYS)


def test_records_of_older_versions_keep_their_owner_and_are_migrated(
    client: TestClient, settings: Settings
) -> None:
    """A job record written before ownership holds the raw key: it still belongs to that key (compared
    by hash), and ``JobStore.migrate_owners`` (run at gateway start) replaces it, idempotency keys too."""
    import redis

    from services.common.jobs import JobStore
    from services.common.keys import owner_id

    r = redis.Redis.from_url(settings.redis_url)
    jobs = JobStore(r)
    jobs.create("train", {"steps": 5}, job_id="job-legacy")
    r.hset("gmpi:job:job-legacy", "owner", json.dumps("good-key"))  # as the old gateway wrote it
    claim = json.dumps({"job_id": "job-legacy", "request_sha256": "x"})
    r.set("gmpi:idem:good-key:retry:7", claim, ex=3600)
    assert client.get("/v1/jobs/job-legacy", headers=KEY).status_code == 200
    assert client.get("/v1/jobs/job-legacy", headers=OTHER).status_code == 404
    assert [j["id"] for j in client.get("/v1/jobs", headers=KEY).json()["items"]] == ["job-legacy"]
    assert client.get("/v1/jobs", headers=OTHER).json()["total"] == 0

    jobs.migrate_owners()  # (the gateway's own run at start may have raced this test and done it already)
    assert jobs.get("job-legacy")["owner"] == owner_id("good-key")
    assert r.get("gmpi:idem:good-key:retry:7") is None
    moved = f"gmpi:idem:{owner_id('good-key')}:retry:7"
    assert json.loads(r.get(moved) or b"{}")["job_id"] == "job-legacy" and 0 < r.ttl(moved) <= 3600
    assert jobs.migrate_owners() == 0  # idempotent
    assert client.get("/v1/jobs/job-legacy", headers=KEY).status_code == 200
    assert client.get("/v1/jobs/job-legacy", headers=OTHER).status_code == 404


def test_shared_datasets_are_readable_by_all_and_changed_only_by_admins(
    client: TestClient, settings: Settings
) -> None:
    """A dataset record without an owner (written before ownership) is shared: every key may read it and
    train on it; only admins may change it (uploads, preprocessing)."""
    from tests.services.test_gateway import tiny_zip

    storage = _storage(settings)
    storage.put_json("datasets/ds-old/dataset.json", {"id": "ds-old", "name": "old", "created_at": 1.0})
    storage.put_bytes("datasets/ds-old/images.zip", b"PK\x05\x06" + bytes(18), "application/zip")
    storage.put_bytes("datasets/ds-old/poses/00000/a.mat", b"mat", "application/octet-stream")
    assert client.get("/v1/datasets/ds-old", headers=OTHER).status_code == 200
    _train(client, "ds-old", OTHER)
    r = client.put("/v1/datasets/ds-old/images", content=tiny_zip(), headers=OTHER)
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden", r.text
    r = client.post(
        "/v1/jobs", json={"type": "preprocess", "params": {"dataset_id": "ds-old"}}, headers=OTHER
    )
    assert r.status_code == 403, r.text
    assert client.put("/v1/datasets/ds-old/images", content=tiny_zip(), headers=ADMIN).status_code == 200


def test_imported_models_belong_to_the_importing_key(
    client: TestClient, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The gateway hands the importing key's owner id to the import task, which writes it into the
    manifest (the task is stood in for here: it commits what it was given, as the renderer does)."""
    from services.gateway.routes import models

    asked: list[dict] = []

    async def import_task(celery: object, name: str, kwargs: dict, timeout: float, **_: object) -> dict:
        assert name == "gmpi.render.import_model"
        asked.append(kwargs)
        storage = _storage(settings)
        prefix = f"models/{kwargs['model_id']}/"
        info = storage.put_bytes(prefix + "config.json", b"{}", "application/json")
        storage.commit(
            prefix, {"config.json": info}, {"source": kwargs["kind"], "owner": kwargs.get("owner")}
        )
        return {"model_id": kwargs["model_id"]}

    monkeypatch.setattr(models, "_wait", import_task)
    r = client.post("/v1/models/import?kind=stylegan2_pkl", content=b"\x80\x04pkl", headers=KEY)
    assert r.status_code == 201, r.text
    model_id = r.json()["id"]
    assert asked and "good-key" not in json.dumps(asked)  # an owner id, never the key
    assert client.get(f"/v1/models/{model_id}", headers=KEY).status_code == 200
    assert client.get(f"/v1/models/{model_id}", headers=ADMIN).status_code == 200
    assert client.get(f"/v1/models/{model_id}", headers=OTHER).status_code == 404
    assert model_id not in {m["id"] for m in client.get("/v1/models", headers=OTHER).json()["items"]}


def test_an_idempotency_key_survives_two_migrations_running_at_once(settings: Settings) -> None:
    """Two gateways starting together both migrate: when one has already rewritten the job's owner to its
    hash, the other must still recognise the old idempotency key as that key's (not delete it)."""
    import redis

    from services.common.jobs import JobStore
    from services.common.keys import owner_id

    r = redis.Redis.from_url(settings.redis_url)
    r.flushdb()
    jobs = JobStore(r)
    jobs.create("train", {"steps": 5}, job_id="job-raced")
    r.hset("gmpi:job:job-raced", "owner", json.dumps(owner_id("key:with:colons")))  # migrated by the other
    r.set("gmpi:idem:key:with:colons:retry:1", json.dumps({"job_id": "job-raced"}), ex=3600)
    assert jobs.migrate_owners() == 1
    moved = f"gmpi:idem:{owner_id('key:with:colons')}:retry:1"
    assert json.loads(r.get(moved) or b"{}")["job_id"] == "job-raced"
    assert r.get("gmpi:idem:key:with:colons:retry:1") is None
