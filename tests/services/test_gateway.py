"""The gateway against real Redis and S3 (no workers: submitted jobs stay queued)."""

from __future__ import annotations

import io
import zipfile

import pytest
from fastapi.testclient import TestClient

from services.common.settings import Settings
from tests.services.conftest import KEY


def tiny_zip(n: int = 2) -> bytes:
    import PIL.Image

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for i in range(n):
            img = io.BytesIO()
            PIL.Image.new("RGB", (16, 16), (i * 40, 0, 0)).save(img, format="PNG")
            z.writestr(f"00000/img{i:08d}.png", img.getvalue())
    return buf.getvalue()


@pytest.fixture
def trainable(dataset: str, settings: Settings) -> str:
    """A dataset a train job may be queued for: images and poses in the store (contents not read)."""
    from services.common.storage import get_storage

    storage = get_storage(settings)
    storage.put_bytes(f"datasets/{dataset}/images.zip", b"PK\x05\x06" + bytes(18), "application/zip")
    storage.put_bytes(f"datasets/{dataset}/poses/00000/img00000000.mat", b"mat", "application/octet-stream")
    return dataset


def assert_error(r, status: int, code: str | None = None, mentions: str = "") -> dict:  # type: ignore[no-untyped-def]
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"code", "message", "details"}
    if code:
        assert err["code"] == code
    assert mentions in err["message"], err["message"]
    return err


