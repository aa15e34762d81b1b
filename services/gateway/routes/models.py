"""``/v1/models``: list, get, import official checkpoints, sync render, MPI export for the viewer."""

from __future__ import annotations

import base64
import tempfile
import time
import uuid
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import quote

from celery.exceptions import TimeoutError as CeleryTimeout
from fastapi import APIRouter, Depends, Query, Request, Response
from prometheus_client import Histogram

from services.common import zips
from services.common.keys import MANIFEST, model_prefix
from services.common.storage import Storage
from services.gateway.deps import ApiKey, CeleryDep, SettingsDep, StorageDep, render_rate_limit
from services.gateway.errors import ERROR_RESPONSES, ApiError
from services.gateway.routes.common import check_id, spooled_body
from services.gateway.schemas import Model, ModelList, MpiExport, MpiPlane, RenderRequest

router = APIRouter(prefix="/v1/models", tags=["models"], responses=ERROR_RESPONSES)
RENDER_SECONDS = Histogram("gmpi_render_seconds", "sync render latency (gateway side)", ["kind"])
_PNG: dict[int | str, dict[str, Any]] = {
    200: {"content": {"image/png": {}}, "description": "the view as PNG"}
}


def _manifest(storage: Storage, model_id: str) -> dict[str, Any]:
    check_id(model_id, "model_id")
    m = storage.manifest(model_prefix(model_id))
    if m is None:
        raise ApiError(404, "not_found", f"no model '{model_id}'")
    return m


def _view(model_id: str, m: dict[str, Any]) -> Model:
    fields = ("source", "preset", "committed_utc", "job_id", "dataset_id", "steps")
    return Model(id=model_id, files=m.get("files", {}), **{k: m.get(k) for k in fields})


@router.get("", summary="list committed models")
def list_models(_: ApiKey, storage: StorageDep) -> ModelList:
    items = []
    for key in storage.list("models/"):
        parts = key.split("/")
        if len(parts) == 3 and parts[2] == MANIFEST:
            items.append(_view(parts[1], storage.get_json(key)))
    return ModelList(items=sorted(items, key=lambda m: m.committed_utc or "", reverse=True))


@router.get("/{model_id}", summary="a model's manifest")
def get_model(model_id: str, _: ApiKey, storage: StorageDep) -> Model:
    return _view(model_id, _manifest(storage, model_id))


def _wait(celery: Any, name: str, kwargs: dict[str, Any], timeout: float) -> Any:
    result = celery.send_task(name, kwargs=kwargs)
    try:
        return result.get(timeout=timeout, propagate=True)
    except CeleryTimeout as e:
        result.revoke()
        raise ApiError(504, "render_timeout", f"no render worker answered within {timeout:.0f} s") from e
    finally:
        result.forget()


@router.post(
    "/{model_id}/render",
    summary="render one view (PNG: RGB or depth)",
    response_class=Response,
    responses={**_PNG, 429: {"description": "rate limited"}},
)
def render(
    model_id: str,
    body: RenderRequest,
    _: Annotated[str, Depends(render_rate_limit)],
    storage: StorageDep,
    celery: CeleryDep,
    settings: SettingsDep,
) -> Response:
    _manifest(storage, model_id)
    t0 = time.perf_counter()
    out = _wait(
        celery, "gmpi.render.view", {"model_id": model_id, **body.model_dump()}, settings.render_timeout_s
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
def mpi(
    model_id: str,
    _: ApiKey,
    storage: StorageDep,
    celery: CeleryDep,
    settings: SettingsDep,
    seed: Annotated[int, Query(ge=0, le=2**31 - 1)] = 0,
    psi: Annotated[float, Query(ge=0.0, le=2.0)] = 1.0,
    planes: Annotated[int | None, Query(ge=2, le=128)] = None,
    format: Annotated[Literal["png", "webp"], Query()] = "png",
) -> MpiExport:
    _manifest(storage, model_id)
    prefix = _wait(
        celery,
        "gmpi.render.mpi",
        {"model_id": model_id, "seed": seed, "psi": psi, "planes": planes, "fmt": format},
        settings.render_timeout_s * 4,
    )
    manifest = storage.get_json(prefix + "mpi.json")
    planes_out = []
    for p in manifest["planes"]:
        key = prefix + p["file"]
        planes_out.append(
            MpiPlane(**p, url=f"/v1/files/{quote(key)}", presigned_url=storage.presigned_get(key))
        )
    return MpiExport(**{**manifest, "planes": planes_out, "model_id": model_id, "key": prefix})


_PTH_FILES = ("config.pth", "ema.pth", "generator.pth")


def _import_keys(kind: str, body: Path, prefix: str, storage: Storage) -> list[str]:
    """The import's source files in the store. A gmpi_pth zip is checked by its central directory first
    (names, types, declared sizes and ratios: ``zips.CHECKPOINT_LIMITS``), then each wanted member is
    streamed to a temporary file in bounded chunks, its bytes counted against what it declared: the
    gateway never holds a member in memory, whatever the zip claims."""
    if kind == "stylegan2_pkl":
        return [storage.put_file(prefix + "network.pkl", body).key]
    try:
        z, files = zips.open_checked(body, zips.CHECKPOINT_LIMITS)
        with z:
            by_base: dict[str, Any] = {}
            for info in files:
                base = Path(info.filename).name
                if base in _PTH_FILES:
                    if base in by_base:
                        raise ApiError(
                            422,
                            "invalid_checkpoint",
                            f"the zip holds more than one {base}",
                            {"field": "body", "member": info.filename[:200]},
                        )
                    by_base[base] = info
            if "config.pth" not in by_base or "ema.pth" not in by_base:
                raise ApiError(
                    422,
                    "invalid_checkpoint",
                    "a gmpi_pth import is a zip with config.pth and ema.pth (generator.pth optional)",
                    {"field": "body"},
                )
            keys = []
            with tempfile.TemporaryDirectory() as d:
                for base, info in by_base.items():
                    target = Path(d) / base
                    with open(target, "wb") as out:
                        zips.copy_member(z, info, out)
                    keys.append(storage.put_file(prefix + base, target).key)
                    target.unlink()
            return keys
    except zips.UnsafeZipError as e:
        details: dict[str, Any] = {"field": "body"}
        if e.member is not None:
            details["member"] = e.member[:200]
        message = f"a gmpi_pth import must be a zip ({e})" if e.code == zips.INVALID_ZIP else str(e)
        raise ApiError(e.http_status, e.code, message, details) from e


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
    _: ApiKey,
    storage: StorageDep,
    celery: CeleryDep,
    settings: SettingsDep,
    kind: Annotated[Literal["stylegan2_pkl", "gmpi_pth"], Query()],
    preset: Annotated[str | None, Query(max_length=40, pattern=r"^[A-Za-z0-9_-]+$")] = None,
) -> Model:
    from starlette.concurrency import run_in_threadpool

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
            keys = await run_in_threadpool(_import_keys, kind, path, prefix + "source/", storage)
            out = await run_in_threadpool(
                _wait,
                celery,
                "gmpi.render.import_model",
                {"model_id": model_id, "kind": kind, "preset_name": preset, "keys": keys},
                300.0,
            )
        except BaseException:
            await run_in_threadpool(storage.delete_prefix, prefix)
            raise
    await run_in_threadpool(storage.delete_prefix, prefix + "source/")
    if "error" in out:
        await run_in_threadpool(storage.delete_prefix, prefix)
        raise ApiError(422, out["error"]["code"], out["error"]["message"], {"field": "body"})
    return _view(model_id, await run_in_threadpool(_manifest, storage, model_id))
