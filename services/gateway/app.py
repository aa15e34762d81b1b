"""The FastAPI application: routers per resource, one error format, request metrics, the web viewer."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

from fastapi import FastAPI, Request, Response
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from prometheus_client import Counter, Histogram

from services.common.settings import get_settings
from services.gateway import errors
from services.gateway.routes import datasets, files, health, jobs, models

STATIC = Path(__file__).parent / "static"
REQUESTS = Counter("gmpi_http_requests_total", "HTTP requests", ["method", "route", "status"])
LATENCY = Histogram("gmpi_http_request_seconds", "HTTP request latency", ["method", "route"])


def _migrate_owners(redis_url: str) -> None:
    from services.common.jobs import JobStore

    try:
        changed = JobStore.from_url(redis_url).migrate_owners()
        if changed:
            errors.log.info("replaced raw API keys by owner ids in %d Redis keys", changed)
    except Exception as exc:  # Redis away: the next start tries again
        errors.log.warning("owner migration skipped: %s", exc)


def create_app() -> FastAPI:
    settings = get_settings()

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        from services.common.storage import get_storage

        try:
            get_storage(settings).ensure_ready()
        except Exception as exc:  # /readyz reports it; the gateway still starts
            errors.log.warning("storage not ready at startup: %s", exc)
        # job records of versions before ownership hold raw API keys: hash them (in the background;
        # readers hash such owners anyway, so nothing waits for it)
        threading.Thread(target=_migrate_owners, args=(settings.redis_url,), daemon=True).start()
        yield

    # the API description is off unless GMPI_EXPOSE_DOCS=true: 404 for /docs, /redoc and /openapi.json
    docs = settings.expose_docs
    app = FastAPI(
        lifespan=lifespan,
        docs_url="/docs" if docs else None,
        redoc_url="/redoc" if docs else None,
        openapi_url="/openapi.json" if docs else None,
        title="GMPI",
        version="0.1.0",
        description="Generative Multiplane Images: datasets, preprocessing, training, evaluation, rendering. "
        'Authenticate with the X-API-Key header. Errors: {"error": {"code", "message", "details"}}.',
    )
    errors.install(app)
    for r in (health.router, datasets.router, jobs.router, models.router, files.router):
        app.include_router(r)

    @app.middleware("http")
    async def _metrics(request: Request, call_next):  # type: ignore[no-untyped-def]
        t0 = time.perf_counter()
        response: Response = await call_next(request)
        route = request.scope.get("route")
        path = getattr(route, "path", "unmatched")
        REQUESTS.labels(request.method, path, str(response.status_code)).inc()
        LATENCY.labels(request.method, path).observe(time.perf_counter() - t0)
        return response

    if (STATIC / "index.html").is_file():
        app.mount("/static", StaticFiles(directory=STATIC), name="static")

        @app.get("/", include_in_schema=False)
        def index() -> FileResponse:
            return FileResponse(STATIC / "index.html")
    else:

        @app.get("/", include_in_schema=False)
        def no_viewer() -> JSONResponse:
            return JSONResponse(
                {"service": "gmpi", "docs": "/docs" if docs else None, "viewer": "not installed"}
            )

    return app