def test_health_needs_no_key_and_ready_checks_dependencies(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    r = client.get("/readyz")
    assert r.status_code == 200 and r.json()["checks"] == {"redis": "ok", "storage": "ok"}
    assert "gmpi_http_requests_total" in client.get("/metrics", headers=KEY).text


def test_ready_is_503_when_redis_is_unreachable(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    from services.common.settings import get_settings
    from services.gateway.app import create_app

    monkeypatch.setenv("GMPI_REDIS_URL", "redis://127.0.0.1:1/0")
    get_settings.cache_clear()
    with TestClient(create_app()) as c:
        r = c.get("/readyz")
    assert r.status_code == 503 and r.json()["checks"]["redis"].startswith("error")


@pytest.mark.parametrize("headers", [{}, {"X-API-Key": "wrong"}])
def test_missing_or_wrong_api_key_is_401(client: TestClient, headers: dict[str, str]) -> None:
    assert_error(client.get("/v1/jobs", headers=headers), 401, "unauthorized", "API key")


def test_upload_lists_dataset_with_its_sha256(client: TestClient, dataset: str) -> None:
    data = tiny_zip()
    r = client.put(f"/v1/datasets/{dataset}/images", content=data, headers=KEY)
    assert r.status_code == 200, r.text
    import hashlib

    assert r.json()["sha256"] == hashlib.sha256(data).hexdigest()
    assert [d["id"] for d in client.get("/v1/datasets", headers=KEY).json()["items"]] == [dataset]


def test_oversized_upload_is_413_and_leaves_nothing(
    client: TestClient, dataset: str, settings: Settings
) -> None:
    body = b"x" * (settings.max_upload_bytes + 1)
    assert_error(client.put(f"/v1/datasets/{dataset}/images", content=body, headers=KEY), 413, "too_large")
    assert client.get(f"/v1/datasets/{dataset}", headers=KEY).json()["images"] is None


def test_corrupt_zip_is_422_and_leaves_nothing(client: TestClient, dataset: str) -> None:
    data = bytearray(tiny_zip())
    data[60:90] = b"\x00" * 30  # inside the first member's compressed bytes
    assert_error(
        client.put(f"/v1/datasets/{dataset}/images", content=bytes(data), headers=KEY), 422, "invalid_zip"
    )
    assert_error(
        client.put(f"/v1/datasets/{dataset}/images", content=b"not a zip", headers=KEY), 422, "invalid_zip"
    )
    assert client.get(f"/v1/datasets/{dataset}", headers=KEY).json()["images"] is None


def test_zip_with_traversal_members_is_refused(client: TestClient, dataset: str) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("../../evil.png", b"x")
    assert_error(
        client.put(f"/v1/datasets/{dataset}/images", content=buf.getvalue(), headers=KEY),
        422,
        "invalid_zip",
        "..",
    )


@pytest.mark.parametrize("prefix", ["../secrets", "/etc", "a/../../b", "datasets/other"])
def test_register_refuses_traversal_and_reserved_prefixes(
    client: TestClient, dataset: str, prefix: str
) -> None:
    r = client.post(f"/v1/datasets/{dataset}/register", json={"prefix": prefix}, headers=KEY)
    assert_error(r, 422, "invalid_key")


def test_traversal_in_ids_and_file_keys_never_reaches_the_store(client: TestClient) -> None:
    for path in ["/v1/datasets/..%2F..%2Fetc", "/v1/jobs/..%2Fx", "/v1/files/jobs/..%2F..%2Fetc/passwd"]:
        r = client.get(path, headers=KEY)
        assert r.status_code in (404, 422), (path, r.text)


def test_unknown_preset_is_422_naming_the_field(client: TestClient, dataset: str) -> None:
    body = {"type": "train", "params": {"dataset_id": dataset, "preset": "FFHQ128", "steps": 10}}
    err = assert_error(client.post("/v1/jobs", json=body, headers=KEY), 422, "validation_error", "preset")
    assert "FFHQ256" in err["message"]
    assert client.get("/v1/jobs", headers=KEY).json()["total"] == 0


def test_out_of_range_yaw_is_422_naming_the_field(client: TestClient) -> None:
    r = client.post("/v1/models/model-x/render", json={"yaw": 7.0}, headers=KEY)
    assert_error(r, 422, "validation_error", "yaw")


def test_jobs_on_unknown_datasets_are_refused(client: TestClient) -> None:
    body = {"type": "preprocess", "params": {"dataset_id": "ds-nope"}}
    assert_error(client.post("/v1/jobs", json=body, headers=KEY), 422, "unknown_dataset", "dataset_id")


def test_train_jobs_need_images_and_poses(client: TestClient, dataset: str, settings: Settings) -> None:
    from services.common.storage import get_storage

    body = {"type": "train", "params": {"dataset_id": dataset, "steps": 5}}
    assert_error(client.post("/v1/jobs", json=body, headers=KEY), 422, "no_images", "upload them first")
    get_storage(settings).put_bytes(f"datasets/{dataset}/images/a.png", b"png", "image/png")
    err = assert_error(client.post("/v1/jobs", json=body, headers=KEY), 422, "no_poses", "preprocess job")
    assert err["details"]["field"] == "params.dataset_id"
    without = {"type": "train", "params": {"dataset_id": dataset, "steps": 5, "use_poses": False}}
    assert client.post("/v1/jobs", json=without, headers=KEY).status_code == 202
    mat = "application/octet-stream"
    get_storage(settings).put_bytes(f"datasets/{dataset}/poses/00000/a.mat", b"mat", mat)
    assert client.post("/v1/jobs", json=body, headers=KEY).status_code == 202
    assert client.get("/v1/jobs", headers=KEY).json()["total"] == 2


def test_same_idempotency_key_gives_the_same_job(client: TestClient, trainable: str) -> None:
    body = {"type": "train", "params": {"dataset_id": trainable, "steps": 5}}
    h = {**KEY, "Idempotency-Key": "abc-1"}
    a = client.post("/v1/jobs", json=body, headers=h)
    b = client.post("/v1/jobs", json=body, headers=h)
    assert a.status_code == 202 and b.status_code == 202 and a.json()["id"] == b.json()["id"]
    assert client.get("/v1/jobs", headers=KEY).json()["total"] == 1


def test_an_idempotency_key_reused_with_another_body_is_409(
    client: TestClient, trainable: str, settings: Settings
) -> None:
    from services.common.storage import get_storage

    h = {**KEY, "Idempotency-Key": "nightly-7"}
    body = {"type": "train", "params": {"dataset_id": trainable, "steps": 5}}
    first = client.post("/v1/jobs", json=body, headers=h)
    assert first.status_code == 202, first.text
    # the same request spelled differently (key order, a default written out) is the same request
    same = {"params": {"steps": 5, "ckpt_every": 500, "dataset_id": trainable}, "type": "train"}
    again = client.post("/v1/jobs", json=same, headers=h)
    assert again.status_code == 202 and again.json()["id"] == first.json()["id"]
    changed = {"type": "train", "params": {"dataset_id": trainable, "steps": 6}}
    err = assert_error(
        client.post("/v1/jobs", json=changed, headers=h), 409, "idempotency_key_reused", "nightly-7"
    )
    assert err["details"]["job_id"] == first.json()["id"] and err["details"]["idempotency_key"] == "nightly-7"
    assert client.get("/v1/jobs", headers=KEY).json()["total"] == 1
    # keys belong to an API key: another caller's "nightly-7" is its own (on a dataset of its own: another
    # key's dataset is unknown to it)
    other_key = {"X-API-Key": "other-key"}
    theirs = client.post("/v1/datasets", json={"name": "o"}, headers=other_key).json()["id"]
    storage = get_storage(settings)
    storage.put_bytes(f"datasets/{theirs}/images.zip", b"PK\x05\x06" + bytes(18), "application/zip")
    storage.put_bytes(f"datasets/{theirs}/poses/00000/a.mat", b"mat", "application/octet-stream")
    changed_theirs = {"type": "train", "params": {"dataset_id": theirs, "steps": 6}}
    other_h = {**other_key, "Idempotency-Key": "nightly-7"}
    other = client.post("/v1/jobs", json=changed_theirs, headers=other_h)
    assert other.status_code == 202 and other.json()["id"] != first.json()["id"]


def test_cancel_a_queued_job_then_cancel_again_is_409(client: TestClient, trainable: str) -> None:
    job = client.post(
        "/v1/jobs", json={"type": "train", "params": {"dataset_id": trainable, "steps": 5}}, headers=KEY
    ).json()
    r = client.delete(f"/v1/jobs/{job['id']}", headers=KEY)
    assert r.status_code == 200 and r.json()["state"] == "cancelled"
    assert_error(client.delete(f"/v1/jobs/{job['id']}", headers=KEY), 409, "job_finished")


def test_job_list_filters_and_paginates(client: TestClient, trainable: str) -> None:
    for _ in range(3):
        client.post(
            "/v1/jobs", json={"type": "train", "params": {"dataset_id": trainable, "steps": 5}}, headers=KEY
        )
    page = client.get("/v1/jobs", params={"type": "train", "limit": 2, "offset": 2}, headers=KEY).json()
    assert page["total"] == 3 and len(page["items"]) == 1
    assert client.get("/v1/jobs", params={"state": "succeeded"}, headers=KEY).json()["total"] == 0
    assert_error(client.get("/v1/jobs", params={"limit": 0}, headers=KEY), 422, "validation_error", "limit")


def test_render_rate_limit_is_per_key(client: TestClient, settings: Settings) -> None:
    codes = [client.post("/v1/models/model-x/render", json={}, headers=KEY).status_code for _ in range(4)]
    assert codes[:3] == [404, 404, 404] and codes[3] == 429
    assert (
        client.post("/v1/models/model-x/render", json={}, headers={"X-API-Key": "other-key"}).status_code
        == 404
    )


def test_openapi_documents_every_route(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    for p in [
        "/v1/datasets",
        "/v1/jobs",
        "/v1/jobs/{job_id}",
        "/v1/models/{model_id}/render",
        "/v1/models/{model_id}/mpi",
        "/readyz",
    ]:
        assert p in paths
