"""Liveness and readiness (no auth), and Prometheus metrics: behind the API key unless
``GMPI_EXPOSE_METRICS=true`` opens them (to a scraper that cannot send the key)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Header, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from services.gateway.deps import RedisDep, SettingsDep, StorageDep, api_key

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="liveness: the process answers")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    summary="readiness: Redis and the object store answer",
    responses={503: {"description": "a dependency is down"}},
)
def readyz(r: RedisDep, storage: StorageDep) -> JSONResponse:
    checks: dict[str, str] = {}
    try:
        r.ping()
        checks["redis"] = "ok"
    except Exception as exc:
        checks["redis"] = f"error: {type(exc).__name__}: {exc}"[:200]
    try:
        storage.ping()
        checks["storage"] = "ok"
    except Exception as exc:
        checks["storage"] = f"error: {type(exc).__name__}: {exc}"[:200]
    ok = all(v == "ok" for v in checks.values())
    return JSONResponse({"status": "ok" if ok else "unavailable", "checks": checks}, 200 if ok else 503)


def metrics_access(
    settings: SettingsDep,
    x_api_key: Annotated[str | None, Header(description="an API key of GMPI_API_KEYS")] = None,
) -> None:
    """The metrics name every route, job type and model render rate: only for key holders (401 like the
    ``/v1`` routes) unless the operator exposes them with GMPI_EXPOSE_METRICS=true."""
    if not settings.expose_metrics:
        api_key(settings, x_api_key)


@router.get(
    "/metrics",
    summary="Prometheus metrics (X-API-Key unless GMPI_EXPOSE_METRICS=true)",
    response_class=Response,
    dependencies=[Depends(metrics_access)],
    responses={401: {"description": "no or a wrong API key (metrics not exposed)"}},
)
def metrics() -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
