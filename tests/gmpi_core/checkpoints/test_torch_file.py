"""torch.save files read without torch.load: same tensors, storages checked against the file."""

from __future__ import annotations

import io
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

import pytest
import torch

from gmpi_core.checkpoints import torch_file
from gmpi_core.checkpoints.safe_pickle import ForbiddenGlobalError
from gmpi_core.checkpoints.torch_file import TorchFileError, load_storage_blob, load_torch_file


def _sample() -> dict[str, Any]:
    base = torch.arange(10.0)
    module = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Conv2d(2, 4, 3))
    return {
        "state": module.state_dict(),  # an OrderedDict with _metadata (set by BUILD)
        "param": torch.nn.Parameter(torch.ones(2)),
        "bf16": torch.ones(2, dtype=torch.bfloat16),
        "half": torch.full((2, 2), 0.5, dtype=torch.float16),
        "long": torch.tensor([1, 2**40]),
        "bool": torch.tensor([True, False]),
        "view": base[2:5],
        "strided": base[::3],
        "transposed": torch.arange(12.0).reshape(3, 4).t(),
        "empty": torch.zeros(0, 3),
        "scalar": torch.tensor(3.5),
        "plain": [None, 0.5, "x", (1, 2)],
    }


def _same(a: Any, b: Any, path: str = "") -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor), path
        assert (a.dtype, a.shape, a.stride()) == (b.dtype, b.shape, b.stride()), path
        assert torch.equal(a, b), path
    elif isinstance(a, dict):
        assert type(b) is type(a) and list(a) == list(b), path
        for k in a:
            _same(a[k], b[k], f"{path}/{k}")
    elif isinstance(a, list | tuple):
        assert type(b) is type(a) and len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _same(x, y, f"{path}[{i}]")
    else:
        assert a == b, path


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_reads_what_torch_load_reads(tmp_path: Path, legacy: bool) -> None:
    path = tmp_path / "x.pth"
    torch.save(_sample(), path, _use_new_zipfile_serialization=not legacy)
    expected = torch.load(path, weights_only=True)
    got = load_torch_file(path)
    _same(expected, got)
    assert got["state"]._metadata == expected["state"]._metadata
    # views of one storage share it (read once), as with torch.load
    assert got["view"].untyped_storage().data_ptr() == got["strided"].untyped_storage().data_ptr()
    assert load_torch_file(path.read_bytes())["plain"] == [None, 0.5, "x", (1, 2)]


def test_storage_blobs_of_stylegan2_pickles_decode() -> None:
    typed = torch.storage.TypedStorage(
        wrap_storage=torch.arange(6.0).untyped_storage(), dtype=torch.float32, _internal=True
    )
    blob = typed.__reduce__()[1][0]  # type: ignore[index]
    storage = load_storage_blob(blob)
    assert storage.dtype == torch.float32 and torch.equal(storage.flat(), torch.arange(6.0))
    with pytest.raises(TorchFileError, match="truncated"):
        load_storage_blob(blob[:-3])


def test_a_view_that_claims_more_elements_than_its_storage_is_refused() -> None:
    storage = torch_file.LoadedStorage(torch.float32, torch.zeros(4 * 4, dtype=torch.uint8))
    assert torch_file.rebuild_tensor(storage, 0, (2, 2), (2, 1)).shape == (2, 2)
    with pytest.raises(TorchFileError, match=r"size \[1000000\], stride \[0\]\) does not fit"):
        torch_file.rebuild_tensor(storage, 0, (10**6,), (0,))  # stride 0: one element seen 10^6 times
    with pytest.raises(TorchFileError, match="does not fit"):
        torch_file.rebuild_tensor(storage, 3, (2,), (1,))
    with pytest.raises(TorchFileError, match="must be a tuple"):
        torch_file.rebuild_tensor(storage, 0, [1] * 65, [1] * 65)


def test_zip_members_must_be_stored_and_little_endian(tmp_path: Path) -> None:
    path = tmp_path / "w.pth"
    torch.save({"w": torch.ones(3)}, path)
    members = {i.filename: zipfile.ZipFile(path).read(i) for i in zipfile.ZipFile(path).infolist()}

    def rezip(name: str, **changes: Any) -> bytes:
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as archive:
            for member, data in {**members, **changes.get("content", {})}.items():
                kind = zipfile.ZIP_DEFLATED if member in changes.get("deflate", ()) else zipfile.ZIP_STORED
                archive.writestr(member, data, compress_type=kind)
        return buf.getvalue()

    prefix = next(n for n in members if n.endswith("data.pkl"))[: -len("data.pkl")]
    assert torch.equal(load_torch_file(rezip("same"))["w"], torch.ones(3))
    with pytest.raises(TorchFileError, match="compressed or encrypted"):
        load_torch_file(rezip("deflated", deflate=[prefix + "data/0"]))
    with pytest.raises(TorchFileError, match="little-endian"):
        load_torch_file(rezip("big", content={prefix + "byteorder": b"big"}))


def test_zip_directories_are_bounded_before_parsing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "w.pth"
    torch.save({"w": torch.ones(3)}, path)
    monkeypatch.setattr(torch_file, "MAX_ZIP_MEMBERS", 3)
    with pytest.raises(TorchFileError, match=r"lists \d+ entries.*MAX_ZIP_MEMBERS=3.*before parsing"):
        load_torch_file(path)


def test_only_allow_listed_globals_and_buildable_types(tmp_path: Path) -> None:
    path = tmp_path / "w.pth"
    torch.save({"device": torch.device("cpu")}, path)
    with pytest.raises(ForbiddenGlobalError, match=r"'torch\.device'"):
        load_torch_file(path)
    torch.save(OrderedDict(a=torch.ones(1)), path)
    assert list(load_torch_file(path)) == ["a"]


def test_not_a_torch_file() -> None:
    with pytest.raises(TorchFileError, match=r"not a torch\.save file|not a valid pickle|truncated"):
        load_torch_file(b"\x80\x02K\x05.")
    with pytest.raises(TorchFileError, match="cannot open"):
        load_torch_file("/nonexistent/x.pth")
