"""``/v1/files/{key}``: artifact download through the gateway (the directory backend's "presigned URL")."""

from __future__ import annotations

import tempfile
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse
from starlette.background import BackgroundTask

from services.common.keys import InvalidKeyError, validate_key
from services.common.storage import ObjectNotFound
from services.gateway.deps import ApiKey, StorageDep
from services.gateway.errors import ERROR_RESPONSES, ApiError

router = APIRouter(prefix="/v1/files", tags=["files"], responses=ERROR_RESPONSES)


@router.get("/{key:path}", summary="download an artifact", response_class=FileResponse)
def download(key: str, _: ApiKey, storage: StorageDep) -> FileResponse:
    try:
        validate_key(key)
    except InvalidKeyError as e:
        raise ApiError(422, "invalid_key", str(e), {"field": "key"}) from e
    if not key.startswith(("datasets/", "models/", "jobs/")):
        raise ApiError(404, "not_found", f"no artifact '{key}'")
    d = tempfile.mkdtemp(prefix="gmpi-dl-")
    try:
        path = storage.get_file(key, Path(d) / Path(key).name)
    except ObjectNotFound as e:
        Path(d).rmdir()
        raise ApiError(404, "not_found", f"no artifact '{key}'") from e
    import shutil

    return FileResponse(path, filename=path.name, background=BackgroundTask(shutil.rmtree, d, True))
