"""Untrusted zips: one place that checks member names and sizes and extracts safely.

Every zip that enters the services (dataset ``images.zip`` however it is uploaded or registered,
ground-truth zips, checkpoint imports) is checked here by its central directory first
(``check_entries``): member names (relative, no ``..``/``.``/empty segments, no drive letters,
backslashes or NUL, no duplicates), entry types (no symlinks or other special files, read from the unix
mode bits in ``external_attr``), and declared sizes (each member, the total, the compression ratio, and
that the compressed sizes fit the archive at all). Reading a member (``copy_member``/``read_member``)
then counts the bytes actually produced, since declared sizes can lie, and stops at a hard limit.
``extract_members`` writes into a temporary folder next to the destination, proves each target stays
inside it, and renames the folder into place only when everything is written.

The limits are module constants (``ZipLimits``); they are meant to become settings.
"""

from __future__ import annotations

import io
import os
import shutil
import stat
import uuid
import zipfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

KIB, MIB, GIB = 1024, 1024 * 1024, 1024 * 1024 * 1024
CHUNK = 1 * MIB

# --- limits (to become settings: see SECURITY.md) ---------------------------------------------------------
MAX_MEMBERS = 1_000_000  # entries in one zip (each costs a ZipInfo in memory)
MAX_MEMBER_BYTES = 4 * GIB  # uncompressed size of one member
MAX_TOTAL_BYTES = 1024 * GIB  # uncompressed size of all members together
MAX_RATIO = 100  # uncompressed / compressed, for members above RATIO_FLOOR_BYTES
RATIO_FLOOR_BYTES = 1 * MIB  # small members may compress arbitrarily well: harmless
MAX_CENTRAL_DIRECTORY_BYTES = 256 * MIB  # read from the store by ranged GETs (register / multipart)


@dataclass(frozen=True)
class ZipLimits:
    max_members: int = MAX_MEMBERS
    max_member_bytes: int = MAX_MEMBER_BYTES
    max_total_bytes: int = MAX_TOTAL_BYTES
    max_ratio: int = MAX_RATIO
    ratio_floor_bytes: int = RATIO_FLOOR_BYTES


DEFAULT_LIMITS = ZipLimits()
# a gmpi_pth import is decompressed by the gateway (to a temporary file, never into memory)
CHECKPOINT_LIMITS = ZipLimits(max_members=64, max_member_bytes=2 * GIB, max_total_bytes=4 * GIB)

# error codes (the gateway answers 413 for zip_too_large, 422 for the others)
INVALID_ZIP = "invalid_zip"
UNSAFE_MEMBER = "unsafe_zip_member"
ZIP_BOMB = "zip_bomb"
ZIP_TOO_LARGE = "zip_too_large"


