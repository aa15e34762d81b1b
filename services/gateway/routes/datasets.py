"""``/v1/datasets``: create, upload (presigned PUT, presigned multipart upload for zips of any size, or a
streamed body with a size limit), register an existing prefix, list, get, list its files, attach geometry
ground truth. A dataset is ``datasets/{id}/dataset.json`` plus its files."""

from __future__ import annotations

import base64
import binascii
import re
import time
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request, Response, status
from starlette.concurrency import run_in_threadpool

from services.common import zips
from services.common.groundtruth import KINDS, GroundTruthError, check_ground_truth, ground_truth_key
from services.common.keys import InvalidKeyError, dataset_prefix, new_id, validate_key
from services.common.storage import (
    MultipartNotSupported,
    ObjectNotFound,
    Storage,
    UploadNotFound,
    UploadRejected,
)
from services.gateway.access import dataset_record, may_read
from services.gateway.deps import ApiKey, Caller, SettingsDep, StorageDep, UploadLimited
from services.gateway.errors import ERROR_RESPONSES, ApiError
from services.gateway.routes.common import artifact_url, spooled_body
from services.gateway.schemas import (
    MAX_PARTS,
    MIB,
    Dataset,
    DatasetCreate,
    DatasetFile,
    DatasetFileList,
    DatasetList,
    GroundTruth,
    MultipartComplete,
    MultipartCreate,
    MultipartUpload,
    RegisterPrefix,
    UploadPartUrl,
    UploadUrl,
)

router = APIRouter(prefix="/v1/datasets", tags=["datasets"], responses=ERROR_RESPONSES)
RECORD = "dataset.json"
DEFAULT_PART_SIZE = 64 * MIB
_UPLOAD_ID = re.compile(r"^[A-Za-z0-9._~+=-]{1,1024}$")
_NOT_SUPPORTED = "presigned uploads need the S3 storage backend; PUT the images instead"


def _record(storage: Storage, dataset_id: str, caller: Caller, write: bool = False) -> dict:
    """The dataset's record: 404 unless the caller may read it (its own, or shared); with ``write``
    403 for a shared one unless the caller is an admin (services/gateway/access.py)."""
    return dataset_record(storage, caller, dataset_id, write=write)


def _ground_truth(storage: Storage, dataset_id: str, kind: str) -> GroundTruth | None:
    key = ground_truth_key(dataset_id, kind)
    info = storage.stat(key)
    if info is None:
        return None
    summary: dict[str, Any] = {}
    try:
        side = storage.get_json(key.removesuffix(".zip") + ".json")
        if isinstance(side, dict) and side.get("sha256") == info.sha256:  # the check of this very zip
            summary = side.get("summary") or {}
    except (ObjectNotFound, ValueError):
        pass
    return GroundTruth(kind=kind, key=key, size=info.size, sha256=info.sha256 or None, summary=summary)  # type: ignore[arg-type]


def _view(storage: Storage, rec: dict) -> Dataset:
    prefix = dataset_prefix(rec["id"])
    keys = storage.list(prefix)
    images, info = None, None
    if prefix + "images.zip" in keys:
        images, info = prefix + "images.zip", storage.stat(prefix + "images.zip")
    elif any(k.startswith(prefix + "images/") for k in keys):
        images = prefix + "images/"
    ground_truth = {}
    for kind in KINDS:
        if ground_truth_key(rec["id"], kind) in keys:
            gt = _ground_truth(storage, rec["id"], kind)
            if gt is not None:
                ground_truth[kind] = gt
    return Dataset(
        id=rec["id"],
        name=rec.get("name", ""),
        created_at=rec["created_at"],
        images=images,
        size=info.size if info else None,
        sha256=(info.sha256 or None) if info else None,
        landmarks=sum(k.startswith(prefix + "landmarks/detections/results/") for k in keys),
        poses=sum(k.startswith(prefix + "poses/") and k.endswith(".mat") for k in keys),
        ground_truth=ground_truth,
    )


