"""``/v1/models``: list, get, import official checkpoints, sync render, MPI export for the viewer."""

from __future__ import annotations

import base64
import time
import uuid
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import quote

from fastapi import APIRouter, Query, Request, Response
from prometheus_client import Histogram

from services.common import checkpoint_zip, zips
from services.common.contracts import TaskName
from services.common.keys import MANIFEST, model_prefix
from services.common.redact import public_message
from services.common.storage import Storage
from services.gateway.access import may_read, model_manifest
from services.gateway.deps import (
    ApiKey,
    Caller,
    CeleryDep,
    ImportLimited,
    MpiLimited,
    RenderLimited,
    SettingsDep,
    StorageDep,
)
from services.gateway.errors import ERROR_RESPONSES, ApiError
from services.gateway.routes.common import spooled_body
from services.gateway.schemas import Model, ModelList, MpiExport, MpiPlane, RenderRequest
from services.gateway.waiting import blocking, wait_task
from services.renderer.cache import quantize_psi

router = APIRouter(prefix="/v1/models", tags=["models"], responses=ERROR_RESPONSES)
RENDER_SECONDS = Histogram("gmpi_render_seconds", "sync render latency (gateway side)", ["kind"])
_PNG: dict[int | str, dict[str, Any]] = {
    200: {"content": {"image/png": {}}, "description": "the view as PNG"}
}


def _manifest(storage: Storage, model_id: str, caller: Caller | None = None) -> dict[str, Any]:
    """The model's manifest; 404 when there is none or ``caller`` may not read it (services/gateway/
    access.py: its own models, shared ones such as the demo, every model for admins)."""
    return model_manifest(storage, caller, model_id)


def _view(model_id: str, m: dict[str, Any]) -> Model:
    fields = ("source", "preset", "committed_utc", "job_id", "dataset_id", "steps")
    return Model(id=model_id, files=m.get("files", {}), **{k: m.get(k) for k in fields})


@router.get("", summary="list committed models")
def list_models(caller: ApiKey, storage: StorageDep) -> ModelList:
    """The caller's models and shared ones (the demo; an admin key: every model)."""
    items = []
    for key in storage.list("models/"):
        parts = key.split("/")
        if len(parts) == 3 and parts[2] == MANIFEST:
            m = storage.get_json(key)
            if isinstance(m, dict) and may_read(caller, m):
                items.append(_view(parts[1], m))
    return ModelList(items=sorted(items, key=lambda m: m.committed_utc or "", reverse=True))


@router.get("/{model_id}", summary="a model's manifest")
def get_model(model_id: str, caller: ApiKey, storage: StorageDep) -> Model:
    return _view(model_id, _manifest(storage, model_id, caller))


async def _wait(
    celery: Any, name: str, kwargs: dict[str, Any], timeout: float, code: str = "render_timeout"
) -> Any:
    """The task's result, waited for on the event loop (``waiting.wait_task``: no thread is held while
    the worker works); 504 ``code`` after ``timeout`` seconds."""
    return await wait_task(celery, name, kwargs, timeout, code=code)


@router.post(
    "/{model_id}/render",
    summary="render one view (PNG: RGB or depth)",
    response_class=Response,
    responses={**_PNG, 429: {"description": "rate limited"}},
)
async def render(
    model_id: str,
    body: RenderRequest,
    caller: RenderLimited,
    storage: StorageDep,
    celery: CeleryDep,
    settings: SettingsDep,
) -> Response:
    await blocking(_manifest, storage, model_id, caller)
    t0 = time.perf_counter()
    out = await _wait(
        celery,
        TaskName.RENDER_VIEW.value,
        {"model_id": model_id, **body.model_dump()},
        settings.render_timeout_s,
    )
    RENDER_SECONDS.labels(body.kind).observe(time.perf_counter() - t0)
    if isinstance(out, dict) and "error" in out:  # a view the MPI cannot show (e.g. |yaw| near π/2)
        err = out["error"]
        raise ApiError(422, err.get("code", "unrenderable_view"), err.get("message", ""), err.get("details"))
    return Response(
        base64.b64decode(out["png"]),
        media_type="image/png",
        headers={"Cache-Control": "private, max-age=3600"},
    )