class UnsafeZipError(ValueError):
    """A zip refused before (or while) anything of it is decompressed; ``code`` is one of the codes
    above, ``member`` the offending member's name (or None)."""

    def __init__(self, code: str, message: str, member: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.member = member

    @property
    def http_status(self) -> int:
        return 413 if self.code == ZIP_TOO_LARGE else 422


def _shown(name: str) -> str:
    return ascii(name[:120])


def check_name(name: str) -> str:
    """``name`` if it is a safe relative member path (a trailing ``/`` marks a folder), else
    UnsafeZipError: no NUL or control characters, no backslash, not absolute, no drive letter, no
    empty, ``.`` or ``..`` segment."""
    bad = None
    if not name:
        bad = "is empty"
    elif any(ord(c) < 32 or c == "\x7f" for c in name):
        bad = "has a NUL or control character"
    elif "\\" in name:
        bad = "has a backslash"
    elif name.startswith("/"):
        bad = "is absolute"
    elif len(name) >= 2 and name[1] == ":" and name[0].isalpha():
        bad = "has a drive letter"
    elif any(part in ("", ".", "..") for part in name.removesuffix("/").split("/")):
        bad = "has an empty, '.' or '..' segment"
    if bad:
        raise UnsafeZipError(UNSAFE_MEMBER, f"zip member {_shown(name)} {bad}", name)
    return name


def _is_special(info: zipfile.ZipInfo) -> bool:
    """A symlink, device, fifo or socket by the unix mode bits (zips made on unix carry them)."""
    mode = info.external_attr >> 16
    kind = stat.S_IFMT(mode)
    return kind not in (0, stat.S_IFREG, stat.S_IFDIR)


def check_entries(
    z: zipfile.ZipFile, archive_size: int | None = None, limits: ZipLimits = DEFAULT_LIMITS
) -> list[zipfile.ZipInfo]:
    """The zip's file entries (folders left out) after checking every entry of the central directory:
    names, types, duplicates, and declared sizes against ``limits`` (and against ``archive_size``, the
    zip's size in bytes, when given: a compressed size that does not fit the archive is a lie that would
    make the ratio check meaningless). Decompresses nothing."""
    infos = z.infolist()
    if len(infos) > limits.max_members:
        raise UnsafeZipError(
            ZIP_TOO_LARGE, f"the zip has {len(infos)} entries; the limit is {limits.max_members}"
        )
    seen: set[str] = set()
    files = []
    total = 0
    for info in infos:
        name = info.filename
        check_name(name)
        if "\x00" in info.orig_filename:  # zipfile cuts names at NUL: look at what the archive said
            raise UnsafeZipError(UNSAFE_MEMBER, f"zip member {_shown(name)} has a NUL character", name)
        key = name.removesuffix("/")
        if key in seen:
            raise UnsafeZipError(UNSAFE_MEMBER, f"zip member {_shown(name)} appears more than once", name)
        seen.add(key)
        if _is_special(info):
            raise UnsafeZipError(
                UNSAFE_MEMBER, f"zip member {_shown(name)} is a symlink or special file, not a file", name
            )
        if info.is_dir():
            continue
        if info.file_size > limits.max_member_bytes:
            raise UnsafeZipError(
                ZIP_TOO_LARGE,
                f"zip member {_shown(name)} declares {info.file_size} bytes uncompressed; the limit is "
                f"{limits.max_member_bytes}",
                name,
            )
        if archive_size is not None and info.header_offset + info.compress_size > archive_size:
            raise UnsafeZipError(
                INVALID_ZIP,
                f"zip member {_shown(name)} declares {info.compress_size} compressed bytes at offset "
                f"{info.header_offset}, beyond the end of the {archive_size}-byte zip",
                name,
            )
        if info.file_size > limits.ratio_floor_bytes and info.file_size > limits.max_ratio * max(
            info.compress_size, 1
        ):
            raise UnsafeZipError(
                ZIP_BOMB,
                f"zip member {_shown(name)} expands {info.file_size} bytes from {info.compress_size} "
                f"(more than {limits.max_ratio}x): refused as a zip bomb",
                name,
            )
        total += info.file_size
        if total > limits.max_total_bytes:
            raise UnsafeZipError(
                ZIP_TOO_LARGE,
                f"the zip's members add up to more than {limits.max_total_bytes} bytes uncompressed",
            )
        files.append(info)
    return files


def open_checked(
    path: str | os.PathLike[str], limits: ZipLimits = DEFAULT_LIMITS
) -> tuple[zipfile.ZipFile, list[zipfile.ZipInfo]]:
    """Open a local zip and check its central directory; → (the open ZipFile, its file entries).
    UnsafeZipError (code ``invalid_zip`` for an unreadable zip) otherwise."""
    try:
        z = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError) as e:
        raise UnsafeZipError(INVALID_ZIP, f"not a readable zip file ({e})") from e
    try:
        return z, check_entries(z, os.path.getsize(path), limits)
    except BaseException:
        z.close()
        raise


def check_zip(path: str | os.PathLike[str], limits: ZipLimits = DEFAULT_LIMITS) -> list[zipfile.ZipInfo]:
    """``open_checked`` for its entries only."""
    z, files = open_checked(path, limits)
    z.close()
    return files


class _Writer(Protocol):
    def write(self, b: bytes, /) -> Any: ...


def copy_member(z: zipfile.ZipFile, info: zipfile.ZipInfo, out: _Writer, limit: int | None = None) -> int:
    """Stream one member into ``out`` in bounded chunks, counting the bytes actually produced: more
    than it declared (or than ``limit``) is refused, and the CRC is checked at the end; → bytes written."""
    cap = info.file_size if limit is None else min(info.file_size, limit)
    if info.file_size > cap:
        raise UnsafeZipError(
            ZIP_TOO_LARGE, f"zip member {_shown(info.filename)} is larger than {cap} bytes", info.filename
        )
    n = 0
    try:
        with z.open(info) as src:
            while chunk := src.read(CHUNK):
                n += len(chunk)
                if n > cap:
                    raise UnsafeZipError(
                        ZIP_BOMB,
                        f"zip member {_shown(info.filename)} produces more than the {cap} bytes it "
                        "declares: refused as a zip bomb",
                        info.filename,
                    )
                out.write(chunk)
    except (zipfile.BadZipFile, EOFError, OSError, ValueError) as e:
        if isinstance(e, UnsafeZipError):
            raise
        raise UnsafeZipError(
            INVALID_ZIP, f"zip member {_shown(info.filename)} is corrupt ({e})", info.filename
        ) from e
    except (
        Exception
    ) as e:  # zlib.error, NotImplementedError (an unsupported method), RuntimeError (encrypted)
        raise UnsafeZipError(
            INVALID_ZIP, f"zip member {_shown(info.filename)} cannot be read ({e})", info.filename
        ) from e
    if n != info.file_size:
        raise UnsafeZipError(
            INVALID_ZIP,
            f"zip member {_shown(info.filename)} holds {n} bytes, not the {info.file_size} it declares",
            info.filename,
        )
    return n


