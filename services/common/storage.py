"""Artifact storage: S3 (minio SDK, one client per process) or a directory, behind one interface.

Every object carries its sha256 (S3 user metadata ``sha256``; a ``.sha256`` sidecar for the directory
backend). Single objects are written to a temporary key under ``.tmp/`` and then committed with a
server-side copy (directory: ``os.replace``), so a listing never shows a half-written object; a group of
files (a model, an MPI export) is committed by writing its ``manifest.json`` last (``commit``).
Transient connection errors are retried with exponential backoff for up to ``retry_for_s`` seconds.
"""

from __future__ import annotations

import builtins
import datetime
import hashlib
import json
import logging
import os
import shutil
import tempfile
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

from services.common.keys import MANIFEST, TEMP_PREFIX, temp_key, validate_key
from services.common.settings import Settings, get_settings

log = logging.getLogger("gmpi.storage")
T = TypeVar("T")
CHUNK = 1024 * 1024
PART_SIZE = 16 * 1024 * 1024


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


@dataclass(frozen=True)
class ArtifactInfo:
    key: str
    size: int
    sha256: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


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
    def _list(self, prefix: str) -> list[str]: ...
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

    def list(self, prefix: str) -> list[str]:
        """Committed keys below ``prefix`` (recursive, sorted); temporary uploads are never listed."""
        if prefix:
            validate_key(prefix.rstrip("/"), what="prefix")
        keys = self._retry(f"list {prefix}", lambda: self._list(prefix))
        return sorted(k for k in keys if not k.startswith(TEMP_PREFIX))

    def has_any(self, prefix: str, suffix: str = "") -> bool:
        """Whether some committed key below ``prefix`` ends with ``suffix``; stops at the first one (a
        request handler can ask this of a 70,000-file prefix)."""
        if prefix:
            validate_key(prefix.rstrip("/"), what="prefix")

        def first() -> bool:
            return any(k.endswith(suffix) and not k.startswith(TEMP_PREFIX) for k in self._iter_keys(prefix))

        return self._retry(f"list {prefix}", first)

    def _iter_keys(self, prefix: str) -> Iterator[str]:
        yield from self._list(prefix)

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

    def download_prefix(self, prefix: str, local: str | os.PathLike[str]) -> builtins.list[Path]:
        root = Path(local)
        return [self.get_file(k, root / k[len(prefix) :]) for k in self.list(prefix)]

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

    def _list(self, prefix: str) -> list[str]:
        return list(self._iter_keys(prefix))

    def _iter_keys(self, prefix: str) -> Iterator[str]:
        for o in self.client.list_objects(self.bucket, prefix=prefix, recursive=True):
            yield str(o.object_name)

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

    def _list(self, prefix: str) -> list[str]:
        return list(self._iter_keys(prefix))

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
    "ObjectNotFound",
    "S3Storage",
    "Storage",
    "StorageError",
    "StorageUnavailable",
    "UploadTooLarge",
    "get_storage",
    "make_storage",
    "sha256_file",
    "spool_stream",
]
