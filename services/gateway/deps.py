"""Dependencies injected into the routes: settings, storage, job store, Celery, the caller (auth), rate
limits."""

from __future__ import annotations

import functools
import hashlib
import hmac
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated

import redis
from celery import Celery
from fastapi import Depends, Header, Request

from services.common.jobs import JobStore
from services.common.keys import normalize_owner, owner_id
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


SINGLE_USER = owner_id("anonymous")  # the one caller with GMPI_AUTH_DISABLED=true


@dataclass(frozen=True)
class Caller:
    """Who sends a request. ``id``: the owner id recorded on what they create (a hash of their key:
    ``keys.owner_id``; the key itself is never stored); ``admin``: sees and acts on every key's jobs,
    datasets and models (GMPI_ADMIN_API_KEYS, and the single user with auth disabled)."""

    id: str
    admin: bool = False

    def owns(self, owner: object) -> bool:
        """May change (or see, for private things) what ``owner`` (as stored) owns."""
        return self.admin or (owner is not None and normalize_owner(owner) == self.id)

    def may_read(self, owner: object, *, public: bool = False) -> bool:
        """Shared things (no owner: the demo model, records of versions before ownership; or marked
        public) are readable by every key; anything else by its owner and admins."""
        return public or owner is None or owner == "" or self.owns(owner)


def authenticate(settings: Settings, x_api_key: str | None) -> Caller:
    """The caller of a request with header ``x_api_key``; ApiError 401 for a missing or wrong key.
    With GMPI_AUTH_DISABLED=true the gateway has one user (``anonymous``, an admin) and the header is
    ignored: a client cannot pick its identity, or its rate-limit bucket, by what it sends."""
    if settings.auth_disabled:
        return Caller(SINGLE_USER, admin=True)
    users, admins = settings.api_key_set, settings.admin_key_set
    if not users and not admins:
        raise ApiError(
            401, "unauthorized", "no API keys are configured (GMPI_API_KEYS); every request is refused"
        )
    if not x_api_key:
        raise ApiError(401, "unauthorized", "missing API key: send it in the X-API-Key header")
    given = x_api_key.encode()
    # every configured key is compared (constant time each), so the timing says nothing about which
    is_user = any([hmac.compare_digest(given, k.encode()) for k in users])
    is_admin = any([hmac.compare_digest(given, k.encode()) for k in admins])
    if not (is_user or is_admin):
        raise ApiError(401, "unauthorized", "wrong API key (header X-API-Key)")
    return Caller(owner_id(x_api_key), admin=is_admin)


def api_key(
    settings: SettingsDep,
    x_api_key: Annotated[
        str | None, Header(description="an API key of GMPI_API_KEYS or GMPI_ADMIN_API_KEYS")
    ] = None,
) -> Caller:
    """The authenticated caller (401 otherwise; see :func:`authenticate`)."""
    return authenticate(settings, x_api_key)


ApiKey = Annotated[Caller, Depends(api_key)]
CallerDep = ApiKey

RATE_LIMITED = {"render", "mpi", "import", "job", "upload"}  # settings GMPI_{NAME}_RATE_LIMIT (per minute)
RATE_LIMIT_WHAT = {
    "render": "render",
    "mpi": "MPI export",
    "import": "checkpoint import",
    "job": "job submission",
    "upload": "upload",
}


def _client_bucket(request: Request) -> str:
    """Rate-limit bucket of an unauthenticated (auth disabled) request: the peer address as the server
    saw it (behind a reverse proxy that is the proxy, unless uvicorn trusts its forwarded headers:
    ``--forwarded-allow-ips``), never a header the client writes itself."""
    host = request.client.host if request.client else ""
    return "addr-" + hashlib.sha256((host or "unknown").encode()).hexdigest()[:32]


def check_rate_limit(r: redis.Redis, name: str, limit: int, who: str) -> None:
    """Fixed one-minute windows in Redis (``gmpi:ratelimit:{name}:{who}:{window}``, 70 s TTL): the
    ``limit``-th request of a window passes, the next ones are 429 with Retry-After (seconds to the
    next window)."""
    now = time.time()
    window = int(now // 60)
    key = f"gmpi:ratelimit:{name}:{who}:{window}"
    pipe = r.pipeline()
    pipe.incr(key)
    pipe.expire(key, 70)
    count = int(pipe.execute()[0])
    if count > limit:
        retry = max(1, math.ceil((window + 1) * 60 - now))
        raise ApiError(
            429,
            "rate_limited",
            f"{RATE_LIMIT_WHAT.get(name, name)} rate limit of {limit} requests/minute reached for this "
            f"API key (GMPI_{name.upper()}_RATE_LIMIT); retry in {retry} s",
            {"limit": limit, "window_s": 60, "retry_after_s": retry},
            headers={"Retry-After": str(retry)},
        )


def rate_limit(name: str) -> Callable[..., Caller]:
    """A dependency: the authenticated caller, after counting the request against the limit
    ``GMPI_{NAME}_RATE_LIMIT`` of its key (of its client address with auth disabled)."""
    if name not in RATE_LIMITED:
        raise ValueError(f"no rate limit '{name}'")

    def limited(request: Request, caller: ApiKey, settings: SettingsDep, r: RedisDep) -> Caller:
        who = _client_bucket(request) if settings.auth_disabled else caller.id.removeprefix("sha256:")
        check_rate_limit(r, name, int(getattr(settings, f"{name}_rate_limit")), who)
        return caller

    limited.__name__ = f"{name}_rate_limit"
    limited.__qualname__ = limited.__name__
    return limited


render_rate_limit = rate_limit("render")
mpi_rate_limit = rate_limit("mpi")
import_rate_limit = rate_limit("import")
job_rate_limit = rate_limit("job")
upload_rate_limit = rate_limit("upload")
RenderLimited = Annotated[Caller, Depends(render_rate_limit)]
MpiLimited = Annotated[Caller, Depends(mpi_rate_limit)]
ImportLimited = Annotated[Caller, Depends(import_rate_limit)]
JobLimited = Annotated[Caller, Depends(job_rate_limit)]
UploadLimited = Annotated[Caller, Depends(upload_rate_limit)]
