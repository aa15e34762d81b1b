"""Artifact storage: S3 (minio SDK, one client per process) or a directory, behind one interface.

Every object carries its sha256 (S3 user metadata ``sha256``; a ``.sha256`` sidecar for the directory
backend). Single objects are written to a temporary key under ``.tmp/`` and then committed with a
server-side copy (directory: ``os.replace``), so a listing never shows a half-written object; a group of
files (a model, an MPI export) is committed by writing its ``manifest.json`` last (``commit``).
Transient connection errors are retried with exponential backoff for up to ``retry_for_s`` seconds.

Presigned multipart uploads (S3 only) let a client send a file of any size (S3 refuses a single PUT above
5 GiB) straight to the store: ``create_multipart`` → ``presigned_part_urls`` → the client PUTs the parts
→ ``complete_multipart`` (checks the part list, the declared size and optionally the zip end records;
a failing object is deleted) or ``abort_multipart``. The store never sees the bytes, so such objects
carry no sha256.
"""

from __future__ import annotations

import builtins
import collections
import datetime
import hashlib
import json
import logging
import os
import shutil
import struct
import tempfile
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

from services.common.keys import MANIFEST, TEMP_PREFIX, temp_key, validate_key
from services.common.settings import Settings, get_settings

log = logging.getLogger("gmpi.storage")
T = TypeVar("T")
CHUNK = 1024 * 1024
PART_SIZE = 16 * 1024 * 1024
# the end of a zip: the 22-byte end record may carry a comment of up to 64 KiB, and zip64 archives (more than
# 65,535 members or 4 GiB, e.g. FFHQ) put a 20-byte locator and a 56-byte record in front of it
ZIP_TAIL = 64 * 1024 + 22 + 20 + 56
_NO_UPLOAD = "NoSuchUpload"


class StorageError(RuntimeError):
    """The store answered, but not as expected (missing object, bad checksum, ...)."""


class ObjectNotFound(StorageError, KeyError):
    def __str__(self) -> str:
        return f"no object '{self.args[0]}'"


class StorageUnavailable(ConnectionError):
    """The store could not be reached within the retry window (transient)."""


class UploadTooLarge(ValueError):
    def __init__(self, limit: int) -> None:
        super().__init__(f"upload exceeds the limit of {limit} bytes (GMPI_MAX_UPLOAD_BYTES)")
        self.limit = limit


class MultipartNotSupported(StorageError):
    def __init__(self) -> None:
        super().__init__("multipart uploads need the S3 storage backend")


class UploadNotFound(StorageError):
    """No such multipart upload for that key (unknown, aborted or already completed)."""

    def __init__(self, key: str, upload_id: str) -> None:
        super().__init__(
            f"no multipart upload '{upload_id[:100]}' for '{key}' (unknown, aborted or completed)"
        )
        self.key, self.upload_id = key, upload_id


class UploadRejected(StorageError):
    """The client's part list or the assembled object is not acceptable; ``code`` names why."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class ZipDirectory:
    """Where a zip's central directory lies, read from its end records."""

    entries: int
    offset: int
    size: int


def zip_directory(tail: bytes, size: int) -> ZipDirectory:
    """Parse the end records of a zip of ``size`` bytes whose last ``len(tail)`` bytes are ``tail``
    (``ZIP_TAIL`` is enough); ValueError if there are none or they do not fit the size (a truncated
    object, missing or extra parts, not a zip). Zip64 archives are understood."""
    start = size - len(tail)
    pos = len(tail)
    found: tuple[int, tuple[Any, ...]] | None = None
    while found is None:  # the last signature whose record (with its comment) ends exactly at the end
        p = tail.rfind(b"PK\x05\x06", 0, pos)
        if p < 0:
            raise ValueError(
                "no zip end-of-central-directory record at the end: not a zip file, or cut short"
            )
        if p + 22 <= len(tail):
            rec = struct.unpack_from("<4s4H2LH", tail, p)
            if p + 22 + rec[7] == len(tail):
                found = p, rec
        pos = p
    p, (_, disk, cd_disk, _, entries, cd_size, cd_offset, _) = found
    moved = "parts are missing, repeated or out of order (or the file is not a plain zip)"
    end = start + p  # the central directory must end where the end records begin
    if p >= 20 and tail[p - 20 : p - 16] == b"PK\x06\x07":  # zip64: a locator, after a 56-byte record
        _, z64_disk, z64_offset, disks = struct.unpack_from("<4sLQL", tail, p - 20)
        q = p - 20 - 56
        if q < 0 or tail[q : q + 4] != b"PK\x06\x06":
            raise ValueError("no zip64 end record in front of its locator: the zip is damaged")
        if z64_disk != 0 or disks > 1:
            raise ValueError("split (multi-disk) zips are not supported")
        if z64_offset != start + q:
            raise ValueError(f"the zip64 end record is at byte {start + q}, not {z64_offset}: {moved}")
        rec64 = struct.unpack_from("<4sQ2H2L4Q", tail, q)
        disk, cd_disk, entries, cd_size, cd_offset = rec64[4], rec64[5], rec64[7], rec64[8], rec64[9]
        end = start + q
    elif entries == 0xFFFF or cd_size == 0xFFFFFFFF or cd_offset == 0xFFFFFFFF:
        raise ValueError("the zip end record needs a zip64 locator, which is missing: the zip is damaged")
    if disk != 0 or cd_disk != 0:
        raise ValueError("split (multi-disk) zips are not supported")
    if entries == 0:
        raise ValueError("the zip holds no files")
    if cd_offset + cd_size != end:
        raise ValueError(
            f"the zip's central directory should end at byte {cd_offset + cd_size} but its end records "
            f"start at byte {end}: {moved}"
        )
    return ZipDirectory(entries, cd_offset, cd_size)


