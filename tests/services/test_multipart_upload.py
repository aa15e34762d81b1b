"""Presigned multipart uploads of ``datasets/{id}/images.zip``: the gateway routes against a real SeaweedFS
(parts PUT straight to the presigned URLs, as a client would), and the zip end-record check on its own."""

from __future__ import annotations

import io
import random
import struct
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from fastapi.testclient import TestClient

from services.common.settings import Settings
from services.common.storage import (
    DirStorage,
    MultipartNotSupported,
    UploadNotFound,
    UploadRejected,
    get_storage,
    zip_directory,
)
from tests.services.conftest import KEY
from tests.services.test_gateway import assert_error

MIB = 1024 * 1024


def big_zip(members: int = 11, member_size: int = MIB) -> bytes:
    """A stored (uncompressed) zip of random bytes: ``members`` MiB and a little more."""
    rng = random.Random(members)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as z:
        for i in range(members):
            z.writestr(f"00000/img{i:08d}.png", rng.randbytes(member_size))
    return buf.getvalue()


@pytest.fixture
def s3() -> Iterator[httpx.Client]:
    """What a client outside the gateway uses for the presigned URLs (no proxies from the environment)."""
    with httpx.Client(trust_env=False, timeout=60) as c:
        yield c


def start(client: TestClient, dataset: str, size: int, part_size: int | None = 5 * MIB) -> dict[str, Any]:
    body = {"size": size} if part_size is None else {"size": size, "part_size": part_size}
    r = client.post(f"/v1/datasets/{dataset}/uploads", json=body, headers=KEY)
    assert r.status_code == 201, r.text
    return dict(r.json())


def put_parts(
    s3: httpx.Client, upload: dict[str, Any], data: bytes, only: set[int] | None = None
) -> list[dict]:
    """PUT each part's bytes to its presigned URL; → [{part_number, etag}] with the ETag headers as sent."""
    size = upload["part_size"]
    done = []
    for part in upload["parts"]:
        n = part["part_number"]
        if only is not None and n not in only:
            continue
        r = s3.put(part["url"], content=data[(n - 1) * size : n * size])
        assert r.status_code == 200, r.text
        done.append({"part_number": n, "etag": r.headers["ETag"]})
    return done


def complete(client: TestClient, dataset: str, upload_id: str, parts: list[dict]) -> httpx.Response:
    return client.post(
        f"/v1/datasets/{dataset}/uploads/{upload_id}/complete", json={"parts": parts}, headers=KEY
    )


def images(client: TestClient, dataset: str) -> str | None:
    return client.get(f"/v1/datasets/{dataset}", headers=KEY).json()["images"]


def test_a_zip_in_three_parts_is_stored_whole(
    client: TestClient, dataset: str, settings: Settings, s3: httpx.Client
) -> None:
    data = big_zip()
    assert 10 * MIB < len(data) < 15 * MIB
    up = start(client, dataset, len(data))
    key = f"datasets/{dataset}/images.zip"
    assert up["key"] == key and up["size"] == len(data) and up["part_size"] == 5 * MIB
    assert [p["part_number"] for p in up["parts"]] == [1, 2, 3]
    assert up["method"] == "PUT" and up["expires_in"] == settings.presign_expiry_s and up["upload_id"]
    parts = put_parts(s3, up, data)
    assert all(p["etag"].startswith('"') for p in parts)  # sent back exactly as S3 quoted them
    assert images(client, dataset) is None  # nothing visible before completion

    r = complete(client, dataset, up["upload_id"], parts)
    assert r.status_code == 200, r.text
    view = r.json()
    assert view["id"] == dataset and view["images"] == key and view["size"] == len(data)
    assert view["sha256"] is None  # the gateway never saw the bytes
    assert client.get(f"/v1/datasets/{dataset}", headers=KEY).json() == view

    stored = get_storage(settings).get_bytes(key)
    assert stored == data
    with zipfile.ZipFile(io.BytesIO(stored)) as z:
        assert z.testzip() is None and len(z.namelist()) == 11
    # the upload is used up, and the dataset's images.zip is never replaced by another multipart upload
    assert_error(complete(client, dataset, up["upload_id"], parts), 409, "images_exist")
    r = client.post(f"/v1/datasets/{dataset}/uploads", json={"size": 100}, headers=KEY)
    assert_error(r, 409, "images_exist", "new dataset")


