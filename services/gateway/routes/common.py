"""Helpers the routes share."""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fastapi import Request

from services.common.keys import InvalidKeyError, validate_id
from services.common.storage import Storage
from services.gateway.errors import ApiError
from services.gateway.schemas import Artifact, Job


def check_id(value: str, what: str) -> str:
    try:
        return validate_id(value, what=what)
    except InvalidKeyError as e:
        raise ApiError(422, "invalid_id", str(e), {"field": what}) from e


def artifact_url(storage: Storage, key: str) -> str:
    return storage.presigned_get(key) or f"/v1/files/{quote(key)}"


def job_view(rec: dict[str, Any], storage: Storage | None = None) -> Job:
    artifacts = []
    for key in rec.get("artifacts") or []:
        if storage is None:
            artifacts.append(Artifact(key=key, url=f"/v1/files/{quote(key)}"))
            continue
        info = storage.stat(key)
        if info is None:
            continue
        artifacts.append(
            Artifact(key=key, size=info.size, sha256=info.sha256 or None, url=artifact_url(storage, key))
        )
    data = {k: rec.get(k) for k in Job.model_fields if k != "artifacts"}
    data["metrics"] = rec.get("metrics") or {}
    data["info"] = rec.get("info") or {}
    data["attempts"] = rec.get("attempts") or 0
    return Job(**data, artifacts=artifacts)


@contextlib.asynccontextmanager
async def spooled_body(request: Request, limit: int, spool_dir: Path, what: str) -> AsyncIterator[Path]:
    """The raw request body streamed into a temporary file (deleted on exit) and counted as it streams,
    so ``limit`` holds whatever the headers claim; 413 past the limit, 422 for an empty body."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise ApiError(
            413, "too_large", f"upload of {declared} bytes exceeds GMPI_MAX_UPLOAD_BYTES ({limit})"
        )
    spool_dir.mkdir(parents=True, exist_ok=True)
    size = 0
    with tempfile.NamedTemporaryFile(dir=spool_dir, prefix="upload-") as tmp:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise ApiError(413, "too_large", f"upload exceeds GMPI_MAX_UPLOAD_BYTES ({limit} bytes)")
            tmp.write(chunk)
        tmp.flush()
        if size == 0:
            raise ApiError(422, "empty_body", f"the request body is empty; send {what}", {"field": "body"})
        yield Path(tmp.name)