@router.post("", status_code=status.HTTP_201_CREATED, summary="create an empty dataset")
def create_dataset(body: DatasetCreate, caller: ApiKey, storage: StorageDep) -> Dataset:
    """The dataset belongs to the caller's key (its owner id is recorded; other keys do not see it)."""
    rec: dict[str, Any] = {
        "id": new_id("ds"),
        "name": body.name,
        "created_at": round(time.time(), 3),
        "owner": caller.id,
    }
    storage.put_json(dataset_prefix(rec["id"]) + RECORD, rec)
    return _view(storage, rec)


@router.get("", summary="list datasets")
def list_datasets(caller: ApiKey, storage: StorageDep) -> DatasetList:
    """The caller's datasets and shared ones (an admin key: every dataset)."""
    items = []
    for key in storage.list("datasets/"):
        if key.endswith("/" + RECORD) and key.count("/") == 2:
            try:
                rec = storage.get_json(key)
            except ObjectNotFound:  # deleted meanwhile
                continue
            if isinstance(rec, dict) and may_read(caller, rec):
                items.append(_view(storage, rec))
    return DatasetList(items=sorted(items, key=lambda d: -d.created_at))


@router.get("/{dataset_id}", summary="get a dataset")
def get_dataset(dataset_id: str, caller: ApiKey, storage: StorageDep) -> Dataset:
    return _view(storage, _record(storage, dataset_id, caller))


@router.post("/{dataset_id}/upload-url", summary="a presigned PUT URL for images.zip (S3 only)")
def upload_url(
    dataset_id: str, caller: UploadLimited, storage: StorageDep, settings: SettingsDep
) -> UploadUrl:
    _record(storage, dataset_id, caller, write=True)
    key = dataset_prefix(dataset_id) + "images.zip"
    url = storage.presigned_put(key)
    if url is None:
        raise ApiError(409, "not_supported", _NOT_SUPPORTED)
    return UploadUrl(url=url, key=key, expires_in=settings.presign_expiry_s)


