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

The limits (``ZipLimits``) are settings (``GMPI_ZIP_MAX_*``, ``GMPI_ZIP_RATIO_FLOOR_BYTES``: SECURITY.md,
"Limits and their settings"); the module constants below are their defaults. A function given no
``limits`` applies the process's settings (``default_limits()``). The ratio rule and its numbers are
shared with the library's bounded member reads (``gmpi_core.data.ziplimits``), which apply them again
wherever a training or evaluation process reads a dataset's images.
"""

from __future__ import annotations

import io
import lzma
import os
import shutil
import stat
import struct
import uuid
import zipfile
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from gmpi_core.data import ziplimits as _shared  # standard library only: no torch in the gateway

if TYPE_CHECKING:
    from services.common.settings import Settings

KIB, MIB, GIB = 1024, 1024 * 1024, 1024 * 1024 * 1024
CHUNK = 1 * MIB

# --- limits: the defaults of the GMPI_ZIP_* settings (services/common/settings.py, SECURITY.md) ----------
MAX_MEMBERS = 1_000_000  # entries in one zip (each costs a ZipInfo in memory)
MAX_MEMBER_BYTES = 4 * GIB  # uncompressed size of one member
MAX_TOTAL_BYTES = 1024 * GIB  # uncompressed size of all members together
MAX_RATIO = _shared.MAX_RATIO  # 100: uncompressed / compressed, for members above RATIO_FLOOR_BYTES
RATIO_FLOOR_BYTES = _shared.RATIO_FLOOR_BYTES  # 1 MiB: small members may compress arbitrarily well
MAX_CENTRAL_DIRECTORY_BYTES = 256 * MIB  # read from the store by ranged GETs (register / multipart)
MAX_NAME_BYTES = 1024  # a member name (fixed: what every file system takes below a destination folder)
MAX_SEGMENT_BYTES = 255  # one segment of it (NAME_MAX)
MAX_IMAGE_BYTES = _shared.MAX_IMAGE_BYTES  # 256 MiB: one image read into memory (gmpi_core's ImageSource)


@dataclass(frozen=True)
class ZipLimits:
    max_members: int = MAX_MEMBERS
    max_member_bytes: int = MAX_MEMBER_BYTES
    max_total_bytes: int = MAX_TOTAL_BYTES
    max_ratio: int = MAX_RATIO
    ratio_floor_bytes: int = RATIO_FLOOR_BYTES
    max_central_directory_bytes: int = MAX_CENTRAL_DIRECTORY_BYTES

    @classmethod
    def from_settings(cls, settings: Settings) -> ZipLimits:
        return cls(
            max_members=settings.zip_max_members,
            max_member_bytes=settings.zip_max_member_bytes,
            max_total_bytes=settings.zip_max_total_bytes,
            max_ratio=settings.zip_max_ratio,
            ratio_floor_bytes=settings.zip_ratio_floor_bytes,
            max_central_directory_bytes=settings.zip_max_central_directory_bytes,
        )


DEFAULT_LIMITS = ZipLimits()  # the module defaults (the settings' defaults); see default_limits()


def default_limits() -> ZipLimits:
    """The limits of this process's settings (``GMPI_ZIP_*``; the module defaults where unset)."""
    from services.common.settings import get_settings

    return ZipLimits.from_settings(get_settings())


def _limits(limits: ZipLimits | None) -> ZipLimits:
    return default_limits() if limits is None else limits


# a gmpi_pth import is decompressed by the gateway (to a temporary file, never into memory)
CHECKPOINT_LIMITS = ZipLimits(max_members=64, max_member_bytes=2 * GIB, max_total_bytes=4 * GIB)

# error codes (the gateway answers 413 for zip_too_large, 422 for the others)
INVALID_ZIP = "invalid_zip"
UNSAFE_MEMBER = "unsafe_zip_member"
ZIP_BOMB = "zip_bomb"
ZIP_TOO_LARGE = "zip_too_large"


# what zipfile raises on a malformed archive while parsing its end records and central directory
# (NotImplementedError: "zip file version 25.5" and multi-disk archives; UnicodeDecodeError, a ValueError:
# a name flagged UTF-8 that is not; struct.error: short records). Never MemoryError, and never a blanket
# Exception: a job's cancellation is an exception raised inside the task's thread.
_PARSE_ERRORS: tuple[type[BaseException], ...] = (
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
    OSError,
    EOFError,
    ValueError,
    NotImplementedError,
    struct.error,
    IndexError,
    KeyError,
    OverflowError,
)


