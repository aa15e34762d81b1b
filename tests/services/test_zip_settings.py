"""The zip limits as settings (``GMPI_ZIP_*``), entry counts refused before the central directory is parsed,
member names no file system could take, dataset folders whose listed keys must stay inside the local
folder (``artifacts.download_prefix``), and every consumer of a dataset's ``images.zip`` (preprocess
landmarks and poses, train, evaluate) checking it before use, with the zip check's code in the job's error.
"""

from __future__ import annotations

import io
import re
import struct
import tracemalloc
import zipfile
from pathlib import Path
from typing import Any

import pytest

from services.common import zips
from services.common.settings import Settings, get_settings
from services.common.storage import DirStorage
from services.common.tasks import JobInputError
from tests.services.test_gateway import tiny_zip

MIB = 1024 * 1024
REPO = Path(__file__).resolve().parents[2]


# --- settings ----------------------------------------------------------------------------------------------
def test_zip_settings_default_to_the_module_constants() -> None:
    fields = Settings.model_fields
    assert fields["zip_max_members"].default == zips.MAX_MEMBERS
    assert fields["zip_max_member_bytes"].default == zips.MAX_MEMBER_BYTES
    assert fields["zip_max_total_bytes"].default == zips.MAX_TOTAL_BYTES
    assert fields["zip_max_ratio"].default == zips.MAX_RATIO
    assert fields["zip_ratio_floor_bytes"].default == zips.RATIO_FLOOR_BYTES
    assert fields["zip_max_central_directory_bytes"].default == zips.MAX_CENTRAL_DIRECTORY_BYTES
    assert fields["zip_max_image_bytes"].default == zips.MAX_IMAGE_BYTES
    assert zips.ZipLimits.from_settings(Settings()) == zips.DEFAULT_LIMITS


def test_zip_settings_are_documented() -> None:
    security = (REPO / "SECURITY.md").read_text()
    readme = (REPO / "services" / "README.md").read_text()
    for name in Settings.model_fields:
        if name.startswith("zip_"):
            var = f"GMPI_{name.upper()}"
            assert re.search(rf"^\| `{var}`", security, re.M), f"{var} missing from SECURITY.md's table"
            assert f"`{var}`" in readme, f"{var} missing from services/README.md"


def test_zip_limits_follow_the_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "z.zip"
    path.write_bytes(tiny_zip(3))
    assert len(zips.check_zip(path)) == 3
    monkeypatch.setenv("GMPI_ZIP_MAX_MEMBERS", "2")
    get_settings.cache_clear()
    try:
        with pytest.raises(zips.UnsafeZipError, match="the limit is 2") as e:
            zips.check_zip(path)
        assert e.value.code == zips.ZIP_TOO_LARGE
        monkeypatch.setenv("GMPI_ZIP_MAX_MEMBERS", "10")
        monkeypatch.setenv("GMPI_ZIP_MAX_MEMBER_BYTES", "20")
        get_settings.cache_clear()
        with pytest.raises(zips.UnsafeZipError, match="the limit is 20"):
            zips.check_zip(path)
        assert len(zips.check_zip(path, zips.ZipLimits())) == 3  # explicit limits win
    finally:
        get_settings.cache_clear()


# --- the central directory: counted before it is parsed --------------------------------------------------
def _many_entries_zip(n: int) -> bytes:
    """``n`` empty stored entries, and an end record that claims one."""
    local, cd = bytearray(), bytearray()
    for i in range(n):
        name = f"{i:x}.png".encode()
        off = len(local)
        local += struct.pack("<4sHHHHHLLLHH", b"PK\x03\x04", 20, 0, 0, 0, 0x21, 0, 0, 0, len(name), 0) + name
        cd += struct.pack(
            "<4sBBHHHHHLLLHHHHHLL", b"PK\x01\x02", 20, 3, 20, 0, 0, 0, 0x21, 0, 0, 0, len(name), 0, 0, 0, 0,
            0o100644 << 16, off,
        ) + name  # fmt: skip
    end = struct.pack("<4sHHHHLLH", b"PK\x05\x06", 0, 0, 1, 1, len(cd), len(local), 0)
    return bytes(local + cd + end)


