"""Read ``torch.save`` files (zip and legacy formats) with the allow-list unpickler, within the file's size.

``torch.load(weights_only=True)`` trusts the sizes a file declares: a storage of 2^40 elements is
allocated before its bytes are looked for, and a ``BUILD`` on a tensor calls ``Tensor.set_`` with sizes
from the file. This reader resolves the same files itself:

* the pickle runs in :class:`~gmpi_core.checkpoints.safe_pickle.SafeUnpickler` (allow-listed globals,
  bounded opcodes, ``BUILD`` only on ``OrderedDict``'s ``_metadata``);
* every storage a file declares is checked against what the file holds *before* anything is allocated
  — the zip member's size (zip format) or the bytes left in the file (legacy format) — and is read once,
  however many tensors share it;
* every tensor is a view that must fit its storage and may not claim more elements than it holds;
* zip archives are checked before :mod:`zipfile` parses them (entry count and central-directory size),
  members must be stored uncompressed (as ``torch.save`` writes them) and little-endian.

    >>> state = load_torch_file("generator.pth")  # doctest: +SKIP
"""

from __future__ import annotations

import io
import math
import os
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import IO, Any

import torch
from torch import Tensor

from gmpi_core.checkpoints.safe_pickle import MAX_PICKLE_OPS, MalformedPickleError, SafeUnpickler, safe_repr

__all__ = [
    "MAX_TENSOR_DIMS",
    "MAX_ZIP_DIRECTORY_BYTES",
    "MAX_ZIP_MEMBERS",
    "STORAGE_TYPES",
    "TENSOR_GLOBALS",
    "LoadedStorage",
    "StorageType",
    "TorchFileError",
    "load_storage_blob",
    "load_torch_file",
    "rebuild_parameter",
    "rebuild_tensor",
]

# Zip archives: entries and central-directory bytes zipfile may parse (~0.5 KB of memory per entry). An
# official generator.pth holds ~500 storages; its directory is ~40 KB.
MAX_ZIP_MEMBERS = 100_000
MAX_ZIP_DIRECTORY_BYTES = 16 << 20
MAX_TENSOR_DIMS = 64  # PyTorch's own limit on dimensions
_TORCH_MAGIC = 0x1950A86A20F9469CFC6C  # torch.serialization.MAGIC_NUMBER (legacy format)
_LEGACY_PROTOCOL = 1001
_READ_CHUNK = 16 << 20
_HEADER_OPS = 10_000  # magic number, protocol, sys_info and the storage-key list of a legacy file


class TorchFileError(ValueError):
    """The file is not a ``torch.save`` file this reader accepts (truncated, inconsistent or unsupported)."""


@dataclass(frozen=True)
class StorageType:
    """What ``torch.FloatStorage`` & co. resolve to: only their element type is used."""

    name: str
    dtype: torch.dtype

    @property
    def itemsize(self) -> int:
        return torch.empty((), dtype=self.dtype).element_size()


_DTYPES = {
    "DoubleStorage": torch.float64,
    "FloatStorage": torch.float32,
    "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
    "ShortStorage": torch.int16,
    "CharStorage": torch.int8,
    "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
    "ComplexFloatStorage": torch.complex64,
    "ComplexDoubleStorage": torch.complex128,
}
STORAGE_TYPES: dict[str, StorageType] = {f"torch.{n}": StorageType(n, d) for n, d in _DTYPES.items()}


@dataclass(eq=False)
class LoadedStorage:
    """A storage read from a file: its element type and its bytes (a 1-D ``uint8`` tensor)."""

    dtype: torch.dtype
    data: Tensor

    @property
    def numel(self) -> int:
        return self.data.numel() // torch.empty((), dtype=self.dtype).element_size()

    def flat(self) -> Tensor:
        """The storage as a 1-D tensor of its element type (shares memory)."""
        return self.data.view(self.dtype)


def _int(value: Any, what: str) -> int:
    if type(value) is not int:
        raise TorchFileError(f"{what} must be an int, got {safe_repr(value)}")
    return value


def _ints(value: Any, what: str) -> tuple[int, ...]:
    if type(value) not in (tuple, list) or len(value) > MAX_TENSOR_DIMS:
        raise TorchFileError(
            f"{what} must be a tuple of at most {MAX_TENSOR_DIMS} ints, got {safe_repr(value)}"
        )
    return tuple(_int(v, what) for v in value)