def _plan_parts(size: int, part_size: int | None) -> tuple[int, int]:
    """(part size, part count) for ``size`` bytes: the asked part size, else 64 MiB grown (in whole MiB)
    until 10,000 parts hold it (at most 550 MB for the largest size, 5 TiB)."""
    if part_size is None:
        part_size = max(DEFAULT_PART_SIZE, -(-size // (MAX_PARTS * MIB)) * MIB)
    count = max(1, -(-size // part_size))
    if count > MAX_PARTS:
        raise ApiError(
            422,
            "too_many_parts",
            f"{size} bytes in parts of {part_size} bytes make {count} parts; the limit is {MAX_PARTS} "
            f"(use part_size >= {-(-size // MAX_PARTS)}, or leave it out)",
            {"field": "part_size"},
        )
    return part_size, count


def _refuse_if_images_exist(storage: Storage, dataset_id: str) -> None:
    """A multipart upload completes in place, and a failed check deletes what it assembled: so it may
    only go to a dataset without images.zip (a failed upload then never costs an earlier good one)."""
    info = storage.stat(dataset_prefix(dataset_id) + "images.zip")
    if info is not None:
        raise ApiError(
            409,
            "images_exist",
            f"dataset '{dataset_id}' already has images.zip ({info.size} bytes); upload to a new dataset "
            "(POST /v1/datasets) or abort this upload",
            {"field": "dataset_id"},
        )


def _upload_key(storage: Storage, dataset_id: str, upload_id: str, caller: Caller) -> tuple[dict, str]:
    """(the dataset's record, the key its multipart uploads go to), after checking both ids and that
    the caller may change the dataset."""
    rec = _record(storage, dataset_id, caller, write=True)
    if not _UPLOAD_ID.match(upload_id):
        raise ApiError(
            422, "invalid_id", "upload_id has characters outside [A-Za-z0-9._~+=-]", {"field": "upload_id"}
        )
    return rec, dataset_prefix(dataset_id) + "images.zip"


@router.post(
    "/{dataset_id}/uploads",
    status_code=status.HTTP_201_CREATED,
    summary="start a presigned multipart upload of images.zip (S3 only; any size up to 5 TiB)",
    responses={409: {"description": "the directory storage backend (no presigned uploads)"}},
)
def start_upload(
    dataset_id: str, body: MultipartCreate, caller: UploadLimited, storage: StorageDep, settings: SettingsDep
) -> MultipartUpload:
    """PUT byte range ``[(n-1)·part_size, n·part_size)`` of the zip to the URL of part ``n``, keep each
    response's ``ETag`` header, then complete the upload with the list of (part_number, etag)."""
    _record(storage, dataset_id, caller, write=True)
    _refuse_if_images_exist(storage, dataset_id)
    part_size, count = _plan_parts(body.size, body.part_size)
    key = dataset_prefix(dataset_id) + "images.zip"
    upload_id = storage.create_multipart(key, body.size, "application/zip")
    if upload_id is None:
        raise ApiError(409, "not_supported", _NOT_SUPPORTED)
    urls = storage.presigned_part_urls(key, upload_id, range(1, count + 1)) or []
    return MultipartUpload(
        upload_id=upload_id,
        key=key,
        size=body.size,
        part_size=part_size,
        parts=[UploadPartUrl(part_number=n, url=u) for n, u in enumerate(urls, 1)],
        expires_in=settings.presign_expiry_s,
    )


@router.post(
    "/{dataset_id}/uploads/{upload_id}/complete",
    summary="complete a multipart upload: assemble images.zip from the parts and check it",
    responses={409: {"description": "the directory storage backend"}},
)
def complete_upload(
    dataset_id: str, upload_id: str, body: MultipartComplete, caller: UploadLimited, storage: StorageDep
) -> Dataset:
    """422 ``invalid_parts`` (the upload stays open: fix the list or upload the missing parts and
    complete again); 422 ``size_mismatch`` / ``invalid_zip`` when the assembled object is not the declared
    size or not a complete zip (it is deleted: upload again); 409 ``images_exist`` if images.zip
    appeared meanwhile (nothing is replaced)."""
    rec, key = _upload_key(storage, dataset_id, upload_id, caller)
    _refuse_if_images_exist(storage, dataset_id)  # a streamed PUT may have landed since the start
    parts = [(p.part_number, p.etag) for p in body.parts]
    try:
        storage.complete_multipart(key, upload_id, parts, check_zip=True)
    except MultipartNotSupported as e:
        raise ApiError(409, "not_supported", str(e)) from e
    except UploadNotFound as e:
        raise ApiError(404, "not_found", f"no upload '{upload_id[:100]}' for dataset '{dataset_id}'") from e
    except UploadRejected as e:  # invalid_parts: nothing happened; size_mismatch/invalid_zip: deleted
        deleted = e.code != "invalid_parts"
        raise ApiError(422, e.code, str(e), {"field": "parts", "upload_open": not deleted}) from e
    try:  # the members' names and declared sizes, as PUT …/images checks them (central directory only)
        _check_stored_zip(storage, key, "parts")
    except ApiError as e:
        storage.delete(key)
        e.details = {**(e.details or {}), "upload_open": False}
        raise
    return _view(storage, rec)


@router.delete(
    "/{dataset_id}/uploads/{upload_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="abort a multipart upload (its parts are dropped)",
    responses={409: {"description": "the directory storage backend"}},
)
def abort_upload(dataset_id: str, upload_id: str, caller: ApiKey, storage: StorageDep) -> Response:
    _rec, key = _upload_key(storage, dataset_id, upload_id, caller)
    try:
        storage.abort_multipart(key, upload_id)
    except MultipartNotSupported as e:
        raise ApiError(409, "not_supported", str(e)) from e
    except UploadNotFound as e:
        raise ApiError(404, "not_found", f"no upload '{upload_id[:100]}' for dataset '{dataset_id}'") from e
    return Response(status_code=status.HTTP_204_NO_CONTENT)


_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


def _zip_error(e: zips.UnsafeZipError, field: str = "body") -> ApiError:
    """422 ``invalid_zip`` (as before: details.reason says ``unsafe_zip_member`` for a name, symlink or
    duplicate), 422 ``zip_bomb``, 413 ``zip_too_large``."""
    details: dict[str, Any] = {"field": field, "reason": e.code}
    if e.member is not None:
        details["member"] = e.member[:200]
    code = zips.INVALID_ZIP if e.code == zips.UNSAFE_MEMBER else e.code
    return ApiError(e.http_status, code, str(e), details)


def _check_names(files: list[Any], field: str = "body") -> int:
    """The key rules for every member of a dataset zip (they become object keys and file names on the
    workers) and at least one image; → the number of images."""
    names = [i.filename for i in files]
    for n in names:
        try:
            validate_key(n, what="zip member")
        except InvalidKeyError as e:
            raise ApiError(422, "invalid_zip", str(e), {"field": field, "member": n[:200]}) from e
    images = [n for n in names if n.lower().endswith(_IMAGE_SUFFIXES)]
    if not images:
        raise ApiError(422, "invalid_zip", "the zip holds no .png/.jpg/.webp images", {"field": field})
    return len(images)


def _check_zip(path: Path) -> int:
    """A streamed images.zip: the central directory first (names, types, declared sizes and ratios),
    then every member's CRC, decompressed in bounded chunks and counted against its declared size."""
    try:
        z, files = zips.open_checked(path)
        with z:
            count = _check_names(files)
            zips.verify_members(z, files)
    except zips.UnsafeZipError as e:
        raise _zip_error(e) from e
    return count


def _check_stored_zip(storage: Storage, key: str, field: str) -> int:
    """An images.zip already in the store (multipart completion, a registered prefix): its central
    directory only, read by ranged GETs; the members are never decompressed by the gateway."""
    info = storage.stat(key)
    if info is None:
        raise ApiError(422, "no_images", f"no object '{key}'", {"field": field})
    try:
        files = zips.check_stored_zip(storage, key, info.size)
    except zips.UnsafeZipError as e:
        raise _zip_error(e, field) from e
    return _check_names(files, field)


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
    dataset_id: str, request: Request, caller: UploadLimited, storage: StorageDep, settings: SettingsDep
) -> Dataset:
    rec = await run_in_threadpool(_record, storage, dataset_id, caller, True)
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
def register_prefix(
    dataset_id: str, body: RegisterPrefix, caller: UploadLimited, storage: StorageDep
) -> Dataset:
    rec = _record(storage, dataset_id, caller, write=True)
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
    if prefix + "images.zip" in wanted:  # checked as an upload would be, before anything is copied
        _check_stored_zip(storage, prefix + "images.zip", "prefix")
    try:
        for k in wanted:
            if not k.startswith(prefix + "images/"):
                continue
            validate_key(k[len(prefix) :], what="image key")
    except InvalidKeyError as e:
        raise ApiError(422, "invalid_key", str(e), {"field": "prefix"}) from e
    gt_keys = {f"{prefix}ground-truth/{kind}.zip" for kind in KINDS}
    for k in keys:
        if k in gt_keys:
            _check_stored_ground_truth(storage, k)
            wanted.append(k)
    for k in wanted:
        storage.copy(k, target + k[len(prefix) :])
    return _view(storage, rec)


def _check_stored_ground_truth(storage: Storage, key: str) -> None:
    info = storage.stat(key)
    if info is None:
        return
    try:
        zips.check_stored_zip(storage, key, info.size)
    except zips.UnsafeZipError as e:
        raise _zip_error(e, "prefix") from e


# --- the dataset's files ---------------------------------------------------------------------------
def _encode_cursor(key: str) -> str:
    return base64.urlsafe_b64encode(key.encode()).decode().rstrip("=")


def _decode_cursor(cursor: str, under: str) -> str:
    try:
        key = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, ValueError) as e:
        raise ApiError(
            422, "invalid_cursor", "cursor is not one this route returned", {"field": "cursor"}
        ) from e
    if not key.startswith(under):
        raise ApiError(
            422,
            "invalid_cursor",
            "cursor belongs to another dataset or prefix; list again from the start without it",
            {"field": "cursor"},
        )
    return key


@router.get(
    "/{dataset_id}/files",
    summary="list the dataset's files (images, landmarks, poses, fail lists, ground truth), paged",
)
def list_files(
    dataset_id: str,
    caller: ApiKey,
    storage: StorageDep,
    prefix: Annotated[
        str, Query(max_length=400, description="relative to the dataset, e.g. 'poses/' or 'landmarks/'")
    ] = "",
    cursor: Annotated[
        str | None, Query(max_length=2000, description="next_cursor of the previous page")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> DatasetFileList:
    """Files below ``datasets/{id}/{prefix}`` in key order, ``limit`` per page, each with its size and a
    download URL (presigned on S3; the gateway's ``/v1/files/{key}`` on the directory backend). Follow
    ``next_cursor`` until it is null."""
    _record(storage, dataset_id, caller)
    base = dataset_prefix(dataset_id)
    if prefix:
        try:
            validate_key(prefix.rstrip("/"), what="prefix")
        except InvalidKeyError as e:
            raise ApiError(422, "invalid_key", str(e), {"field": "prefix"}) from e
    under = base + prefix
    after = _decode_cursor(cursor, under) if cursor else ""
    found = storage.list_page(under, after, limit + 1)
    page = found[:limit]
    items = [
        DatasetFile(key=key, path=key[len(base) :], size=size, url=artifact_url(storage, key))
        for key, size in page
    ]
    more = len(found) > limit
    return DatasetFileList(
        items=items, prefix=prefix, next_cursor=_encode_cursor(page[-1][0]) if more else None
    )


# --- geometry ground truth ----------------------------------------------------------------------------
@router.put(
    "/{dataset_id}/ground-truth/{kind}",
    summary="attach geometry ground truth (a zip) for the depth metrics of evaluate jobs",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
        }
    },
    responses={413: {"description": "larger than GMPI_MAX_UPLOAD_BYTES"}},
)
async def upload_ground_truth(
    dataset_id: str,
    kind: Literal["synthetic", "deep3dface"],
    request: Request,
    caller: UploadLimited,
    storage: StorageDep,
    settings: SettingsDep,
) -> Dataset:
    """``synthetic``: the folder ``gmpi data synth --out DIR`` writes, zipped (``meta.json``,
    ``poses.json``, ``depth/``, ``mask/``; its ``images.zip`` is ignored here: upload it with
    ``PUT …/images``) → metric ``depth_synthetic``. ``deep3dface``: the Deep3DFaceRecon fork's
    ``recon/{aligned_depth,pred_depth,pred_mask,coeffs}`` for the geometry renders of an evaluate job with
    ``keep_images`` → ``depth_deep3dface``, ``pose_deep3dface``. The zip is checked (422
    ``invalid_ground_truth`` says what is missing) and replaces the dataset's earlier one of that kind."""
    rec = await run_in_threadpool(_record, storage, dataset_id, caller, True)
    spool_dir = Path(settings.cache_dir) / "uploads"
    key = ground_truth_key(dataset_id, kind)
    async with spooled_body(
        request, settings.max_upload_bytes, spool_dir, f"the {kind} ground truth zip"
    ) as path:
        try:
            summary = await run_in_threadpool(check_ground_truth, path, kind)
        except GroundTruthError as e:
            raise ApiError(422, "invalid_ground_truth", f"{kind} ground truth: {e}", {"field": "body"}) from e
        info = await run_in_threadpool(storage.put_file, key, str(path), "application/zip")
    side = {"kind": kind, "sha256": info.sha256, "summary": summary.info}
    await run_in_threadpool(storage.put_json, key.removesuffix(".zip") + ".json", side)
    return await run_in_threadpool(_view, storage, rec)


@router.delete(
    "/{dataset_id}/ground-truth/{kind}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="remove the dataset's ground truth of one kind",
)
def delete_ground_truth(
    dataset_id: str, kind: Literal["synthetic", "deep3dface"], caller: ApiKey, storage: StorageDep
) -> Response:
    _record(storage, dataset_id, caller, write=True)
    key = ground_truth_key(dataset_id, kind)
    if not storage.exists(key):
        raise ApiError(404, "not_found", f"dataset '{dataset_id}' has no {kind} ground truth")
    storage.delete(key)
    storage.delete(key.removesuffix(".zip") + ".json")
    return Response(status_code=status.HTTP_204_NO_CONTENT)
