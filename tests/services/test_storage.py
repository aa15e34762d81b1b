"""Both storage backends against the same contract; the S3 one against a real SeaweedFS."""

from __future__ import annotations

import hashlib
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from services.common.settings import Settings
from services.common.storage import (
    DirStorage,
    ObjectNotFound,
    Storage,
    StorageUnavailable,
    UploadTooLarge,
    make_storage,
)
from tests.services.procs import S3Server


@pytest.fixture(params=["s3", "dir"])
def storage(request: pytest.FixtureRequest, settings: Settings, tmp_path: Path) -> Storage:
    s = make_storage(settings) if request.param == "s3" else DirStorage(tmp_path / "store")
    s.ensure_ready()
    return s


def test_put_get_roundtrip_records_the_sha256(storage: Storage, tmp_path: Path) -> None:
    data = b"gmpi" * 5000
    info = storage.put_bytes("jobs/job-1/report.json", data)
    assert info.sha256 == hashlib.sha256(data).hexdigest()
    assert storage.stat("jobs/job-1/report.json") == info
    assert storage.get_bytes("jobs/job-1/report.json") == data


def test_listing_shows_committed_keys_only(storage: Storage) -> None:
    storage.put_bytes("models/m-1/config.json", b"{}")
    assert storage.list("models/") == ["models/m-1/config.json"]
    assert not any(k.startswith(".tmp/") for k in storage.list(""))


def test_listing_a_prefix_is_exact_and_has_any_stops_early(storage: Storage) -> None:
    keys = ["datasets/ds-1/poses/00000/a.mat", "datasets/ds-1/poses/fail_list.txt", "datasets/ds-10/x.png",
            "datasets/ds-1/images.zip", "models/m/poses/b.mat"]  # fmt: skip
    for key in keys:
        storage.put_bytes(key, b"x")
    assert storage.list("datasets/ds-1/") == [
        "datasets/ds-1/images.zip", "datasets/ds-1/poses/00000/a.mat", "datasets/ds-1/poses/fail_list.txt",
    ]  # fmt: skip
    assert storage.list("datasets/ds-1") == [*storage.list("datasets/ds-1/"), "datasets/ds-10/x.png"]
    assert storage.has_any("datasets/ds-1/poses/", ".mat") and storage.has_any("datasets/ds-1/")
    assert not storage.has_any("datasets/ds-1/poses/", ".png") and not storage.has_any("datasets/ds-2/")
    assert not storage.has_any("datasets/ds-1/images/")  # a sibling key is not below the prefix


def test_missing_objects_raise_not_found(storage: Storage) -> None:
    assert storage.stat("jobs/none/x") is None
    with pytest.raises(ObjectNotFound):
        storage.get_bytes("jobs/none/x")


def test_oversized_stream_is_refused_and_leaves_nothing(storage: Storage) -> None:
    with pytest.raises(UploadTooLarge):
        storage.put_stream("datasets/ds-1/images.zip", iter([b"x" * 600, b"y" * 600]), max_bytes=1000)
    assert storage.list("datasets/") == []


def test_a_group_is_visible_through_its_manifest_only_after_commit(storage: Storage) -> None:
    files = {"config.json": storage.put_bytes("models/m-2/config.json", b"{}")}
    assert storage.manifest("models/m-2/") is None
    storage.commit("models/m-2/", files, {"source": "test"})
    manifest = storage.manifest("models/m-2/")
    assert manifest is not None and manifest["files"]["config.json"]["sha256"] == files["config.json"].sha256


def test_presigned_get_works_and_a_tampered_signature_is_refused(settings: Settings) -> None:
    s = make_storage(settings)
    s.ensure_ready()
    s.put_bytes("jobs/j/a.txt", b"hello")
    url = s.presigned_get("jobs/j/a.txt")
    assert url is not None
    assert urllib.request.urlopen(url, timeout=10).read() == b"hello"
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(url[:-4] + "0000", timeout=10)
    assert err.value.code == 403


def test_unreachable_store_raises_storage_unavailable_after_retrying(settings: Settings) -> None:
    s = make_storage(settings.model_copy(update={"s3_endpoint": "127.0.0.1:1"}))
    s.retry_for_s = 1.0
    t0 = time.monotonic()
    with pytest.raises(StorageUnavailable):
        s.put_bytes("jobs/j/x", b"x")
    assert time.monotonic() - t0 < 30


@pytest.mark.timeout(120)
def test_upload_survives_the_store_being_down_for_a_few_seconds(
    settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> None:
    server = S3Server(tmp_path_factory.mktemp("s3-flaky")).start()
    try:
        s = make_storage(settings.model_copy(update={"s3_endpoint": server.endpoint}))
        s.ensure_ready()
        s.retry_for_s = 60.0
        server.stop()
        result: dict[str, object] = {}

        def upload() -> None:
            try:
                result["info"] = s.put_bytes("jobs/j/late.bin", b"z" * 1000)
            except Exception as exc:  # reported below
                result["error"] = exc

        t = threading.Thread(target=upload)
        t.start()
        time.sleep(3)
        server.start()
        t.join(60)
        assert "error" not in result, result
        assert s.get_bytes("jobs/j/late.bin") == b"z" * 1000
    finally:
        server.stop()
