"""Untrusted zips (``services/common/zips.py``): member names that would escape a scratch folder, symlink
and duplicate entries, and zip bombs, refused wherever a zip enters (streamed PUT, multipart completion,
a registered prefix, ground truth, checkpoint imports) and wherever a worker extracts one."""

from __future__ import annotations

import io
import struct
import tracemalloc
import warnings
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from services.common import zips
from services.common.settings import Settings
from services.common.storage import DirStorage, get_storage
from services.common.tasks import JobInputError
from tests.services.conftest import KEY
from tests.services.test_gateway import assert_error, tiny_zip
from tests.services.test_multipart_upload import complete, images, put_parts, start

MIB = 1024 * 1024
PNG = zipfile.ZipFile(io.BytesIO(tiny_zip(1))).read("00000/img00000000.png")


def zip_with(*members: tuple[str, bytes], extra: tuple[tuple[zipfile.ZipInfo, bytes], ...] = ()) -> bytes:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Duplicate name"
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
            for name, data in members:
                z.writestr(name, data)
            for info, data in extra:
                z.writestr(info, data)
    return buf.getvalue()


def symlink(name: str, target: str) -> tuple[zipfile.ZipInfo, bytes]:
    info = zipfile.ZipInfo(name)
    info.create_system = 3
    info.external_attr = 0o120777 << 16
    return info, target.encode()