def test_an_upload_never_replaces_images_that_arrived_meanwhile(
    client: TestClient, dataset: str, settings: Settings, s3: httpx.Client
) -> None:
    data = big_zip(6)
    up = start(client, dataset, len(data))
    parts = put_parts(s3, up, data)
    earlier = big_zip(1, member_size=1000)
    r = client.put(f"/v1/datasets/{dataset}/images", content=earlier, headers=KEY)  # the streamed route
    assert r.status_code == 200, r.text
    assert_error(complete(client, dataset, up["upload_id"], parts), 409, "images_exist")
    assert get_storage(settings).get_bytes(f"datasets/{dataset}/images.zip") == earlier
    assert client.delete(f"/v1/datasets/{dataset}/uploads/{up['upload_id']}", headers=KEY).status_code == 204


def test_a_bad_part_list_is_422_and_leaves_the_upload_open(
    client: TestClient, dataset: str, s3: httpx.Client
) -> None:
    data = big_zip()
    up = start(client, dataset, len(data))
    parts = put_parts(s3, up, data)
    one, two, three = parts
    wrong_etag = {"part_number": 2, "etag": '"' + "0" * 32 + '"'}
    for bad, mentions in [
        ([one, three], "missing: [2]"),
        ([one, two], "not in the list: [3]"),
        ([one, wrong_etag, three], "ETag given for parts [2]"),
        ([one, one, two, three], "more than once: [1]"),
        ([one, two, three, {"part_number": 4, "etag": three["etag"]}], "not uploaded (yet): [4]"),
    ]:
        err = assert_error(complete(client, dataset, up["upload_id"], bad), 422, "invalid_parts", mentions)
        assert err["details"] == {"field": "parts", "upload_open": True}
        assert images(client, dataset) is None
    # the upload survived every refusal: the right list (in any order) completes it
    r = complete(client, dataset, up["upload_id"], [three, one, two])
    assert r.status_code == 200 and r.json()["size"] == len(data), r.text


def test_a_truncated_upload_is_deleted_and_reported(
    client: TestClient, dataset: str, settings: Settings, s3: httpx.Client
) -> None:
    data = big_zip()
    up = start(client, dataset, len(data))
    parts = put_parts(s3, up, data, only={1, 2})  # part 3, with the zip's end records, never sent
    err = assert_error(complete(client, dataset, up["upload_id"], parts), 422, "size_mismatch", "declared")
    assert err["details"]["upload_open"] is False
    assert images(client, dataset) is None
    assert not get_storage(settings).exists(f"datasets/{dataset}/images.zip")


@pytest.mark.parametrize("what", ["not a zip", "zip missing its middle"])
def test_bytes_that_are_not_a_whole_zip_are_deleted_and_reported(
    client: TestClient, dataset: str, settings: Settings, s3: httpx.Client, what: str
) -> None:
    if what == "not a zip":
        data = random.Random(1).randbytes(6 * MIB)
    else:  # the declared size matches, but the zip's central directory does not fit where it lies
        whole = big_zip()
        data = whole[: 5 * MIB] + whole[6 * MIB :]
    up = start(client, dataset, len(data))
    err = assert_error(
        complete(client, dataset, up["upload_id"], put_parts(s3, up, data)),
        422,
        "invalid_zip",
        "not a complete zip",
    )
    assert err["details"]["upload_open"] is False
    assert images(client, dataset) is None
    assert not get_storage(settings).exists(f"datasets/{dataset}/images.zip")


def test_abort_drops_the_upload(client: TestClient, dataset: str, s3: httpx.Client) -> None:
    data = big_zip()
    up = start(client, dataset, len(data))
    parts = put_parts(s3, up, data, only={1})
    r = client.delete(f"/v1/datasets/{dataset}/uploads/{up['upload_id']}", headers=KEY)
    assert r.status_code == 204 and r.content == b""
    assert_error(
        client.delete(f"/v1/datasets/{dataset}/uploads/{up['upload_id']}", headers=KEY), 404, "not_found"
    )
    assert_error(complete(client, dataset, up["upload_id"], parts), 404, "not_found")
    assert s3.put(up["parts"][1]["url"], content=data[5 * MIB : 10 * MIB]).status_code == 404  # NoSuchUpload
    assert images(client, dataset) is None