def test_an_entry_count_above_the_limit_is_refused_before_zipfile_parses_it(tmp_path: Path) -> None:
    path = tmp_path / "many.zip"
    path.write_bytes(_many_entries_zip(100_000))
    limits = zips.ZipLimits(max_members=1000)
    tracemalloc.start()
    try:
        with pytest.raises(zips.UnsafeZipError, match="more than 1000 entries") as e:
            zips.check_zip(path, limits)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert e.value.code == zips.ZIP_TOO_LARGE
    assert peak < 8 * MIB, f"{peak / MIB:.0f} MiB: the central directory was parsed"  # ~60 MiB if parsed

    class Store:
        def __init__(self, data: bytes) -> None:
            self.data = data

        def read_range(self, key: str, offset: int, length: int) -> bytes:
            return self.data[offset : offset + length]

    data = path.read_bytes()
    with pytest.raises(zips.UnsafeZipError, match="more than 1000 entries"):
        zips.check_stored_zip(Store(data), "datasets/x/images.zip", len(data), limits)
    assert len(zips.check_zip(path, zips.ZipLimits(max_members=100_000))) == 100_000
    with pytest.raises(zips.UnsafeZipError, match=r"central directory is \d+ bytes; the limit is 1000"):
        zips.check_zip(path, zips.ZipLimits(max_central_directory_bytes=1000))


# --- names no file system takes (found by scripts/fuzz/zips.py) ----------------------------------------
@pytest.mark.parametrize(
    "names,match",
    [
        (["a", "a/b.png"], "is a file, but 'a/b.png' needs it as a folder"),
        (["a/b.png", "a/b.png/c.png"], "is a file, but"),
        (["x" * 300 + ".png"], "segment longer than 255 bytes"),
        ([("d" * 200 + "/") * 30 + "deep.png"], "longer than 1024 bytes"),
    ],
)
def test_names_that_cannot_be_extracted_are_refused_by_the_check(
    tmp_path: Path, names: list[str], match: str
) -> None:
    path = tmp_path / "z.zip"
    with zipfile.ZipFile(path, "w") as z:
        for n in names:
            z.writestr(n, b"x")
    with pytest.raises(zips.UnsafeZipError, match=match) as e:
        zips.extract_all(path, tmp_path / "out")
    assert e.value.code == zips.UNSAFE_MEMBER
    assert not (tmp_path / "out").exists() and [p.name for p in tmp_path.iterdir()] == ["z.zip"]