def zeros_member(z: zipfile.ZipFile, name: str, size: int) -> None:
    info = zipfile.ZipInfo(name)
    info.compress_type = zipfile.ZIP_DEFLATED
    with z.open(info, "w") as out:
        chunk = bytes(MIB)
        for _ in range(size // MIB):
            out.write(chunk)


def bomb(path: Path, size: int, lie: int | None = None, small: tuple[str, bytes] = ("a.png", PNG)) -> bytes:
    """A zip with ``small`` and ``ema.pth``: ``size`` bytes of zeros, deflated (~1000x). ``lie``: its
    central directory then declares ``lie`` bytes uncompressed instead."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr(*small)
        z.writestr("config.pth", b"c" * 100)
        zeros_member(z, "ema.pth", size)
    data = bytearray(path.read_bytes())
    if lie is not None:
        with zipfile.ZipFile(path) as z:
            cd = z.start_dir
        p = data.index(b"PK\x01\x02ema.pth"[:4], cd)
        while data[p + 46 : p + 53] != b"ema.pth":
            p = data.index(b"PK\x01\x02", p + 4)
        struct.pack_into("<L", data, p + 24, lie)  # uncompressed size in the central directory
        path.write_bytes(bytes(data))
    return bytes(data)


# --- 1. names that escape ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name",
    ["../escape.png", "a/../../escape.png", "/abs.png", "C:/x.png", "a\\..\\x.png", "a//b.png", "./a.png"],
)
def test_unsafe_names_are_refused(name: str) -> None:
    with pytest.raises(zips.UnsafeZipError) as e:
        zips.check_name(name)
    assert e.value.code == zips.UNSAFE_MEMBER


def test_symlink_duplicate_and_nul_entries_are_refused(tmp_path: Path) -> None:
    for data in (
        zip_with(("a.png", PNG), extra=(symlink("link.png", "/etc/passwd"),)),
        zip_with(("a.png", PNG), ("a.png", PNG)),
    ):
        (tmp_path / "z.zip").write_bytes(data)
        with pytest.raises(zips.UnsafeZipError) as e:
            zips.check_zip(tmp_path / "z.zip")
        assert e.value.code == zips.UNSAFE_MEMBER
    raw = bytearray(zip_with(("abcde.png", PNG)))
    raw[raw.rindex(b"abcde.png") + 1] = 0  # a NUL in the central directory's name
    (tmp_path / "z.zip").write_bytes(bytes(raw))
    with pytest.raises(zips.UnsafeZipError):
        zips.check_zip(tmp_path / "z.zip")


def test_extract_all_never_writes_outside(tmp_path: Path) -> None:
    (tmp_path / "z.zip").write_bytes(zip_with(("ok/a.png", PNG), ("../../escape.png", PNG)))
    (tmp_path / "out").mkdir()
    with pytest.raises(zips.UnsafeZipError):
        zips.extract_all(tmp_path / "z.zip", tmp_path / "out" / "x")
    assert not (tmp_path / "escape.png").exists() and not (tmp_path / "out" / "x").exists()
    assert list((tmp_path / "out").iterdir()) == []  # the temporary folder is gone too
    (tmp_path / "ok.zip").write_bytes(zip_with(("ok/a.png", PNG)))
    dest = zips.extract_all(tmp_path / "ok.zip", tmp_path / "good")
    assert (dest / "ok" / "a.png").read_bytes() == PNG
    with pytest.raises(zips.UnsafeZipError):  # a symlinked folder inside the destination is followed
        (tmp_path / "good" / "up").symlink_to(tmp_path)
        zips.safe_target(tmp_path / "good", "up/escape.png")


@pytest.mark.parametrize("how", ["dotdot", "absolute"])
def test_landmarks_worker_extracts_inside_its_scratch_folder(tmp_path: Path, how: str) -> None:
    from services.landmarks import tasks as landmarks

    name = "../escape.png" if how == "dotdot" else str(tmp_path / "abs.png")
    source = tmp_path / "images.zip"
    source.write_bytes(zip_with(("00000/a.png", PNG), (name, PNG)))
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    with pytest.raises(JobInputError):
        landmarks._extract(source, ["00000/a.png", name], scratch / "images")
    assert not (scratch / "escape.png").exists() and not (tmp_path / "abs.png").exists()
    with pytest.raises(JobInputError):  # the job refuses the zip before any chunk runs
        landmarks._check_images_zip(source, "ds-x")


def test_landmarks_worker_extracts_a_good_chunk_from_a_zip_or_a_folder(tmp_path: Path) -> None:
    from services.landmarks import tasks as landmarks

    source = tmp_path / "images.zip"
    source.write_bytes(zip_with(("00000/a.png", PNG), ("00000/b.png", PNG), ("00001/c.png", PNG)))
    landmarks._extract(source, ["00000/b.png", "00001/c.png"], tmp_path / "z" / "images")
    got = sorted(p.relative_to(tmp_path / "z").as_posix() for p in (tmp_path / "z").rglob("*.png"))
    assert got == ["images/00000/b.png", "images/00001/c.png"]
    folder = tmp_path / "folder"
    (folder / "00000").mkdir(parents=True)
    (folder / "00000" / "a.png").write_bytes(PNG)
    landmarks._extract(folder, ["00000/a.png"], tmp_path / "f" / "images")
    assert (tmp_path / "f" / "images" / "00000" / "a.png").read_bytes() == PNG
    (tmp_path / "g").mkdir()
    with pytest.raises(JobInputError):
        landmarks._extract(folder, ["../images.zip"], tmp_path / "g" / "images")
    assert list((tmp_path / "g").iterdir()) == []


def test_multipart_upload_with_traversal_members_is_refused_and_deleted(
    client: TestClient, dataset: str, settings: Settings
) -> None:
    data = zip_with(("00000/a.png", PNG), ("../../escape.png", PNG))
    up = start(client, dataset, len(data))
    with httpx.Client(trust_env=False, timeout=60) as s3:
        parts = put_parts(s3, up, data)
    err = assert_error(complete(client, dataset, up["upload_id"], parts), 422, "invalid_zip", "escape.png")
    assert err["details"]["upload_open"] is False
    assert images(client, dataset) is None
    assert not get_storage(settings).exists(f"datasets/{dataset}/images.zip")


def test_multipart_upload_with_a_symlink_is_refused(client: TestClient, dataset: str) -> None:
    data = zip_with(("00000/a.png", PNG), extra=(symlink("00000/b.png", "/etc/shadow"),))
    up = start(client, dataset, len(data))
    with httpx.Client(trust_env=False, timeout=60) as s3:
        parts = put_parts(s3, up, data)
    err = assert_error(complete(client, dataset, up["upload_id"], parts), 422, "invalid_zip", "symlink")
    assert err["details"]["reason"] == "unsafe_zip_member"
    assert images(client, dataset) is None


def test_register_checks_the_zip_members(client: TestClient, dataset: str, settings: Settings) -> None:
    storage = get_storage(settings)
    storage.put_bytes("incoming/bad/images.zip", zip_with(("00000/a.png", PNG), ("/etc/x.png", PNG)))
    r = client.post(f"/v1/datasets/{dataset}/register", json={"prefix": "incoming/bad"}, headers=KEY)
    assert_error(r, 422, "invalid_zip", "x.png")
    assert not storage.exists(f"datasets/{dataset}/images.zip")
    storage.put_bytes("incoming/good/images.zip", zip_with(("00000/a.png", PNG)))
    r = client.post(f"/v1/datasets/{dataset}/register", json={"prefix": "incoming/good"}, headers=KEY)
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("what", ["symlink", "duplicate"])
def test_streamed_upload_refuses_symlinks_and_duplicates(client: TestClient, dataset: str, what: str) -> None:
    if what == "symlink":
        data = zip_with(("00000/a.png", PNG), extra=(symlink("00000/b.png", "/etc/passwd"),))
    else:
        data = zip_with(("00000/a.png", PNG), ("00000/a.png", b"other"))
    r = client.put(f"/v1/datasets/{dataset}/images", content=data, headers=KEY)
    err = assert_error(r, 422, "invalid_zip", "symlink" if what == "symlink" else "more than once")
    assert err["details"]["reason"] == "unsafe_zip_member"
    assert images(client, dataset) is None


# --- 2. zip bombs ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def bombs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    d = tmp_path_factory.mktemp("bombs")
    out = {}
    for name, size, lie in (("big", 300 * MIB, None), ("small", 100 * MIB, None), ("liar", 300 * MIB, 1000)):
        bomb(d / f"{name}.zip", size, lie)
        out[name] = d / f"{name}.zip"
    yield out


def _import_peak(path: Path, tmp_path: Path) -> tuple[int, BaseException | None]:
    from services.gateway.routes.models import _import_keys

    storage = DirStorage(tmp_path / "store")
    err: BaseException | None = None
    tracemalloc.start()
    try:
        _import_keys("gmpi_pth", path, "models/m-1/source/", storage)
    except Exception as e:
        err = e
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return peak, err


def test_checkpoint_import_bomb_is_refused_by_the_gateways_header_check(
    bombs: dict[str, Path], tmp_path: Path
) -> None:
    """A bomb its central directory shows (declared sizes and ratio) never leaves the gateway; one that
    lies about its sizes passes the header check (the gateway decompresses nothing) and is the worker's
    to refuse (next test)."""
    assert bombs["big"].stat().st_size < 400_000
    peak, err = _import_peak(bombs["big"], tmp_path)
    assert peak < 32 * MIB, f"the gateway held {peak / MIB:.0f} MiB"
    from services.gateway.errors import ApiError

    assert isinstance(err, ApiError), err
    assert err.status == 422 and err.code == "zip_bomb", (err.status, err.code, err.message)
    _, err = _import_peak(bombs["liar"], tmp_path)
    assert err is None, err


@pytest.mark.parametrize("which,code", [("big", "zip_bomb"), ("liar", "invalid_zip")])
def test_checkpoint_bomb_is_refused_by_the_workers_extraction_with_bounded_memory(
    bombs: dict[str, Path], tmp_path: Path, which: str, code: str
) -> None:
    from services.common import checkpoint_zip

    err: BaseException | None = None
    tracemalloc.start()
    try:
        checkpoint_zip.extract(bombs[which], tmp_path / "src")
    except zips.UnsafeZipError as e:
        err = e
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert peak < 32 * MIB, f"the worker held {peak / MIB:.0f} MiB"
    assert isinstance(err, zips.UnsafeZipError) and err.code == code, err
    assert not list((tmp_path / "src").iterdir())  # nothing half-extracted is left


def test_checkpoint_import_bomb_through_the_gateway(
    settings: Settings, bombs: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    import redis

    from services.common.settings import get_settings
    from services.gateway.app import create_app
    from services.gateway.routes import models

    monkeypatch.setenv("GMPI_MAX_UPLOAD_BYTES", str(2 * MIB))
    get_settings.cache_clear()

    def no_worker(*a: object, **k: object) -> object:
        raise AssertionError("the bomb reached the worker")

    monkeypatch.setattr(models, "_wait", no_worker)
    redis.Redis.from_url(settings.redis_url).flushdb()
    with TestClient(create_app()) as c:
        r = c.post("/v1/models/import?kind=gmpi_pth", content=bombs["big"].read_bytes(), headers=KEY)
    get_settings.cache_clear()
    assert_error(r, 422, "zip_bomb", "ema.pth")


def test_streamed_dataset_bomb_is_refused(client: TestClient, dataset: str, bombs: dict[str, Path]) -> None:
    data = bombs["small"].read_bytes()
    assert len(data) < 200_000  # within the suite's upload limit: only the ratio refuses it
    r = client.put(f"/v1/datasets/{dataset}/images", content=data, headers=KEY)
    assert_error(r, 422, "zip_bomb", "ema.pth")
    assert images(client, dataset) is None


def _deep3dface(extra: list[tuple[str, bytes]]) -> bytes:
    names = [f"recon/{f}/000000.npy" for f in ("aligned_depth", "pred_depth", "pred_mask")]
    return zip_with(*[(n, b"x") for n in names], ("recon/coeffs/000000.mat", b"m"), *extra)


def test_ground_truth_refuses_duplicates_and_bombs(tmp_path: Path) -> None:
    from services.common.groundtruth import GroundTruthError, check_ground_truth, extract_ground_truth

    path = tmp_path / "gt.zip"
    path.write_bytes(_deep3dface([]))
    assert check_ground_truth(path, "deep3dface").info == {"images": 1}
    path.write_bytes(_deep3dface([("recon/pred_depth/000000.npy", b"y")]))
    with pytest.raises(GroundTruthError, match="more than once"):
        check_ground_truth(path, "deep3dface")
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for f in ("aligned_depth", "pred_mask"):
            z.writestr(f"recon/{f}/000000.npy", b"x")
        z.writestr("recon/coeffs/000000.mat", b"m")
        zeros_member(z, "recon/pred_depth/000000.npy", 100 * MIB)
    with pytest.raises(GroundTruthError, match="zip bomb"):
        extract_ground_truth(path, "deep3dface", tmp_path / "out")
    assert not (tmp_path / "out").exists()
