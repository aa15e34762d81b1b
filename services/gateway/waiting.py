"""Blocking work and waits of the async routes, off the event loop and off the sync routes' threadpool.

A sync route holds one of the threadpool's threads (40) for as long as it runs; a route that waited on a
Celery result (a render: up to ``GMPI_RENDER_TIMEOUT_S``, an import: ``GMPI_IMPORT_TIMEOUT_S``) or on the
object store's retries (up to 30 s) held one for all of that time, so a few dozen slow renders left no
thread for anything else, ``/healthz`` included. Here:

* ``blocking(fn, ...)`` runs one short blocking call (an object-store request, a Redis round trip) in a
  bounded pool of its own (``GMPI_GATEWAY_IO_THREADS`` threads); past ``GMPI_GATEWAY_IO_QUEUE`` calls
  waiting for a thread it answers 503 ``busy`` with ``Retry-After`` instead of queueing without bound.
* ``wait_task(...)`` sends a Celery task and waits for its result on the event loop: each check of the
  result backend is one short ``blocking`` call, with ``asyncio.sleep`` (growing from 20 ms to 250 ms)
  in between, so a pending render holds no thread at all while it waits.
* ``probe(fn, timeout)`` runs a readiness check in a small pool of its own with a hard time limit: a hung
  dependency makes ``/readyz`` say so within the limit, and never takes threads from the routes.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import functools
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from services.gateway.errors import ApiError

log = logging.getLogger("gmpi.gateway")
T = TypeVar("T")

POLL_FIRST_S = 0.02
POLL_MAX_S = 0.25
PROBE_THREADS = 2


class IoPool:
    """A bounded thread pool for blocking calls from coroutines: ``threads`` run, ``queue`` more wait,
    anything beyond is refused with 503 ``busy`` (the caller may retry after a second)."""

    def __init__(self, threads: int, queue: int, name: str = "gmpi-io") -> None:
        self.threads, self.queue = threads, queue
        self._executor = concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix=name)
        self._lock = threading.Lock()
        self.in_use = 0  # running + queued calls

    def _enter(self) -> None:
        with self._lock:
            if self.in_use >= self.threads + self.queue:
                raise ApiError(
                    503,
                    "busy",
                    "the gateway has too many object-store and worker calls in flight; retry shortly",
                    headers={"Retry-After": "1"},
                )
            self.in_use += 1

    def _leave(self) -> None:
        with self._lock:
            self.in_use -= 1

    async def run(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        self._enter()
        try:
            ctx = contextvars.copy_context()
            call = functools.partial(ctx.run, fn, *args, **kwargs)
            return await asyncio.get_running_loop().run_in_executor(self._executor, call)
        finally:
            self._leave()

    def submit(self, fn: Callable[..., Any], /, *args: Any) -> None:
        """Fire and forget (clean-ups whose outcome nobody waits for); dropped when the pool is full."""
        try:
            self._enter()
        except ApiError:
            log.warning("io pool full: dropped %s", getattr(fn, "__name__", fn))
            return

        def run() -> None:
            try:
                fn(*args)
            except Exception:
                log.warning("background call %s failed", getattr(fn, "__name__", fn), exc_info=True)
            finally:
                self._leave()

        self._executor.submit(run)


_pools: dict[str, IoPool] = {}
_pools_lock = threading.Lock()


def io_pool() -> IoPool:
    """The process's pool for blocking calls, sized by the settings when first used."""
    pool = _pools.get("io")
    if pool is None:
        from services.common.settings import get_settings

        with _pools_lock:
            pool = _pools.get("io")
            if pool is None:
                s = get_settings()
                pool = _pools["io"] = IoPool(s.gateway_io_threads, s.gateway_io_queue)
    return pool


async def blocking(fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)`` in the bounded pool (503 ``busy`` when it is full)."""
    return await io_pool().run(fn, *args, **kwargs)


async def wait_task(
    celery: Any,
    name: str,
    kwargs: dict[str, Any],
    timeout: float,
    *,
    code: str = "render_timeout",
    what: str = "render worker",
) -> Any:
    """Send task ``name`` and wait up to ``timeout`` seconds for its result without holding a thread;
    → its return value (its exception is raised as the worker raised it). 504 ``code`` after the
    timeout: the task is revoked and its result forgotten."""
    pool = io_pool()
    result = await pool.run(celery.send_task, name, kwargs=kwargs)
    deadline = time.monotonic() + timeout
    delay = POLL_FIRST_S
    try:
        while True:
            if await pool.run(result.ready):  # one GET on the result backend; caches the outcome
                # ready: the result is cached by the check, so this returns (or raises) at once
                return await pool.run(result.get, timeout=5.0, propagate=True)
            left = deadline - time.monotonic()
            if left <= 0:
                pool.submit(result.revoke)
                raise ApiError(504, code, f"no {what} answered within {timeout:.0f} s")
            await asyncio.sleep(min(delay, left))
            delay = min(delay * 1.5, POLL_MAX_S)
    finally:
        pool.submit(result.forget)


_probe_pool: concurrent.futures.ThreadPoolExecutor | None = None


async def probe(fn: Callable[[], Any], timeout: float) -> str:
    """Run a readiness check (raises when the dependency is not ready) with a hard limit: ``ok``, or
    ``error: <exception type>`` (the text goes to the log: it names hosts and ports), or ``error:
    timeout``. Checks run in a pool of their own with ``PROBE_THREADS`` threads; a check that still
    hangs from an earlier probe makes the next ones time out rather than pile up threads."""
    global _probe_pool
    if _probe_pool is None:
        with _pools_lock:
            if _probe_pool is None:
                _probe_pool = concurrent.futures.ThreadPoolExecutor(PROBE_THREADS, "gmpi-probe")
    future = asyncio.get_running_loop().run_in_executor(_probe_pool, fn)
    future.add_done_callback(lambda f: f.cancelled() or f.exception())  # a late failure is not "unretrieved"
    try:
        await asyncio.wait_for(asyncio.shield(future), timeout)
    except asyncio.TimeoutError:
        log.warning("readiness check %s: no answer within %.1f s", getattr(fn, "__name__", fn), timeout)
        return "error: timeout"
    except Exception as exc:
        log.warning("readiness check %s failed: %s: %s", getattr(fn, "__name__", fn), type(exc).__name__, exc)
        return f"error: {type(exc).__name__}"
    return "ok"