# ... and while decompressing a member: zlib.error, NotImplementedError (an unsupported method),
# RuntimeError (encrypted), lzma.LZMAError, struct.error (a short record), OverflowError
_MEMBER_ERRORS: tuple[type[BaseException], ...] = (
    zlib.error,
    lzma.LZMAError,
    NotImplementedError,
    RuntimeError,
    struct.error,
    IndexError,
    OverflowError,
)


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
    empty, ``.`` or ``..`` segment, no segment above ``MAX_SEGMENT_BYTES`` and at most ``MAX_NAME_BYTES``
    in all (UTF-8: what a file system could not create fails here, not half-way through an extraction)."""
    bad = None
    if not name:
        bad = "is empty"
    elif len(name.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
        bad = f"is longer than {MAX_NAME_BYTES} bytes"
    elif any(len(p.encode("utf-8", "surrogatepass")) > MAX_SEGMENT_BYTES for p in name.split("/")):
        bad = f"has a segment longer than {MAX_SEGMENT_BYTES} bytes"
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
    z: zipfile.ZipFile, archive_size: int | None = None, limits: ZipLimits | None = None
) -> list[zipfile.ZipInfo]:
    """The zip's file entries (folders left out) after checking every entry of the central directory:
    names, types, duplicates, and declared sizes against ``limits`` (and against ``archive_size``, the
    zip's size in bytes, when given: a compressed size that does not fit the archive is a lie that would
    make the ratio check meaningless). Decompresses nothing."""
    limits = _limits(limits)
    infos = z.infolist()
    if len(infos) > limits.max_members:
        raise UnsafeZipError(
            ZIP_TOO_LARGE, f"the zip has {len(infos)} entries; the limit is {limits.max_members}"
        )
    seen: set[str] = set()
    file_keys: set[str] = set()
    folders: dict[str, str] = {}  # every folder some name needs → a name that needs it
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
        if not info.is_dir():
            file_keys.add(key)
        parts = key.split("/")
        for i in range(1, len(parts)):
            folders.setdefault("/".join(parts[:i]), name)
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
        if _shared.exceeds_ratio(
            info.file_size, info.compress_size, limits.max_ratio, limits.ratio_floor_bytes
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
    for folder in file_keys & folders.keys():  # "a" as a file and "a/b" below it: not extractable
        raise UnsafeZipError(
            UNSAFE_MEMBER,
            f"zip member {_shown(folder)} is a file, but {_shown(folders[folder])} needs it as a folder",
            folder,
        )
    return files


_CD_ENTRY = struct.Struct("<4s24xHHH12x")  # a central-directory header: signature, name/extra/comment lengths


def check_end_records(fp: Any, limits: ZipLimits | None = None) -> None:
    """Before ``zipfile`` parses a central directory into one ``ZipInfo`` per entry (about 0.6 KiB of
    memory each, whatever the entry count in the end record says): refuse a central directory above
    ``max_central_directory_bytes``, an end record that counts more than ``max_members`` entries, and one
    that could hold more than that many (46 bytes each at least), counted by walking its headers in
    bounded chunks. ``fp``: a seekable binary file. Unreadable end records are left to ``zipfile``."""
    limits = _limits(limits)
    try:
        endrec = zipfile._EndRecData(fp)  # type: ignore[attr-defined]  # (stable since Python 2)
    except OSError:
        return
    if not endrec:
        return
    size_cd, offset_cd, count = endrec[5], endrec[6], endrec[4]  # _ECD_SIZE, _ECD_OFFSET, _ECD_ENTRIES_TOTAL
    if size_cd > limits.max_central_directory_bytes:
        raise UnsafeZipError(
            ZIP_TOO_LARGE,
            f"the zip's central directory is {size_cd} bytes; the limit is "
            f"{limits.max_central_directory_bytes}",
        )
    if count > limits.max_members:
        raise UnsafeZipError(ZIP_TOO_LARGE, f"the zip has {count} entries; the limit is {limits.max_members}")
    if size_cd <= 46 * limits.max_members:
        return
    start = endrec[9] - size_cd - offset_cd  # where zipfile will look: _RealGetContents' "concat"
    if endrec[0] == zipfile.stringEndArchive64:  # type: ignore[attr-defined]
        start -= zipfile.sizeEndCentDir64 + zipfile.sizeEndCentDir64Locator  # type: ignore[attr-defined]
    start += offset_cd
    if start < 0:
        return
    fp.seek(start)
    buf, pos, n, left = b"", 0, 0, size_cd
    while True:
        while pos + _CD_ENTRY.size > len(buf):  # the next header is not all in the buffer: read on
            chunk = fp.read(min(CHUNK, left)) if left > 0 else b""
            if not chunk:
                return  # the end of the central directory (or a truncated one: zipfile refuses it)
            left -= len(chunk)
            if pos >= len(buf):  # the previous entry's name/extra/comment end inside (or past) the chunk
                buf, pos = chunk, pos - len(buf)
            else:
                buf, pos = buf[pos:] + chunk, 0
        sig, nlen, elen, clen = _CD_ENTRY.unpack_from(buf, pos)
        if sig != b"PK\x01\x02":
            return  # zipfile refuses it
        n += 1
        if n > limits.max_members:
            raise UnsafeZipError(
                ZIP_TOO_LARGE, f"the zip has more than {limits.max_members} entries; that is the limit"
            )
        pos += _CD_ENTRY.size + nlen + elen + clen


def open_checked(
    path: str | os.PathLike[str], limits: ZipLimits | None = None
) -> tuple[zipfile.ZipFile, list[zipfile.ZipInfo]]:
    """Open a local zip and check its central directory; → (the open ZipFile, its file entries).
    UnsafeZipError (code ``invalid_zip`` for an unreadable zip) otherwise."""
    limits = _limits(limits)
    try:
        with open(path, "rb") as fp:
            check_end_records(fp, limits)
        z = zipfile.ZipFile(path)
    except _PARSE_ERRORS as e:
        if isinstance(e, UnsafeZipError):
            raise
        raise UnsafeZipError(INVALID_ZIP, f"not a readable zip file ({e})") from e
    try:
        return z, check_entries(z, os.path.getsize(path), limits)
    except BaseException:
        z.close()
        raise


def check_zip(path: str | os.PathLike[str], limits: ZipLimits | None = None) -> list[zipfile.ZipInfo]:
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
    except _MEMBER_ERRORS as e:  # not a blanket Exception: a job's cancellation must pass through
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
    limits: ZipLimits | None = None,
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


def extract_all(zip_path: str | os.PathLike[str], dest: Path, limits: ZipLimits | None = None) -> Path:
    """Every file of the zip into ``dest`` (see ``extract_members``)."""
    return extract_members(zip_path, dest, None, limits)


# --- zips in the object store: only the end records and central directory are read ------------------------
class _RangeSource(Protocol):
    def read_range(self, key: str, offset: int, length: int) -> bytes: ...


class RangeReader(io.RawIOBase):
    """A read-only, seekable view of an object in the store through ranged GETs, refusing to read more
    than ``budget`` bytes in all: enough for ``zipfile`` to parse the central directory of a zip of any
    size without downloading it."""

    def __init__(
        self, store: _RangeSource, key: str, size: int, budget: int, limit: int | None = None
    ) -> None:
        super().__init__()
        self.store, self.key, self.size, self.budget = store, key, size, budget
        self.limit = budget if limit is None else limit  # what the message names
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
                f"the zip's central directory is larger than {self.limit} bytes",
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
    store: _RangeSource, key: str, size: int, limits: ZipLimits | None = None
) -> list[zipfile.ZipInfo]:
    """``check_entries`` of a zip in the object store (``size`` bytes), reading only its end records and
    central directory (at most twice ``limits.max_central_directory_bytes``, + 256 KiB)."""
    limits = _limits(limits)
    cd_limit = limits.max_central_directory_bytes
    # the central directory may be read twice: counted by check_end_records (only when it is large enough
    # to hold more than max_members entries), then parsed by zipfile
    reader = RangeReader(store, key, size, 2 * cd_limit + 256 * KIB, cd_limit)  # + end records, twice
    try:
        check_end_records(reader, limits)
        z = zipfile.ZipFile(reader)  # type: ignore[arg-type]
    except _PARSE_ERRORS as e:
        if isinstance(e, UnsafeZipError):
            raise
        raise UnsafeZipError(INVALID_ZIP, f"not a readable zip file ({e})") from e
    with z:
        return check_entries(z, size, limits)