class _Sink:
    def write(self, b: bytes, /) -> int:
        return len(b)


def verify_members(z: zipfile.ZipFile, files: Iterable[zipfile.ZipInfo]) -> None:
    """Decompress every member into nothing (bounded chunks, bounded by the declared sizes already
    checked) to check its CRC: ``testzip`` without trusting the sizes."""
    sink = _Sink()
    for info in files:
        copy_member(z, info, sink)


def read_member(z: zipfile.ZipFile, info: zipfile.ZipInfo, limit: int) -> bytes:
    """One member's bytes, at most ``limit`` of them (counted while reading)."""
    buf = io.BytesIO()
    copy_member(z, info, buf, limit)
    return buf.getvalue()


def safe_target(dest: Path, rel: str) -> Path:
    """``dest / rel`` after proving it stays inside ``dest`` (resolved, symlinks followed)."""
    check_name(rel)
    root = dest.resolve()
    target = (root / rel).resolve()
    if target == root or not target.is_relative_to(root):
        raise UnsafeZipError(UNSAFE_MEMBER, f"zip member {_shown(rel)} would be written outside {dest}", rel)
    return target


def extract_members(
    zip_path: str | os.PathLike[str],
    dest: Path,
    members: Mapping[str, str] | Iterable[str] | None = None,
    limits: ZipLimits = DEFAULT_LIMITS,
) -> Path:
    """Extract ``members`` of a zip into ``dest`` (every file when None; a mapping names each member's
    relative target), after ``check_entries``: written into a temporary folder next to ``dest`` (each
    target proven inside it, each member streamed with its size counted), then renamed to ``dest``.
    ``dest`` must not exist yet; → ``dest``."""
    z, files = open_checked(zip_path, limits)
    tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:8]}.part")
    try:
        with z:
            by_name = {i.filename: i for i in files}
            if members is None:
                wanted = {n: n for n in by_name}
            elif isinstance(members, Mapping):
                wanted = dict(members)
            else:
                wanted = {n: n for n in members}
            tmp.mkdir(parents=True)
            for name, rel in wanted.items():
                info = by_name.get(name)
                if info is None:
                    raise UnsafeZipError(INVALID_ZIP, f"no file {_shown(name)} in the zip", name)
                target = safe_target(tmp, rel)
                target.parent.mkdir(parents=True, exist_ok=True)
                with open(target, "xb") as out:
                    copy_member(z, info, out)
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def extract_all(zip_path: str | os.PathLike[str], dest: Path, limits: ZipLimits = DEFAULT_LIMITS) -> Path:
    """Every file of the zip into ``dest`` (see ``extract_members``)."""
    return extract_members(zip_path, dest, None, limits)


# --- zips in the object store: only the end records and central directory are read ------------------------
class _RangeSource(Protocol):
    def read_range(self, key: str, offset: int, length: int) -> bytes: ...


class RangeReader(io.RawIOBase):
    """A read-only, seekable view of an object in the store through ranged GETs, refusing to read more
    than ``budget`` bytes in all: enough for ``zipfile`` to parse the central directory of a zip of any
    size without downloading it."""

    def __init__(self, store: _RangeSource, key: str, size: int, budget: int) -> None:
        super().__init__()
        self.store, self.key, self.size, self.budget = store, key, size, budget
        self.pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self.pos, 2: self.size}[whence]
        self.pos = max(0, base + offset)
        return self.pos

    def read(self, n: int | None = -1) -> bytes:
        left = max(0, self.size - self.pos)
        n = left if n is None or n < 0 else min(n, left)
        if n == 0:
            return b""
        if n > self.budget:
            raise UnsafeZipError(
                ZIP_TOO_LARGE,
                f"the zip's central directory is larger than {MAX_CENTRAL_DIRECTORY_BYTES} bytes",
            )
        self.budget -= n
        data = self.store.read_range(self.key, self.pos, n)
        self.pos += len(data)
        return data

    def readinto(self, b: Any) -> int:
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)


def check_stored_zip(
    store: _RangeSource, key: str, size: int, limits: ZipLimits = DEFAULT_LIMITS
) -> list[zipfile.ZipInfo]:
    """``check_entries`` of a zip in the object store (``size`` bytes), reading only its end records and
    central directory (at most ``MAX_CENTRAL_DIRECTORY_BYTES`` + 128 KiB)."""
    reader = RangeReader(store, key, size, MAX_CENTRAL_DIRECTORY_BYTES + 128 * KIB)
    try:
        z = zipfile.ZipFile(reader)  # type: ignore[arg-type]
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, ValueError) as e:
        if isinstance(e, UnsafeZipError):
            raise
        raise UnsafeZipError(INVALID_ZIP, f"not a readable zip file ({e})") from e
    with z:
        return check_entries(z, size, limits)
