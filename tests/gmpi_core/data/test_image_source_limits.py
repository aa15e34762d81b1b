"""``ImageSource`` reads zip members within limits (``gmpi_core.data.ziplimits``): a zip bomb among the
images of a dataset (uploaded by a presigned PUT, say) is a ``DatasetError`` naming the member, never an
unbounded allocation in a training or evaluation process."""

from __future__ import annotations

import io
import struct
import time
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest

from gmpi_core.data.datasets import DatasetError, ImageSource, dataset_tool_name, write_dataset_zip
from gmpi_core.data.ziplimits import MAX_IMAGE_BYTES, MAX_RATIO, MemberLimits, ZipMemberError, read_member

MIB = 1024 * 1024


def _png(value: int = 7) -> bytes:
    import PIL.Image

    buf = io.BytesIO()
    PIL.Image.fromarray(np.full((8, 8, 3), value, np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def _bomb_zip(path: Path, size: int) -> Path:
    """``00000/img00000000.png`` (a real image) and ``00000/img00000001.png``: ``size`` zeros, deflated."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("00000/img00000000.png", _png())
        info = zipfile.ZipInfo("00000/img00000001.png")
        info.compress_type = zipfile.ZIP_DEFLATED
        with z.open(info, "w") as out:
            for _ in range(size // MIB):
                out.write(bytes(MIB))
    return path


def _patch_declared_size(path: Path, member: str, size: int) -> None:
    """Make the central directory declare ``size`` bytes uncompressed for ``member``."""
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as z:
        p = z.start_dir
    encoded = member.encode()
    while True:
        p = data.index(b"PK\x01\x02", p)
        (n,) = struct.unpack_from("<H", data, p + 28)
        if data[p + 46 : p + 46 + n] == encoded:
            break
        p += 4
    struct.pack_into("<L", data, p + 24, size)
    path.write_bytes(bytes(data))


def test_a_bomb_member_is_refused_by_its_ratio_naming_it_with_bounded_memory(tmp_path: Path) -> None:
    path = _bomb_zip(tmp_path / "images.zip", 200 * MIB)
    assert path.stat().st_size < 400_000
    source = ImageSource(path)
    assert source.read("00000/img00000000.png").size == (8, 8)  # the good member still reads
    tracemalloc.start()
    try:
        with pytest.raises(DatasetError, match=r"img00000001\.png.*zip bomb") as e:
            source.read_bytes("00000/img00000001.png")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 * MIB, f"{peak / MIB:.0f} MiB allocated before the refusal"
    assert isinstance(e.value.__cause__, ZipMemberError) and e.value.__cause__.code == "zip_bomb"


def test_a_member_above_the_size_limit_is_refused(tmp_path: Path) -> None:
    noise = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)  # a PNG of ~12 kB
    path = write_dataset_zip(tmp_path / "images.zip", [(dataset_tool_name(0), noise)])
    name = dataset_tool_name(0)
    source = ImageSource(path, limits=MemberLimits(max_member_bytes=100))
    with pytest.raises(
        DatasetError, match=r"img00000000\.png.*declares \d+ bytes uncompressed; the limit is 100"
    ):
        source.read_bytes(name)
    assert ImageSource(path).read(name).size == (64, 64)


def test_a_member_that_holds_less_than_it_declares_is_refused(tmp_path: Path) -> None:
    """``zipfile`` returns the short data of a member whose central directory over-declares its size."""
    path = tmp_path / "images.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("a.png", _png())
    real = len(_png())
    _patch_declared_size(path, "a.png", real + 1000)
    with pytest.raises(
        DatasetError, match=rf"'a\.png'.*holds {real} bytes, not the {real + 1000} it declares"
    ):
        ImageSource(path).read_bytes("a.png")


def test_a_bomb_that_lies_about_its_size_is_refused(tmp_path: Path) -> None:
    """A bomb declaring a small size: zipfile stops at the declared size (then the CRC fails)."""
    path = _bomb_zip(tmp_path / "images.zip", 100 * MIB)
    _patch_declared_size(path, "00000/img00000001.png", 1000)
    tracemalloc.start()
    try:
        with pytest.raises(DatasetError, match=r"img00000001\.png"):
            ImageSource(path).read_bytes("00000/img00000001.png")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 * MIB


def test_limits_follow_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert MemberLimits.from_env({}) == MemberLimits(MAX_IMAGE_BYTES, MAX_RATIO, 1 * MIB)
    env = {"GMPI_ZIP_MAX_IMAGE_BYTES": "123", "GMPI_ZIP_MAX_RATIO": "7", "GMPI_ZIP_RATIO_FLOOR_BYTES": "0"}
    assert MemberLimits.from_env(env) == MemberLimits(123, 7, 0)
    with pytest.raises(ValueError, match="GMPI_ZIP_MAX_RATIO"):
        MemberLimits.from_env({"GMPI_ZIP_MAX_RATIO": "lots"})
    monkeypatch.setenv("GMPI_ZIP_MAX_IMAGE_BYTES", "10")
    path = write_dataset_zip(tmp_path / "images.zip", [(dataset_tool_name(0), np.zeros((8, 8, 3), np.uint8))])
    with pytest.raises(DatasetError, match="the limit is 10"):
        ImageSource(path).read_bytes(dataset_tool_name(0))


def test_read_member_returns_exactly_the_declared_bytes(tmp_path: Path) -> None:
    path = tmp_path / "z.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("a.png", b"a" * 5000)
        z.writestr("b.png", b"")
    with zipfile.ZipFile(path) as z:
        assert read_member(z, z.getinfo("a.png"), MemberLimits()) == b"a" * 5000
        assert read_member(z, z.getinfo("b.png"), MemberLimits()) == b""


def _read_all(source: ImageSource, names: list[str], reader: str) -> float:
    t0 = time.perf_counter()
    if reader == "plain":  # what ImageSource did before the limits: ZipFile.read
        zf = source._zipfile()
        for n in names:
            zf.read(n)
    else:
        for n in names:
            source.read_bytes(n)
    return time.perf_counter() - t0


def test_bounded_reads_cost_about_the_same_as_plain_reads(tmp_path: Path) -> None:
    """1000 member reads, bounded vs ``ZipFile.read``: the checks add no measurable cost."""
    rng = np.random.default_rng(0)
    images = [(dataset_tool_name(i), rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)) for i in range(1000)]
    source = ImageSource(write_dataset_zip(tmp_path / "images.zip", images))
    names = source.names
    _read_all(source, names, "bounded")  # warm the page cache
    plain, bounded = [], []
    for _ in range(5):  # interleaved: a load spike on a shared machine hits both
        plain.append(_read_all(source, names, "plain"))
        bounded.append(_read_all(source, names, "bounded"))
    print(f"1000 member reads: ZipFile.read {min(plain) * 1e3:.1f} ms, bounded {min(bounded) * 1e3:.1f} ms")
    assert min(bounded) < min(plain) * 1.5 + 0.05, (plain, bounded)


def test_the_data_check_before_training_reports_a_bomb_member_as_a_bad_image(tmp_path: Path) -> None:
    """Training refuses to start on data its check finds bad (``gmpi train``'s data check, the trainer
    job's ``bad_training_data``): a bomb member is one of those, named, read within the limits."""
    from gmpi_core.data.check import check_dataset

    path = _bomb_zip(tmp_path / "images.zip", 200 * MIB)
    tracemalloc.start()
    try:
        result = check_dataset(path, kind="images")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 16 * MIB, f"{peak / MIB:.0f} MiB"
    bad = {p.key: p for p in result.problems}
    assert list(bad) == ["00000/img00000001.png"], result.problems
    assert bad["00000/img00000001.png"].kind == "unreadable"
    assert "zip bomb" in bad["00000/img00000001.png"].detail
