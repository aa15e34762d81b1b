"""Liveness, readiness and Prometheus metrics (no auth)."""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from services.gateway.deps import RedisDep, StorageDep

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


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
def metrics() -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