@pytest.mark.parametrize("version", [64, 0xFF])
def test_an_unsupported_zip_version_is_an_invalid_zip(tmp_path: Path, version: int) -> None:
    """zipfile raises NotImplementedError ("zip file version 25.5") while parsing: found by the fuzzer."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("a.png", b"x")
    data = bytearray(buf.getvalue())
    struct.pack_into("<B", data, data.index(b"PK\x01\x02") + 6, version)  # version needed to extract
    path = tmp_path / "z.zip"
    path.write_bytes(bytes(data))
    with pytest.raises(zips.UnsafeZipError) as e:
        zips.check_zip(path)
    assert e.value.code == zips.INVALID_ZIP


# --- dataset folders: listed keys stay inside the local folder ----------------------------------------
def test_download_prefix_refuses_keys_that_leave_the_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from services.common import artifacts

    store = DirStorage(tmp_path / "store")
    store.ensure_ready()
    prefix = "datasets/ds-1/images/"
    store.put_bytes(prefix + "a.png", b"a")
    store.put_bytes(prefix + "up/escape.png", b"evil")
    cache = tmp_path / "cache"
    outside = tmp_path / "outside"
    outside.mkdir()
    local = cache / "datasets" / "ds-1" / "images"
    local.mkdir(parents=True)
    (local / "up").symlink_to(outside)  # a symlinked folder where a key's folder goes
    with pytest.raises(JobInputError, match="outside") as e:
        artifacts.fetch_dataset_images(store, str(cache), "ds-1")
    assert e.value.code == "unsafe_object_key"  # type: ignore[attr-defined]
    assert not (outside / "escape.png").exists()

    (local / "up").unlink()
    listed = [prefix + "a.png", prefix + "../../../escape.png"]
    monkeypatch.setattr(store, "list", lambda p: listed)  # a store that lists a hostile key
    with pytest.raises(JobInputError, match="outside"):
        artifacts.download_prefix(store, prefix, local)
    assert not (cache / "escape.png").exists()
    monkeypatch.setattr(store, "list", lambda p: ["datasets/ds-2/images/a.png"])  # not below the prefix
    with pytest.raises(JobInputError, match="outside"):
        artifacts.download_prefix(store, prefix, local)
    monkeypatch.undo()
    store.delete(prefix + "up/escape.png")
    assert artifacts.fetch_dataset_images(store, str(cache), "ds-1") == local
    assert (local / "a.png").read_bytes() == b"a"


# --- every consumer of images.zip checks it first ----------------------------------------------------------
def _bomb_zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr(
            "00000/img00000000.png", zipfile.ZipFile(io.BytesIO(tiny_zip(1))).read("00000/img00000000.png")
        )
        info = zipfile.ZipInfo("00000/img00000001.png")
        info.compress_type = zipfile.ZIP_DEFLATED
        with z.open(info, "w") as out:
            for _ in range(20):
                out.write(bytes(MIB))
    return buf.getvalue()


def _consumers() -> dict[str, Any]:
    from services.evaluator import tasks as evaluator
    from services.landmarks import tasks as landmarks
    from services.pose import tasks as pose
    from services.trainer import tasks as trainer

    return {
        "landmarks_start": landmarks._start,
        "landmarks_chunk": lambda ctx: landmarks._chunk(ctx, 0, ["00000/img00000000.png"]),
        "pose_resolution": pose._resolution,
        "train": trainer.stage_inputs,
        "evaluate": lambda ctx: evaluator.stage_dataset(ctx, ctx.params.dataset_id),
    }


@pytest.mark.parametrize(
    "consumer", ["landmarks_start", "landmarks_chunk", "pose_resolution", "train", "evaluate"]
)
def test_every_consumer_refuses_a_bomb_uploaded_by_a_presigned_put(settings: Settings, consumer: str) -> None:
    """The zip goes straight into the store (as a single presigned PUT does: the gateway never sees it);
    the job fails with the zip check's code and a message naming the dataset and the member."""
    from services.common.jobs import JobStore
    from services.common.storage import get_storage
    from services.common.tasks import run_job

    storage = get_storage(settings)
    storage.ensure_ready()
    storage.put_bytes("datasets/ds-bomb/images.zip", _bomb_zip())
    jobs = JobStore.from_url(settings.redis_url)
    job_type, params = {  # a record of the job type whose task the consumer belongs to
        "train": ("train", {"dataset_id": "ds-bomb", "model_id": "model-bomb", "steps": 10}),
        "evaluate": ("evaluate", {"dataset_id": "ds-bomb", "model_id": "model-bomb"}),
    }.get(consumer, ("preprocess", {"dataset_id": "ds-bomb"}))
    rec, _ = jobs.create(job_type, params)
    fn = _consumers()[consumer]

    def body(ctx: Any) -> None:
        fn(ctx)
        raise AssertionError(f"{consumer} used the bomb")

    run_job(rec["id"], body)
    got = jobs.get(rec["id"])
    assert got["state"] == "failed", got
    error = got["error"]
    assert error["code"] == "zip_bomb", error
    assert "ds-bomb" in error["message"] and "img00000001.png" in error["message"], error["message"]
    assert error["details"]["member"] == "00000/img00000001.png"