@dataclass(frozen=True)
class ArtifactInfo:
    key: str
    size: int
    sha256: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class ObjectStream:
    """An object (or a byte range of it) being read from the store, chunk by chunk, never spooled:
    ``size`` (of the whole object), ``length`` (the bytes this stream yields), ``content_type``,
    ``sha256`` (the stored one; "" if unknown). ``read()`` returns the next chunk (``b""`` at the end);
    a stream of the whole object checks the sha256 at its end (StorageError on a mismatch). ``close()``
    releases the connection or file (idempotent; also on ``with`` exit and after the last chunk)."""

    def __init__(
        self,
        key: str,
        size: int,
        length: int,
        content_type: str,
        sha256: str,
        chunks: Iterator[bytes],
        close: Callable[[], None],
        verify: bool = True,
    ) -> None:
        self.key, self.size, self.length, self.content_type, self.sha256 = (
            key,
            size,
            length,
            content_type,
            sha256,
        )
        self._chunks, self._close = chunks, close
        self._hash = hashlib.sha256() if verify and sha256 and length == size else None
        self._sent = 0
        self.closed = False

    def read(self) -> bytes:
        if self.closed:
            return b""
        for chunk in self._chunks:
            if not chunk:
                continue
            self._sent += len(chunk)
            if self._hash is not None:
                self._hash.update(chunk)
            return bytes(chunk)
        self.close()
        if self._sent != self.length:
            raise StorageError(f"'{self.key}' ended after {self._sent} of {self.length} bytes")
        if self._hash is not None and self._hash.hexdigest() != self.sha256:
            raise StorageError(f"sha256 mismatch for '{self.key}'")
        return b""

    def __iter__(self) -> Iterator[bytes]:
        try:
            while chunk := self.read():
                yield chunk
        finally:
            self.close()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            try:
                self._close()
            except Exception:  # a connection that cannot be released cleanly is dropped by the pool
                log.warning("closing the stream of %s failed", self.key, exc_info=True)

    def __enter__(self) -> ObjectStream:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def sha256_file(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def spool_stream(
    chunks: Iterator[bytes], directory: str | None = None, max_bytes: int | None = None
) -> tuple[Path, int, str]:
    """Write ``chunks`` to a temporary file, enforcing ``max_bytes``; → (path, size, sha256)."""
    h = hashlib.sha256()
    size = 0
    fd, name = tempfile.mkstemp(prefix="gmpi-upload-", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            for chunk in chunks:
                size += len(chunk)
                if max_bytes is not None and size > max_bytes:
                    raise UploadTooLarge(max_bytes)
                h.update(chunk)
                f.write(chunk)
    except BaseException:
        os.unlink(name)
        raise
    return Path(name), size, h.hexdigest()


class Storage(ABC):
    """The store of one bucket (or directory). Keys are validated on every call."""

    retry_for_s: float = 30.0

    # -- primitives each backend implements ---------------------------------------------------------
    @abstractmethod
    def _put_file(self, key: str, path: Path, size: int, sha256: str, content_type: str) -> None: ...
    @abstractmethod
    def _get_file(self, key: str, path: Path) -> None: ...
    @abstractmethod
    def _stat(self, key: str) -> ArtifactInfo | None: ...
    @abstractmethod
    def _iter_keys(self, prefix: str) -> Iterator[str]:
        """Keys below ``prefix`` as the backend finds them (unsorted, temporary ones included)."""

    @abstractmethod
    def _delete(self, key: str) -> None: ...
    @abstractmethod
    def ping(self) -> None:
        """Raise if the store is unreachable."""

    @abstractmethod
    def presigned_get(self, key: str, expires_s: int | None = None) -> str | None:
        """A URL that fetches ``key`` without credentials, or None (directory backend)."""

    @abstractmethod
    def presigned_put(self, key: str, expires_s: int | None = None) -> str | None: ...
    @abstractmethod
    def _read_range(self, key: str, offset: int, length: int) -> bytes: ...
    @abstractmethod
    def _open_stream(self, key: str, offset: int, length: int | None, chunk_size: int) -> ObjectStream:
        """Start reading ``length`` bytes (None: to the end) of ``key`` from ``offset``."""

    # -- presigned multipart uploads (S3 only; the directory backend returns None or raises
    #    MultipartNotSupported) ----------------------------------------------------------------------
    @abstractmethod
    def create_multipart(
        self, key: str, size: int | None = None, content_type: str = "application/octet-stream"
    ) -> str | None:
        """Start a multipart upload to ``key`` and return its upload id (None: not supported). ``size``,
        the total the client declares, is recorded and checked on completion."""

    @abstractmethod
    def presigned_part_urls(
        self, key: str, upload_id: str, part_numbers: Iterable[int], expires_s: int | None = None
    ) -> builtins.list[str] | None:
        """Presigned PUT URLs of the given parts (on the public endpoint), or None (not supported)."""

    @abstractmethod
    def complete_multipart(
        self, key: str, upload_id: str, parts: Sequence[tuple[int, str]], check_zip: bool = False
    ) -> ArtifactInfo:
        """Assemble ``key`` from ``parts`` ([(part number, ETag)], exactly 1…N, every uploaded part).
        UploadNotFound for an unknown upload; UploadRejected for a bad part list (the upload stays open)
        or an object that fails the size or zip check (it is deleted: nothing half-valid stays listed)."""

    @abstractmethod
    def abort_multipart(self, key: str, upload_id: str) -> None:
        """Drop an upload and its parts; UploadNotFound if there is none."""

    def ensure_ready(self) -> None:  # noqa: B027  (optional hook: most stores need nothing)
        """Create the bucket/directory if needed."""

    def _is_transient(self, exc: BaseException) -> bool:
        return isinstance(exc, (ConnectionError, TimeoutError, StorageUnavailable))

    def _retry(self, what: str, fn: Callable[[], T]) -> T:
        deadline = time.monotonic() + self.retry_for_s
        delay = 0.25
        while True:
            try:
                return fn()
            except Exception as exc:
                if not self._is_transient(exc):
                    raise
                if time.monotonic() + delay > deadline:
                    raise StorageUnavailable(f"storage unavailable during {what}: {exc}") from exc
                log.warning("storage: %s failed (%s); retrying in %.2f s", what, exc, delay)
                time.sleep(delay)
                delay = min(delay * 2, 4.0)

    # -- public API ------------------------------------------------------------------------------
    def put_file(
        self, key: str, path: str | os.PathLike[str], content_type: str = "application/octet-stream"
    ) -> ArtifactInfo:
        """Upload a local file (multipart for large files) with its sha256; committed atomically."""
        validate_key(key)
        p = Path(path)
        size, digest = p.stat().st_size, sha256_file(p)
        self._retry(f"put {key}", lambda: self._put_file(key, p, size, digest, content_type))
        return ArtifactInfo(key, size, digest)

    def put_bytes(
        self, key: str, data: bytes, content_type: str = "application/octet-stream"
    ) -> ArtifactInfo:
        with tempfile.TemporaryDirectory(prefix="gmpi-put-") as d:
            p = Path(d) / "blob"
            p.write_bytes(data)
            return self.put_file(key, p, content_type)

    def put_json(self, key: str, value: Any) -> ArtifactInfo:
        return self.put_bytes(key, json.dumps(value, indent=1).encode(), "application/json")

    def put_stream(
        self,
        key: str,
        chunks: Iterator[bytes],
        content_type: str = "application/octet-stream",
        max_bytes: int | None = None,
        spool_dir: str | None = None,
    ) -> ArtifactInfo:
        """Spool a stream to local disk (size limit, sha256), then upload it; nothing is left on failure."""
        validate_key(key)
        path, _, _ = spool_stream(chunks, spool_dir, max_bytes)
        try:
            return self.put_file(key, path, content_type)
        finally:
            path.unlink(missing_ok=True)

    def get_file(self, key: str, path: str | os.PathLike[str], verify: bool = True) -> Path:
        """Download ``key`` to ``path`` (written atomically); checks the stored sha256 if ``verify``."""
        validate_key(key)
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.part")
        self._retry(f"get {key}", lambda: self._get_file(key, tmp))
        if verify:
            info = self.stat(key)
            if info is not None and info.sha256 and sha256_file(tmp) != info.sha256:
                tmp.unlink(missing_ok=True)
                raise StorageError(f"sha256 mismatch for '{key}'")
        os.replace(tmp, target)
        return target

    def get_bytes(self, key: str) -> bytes:
        with tempfile.TemporaryDirectory(prefix="gmpi-get-") as d:
            return self.get_file(key, Path(d) / "blob").read_bytes()

    def get_json(self, key: str) -> Any:
        return json.loads(self.get_bytes(key))

    def stat(self, key: str) -> ArtifactInfo | None:
        validate_key(key)
        return self._retry(f"stat {key}", lambda: self._stat(key))

    def exists(self, key: str) -> bool:
        return self.stat(key) is not None

    def read_range(self, key: str, offset: int, length: int) -> bytes:
        """Bytes ``offset`` … ``offset + length - 1`` of ``key`` (fewer at its end)."""
        validate_key(key)
        if offset < 0 or length < 1:
            raise ValueError(f"bad range: offset {offset}, length {length}")
        return self._retry(f"read {key}", lambda: self._read_range(key, offset, length))

    def open_stream(
        self, key: str, offset: int = 0, length: int | None = None, chunk_size: int = CHUNK
    ) -> ObjectStream:
        """Read ``key`` (or ``length`` bytes of it from ``offset``) as a stream of chunks of at most
        ``chunk_size`` bytes, nothing on local disk or in memory beyond one chunk: ObjectNotFound if
        there is no such object. Opening is retried like every call; a failure mid-stream is not (the
        reader sees it). Close the stream (``with``) whether or not it was read to the end."""
        validate_key(key)
        if offset < 0 or (length is not None and length < 0) or chunk_size < 1:
            raise ValueError(f"bad range: offset {offset}, length {length}, chunk size {chunk_size}")
        return self._retry(f"open {key}", lambda: self._open_stream(key, offset, length, chunk_size))

    def list(self, prefix: str) -> list[str]:
        """Committed keys below ``prefix`` (recursive, sorted); temporary uploads are never listed."""
        if prefix:
            validate_key(prefix.rstrip("/"), what="prefix")
        keys = self._retry(f"list {prefix}", lambda: list(self._iter_keys(prefix)))
        return sorted(k for k in keys if not k.startswith(TEMP_PREFIX))

    def list_page(self, prefix: str, after: str = "", limit: int = 1000) -> builtins.list[tuple[str, int]]:
        """Up to ``limit`` committed (key, size) below ``prefix`` in key order, those after ``after`` (the
        last key of the previous page; "" for the first)."""
        if prefix:
            validate_key(prefix.rstrip("/"), what="prefix")
        if limit < 1:
            return []

        def page() -> builtins.list[tuple[str, int]]:
            out: builtins.list[tuple[str, int]] = []
            for key, size in self._iter_sized(prefix, after):
                if key.startswith(TEMP_PREFIX) or key <= after:
                    continue
                out.append((key, size))
                if len(out) == limit:
                    break
            return out

        return self._retry(f"list {prefix}", page)

    def _iter_sized(self, prefix: str, after: str) -> Iterator[tuple[str, int]]:
        """(key, size) below ``prefix`` in key order from ``after`` on (backends may do better than this:
        every key of the prefix, sorted)."""
        for key in sorted(self._iter_keys(prefix)):
            if key > after:
                info = self._stat(key)
                if info is not None:
                    yield key, info.size

    def has_any(self, prefix: str, suffix: str = "") -> bool:
        """Whether some committed key below ``prefix`` ends with ``suffix``; stops at the first one (a
        request handler can ask this of a 70,000-file prefix)."""
        if prefix:
            validate_key(prefix.rstrip("/"), what="prefix")

        def first() -> bool:
            return any(k.endswith(suffix) and not k.startswith(TEMP_PREFIX) for k in self._iter_keys(prefix))

        return self._retry(f"list {prefix}", first)

    def delete(self, key: str) -> None:
        validate_key(key)
        self._retry(f"delete {key}", lambda: self._delete(key))

    def copy(self, src: str, dst: str) -> None:
        """Copy ``src`` to ``dst`` inside the store (server-side on S3), keeping the sha256."""
        validate_key(src)
        validate_key(dst)
        self._retry(f"copy {src}", lambda: self._copy(src, dst))

    def _copy(self, src: str, dst: str) -> None:
        with tempfile.TemporaryDirectory(prefix="gmpi-copy-") as d:
            p = Path(d) / "blob"
            self._get_file(src, p)
            self._put_file(dst, p, p.stat().st_size, sha256_file(p), "application/octet-stream")

    def delete_prefix(self, prefix: str) -> int:
        keys = self.list(prefix)
        for k in keys:
            self.delete(k)
        return len(keys)

    def upload_dir(self, local: str | os.PathLike[str], prefix: str) -> dict[str, ArtifactInfo]:
        """Upload every file below ``local`` to ``prefix`` (relative paths kept)."""
        root = Path(local)
        out = {}
        for p in sorted(root.rglob("*")):
            if p.is_file():
                rel = p.relative_to(root).as_posix()
                out[rel] = self.put_file(prefix + rel, p)
        return out

    def commit(
        self, prefix: str, files: dict[str, ArtifactInfo], extra: dict[str, Any] | None = None
    ) -> None:
        """Write ``prefix + manifest.json`` (file → size, sha256): the group is complete from now on."""
        manifest = {
            "committed_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "files": {rel: {"size": i.size, "sha256": i.sha256} for rel, i in sorted(files.items())},
            **(extra or {}),
        }
        self.put_json(prefix + MANIFEST, manifest)

    def manifest(self, prefix: str) -> dict[str, Any] | None:
        try:
            return self.get_json(prefix + MANIFEST)
        except ObjectNotFound:
            return None


class S3Storage(Storage):
    def __init__(self, settings: Settings) -> None:
        from minio import Minio

        self.settings = settings
        self.bucket = settings.s3_bucket
        kw = dict(
            access_key=settings.s3_access_key or None,
            secret_key=settings.s3_secret_key or None,
            secure=settings.s3_secure,
            region=settings.s3_region,
        )
        self.client = Minio(settings.s3_endpoint, **kw)  # type: ignore[arg-type]
        # presigned URLs are signed for the host the browser will use (offline: no network call needed)
        self.public = Minio(settings.public_endpoint, **kw)  # type: ignore[arg-type]

    def _is_transient(self, exc: BaseException) -> bool:
        import urllib3.exceptions
        from minio.error import ServerError

        if isinstance(exc, (urllib3.exceptions.HTTPError, ServerError)):
            return True
        return super()._is_transient(exc)

    def ensure_ready(self) -> None:
        def make() -> None:
            if not self.client.bucket_exists(self.bucket):
                self.client.make_bucket(self.bucket)

        self._retry("make bucket", make)

    def ping(self) -> None:
        self.client.bucket_exists(self.bucket)

    def _put_file(self, key: str, path: Path, size: int, sha256: str, content_type: str) -> None:
        from minio.commonconfig import REPLACE, CopySource

        tmp = temp_key()
        meta: dict[str, str | builtins.list[str] | tuple[str]] = {"sha256": sha256}
        try:
            with open(path, "rb") as f:
                self.client.put_object(
                    self.bucket, tmp, f, size, content_type=content_type, metadata=meta, part_size=PART_SIZE
                )
            if size <= 5 * 1024**3:  # S3's single-copy limit; above it, upload in place (still atomic)
                self.client.copy_object(
                    self.bucket, key, CopySource(self.bucket, tmp), metadata=meta, metadata_directive=REPLACE
                )
            else:
                with open(path, "rb") as f:
                    self.client.put_object(
                        self.bucket, key, f, size, content_type=content_type, metadata=meta
                    )
        finally:
            try:
                self.client.remove_object(self.bucket, tmp)
            except Exception:  # a leftover temp key is never listed; a lifecycle rule can clean it
                log.warning("could not remove temporary object %s", tmp)

    def _copy(self, src: str, dst: str) -> None:
        from minio.commonconfig import CopySource

        info = self._stat(src)
        if info is None:
            raise ObjectNotFound(src)
        if not info.sha256:  # e.g. uploaded through a presigned PUT: record the checksum now
            super()._copy(src, dst)
            return
        self.client.copy_object(self.bucket, dst, CopySource(self.bucket, src))

    def _get_file(self, key: str, path: Path) -> None:
        from minio.error import S3Error

        try:
            self.client.fget_object(self.bucket, key, str(path))
        except S3Error as e:
            if e.code in ("NoSuchKey", "NoSuchObject", "NotFound"):
                raise ObjectNotFound(key) from e
            raise

    def _stat(self, key: str) -> ArtifactInfo | None:
        from minio.error import S3Error

        try:
            st = self.client.stat_object(self.bucket, key)
        except S3Error as e:
            if e.code in ("NoSuchKey", "NoSuchObject", "NotFound", "ResourceNotFound"):
                return None
            raise
        meta = {k.lower(): v for k, v in (st.metadata or {}).items()}
        return ArtifactInfo(key, int(st.size or 0), meta.get("x-amz-meta-sha256", ""))

    def _iter_keys(self, prefix: str) -> Iterator[str]:
        for o in self.client.list_objects(self.bucket, prefix=prefix, recursive=True):
            yield str(o.object_name)

    def _iter_sized(self, prefix: str, after: str) -> Iterator[tuple[str, int]]:
        # S3 lists in key (UTF-8 byte) order and starts after a key server-side, a page at a time
        start = after or None
        for o in self.client.list_objects(self.bucket, prefix=prefix, recursive=True, start_after=start):
            yield str(o.object_name), int(o.size or 0)

    def _delete(self, key: str) -> None:
        self.client.remove_object(self.bucket, key)

    def presigned_get(self, key: str, expires_s: int | None = None) -> str:
        validate_key(key)
        expires = datetime.timedelta(seconds=expires_s or self.settings.presign_expiry_s)
        return self.public.presigned_get_object(self.bucket, key, expires=expires)

    def presigned_put(self, key: str, expires_s: int | None = None) -> str:
        validate_key(key)
        expires = datetime.timedelta(seconds=expires_s or self.settings.presign_expiry_s)
        return self.public.presigned_put_object(self.bucket, key, expires=expires)

    def _read_range(self, key: str, offset: int, length: int) -> bytes:
        from minio.error import S3Error

        try:
            response = self.client.get_object(self.bucket, key, offset=offset, length=length)
        except S3Error as e:
            if e.code in ("NoSuchKey", "NoSuchObject", "NotFound"):
                raise ObjectNotFound(key) from e
            raise
        try:
            return bytes(response.read())
        finally:
            response.close()
            response.release_conn()

    def _open_stream(self, key: str, offset: int, length: int | None, chunk_size: int) -> ObjectStream:
        from minio.error import S3Error

        if length == 0:
            info = self._stat(key)
            if info is None:
                raise ObjectNotFound(key)
            return ObjectStream(
                key, info.size, 0, "application/octet-stream", info.sha256, iter(()), lambda: None
            )
        try:
            response = self.client.get_object(self.bucket, key, offset=offset, length=length or 0)
        except S3Error as e:
            if e.code in ("NoSuchKey", "NoSuchObject", "NotFound"):
                raise ObjectNotFound(key) from e
            raise
        try:
            headers = {k.lower(): v for k, v in response.headers.items()}
            got = int(headers.get("content-length", "0"))
            total = headers.get("content-range", "").rpartition("/")[2]
            size = int(total) if total.isdigit() else got + offset

            def close() -> None:
                response.close()
                response.release_conn()

            return ObjectStream(
                key,
                size,
                got,
                headers.get("content-type") or "application/octet-stream",
                headers.get("x-amz-meta-sha256", ""),
                response.stream(chunk_size),
                close,
            )
        except BaseException:
            response.close()
            response.release_conn()
            raise

    # -- presigned multipart uploads ------------------------------------------------------------------
    def create_multipart(
        self, key: str, size: int | None = None, content_type: str = "application/octet-stream"
    ) -> str:
        validate_key(key)
        headers: dict[str, str | builtins.list[str] | tuple[str]] = {"Content-Type": content_type}
        if size is not None:
            headers["x-amz-meta-declared-size"] = str(size)
        return self._retry(
            f"start upload {key}", lambda: self.client._create_multipart_upload(self.bucket, key, headers)
        )

    def presigned_part_urls(
        self, key: str, upload_id: str, part_numbers: Iterable[int], expires_s: int | None = None
    ) -> builtins.list[str]:
        validate_key(key)
        expires = datetime.timedelta(seconds=expires_s or self.settings.presign_expiry_s)
        return [  # signed offline (the region is configured): no request per part
            self.public.get_presigned_url(
                "PUT",
                self.bucket,
                key,
                expires=expires,
                extra_query_params={"uploadId": upload_id, "partNumber": str(n)},
            )
            for n in part_numbers
        ]

    def _uploaded_parts(self, key: str, upload_id: str) -> dict[int, tuple[str, int]]:
        """part number → (ETag, size) of the parts the store holds for the upload."""
        out: dict[int, tuple[str, int]] = {}
        marker: str | None = None
        while True:
            page = self.client._list_parts(self.bucket, key, upload_id, part_number_marker=marker)
            out.update({p.part_number: (p.etag.strip('"'), int(p.size or 0)) for p in page.parts})
            if not page.is_truncated or not page.next_part_number_marker:
                return out
            marker = page.next_part_number_marker

    def _reject(self, key: str, code: str, message: str) -> UploadRejected:
        """Delete the assembled ``key`` and describe why (nothing half-valid stays listed)."""
        try:
            self.delete(key)
        except Exception:
            log.exception("could not delete rejected upload %s", key)
            message += f" (deleting '{key}' failed too: delete it before using the dataset)"
        return UploadRejected(code, message)

    def complete_multipart(
        self, key: str, upload_id: str, parts: Sequence[tuple[int, str]], check_zip: bool = False
    ) -> ArtifactInfo:
        from minio.datatypes import Part
        from minio.error import S3Error

        validate_key(key)
        given = sorted((int(n), etag.strip().strip('"')) for n, etag in parts)
        numbers = [n for n, _ in given]
        if not given:
            raise UploadRejected("invalid_parts", "the part list is empty")
        if len(set(numbers)) != len(numbers):
            twice = sorted(n for n, k in collections.Counter(numbers).items() if k > 1)
            raise UploadRejected("invalid_parts", f"part numbers listed more than once: {twice[:20]}")
        if numbers != list(range(1, len(numbers) + 1)):
            missing = sorted(set(range(1, numbers[-1] + 1)) - set(numbers))
            raise UploadRejected("invalid_parts", f"the part list must be 1…N; missing: {missing[:20]}")
        try:  # S3 would happily assemble a subset of the parts: check the list against what it holds
            held = self._retry(f"list parts {key}", lambda: self._uploaded_parts(key, upload_id))
        except S3Error as e:
            if e.code == _NO_UPLOAD:
                raise UploadNotFound(key, upload_id) from e
            raise
        not_uploaded = [n for n in numbers if n not in held]
        if not_uploaded:
            raise UploadRejected("invalid_parts", f"parts not uploaded (yet): {not_uploaded[:20]}")
        wrong = [n for n, etag in given if held[n][0].lower() != etag.lower()]
        if wrong:
            raise UploadRejected(
                "invalid_parts", f"the ETag given for parts {wrong[:20]} is not the one the store returned"
            )
        extra = sorted(set(held) - set(numbers))
        if extra:
            raise UploadRejected("invalid_parts", f"parts uploaded but not in the list: {extra[:20]}")

        attempts = 0

        def complete() -> None:
            nonlocal attempts
            attempts += 1
            try:
                result = self.client._complete_multipart_upload(
                    self.bucket, key, upload_id, [Part(n, etag) for n, etag in given]
                )
            except S3Error as e:  # a retry after a lost answer finds the upload already completed
                if not (e.code == _NO_UPLOAD and attempts > 1 and self._stat(key) is not None):
                    raise
                return
            if result.etag is None:  # AWS may answer 200 with an <Error> body here (minio does not raise)
                raise StorageUnavailable("the store answered the completion with an error; retrying")

        try:
            self._retry(f"complete upload {key}", complete)
        except S3Error as e:
            if e.code == _NO_UPLOAD:
                raise UploadNotFound(key, upload_id) from e
            if e.code in ("InvalidPart", "InvalidPartOrder", "EntityTooSmall", "MalformedXML"):
                raise UploadRejected("invalid_parts", f"the store refused the part list: {e.message}") from e
            raise
        st = self._retry(f"stat {key}", lambda: self.client.stat_object(self.bucket, key))
        size = int(st.size or 0)
        meta = {k.lower(): v for k, v in (st.metadata or {}).items()}
        declared = meta.get("x-amz-meta-declared-size", "")
        if declared.isdigit() and int(declared) != size:
            raise self._reject(
                key, "size_mismatch", f"the parts add up to {size} bytes, not the {declared} declared"
            )
        if check_zip:
            self._check_zip_end(key, size)
        return ArtifactInfo(key, size, meta.get("x-amz-meta-sha256", ""))

    def _check_zip_end(self, key: str, size: int) -> None:
        start = max(0, size - ZIP_TAIL)
        tail = self.read_range(key, start, size - start) if size else b""
        try:
            d = zip_directory(tail, size)
            head = (
                tail[d.offset - start : d.offset - start + 4]
                if d.offset >= start
                else self.read_range(key, d.offset, 4)
            )
            if head != b"PK\x01\x02":
                raise ValueError(f"no central directory at byte {d.offset}: the zip is damaged")
        except ValueError as e:
            raise self._reject(key, "invalid_zip", f"the upload is not a complete zip file: {e}") from e

    def abort_multipart(self, key: str, upload_id: str) -> None:
        from minio.error import S3Error

        validate_key(key)
        try:  # ListParts first: SeaweedFS answers an abort of an aborted/completed upload with success
            self._retry(f"list parts {key}", lambda: self.client._list_parts(self.bucket, key, upload_id, 1))
            self._retry(
                f"abort upload {key}",
                lambda: self.client._abort_multipart_upload(self.bucket, key, upload_id),
            )
        except S3Error as e:
            if e.code == _NO_UPLOAD:
                raise UploadNotFound(key, upload_id) from e
            raise


class DirStorage(Storage):
    """The same interface on a local directory (embedded mode, single host)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self._lock = threading.Lock()

    def _path(self, key: str) -> Path:
        return self.root / key

    def ensure_ready(self) -> None:
        (self.root / TEMP_PREFIX).mkdir(parents=True, exist_ok=True)

    def ping(self) -> None:
        if not self.root.is_dir():
            raise StorageUnavailable(f"storage directory {self.root} does not exist")

    def _put_file(self, key: str, path: Path, size: int, sha256: str, content_type: str) -> None:
        self.ensure_ready()
        tmp = self._path(temp_key())
        shutil.copyfile(path, tmp)
        (tmp.parent / (tmp.name + ".sha256")).write_text(sha256)
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp.parent / (tmp.name + ".sha256"), target.parent / f".{target.name}.sha256")
        os.replace(tmp, target)

    def _get_file(self, key: str, path: Path) -> None:
        src = self._path(key)
        if not src.is_file():
            raise ObjectNotFound(key)
        shutil.copyfile(src, path)

    def _stat(self, key: str) -> ArtifactInfo | None:
        p = self._path(key)
        if not p.is_file():
            return None
        side = p.parent / f".{p.name}.sha256"
        return ArtifactInfo(key, p.stat().st_size, side.read_text() if side.is_file() else "")

    def _iter_keys(self, prefix: str) -> Iterator[str]:
        # walk only the folder the prefix is in (not the whole store)
        start = self.root / prefix.rsplit("/", 1)[0] if "/" in prefix else self.root
        if not start.is_dir():
            return
        for d, _, names in os.walk(start):
            for n in names:
                if n.startswith(".") and n.endswith(".sha256"):
                    continue
                rel = (Path(d) / n).relative_to(self.root).as_posix()
                if rel.startswith(prefix):
                    yield rel

    def _delete(self, key: str) -> None:
        p = self._path(key)
        p.unlink(missing_ok=True)
        (p.parent / f".{p.name}.sha256").unlink(missing_ok=True)

    def presigned_get(self, key: str, expires_s: int | None = None) -> None:
        return None

    def presigned_put(self, key: str, expires_s: int | None = None) -> None:
        return None

    def _read_range(self, key: str, offset: int, length: int) -> bytes:
        p = self._path(key)
        if not p.is_file():
            raise ObjectNotFound(key)
        with open(p, "rb") as f:
            f.seek(offset)
            return f.read(length)

    def _open_stream(self, key: str, offset: int, length: int | None, chunk_size: int) -> ObjectStream:
        p = self._path(key)
        try:
            f = open(p, "rb")  # noqa: SIM115  (closed by the stream)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise ObjectNotFound(key) from None
        try:
            size = os.fstat(f.fileno()).st_size
            f.seek(min(offset, size))
            n = max(0, size - offset) if length is None else max(0, min(length, size - offset))
            side = p.parent / f".{p.name}.sha256"
            sha = side.read_text() if side.is_file() else ""
        except BaseException:
            f.close()
            raise

        def chunks() -> Iterator[bytes]:
            left = n
            while left > 0:
                block = f.read(min(chunk_size, left))
                if not block:
                    return
                left -= len(block)
                yield block

        return ObjectStream(key, size, n, "application/octet-stream", sha, chunks(), f.close)

    def create_multipart(
        self, key: str, size: int | None = None, content_type: str = "application/octet-stream"
    ) -> None:
        return None

    def presigned_part_urls(
        self, key: str, upload_id: str, part_numbers: Iterable[int], expires_s: int | None = None
    ) -> None:
        return None

    def complete_multipart(
        self, key: str, upload_id: str, parts: Sequence[tuple[int, str]], check_zip: bool = False
    ) -> ArtifactInfo:
        raise MultipartNotSupported()

    def abort_multipart(self, key: str, upload_id: str) -> None:
        raise MultipartNotSupported()


_lock = threading.Lock()
_instances: dict[tuple[int, str], Storage] = {}


def make_storage(settings: Settings) -> Storage:
    if settings.storage == "dir":
        return DirStorage(settings.storage_dir)
    return S3Storage(settings)


def get_storage(settings: Settings | None = None) -> Storage:
    """One storage client per process (minio clients must not cross a fork, so the pid is in the key)."""
    settings = settings or get_settings()
    key = (os.getpid(), settings.model_dump_json())
    with _lock:
        if key not in _instances:
            _instances[key] = make_storage(settings)
        return _instances[key]


__all__ = [
    "ArtifactInfo",
    "DirStorage",
    "MultipartNotSupported",
    "ObjectNotFound",
    "ObjectStream",
    "S3Storage",
    "Storage",
    "StorageError",
    "StorageUnavailable",
    "UploadNotFound",
    "UploadRejected",
    "UploadTooLarge",
    "ZipDirectory",
    "get_storage",
    "make_storage",
    "sha256_file",
    "spool_stream",
    "zip_directory",
]
