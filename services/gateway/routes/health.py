"""Liveness and readiness (no auth), and Prometheus metrics: behind the API key unless
``GMPI_EXPOSE_METRICS=true`` opens them (to a scraper that cannot send the key)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Header, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from services.gateway.deps import SettingsDep, api_key
from services.gateway.waiting import probe

router = APIRouter(tags=["health"])
READY_CHECK_S = 2.0  # each dependency's answer within this, else "error: timeout"


@router.get("/healthz", summary="liveness: the process answers")
async def healthz() -> dict[str, str]:
    """On the event loop, touching nothing that blocks and no dependency that needs a thread: it answers
    in milliseconds however many renders, imports or downloads are in flight."""
    return {"status": "ok"}


@router.get(
    "/readyz",
    summary="readiness: Redis and the object store answer",
    responses={503: {"description": "a dependency is down"}},
)
async def readyz() -> JSONResponse:
    """Both checks at once, each in the probes' own small pool and cut off after ``READY_CHECK_S``: the
    answer comes within about 2 s even when a dependency hangs. A failed check says ``error: <type>``
    (the full text, which names hosts and ports, goes to the log: the route needs no key)."""
    import asyncio

    from services.common.settings import get_settings
    from services.common.storage import get_storage
    from services.gateway.deps import _redis

    settings = get_settings()

    def redis_ping() -> None:
        _redis(settings.redis_url).ping()

    def storage_ping() -> None:
        get_storage(settings).ping()

    redis_state, storage_state = await asyncio.gather(
        probe(redis_ping, READY_CHECK_S), probe(storage_ping, READY_CHECK_S)
    )
    checks = {"redis": redis_state, "storage": storage_state}
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