def rebuild_tensor(
    storage: Any,
    storage_offset: Any,
    size: Any,
    stride: Any,
    requires_grad: Any = False,
    backward_hooks: Any = None,
    metadata: Any = None,
) -> Tensor:
    """``torch._utils._rebuild_tensor_v2``: a view of a loaded storage that must fit in it.

    ``Tensor.set_`` would silently grow the storage; here the view must lie inside what the file holds and
    may not claim more elements than the storage has (no stride-0 amplification). Hooks and metadata
    are ignored.
    """
    if not isinstance(storage, LoadedStorage):
        raise TorchFileError(f"a tensor is rebuilt from a {type(storage).__name__}, expected a storage")
    offset = _int(storage_offset, "a tensor's storage offset")
    shape = _ints(size, "a tensor's size")
    strides = _ints(stride, "a tensor's stride")
    numel = storage.numel
    fits = len(shape) == len(strides) and offset >= 0 and all(n >= 0 for n in shape)
    fits = fits and all(s >= 0 for s in strides)
    if fits and all(n > 0 for n in shape):
        fits = offset + sum((n - 1) * s for n, s in zip(shape, strides)) < numel
        fits = fits and math.prod(shape) <= numel
    elif fits:  # an empty view
        fits = offset <= numel
    if not fits:
        raise TorchFileError(
            f"a tensor view (offset {offset}, size {list(shape)}, stride {list(strides)}) does not fit its "
            f"storage of {numel} elements"
        )
    return storage.flat().as_strided(shape, strides, offset)


def rebuild_parameter(
    data: Any, requires_grad: Any = False, backward_hooks: Any = None, *state: Any
) -> Tensor:
    """``torch._utils._rebuild_parameter(_with_state)``: the plain tensor is all a state dict needs."""
    if not isinstance(data, Tensor):
        raise TorchFileError(f"a Parameter wraps a {type(data).__name__}, expected a tensor")
    return data


# What generator.pth / ema.pth / state dicts need.
TENSOR_GLOBALS: dict[str, Any] = {
    "torch._utils._rebuild_tensor_v2": rebuild_tensor,
    "torch._utils._rebuild_parameter": rebuild_parameter,
    "torch._utils._rebuild_parameter_with_state": rebuild_parameter,
    "collections.OrderedDict": OrderedDict,
    **STORAGE_TYPES,
}


# ---------------------------------------------------------------------------------------------------
# Reading


def _read_into(fh: IO[bytes], out: Tensor, what: str) -> None:
    """Fill the uint8 tensor ``out`` from ``fh`` in chunks; fewer bytes than it holds is an error."""
    array: Any = out.numpy()
    view = memoryview(array) if out.numel() else memoryview(b"")
    filled = 0
    while filled < len(view):
        n = fh.readinto(view[filled : filled + _READ_CHUNK])  # type: ignore[attr-defined]
        if not n:
            raise TorchFileError(f"{what} is truncated: {filled} of {len(view)} bytes present")
        filled += n


def _storage_type(value: Any, what: str) -> StorageType:
    if not isinstance(value, StorageType):
        raise TorchFileError(f"{what} names the storage type {safe_repr(value)}, not a tensor storage class")
    return value


def _check_zip_directory(fh: IO[bytes], source: str) -> None:
    """Bound what :class:`zipfile.ZipFile` will parse, using zipfile's own end-of-directory lookup."""
    end_record = getattr(zipfile, "_EndRecData", None)
    if end_record is None:  # pragma: no cover - every CPython since 2.x has it
        return
    try:
        record = end_record(fh)
    except OSError as err:
        raise TorchFileError(f"cannot read {source}: {err}") from None
    if record is None:
        raise TorchFileError(f"{source} is not a zip archive (no end-of-central-directory record)")
    entries, size = record[zipfile._ECD_ENTRIES_TOTAL], record[zipfile._ECD_SIZE]  # type: ignore[attr-defined]
    if entries > MAX_ZIP_MEMBERS or size > MAX_ZIP_DIRECTORY_BYTES:
        raise TorchFileError(
            f"{source}: its zip directory lists {entries} entries in {size} bytes; torch.save archives hold "
            f"far fewer (limits MAX_ZIP_MEMBERS={MAX_ZIP_MEMBERS}, "
            f"MAX_ZIP_DIRECTORY_BYTES={MAX_ZIP_DIRECTORY_BYTES}). Refused before parsing it."
        )


