"""``GET /v1/datasets/{id}/files``: a dataset's files (what preprocessing wrote among them) listed in key
order, page by page, each downloadable, against the real gateway app, Redis and S3."""

from __future__ import annotations

import httpx
from fastapi.testclient import TestClient

from services.common.settings import Settings
from services.common.storage import get_storage
from tests.services.conftest import KEY
from tests.services.test_gateway import assert_error


def _preprocessed(dataset: str, settings: Settings, n: int = 23) -> dict[str, bytes]:
    """The files a preprocess job leaves in a dataset: per-image landmark files, pose .mat files, the
    fail lists; → relative path → content."""
    storage = get_storage(settings)
    files: dict[str, bytes] = {}
    for i in range(n):
        files[f"landmarks/detections/results/00000/img{i:08d}.txt"] = f"{i}\t{i}\n".encode() * 5
        files[f"poses/00000/img{i:08d}.mat"] = bytes([i]) * (100 + i)
    files["landmarks/detections/fail_list.txt"] = b"\n"
    files["poses/fail_list.txt"] = b"\n"
    for rel, data in files.items():
        storage.put_bytes(f"datasets/{dataset}/{rel}", data)
    return files


def _all_pages(client: TestClient, dataset: str, **params: object) -> tuple[list[dict], int]:
    items: list[dict] = []
    pages, cursor = 0, None
    while True:
        q = {**params, **({"cursor": cursor} if cursor else {})}
        r = client.get(f"/v1/datasets/{dataset}/files", params=q, headers=KEY)
        assert r.status_code == 200, r.text
        body = r.json()
        items += body["items"]
        pages += 1
        cursor = body["next_cursor"]
        if cursor is None:
            return items, pages
        assert pages < 100


def test_pages_list_every_file_once_in_key_order(
    client: TestClient, dataset: str, settings: Settings
) -> None:
    files = _preprocessed(dataset, settings)
    items, pages = _all_pages(client, dataset, limit=10)
    expected = sorted([*files, "dataset.json"])
    assert [i["path"] for i in items] == expected and pages == 5  # 49 files, 10 a page
    assert all(i["key"] == f"datasets/{dataset}/{i['path']}" for i in items)
    by_path = {i["path"]: i for i in items}
    mat = "poses/00000/img00000007.mat"
    assert by_path[mat]["size"] == len(files[mat])
    r = httpx.get(by_path[mat]["url"], timeout=30)  # presigned on S3: no API key needed
    assert r.status_code == 200 and r.content == files[mat]


def test_a_prefix_lists_one_part_of_the_dataset(client: TestClient, dataset: str, settings: Settings) -> None:
    files = _preprocessed(dataset, settings)
    items, _ = _all_pages(client, dataset, prefix="poses/", limit=7)
    assert [i["path"] for i in items] == sorted(p for p in files if p.startswith("poses/"))
    one = client.get(
        f"/v1/datasets/{dataset}/files", params={"prefix": "landmarks/detections/fail"}, headers=KEY
    )
    assert [i["path"] for i in one.json()["items"]] == ["landmarks/detections/fail_list.txt"]
    assert one.json()["next_cursor"] is None
    empty = client.get(f"/v1/datasets/{dataset}/files", params={"prefix": "nothing/"}, headers=KEY).json()
    assert empty["items"] == [] and empty["next_cursor"] is None


def test_bad_prefixes_cursors_and_datasets_are_refused(
    client: TestClient, dataset: str, settings: Settings
) -> None:
    _preprocessed(dataset, settings, n=3)
    url = f"/v1/datasets/{dataset}/files"
    assert_error(client.get(url, params={"prefix": "../other"}, headers=KEY), 422, "invalid_key")
    assert_error(client.get(url, params={"cursor": "%%%"}, headers=KEY), 422, "invalid_cursor")
    # a cursor of another listing (another prefix here) does not leak keys outside this one
    first = client.get(url, params={"limit": 2}, headers=KEY).json()
    r = client.get(url, params={"prefix": "poses/", "cursor": first["next_cursor"]}, headers=KEY)
    assert_error(r, 422, "invalid_cursor")
    assert_error(client.get(url, params={"limit": 0}, headers=KEY), 422, "validation_error", "limit")
    assert_error(client.get("/v1/datasets/ds-nope/files", headers=KEY), 404, "not_found", "ds-nope")
    assert client.get(url).status_code == 401