@router.get("/{model_id}/mpi", summary="the MPI of a seed for the browser viewer: manifest + plane URLs")
async def mpi(
    model_id: str,
    caller: MpiLimited,
    storage: StorageDep,
    celery: CeleryDep,
    settings: SettingsDep,
    seed: Annotated[int, Query(ge=0, le=2**31 - 1)] = 0,
    psi: Annotated[float, Query(ge=0.0, le=2.0)] = 1.0,
    planes: Annotated[int | None, Query(ge=2, le=128)] = None,
    format: Annotated[Literal["png", "webp"], Query()] = "png",
) -> MpiExport:
    await blocking(_manifest, storage, model_id, caller)
    psi = quantize_psi(psi)  # ψ to 0.01: the export's store key and the renderer's cache key
    prefix = await _wait(
        celery,
        TaskName.EXPORT_MPI.value,
        {"model_id": model_id, "seed": seed, "psi": psi, "planes": planes, "fmt": format},
        settings.render_timeout_s * 4,
    )
    return await blocking(_mpi_export, storage, model_id, prefix)


def _mpi_export(storage: Storage, model_id: str, prefix: str) -> MpiExport:
    manifest = storage.get_json(prefix + "mpi.json")
    planes_out = []
    for p in manifest["planes"]:
        key = prefix + p["file"]
        planes_out.append(
            MpiPlane(**p, url=f"/v1/files/{quote(key)}", presigned_url=storage.presigned_get(key))
        )
    return MpiExport(**{**manifest, "planes": planes_out, "model_id": model_id, "key": prefix})


CHECKPOINT_ZIP = "checkpoint.zip"


def _import_keys(kind: str, body: Path, prefix: str, storage: Storage) -> list[str]:
    """The import's source in the store, as uploaded. A gmpi_pth zip gets header checks only
    (``checkpoint_zip.check_header``: end records, central directory under ``zips.CHECKPOINT_LIMITS``,
    one config.pth and ema.pth): the gateway decompresses nothing; the renderer's import task extracts
    the members under the same limits, counting the bytes each produces."""
    if kind == "stylegan2_pkl":
        return [storage.put_file(prefix + "network.pkl", body).key]
    try:
        checkpoint_zip.check_header(body)
    except zips.UnsafeZipError as e:
        raise _zip_error(e, body) from None
    return [storage.put_file(prefix + CHECKPOINT_ZIP, body, "application/zip").key]


def _zip_error(e: zips.UnsafeZipError, body: Path | None = None) -> ApiError:
    details: dict[str, Any] = {"field": "body"}
    if e.member is not None:
        details["member"] = e.member[:200]
    text = public_message(str(e), *([body.parent] if body is not None else []))
    message = f"a gmpi_pth import must be a zip ({text})" if e.code == zips.INVALID_ZIP else text
    return ApiError(e.http_status, e.code, message, details)


@router.post(
    "/import",
    status_code=201,
    summary="import a StyleGAN2-ADA .pkl (raw body) or official GMPI .pth files (zip) via the safe readers",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
        }
    },
)
async def import_model(
    request: Request,
    caller: ImportLimited,
    storage: StorageDep,
    celery: CeleryDep,
    settings: SettingsDep,
    kind: Annotated[Literal["stylegan2_pkl", "gmpi_pth"], Query()],
    preset: Annotated[str | None, Query(max_length=40, pattern=r"^[A-Za-z0-9_-]+$")] = None,
) -> Model:
    from gmpi_core.config import PRESETS

    if preset is not None and preset not in PRESETS:
        raise ApiError(
            422,
            "validation_error",
            f"invalid field 'preset': unknown preset '{preset}'; choose one of {', '.join(PRESETS)}",
            {"field": "preset"},
        )
    model_id = f"model-{uuid.uuid4().hex[:20]}"
    prefix = model_prefix(model_id)
    spool_dir = Path(settings.cache_dir) / "uploads"
    async with spooled_body(request, settings.max_upload_bytes, spool_dir, "the checkpoint") as path:
        try:
            keys = await blocking(_import_keys, kind, path, prefix + "source/", storage)
            out = await _wait(
                celery,
                TaskName.IMPORT_MODEL.value,
                {"model_id": model_id, "kind": kind, "preset_name": preset, "keys": keys, "owner": caller.id},
                settings.import_timeout_s,
                code="import_timeout",
            )
        except BaseException:
            await blocking(storage.delete_prefix, prefix)
            raise
    await blocking(storage.delete_prefix, prefix + "source/")
    if "error" in out:
        await blocking(storage.delete_prefix, prefix)
        err = out["error"]
        status = err.get("status") if err.get("status") in (413, 422) else 422
        details = {"field": "body", **(err.get("details") or {})}
        # the worker's message names no paths (services/common/redact.py); redacted again here in case
        # a worker of an older version answers
        message = public_message(str(err.get("message", "")))
        raise ApiError(status, str(err.get("code", "invalid_checkpoint")), message, details)
    return _view(model_id, await blocking(_manifest, storage, model_id, caller))