def _load_zip(
    fh: IO[bytes],
    size: int,
    *,
    source: str,
    allowed_globals: Mapping[str, Any],
    buildable: tuple[type, ...],
    max_ops: int,
    advice: str | None,
) -> Any:
    _check_zip_directory(fh, source)
    fh.seek(0)
    try:
        archive = zipfile.ZipFile(fh)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError) as err:
        raise TorchFileError(f"{source} is not a readable zip archive ({err})") from None
    with archive:
        infos = archive.infolist()
        pickles = [i for i in infos if i.filename.endswith("/data.pkl") and i.filename.count("/") == 1]
        if len(pickles) != 1:
            raise TorchFileError(
                f"{source} is a zip archive but not a torch.save file (no single */data.pkl)"
            )
        prefix = pickles[0].filename[: -len("data.pkl")]

        def member(name: str) -> zipfile.ZipInfo:
            try:
                info = archive.getinfo(name)
            except KeyError:
                raise TorchFileError(f"{source} has no archive member {safe_repr(name)}") from None
            if info.compress_type != zipfile.ZIP_STORED or info.flag_bits & 0x1:
                raise TorchFileError(
                    f"{source}: member {safe_repr(name)} is compressed or encrypted; torch.save stores "
                    "members as they are (a compressed member could expand far beyond the file)"
                )
            if info.file_size > size:
                raise TorchFileError(
                    f"{source}: member {safe_repr(name)} claims more bytes than the file has"
                )
            return info

        def read_member(info: zipfile.ZipInfo, out: Tensor) -> None:
            try:
                with archive.open(info) as stream:
                    _read_into(stream, out, f"{source} member {info.filename}")  # type: ignore[arg-type]
            except (zipfile.BadZipFile, OSError, EOFError, ValueError, RuntimeError) as err:
                if isinstance(err, TorchFileError):
                    raise
                raise TorchFileError(f"cannot read {source} member {info.filename}: {err}") from None

        if prefix + "byteorder" in archive.namelist():
            order = member(prefix + "byteorder")
            if order.file_size > 16:
                raise TorchFileError(f"{source}: invalid byteorder record")
            if archive.read(order) != b"little":
                raise TorchFileError(f"{source} was not written on a little-endian machine; not supported")

        storages: dict[str, LoadedStorage] = {}

        def storage(pid: Any) -> LoadedStorage:
            if type(pid) is not tuple or len(pid) != 5 or pid[0] != "storage":
                raise TorchFileError(f"{source}: unsupported persistent id {safe_repr(pid)}")
            _, stype, key, _location, numel = pid
            stype = _storage_type(stype, source)
            if type(key) is not str or not key or "/" in key or "\\" in key:
                raise TorchFileError(f"{source}: invalid storage key {safe_repr(key)}")
            numel = _int(numel, f"{source}: a storage's element count")
            known = storages.get(key)
            if known is not None:  # shared storage: read once
                if known.dtype != stype.dtype or known.numel != numel:
                    raise TorchFileError(f"{source}: storage {key} is declared twice with different types")
                return known
            info = member(f"{prefix}data/{key}")
            nbytes = numel * stype.itemsize
            if numel < 0 or nbytes > info.file_size:
                raise TorchFileError(
                    f"{source}: storage {key} declares {numel} elements ({nbytes} bytes) but its archive "
                    f"member holds {info.file_size} bytes; refused before allocating"
                )
            loaded = LoadedStorage(stype.dtype, torch.empty(nbytes, dtype=torch.uint8))
            read_member(info, loaded.data)
            storages[key] = loaded
            return loaded

        info = member(pickles[0].filename)
        try:
            with archive.open(info) as fh_pkl:
                pickled = fh_pkl.read()  # at most the member's size, which is at most the file's
        except (zipfile.BadZipFile, OSError, EOFError, ValueError, RuntimeError) as err:
            raise TorchFileError(f"cannot read {source} member {info.filename}: {err}") from None
        return SafeUnpickler(
            io.BytesIO(pickled),
            allowed_globals,
            source=source,
            advice=advice,
            persistent_load=storage,
            buildable=buildable,
            max_ops=max_ops,
        ).load()


