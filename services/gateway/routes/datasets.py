"""``/v1/datasets``: create, upload (presigned PUT or streamed body with a size limit), register an
existing prefix, list, get. A dataset is ``datasets/{id}/dataset.json`` plus its files."""

from __future__ import annotations

import time
import zipfile
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request, status
from starlette.concurrency import run_in_threadpool

from services.common.keys import InvalidKeyError, dataset_prefix, new_id, validate_key
from services.common.storage import ObjectNotFound, Storage
from services.gateway.deps import ApiKey, SettingsDep, StorageDep
from services.gateway.errors import ERROR_RESPONSES, ApiError
from services.gateway.routes.common import check_id, spooled_body
from services.gateway.schemas import Dataset, DatasetCreate, DatasetList, RegisterPrefix, UploadUrl

router = APIRouter(prefix="/v1/datasets", tags=["datasets"], responses=ERROR_RESPONSES)
RECORD = "dataset.json"


def _record(storage: Storage, dataset_id: str) -> dict:
    check_id(dataset_id, "dataset_id")
    try:
        return storage.get_json(dataset_prefix(dataset_id) + RECORD)
    except ObjectNotFound as e:
        raise ApiError(404, "not_found", f"no dataset '{dataset_id}'") from e


def _view(storage: Storage, rec: dict) -> Dataset:
    prefix = dataset_prefix(rec["id"])
    keys = storage.list(prefix)
    images, info = None, None
    if prefix + "images.zip" in keys:
        images, info = prefix + "images.zip", storage.stat(prefix + "images.zip")
    elif any(k.startswith(prefix + "images/") for k in keys):
        images = prefix + "images/"
    return Dataset(
        id=rec["id"],
        name=rec.get("name", ""),
        created_at=rec["created_at"],
        images=images,
        size=info.size if info else None,
        sha256=(info.sha256 or None) if info else None,
        landmarks=sum(k.startswith(prefix + "landmarks/detections/results/") for k in keys),
        poses=sum(k.startswith(prefix + "poses/") and k.endswith(".mat") for k in keys),
    )


@router.post("", status_code=status.HTTP_201_CREATED, summary="create an empty dataset")
def create_dataset(body: DatasetCreate, _: ApiKey, storage: StorageDep) -> Dataset:
    rec: dict[str, Any] = {"id": new_id("ds"), "name": body.name, "created_at": round(time.time(), 3)}
    storage.put_json(dataset_prefix(rec["id"]) + RECORD, rec)
    return _view(storage, rec)


@router.get("", summary="list datasets")
def list_datasets(_: ApiKey, storage: StorageDep) -> DatasetList:
    items = []
    for key in storage.list("datasets/"):
        if key.endswith("/" + RECORD) and key.count("/") == 2:
            items.append(_view(storage, storage.get_json(key)))
    return DatasetList(items=sorted(items, key=lambda d: -d.created_at))


@router.get("/{dataset_id}", summary="get a dataset")
def get_dataset(dataset_id: str, _: ApiKey, storage: StorageDep) -> Dataset:
    return _view(storage, _record(storage, dataset_id))


@router.post("/{dataset_id}/upload-url", summary="a presigned PUT URL for images.zip (S3 only)")
def upload_url(dataset_id: str, _: ApiKey, storage: StorageDep, settings: SettingsDep) -> UploadUrl:
    _record(storage, dataset_id)
    key = dataset_prefix(dataset_id) + "images.zip"
    url = storage.presigned_put(key)
    if url is None:
        raise ApiError(
            409, "not_supported", "presigned uploads need the S3 storage backend; PUT the images instead"
        )
    return UploadUrl(url=url, key=key, expires_in=settings.presign_expiry_s)


def _check_zip(path: Path) -> int:
    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
            names = [n for n in z.namelist() if not n.endswith("/")]
    except zipfile.BadZipFile as e:
        raise ApiError(
            422, "invalid_zip", f"the upload is not a readable zip file ({e})", {"field": "body"}
        ) from e
    if bad is not None:
        raise ApiError(422, "invalid_zip", f"zip member '{bad}' is corrupt (CRC mismatch)", {"field": "body"})
    for n in names:
        try:
            validate_key(n, what="zip member")
        except InvalidKeyError as e:
            raise ApiError(422, "invalid_zip", str(e), {"field": "body", "member": n[:200]}) from e
    images = [n for n in names if n.lower().endswith((".png", ".jpg", ".jpeg", ".webp"))]
    if not images:
        raise ApiError(422, "invalid_zip", "the zip holds no .png/.jpg/.webp images", {"field": "body"})
    return len(images)


@router.put(
    "/{dataset_id}/images",
    summary="upload images.zip as the raw request body (streamed to disk, size-limited, then stored)",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
        }
    },
    responses={413: {"description": "larger than GMPI_MAX_UPLOAD_BYTES"}},
)
async def upload_images(
    dataset_id: str, request: Request, _: ApiKey, storage: StorageDep, settings: SettingsDep
) -> Dataset:
    rec = await run_in_threadpool(_record, storage, dataset_id)
    spool_dir = Path(settings.cache_dir) / "uploads"
    async with spooled_body(request, settings.max_upload_bytes, spool_dir, "the dataset zip") as path:
        await run_in_threadpool(_check_zip, path)
        await run_in_threadpool(
            storage.put_file, dataset_prefix(dataset_id) + "images.zip", str(path), "application/zip"
        )
    return await run_in_threadpool(_view, storage, rec)


@router.post(
    "/{dataset_id}/register",
    summary="use images already in the bucket (images.zip or images/ below a prefix)",
)
def register_prefix(dataset_id: str, body: RegisterPrefix, _: ApiKey, storage: StorageDep) -> Dataset:
    rec = _record(storage, dataset_id)
    try:
        prefix = validate_key(body.prefix.rstrip("/"), what="prefix") + "/"
    except InvalidKeyError as e:
        raise ApiError(422, "invalid_key", str(e), {"field": "prefix"}) from e
    if prefix.startswith(("datasets/", "models/", "jobs/")):
        raise ApiError(
            422, "invalid_key", "register a prefix outside datasets/, models/ and jobs/", {"field": "prefix"}
        )
    keys = storage.list(prefix)
    target = dataset_prefix(dataset_id)
    wanted = [k for k in keys if k == prefix + "images.zip" or k.startswith(prefix + "images/")]
    if not wanted:
        raise ApiError(422, "no_images", f"no images.zip or images/ below '{prefix}'", {"field": "prefix"})
    for k in wanted:
        storage.copy(k, target + k[len(prefix) :])
    return _view(storage, rec)