def test_unknown_and_malformed_upload_ids(client: TestClient, dataset: str) -> None:
    parts = [{"part_number": 1, "etag": "abc"}]
    assert_error(complete(client, dataset, "deadbeef_0123", parts), 404, "not_found", "deadbeef_0123")
    assert_error(client.delete(f"/v1/datasets/{dataset}/uploads/deadbeef", headers=KEY), 404, "not_found")
    assert_error(complete(client, dataset, "a b", parts), 422, "invalid_id", "upload_id")
    assert_error(complete(client, "ds-nope", "deadbeef", parts), 404, "not_found", "ds-nope")
    assert_error(
        client.post("/v1/datasets/ds-nope/uploads", json={"size": 10}, headers=KEY), 404, "not_found"
    )
    assert_error(client.post(f"/v1/datasets/{dataset}/uploads", json={"size": 10}), 401, "unauthorized")


@pytest.mark.parametrize(
    ("body", "code", "mentions"),
    [
        ({"size": 5 * 1024**4 + 1}, "validation_error", "size"),  # above S3's largest object
        ({"size": 0}, "validation_error", "size"),
        ({"size": 10, "part_size": 5 * MIB - 1}, "validation_error", "part_size"),  # below S3's minimum
        ({"size": 10, "part_size": 5 * 1024 * MIB + 1}, "validation_error", "part_size"),
        ({"size": 10_000 * 5 * MIB + 1, "part_size": 5 * MIB}, "too_many_parts", "10001 parts"),
        ({"size": 10, "parts": 3}, "validation_error", "parts"),
    ],
)
def test_sizes_and_part_counts_out_of_bounds_are_422(
    client: TestClient, dataset: str, body: dict, code: str, mentions: str
) -> None:
    assert_error(client.post(f"/v1/datasets/{dataset}/uploads", json=body, headers=KEY), 422, code, mentions)


@pytest.mark.parametrize(
    "parts",
    [[], [{"part_number": 0, "etag": "a"}], [{"part_number": 10_001, "etag": "a"}], [{"part_number": 1}]],
)
def test_malformed_part_lists_are_422(client: TestClient, dataset: str, parts: list) -> None:
    assert_error(complete(client, dataset, "deadbeef", parts), 422, "validation_error", "parts")


def test_the_default_part_size_grows_to_stay_within_10000_parts(client: TestClient, dataset: str) -> None:
    small = start(client, dataset, 100, part_size=None)
    assert small["part_size"] == 64 * MIB and len(small["parts"]) == 1
    huge = start(client, dataset, 1024**4, part_size=None)  # 1 TiB: 64 MiB parts would be 16,384
    assert huge["part_size"] == 105 * MIB and len(huge["parts"]) == 9987
    assert huge["part_size"] * len(huge["parts"]) >= 1024**4
    assert len({p["url"] for p in huge["parts"]}) == 9987
    for p in huge["parts"][:3] + huge["parts"][-1:]:
        query = parse_qs(urlsplit(p["url"]).query)
        assert query["partNumber"] == [str(p["part_number"])] and query["uploadId"] == [huge["upload_id"]]
    for up in (small, huge):
        assert (
            client.delete(f"/v1/datasets/{dataset}/uploads/{up['upload_id']}", headers=KEY).status_code == 204
        )


