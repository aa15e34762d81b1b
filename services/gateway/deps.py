"""Dependencies injected into the routes: settings, storage, job store, Celery, auth, rate limit."""

from __future__ import annotations

import functools
import hashlib
import hmac
import time
from typing import Annotated

import redis
from celery import Celery
from fastapi import Depends, Header

from services.common.jobs import JobStore
from services.common.settings import Settings, get_settings
from services.common.storage import Storage
from services.common.storage import get_storage as _get_storage
from services.gateway.errors import ApiError


def settings_dep() -> Settings:
    return get_settings()


SettingsDep = Annotated[Settings, Depends(settings_dep)]


@functools.lru_cache(maxsize=4)
def _redis(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=3, health_check_interval=10)


def redis_dep(settings: SettingsDep) -> redis.Redis:
    return _redis(settings.redis_url)


def storage_dep(settings: SettingsDep) -> Storage:
    return _get_storage(settings)


def jobs_dep(r: Annotated[redis.Redis, Depends(redis_dep)]) -> JobStore:
    return JobStore(r)


def celery_dep() -> Celery:
    from services.common.celery_app import app

    return app


StorageDep = Annotated[Storage, Depends(storage_dep)]
JobsDep = Annotated[JobStore, Depends(jobs_dep)]
RedisDep = Annotated[redis.Redis, Depends(redis_dep)]
CeleryDep = Annotated[Celery, Depends(celery_dep)]


def api_key(
    settings: SettingsDep,
    x_api_key: Annotated[str | None, Header(description="an API key of GMPI_API_KEYS")] = None,
) -> str:
    """The caller's API key (``anonymous`` with GMPI_AUTH_DISABLED=true); 401 otherwise."""
    if settings.auth_disabled:
        return x_api_key or "anonymous"
    keys = settings.api_key_set
    if not keys:
        raise ApiError(
            401, "unauthorized", "no API keys are configured (GMPI_API_KEYS); every request is refused"
        )
    if not x_api_key:
        raise ApiError(401, "unauthorized", "missing API key: send it in the X-API-Key header")
    if not any(hmac.compare_digest(x_api_key.encode(), k.encode()) for k in keys):
        raise ApiError(401, "unauthorized", "wrong API key (header X-API-Key)")
    return x_api_key


ApiKey = Annotated[str, Depends(api_key)]


def render_rate_limit(key: ApiKey, settings: SettingsDep, r: RedisDep) -> str:
    """Fixed one-minute window per key in Redis: GMPI_RENDER_RATE_LIMIT requests, then 429."""
    window = int(time.time() // 60)
    name = f"gmpi:ratelimit:{hashlib.sha256(key.encode()).hexdigest()[:16]}:{window}"
    pipe = r.pipeline()
    pipe.incr(name)
    pipe.expire(name, 70)
    count = int(pipe.execute()[0])
    if count > settings.render_rate_limit:
        retry = str(60 - int(time.time()) % 60)
        raise ApiError(
            429,
            "rate_limited",
            f"render rate limit of {settings.render_rate_limit} requests/minute reached for this API key",
            headers={"Retry-After": retry},
        )
    return key