def _load_legacy(
    fh: IO[bytes],
    size: int,
    *,
    source: str,
    allowed_globals: Mapping[str, Any],
    buildable: tuple[type, ...],
    max_ops: int,
    advice: str | None,
) -> Any:
    def header() -> Any:
        return SafeUnpickler(fh, {}, source=source, max_ops=_HEADER_OPS).load()

    magic = header()
    if type(magic) is not int or magic != _TORCH_MAGIC:
        raise TorchFileError(f"{source} is not a torch.save file (no magic number)")
    protocol = header()
    if protocol != _LEGACY_PROTOCOL:
        raise TorchFileError(f"{source}: unsupported torch.save protocol {safe_repr(protocol)}")
    sys_info = header()
    if type(sys_info) is not dict or sys_info.get("little_endian") is not True:
        raise TorchFileError(f"{source} was not written on a little-endian machine; not supported")

    storages: dict[str, LoadedStorage] = {}
    declared = 0

    def storage(pid: Any) -> LoadedStorage:
        nonlocal declared
        if type(pid) is not tuple or len(pid) != 6 or pid[0] != "storage":
            raise TorchFileError(f"{source}: unsupported persistent id {safe_repr(pid)}")
        _, stype, key, _location, numel, view_metadata = pid
        stype = _storage_type(stype, source)
        if type(key) is not str:
            raise TorchFileError(f"{source}: invalid storage key {safe_repr(key)}")
        numel = _int(numel, f"{source}: a storage's element count")
        if view_metadata is not None:
            raise TorchFileError(f"{source}: storage views (torch < 1.0 files) are not supported")
        known = storages.get(key)
        if known is not None:
            if known.dtype != stype.dtype or known.numel != numel:
                raise TorchFileError(f"{source}: storage {key} is declared twice with different types")
            return known
        nbytes = numel * stype.itemsize
        declared += nbytes + 8
        remaining = size - fh.tell()
        if numel < 0 or declared > remaining:
            raise TorchFileError(
                f"{source}: its storages declare {declared} bytes but only {remaining} bytes follow in the "
                "file; refused before allocating"
            )
        loaded = LoadedStorage(stype.dtype, torch.empty(nbytes, dtype=torch.uint8))
        storages[key] = loaded
        return loaded

    result = SafeUnpickler(
        fh,
        allowed_globals,
        source=source,
        advice=advice,
        persistent_load=storage,
        buildable=buildable,
        max_ops=max_ops,
    ).load()
    keys = header()
    if (
        type(keys) is not list
        or not all(type(k) is str for k in keys)
        or len(set(keys)) != len(keys)
        or set(keys) != set(storages)
    ):
        raise TorchFileError(f"{source}: its storage list does not match the storages its data refers to")
    for key in keys:
        loaded = storages[key]
        head = fh.read(8)
        if len(head) != 8:
            raise TorchFileError(f"{source} is truncated before storage {key}")
        numel = int.from_bytes(head, "little", signed=True)
        if numel != loaded.numel:
            raise TorchFileError(
                f"{source}: storage {key} holds {numel} elements but {loaded.numel} were declared"
            )
        _read_into(fh, loaded.data, f"{source} storage {key}")
    return result


def load_torch_file(
    src: str | os.PathLike[str] | bytes,
    *,
    allowed_globals: Mapping[str, Any] = TENSOR_GLOBALS,
    source: str | None = None,
    buildable: tuple[type, ...] = (OrderedDict,),
    max_ops: int = MAX_PICKLE_OPS,
    advice: str | None = None,
) -> Any:
    """The object a ``torch.save`` file (path or bytes) holds; tensors are CPU views of its storages.

    Raises :class:`TorchFileError` for anything malformed or inconsistent (a declared storage larger than
    the file is refused before allocation) and :class:`~gmpi_core.checkpoints.safe_pickle.UnsafePickleError`
    (e.g. ``ForbiddenGlobalError``) for what the allow-list refuses.
    """
    if isinstance(src, bytes | bytearray):
        name = source or "the torch.save bytes"
        return _load_stream(
            io.BytesIO(bytes(src)), len(src), name, allowed_globals, buildable, max_ops, advice
        )
    name = source or f"'{os.fspath(src)}'"
    try:
        fh = open(src, "rb")  # noqa: SIM115 - closed below
    except OSError as err:
        raise TorchFileError(f"cannot open {name}: {err}") from None
    with fh:
        size = os.fstat(fh.fileno()).st_size
        return _load_stream(fh, size, name, allowed_globals, buildable, max_ops, advice)


def _load_stream(
    fh: IO[bytes],
    size: int,
    source: str,
    allowed_globals: Mapping[str, Any],
    buildable: tuple[type, ...],
    max_ops: int,
    advice: str | None,
) -> Any:
    loader: Callable[..., Any] = _load_zip if fh.read(4) == b"PK\x03\x04" else _load_legacy
    fh.seek(0)
    try:
        return loader(
            fh,
            size,
            source=source,
            allowed_globals=allowed_globals,
            buildable=buildable,
            max_ops=max_ops,
            advice=advice,
        )
    except TorchFileError:
        raise
    except (
        OSError,
        EOFError,
        ValueError,  # zipfile: undecodable names, negative seeks; struct/int parsing
        NotImplementedError,
        zipfile.BadZipFile,
        zipfile.LargeZipFile,
        MalformedPickleError,
    ) as err:
        raise TorchFileError(f"cannot read {source}: {type(err).__name__}: {str(err)[:300]}") from None


def load_storage_blob(blob: Any, *, source: str = "a storage blob") -> LoadedStorage:
    """``torch.storage._load_from_bytes``: a storage pickled as its own (legacy) ``torch.save`` bytes."""
    if not isinstance(blob, bytes | bytearray):
        raise TorchFileError(f"{source} is not a byte blob (got {type(blob).__name__})")
    storage = load_torch_file(
        bytes(blob), allowed_globals=STORAGE_TYPES, source=source, buildable=(), max_ops=_HEADER_OPS
    )
    if not isinstance(storage, LoadedStorage):
        raise TorchFileError(f"{source} decoded to {type(storage).__name__}, not a tensor storage")
    return storage