def test_the_directory_backend_is_409(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import redis

    from services.common.settings import get_settings
    from services.gateway.app import create_app

    redis.Redis.from_url(settings.redis_url).flushdb()
    monkeypatch.setenv("GMPI_STORAGE", "dir")
    monkeypatch.setenv("GMPI_STORAGE_DIR", str(tmp_path / "store"))
    get_settings.cache_clear()
    with TestClient(create_app()) as c:
        ds = c.post("/v1/datasets", json={}, headers=KEY).json()["id"]
        base = f"/v1/datasets/{ds}/uploads"
        assert_error(c.post(base, json={"size": 10}, headers=KEY), 409, "not_supported", "S3")
        r = c.post(f"{base}/abc/complete", json={"parts": [{"part_number": 1, "etag": "x"}]}, headers=KEY)
        assert_error(r, 409, "not_supported", "S3")
        assert_error(c.delete(f"{base}/abc", headers=KEY), 409, "not_supported", "S3")


def test_directory_storage_reads_ranges_and_refuses_multipart(tmp_path: Path) -> None:
    store = DirStorage(tmp_path / "store")
    store.put_bytes("datasets/ds-1/a.bin", b"0123456789")
    assert store.read_range("datasets/ds-1/a.bin", 7, 100) == b"789"
    assert store.create_multipart("datasets/ds-1/images.zip", 10) is None
    assert store.presigned_part_urls("datasets/ds-1/images.zip", "u", [1]) is None
    with pytest.raises(MultipartNotSupported, match="S3"):
        store.complete_multipart("datasets/ds-1/images.zip", "u", [(1, "e")])


def test_s3_read_range_returns_the_bytes_asked_for(settings: Settings) -> None:
    store = get_storage(settings)
    store.ensure_ready()
    store.put_bytes("jobs/j/a.bin", bytes(range(256)))
    assert store.read_range("jobs/j/a.bin", 250, 100) == bytes(range(250, 256))
    assert store.read_range("jobs/j/a.bin", 0, 3) == b"\x00\x01\x02"


def test_part_lists_longer_than_one_listing_page_and_small_parts(
    settings: Settings, s3: httpx.Client
) -> None:
    """1,001 one-byte parts: ListParts answers 1,000 per page, so all are found only by paging; S3 then
    refuses parts under 5 MiB (EntityTooSmall), which comes back as invalid_parts with the upload open."""
    store = get_storage(settings)
    store.ensure_ready()
    key = "datasets/ds-many/images.zip"
    upload_id = store.create_multipart(key, 1001)
    assert upload_id
    urls = store.presigned_part_urls(key, upload_id, range(1, 1002)) or []
    etags = [s3.put(url, content=b"x").headers["ETag"] for url in urls]
    with pytest.raises(UploadRejected, match="refused the part list") as e:
        store.complete_multipart(key, upload_id, list(enumerate(etags, 1)))
    assert e.value.code == "invalid_parts" and not store.exists(key)
    store.abort_multipart(key, upload_id)
    with pytest.raises(UploadNotFound):
        store.abort_multipart(key, upload_id)


# --- the end-record check on its own (no store) ----------------------------------------------------------
def tail_of(data: bytes) -> tuple[bytes, int]:
    from services.common.storage import ZIP_TAIL

    return data[-ZIP_TAIL:], len(data)


def test_zip_directory_finds_the_end_record_behind_a_long_comment() -> None:
    """(Even one holding the signature, which fools zipfile itself.)"""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("a.png", b"x" * 1000)
        z.writestr("b.png", b"y" * 10)
        z.comment = b"a comment holding PK\x05\x06 on purpose" + b"." * 60_000
    data = buf.getvalue()
    d = zip_directory(*tail_of(data))
    assert d.entries == 2 and data[d.offset : d.offset + 4] == b"PK\x01\x02"
    assert d.offset + d.size == data.index(b"PK\x05\x06")  # the first one: the comment comes after


def test_zip_directory_understands_zip64_archives() -> None:
    """More than 65,535 members (FFHQ has 70,000) makes zipfile write the zip64 end records."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for i in range(65_537):
            z.writestr(f"{i:06d}.png", b"")
    data = buf.getvalue()
    assert b"PK\x06\x07" in data[-200:]
    eocd_entries = struct.unpack_from("<H", data, data.rindex(b"PK\x05\x06") + 10)[0]
    assert eocd_entries == 0xFFFF  # only the zip64 record holds the real count
    d = zip_directory(*tail_of(data))
    assert d.entries == 65_537 and data[d.offset : d.offset + 4] == b"PK\x01\x02"
    for damaged in (
        data[:1000] + data[2000:],
        data[:1000] + data[:1000] + data[1000:],
    ):  # a piece lost/repeated
        with pytest.raises(ValueError, match="parts are missing, repeated or out of order"):
            zip_directory(*tail_of(damaged))


@pytest.mark.parametrize(
    ("data", "mentions"),
    [
        (b"", "no zip end"),
        (b"PK\x05\x06", "no zip end"),
        (random.Random(2).randbytes(100_000), "no zip end"),
        (big_zip(3, 1000)[:-1], "no zip end"),  # cut short by one byte
        (big_zip(3, 1000) + b"junk", "no zip end"),  # something after the end record
        (b"x" * 50 + big_zip(3, 1000), "should end at byte"),  # shifted by data in front
        (b"PK\x05\x06" + bytes(18), "no files"),  # an empty zip
    ],
)
def test_zip_directory_refuses_what_is_not_a_whole_zip(data: bytes, mentions: str) -> None:
    with pytest.raises(ValueError, match=mentions.replace("(", r"\(")):
        zip_directory(*tail_of(data))
