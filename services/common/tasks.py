"""What every job task shares: the job lifecycle around the library call, heartbeats, cancellation,
retries with backoff for transient storage/broker errors, and the local cache.

A task is ``@job_task(name)`` over ``fn(ctx: JobContext[P]) -> result``, ``P`` the job type's parameter
model of ``services.common.contracts`` (``ctx.params``, parsed once from the job record); the wrapper marks
the job running, beats a heartbeat into the record (so ``recovery`` can re-queue the task of a worker that
died), watches for cancellation, and records success or a failure with its message.
"""

from __future__ import annotations

import ctypes
import logging
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Generic, TypeVar, cast

import redis
from pydantic import BaseModel

from services.common.celery_app import app
from services.common.contracts import TERMINAL, JobState, parse_job_params
from services.common.jobs import SINCE_START as SINCE_START  # re-exported for the tasks
from services.common.jobs import JobNotFound, JobStore, get_job_store
from services.common.settings import Settings, get_settings
from services.common.storage import Storage, StorageUnavailable, get_storage

log = logging.getLogger("gmpi.tasks")
HEARTBEAT_S = 3.0
MEASURED: Any = object()  # JobContext.progress: the ETA from this attempt's rate (the default)
TRANSIENT: tuple[type[BaseException], ...] = (StorageUnavailable, redis.ConnectionError, redis.TimeoutError)


class JobCancelled(Exception):
    """The job was cancelled while this task ran."""


class JobInputError(ValueError):
    """The job cannot run with its inputs (missing dataset, bad model); not retried."""


P = TypeVar("P", bound=BaseModel)


class JobContext(Generic[P]):
    """What a task body gets: the job's id and typed parameters, the job store, the object store, the
    settings, and its progress, cancellation and scratch folder.

    ``params``: the job type's parameter model (``services.common.contracts``), or the job record's
    ``params`` dict with ``job_type`` (``run_job`` passes these), parsed on first use and kept."""

    def __init__(
        self,
        job_id: str,
        params: P | Mapping[str, Any],
        jobs: JobStore,
        storage: Storage,
        settings: Settings,
        *,
        job_type: str | None = None,
    ) -> None:
        if not isinstance(params, BaseModel) and job_type is None:
            raise TypeError("JobContext: parameters given as a dict need the job_type they belong to")
        self.job_id, self.jobs, self.storage, self.settings = job_id, jobs, storage, settings
        self.job_type = job_type
        self._params: BaseModel | Mapping[str, Any] = params
        self.cancelled = threading.Event()
        # per stage: (step, monotonic time) of its first report in this attempt: where its rate is measured
        self._origins: dict[str, tuple[int, float]] = {}

    @property
    def params(self) -> P:
        """The job's parameters as its type's model (a ValueError when the record's do not fit it)."""
        if not isinstance(self._params, BaseModel):
            self._params = parse_job_params(str(self.job_type), dict(self._params))
        return cast(P, self._params)

    @property
    def work_dir(self) -> Path:
        """A per-job scratch folder under the cache dir (kept across re-deliveries of the same job)."""
        d = Path(self.settings.cache_dir) / "jobs" / self.job_id
        d.mkdir(parents=True, exist_ok=True)
        return d

    def check_cancelled(self) -> None:
        if self.cancelled.is_set() or self.jobs.is_cancelled(self.job_id):
            self.cancelled.set()
            raise JobCancelled(self.job_id)

    def progress(
        self,
        step: int,
        total: int | None,
        message: str = "",
        *,
        stage: str = "",
        eta_s: float | object | None = MEASURED,
        **extra: Any,
    ) -> None:
        """Report ``step`` of ``total`` with a message saying what is happening now.

        ``eta_s`` (seconds left): by default measured in this attempt, from the rate of ``stage`` since
        its first report (None until it has moved once: setup time such as building a model does not
        count), 0 at the end; ``SINCE_START`` for the job's average since it first started (tasks that
        report once, like preprocess chunks); or the caller's own estimate."""
        now = time.monotonic()
        s0, t0 = self._origins.setdefault(stage, (step, now))
        if eta_s is MEASURED:
            eta_s = None
            if total is not None and step >= total:
                eta_s = 0.0
            elif total and step > s0:
                eta_s = round((now - t0) / (step - s0) * (total - step), 1)
        extra = {"stage": stage or None, **extra}
        if not self.jobs.progress(self.job_id, step, total, message, eta_s=eta_s, **extra):
            self.cancelled.set()


def _interrupt(thread_id: int, lock: threading.Lock, stop: threading.Event) -> None:
    """Raise JobCancelled in the task's thread (at its next bytecode), so library calls stop too."""
    with lock:
        if not stop.is_set():
            ctypes.pythonapi.PyThreadState_SetAsyncExc(
                ctypes.c_ulong(thread_id), ctypes.py_object(JobCancelled)
            )


def _heartbeat(ctx: JobContext[Any], stop: threading.Event, thread_id: int, lock: threading.Lock) -> None:
    while not stop.wait(HEARTBEAT_S):
        try:
            if not ctx.jobs.update(ctx.job_id, heartbeat_at=time.time()):
                ctx.cancelled.set()  # terminal already: cancelled from the API
        except Exception as exc:  # Redis briefly away: keep beating
            log.warning("heartbeat for %s failed: %s", ctx.job_id, exc)
        if ctx.cancelled.is_set():
            _interrupt(thread_id, lock, stop)
            return


def run_job(
    job_id: str, fn: Callable[[JobContext[Any]], Any], *, final: bool = True, entry: bool = True
) -> Any:
    """Run ``fn`` as the body of job ``job_id``; with ``final`` the job ends when ``fn`` returns.

    ``entry``: this is the job's own task (what ``POST /v1/jobs`` queued), so each run of it (the first
    delivery, a Celery retry, a re-delivery after its worker died) counts as one attempt. Sub-tasks the
    job fans out into (preprocess chunks and their chord callbacks) pass False: they are not attempts."""
    settings = get_settings()
    jobs = get_job_store(settings.redis_url)
    try:
        rec = jobs.get(job_id)
    except JobNotFound:
        log.warning("job %s has no record; dropping the task", job_id)
        return None
    if rec["state"] in TERMINAL:
        log.info("job %s already %s; nothing to do", job_id, rec["state"])
        return rec.get("result")
    ctx: JobContext[Any] = JobContext(
        job_id, rec["params"], jobs, get_storage(settings), settings, job_type=rec["type"]
    )
    if entry:  # one write with the state: a running job never shows the queued job's progress
        attempt = jobs.incr_attempts(job_id)
        again = "" if attempt == 1 else f" again (attempt {attempt})"
        was = rec.get("progress") or {}
        starting = {**was, "eta_s": None, "message": f"starting{again}", "stage": "setup"}
        jobs.transition(job_id, JobState.RUNNING, heartbeat_at=time.time(), progress=starting)
    else:
        jobs.transition(job_id, JobState.RUNNING, heartbeat_at=time.time())
    stop, lock = threading.Event(), threading.Lock()
    beat = threading.Thread(
        target=_heartbeat,
        args=(ctx, stop, threading.get_ident(), lock),
        daemon=True,
        name=f"heartbeat-{job_id}",
    )
    beat.start()
    try:
        try:
            result = fn(ctx)
        finally:
            with lock:
                stop.set()
    except JobCancelled:
        log.info("job %s cancelled", job_id)
        return None
    except TRANSIENT:
        raise  # Celery retries with backoff (autoretry_for); the job stays running
    except Exception as exc:
        # the traceback goes to the worker's log, never to the client: clients get a code, a message and
        # the structured details an exception chose to carry (e.g. a data check's list of bad images)
        log.exception("job %s failed", job_id)
        code = getattr(exc, "code", None)
        if not isinstance(code, str) or not code:
            code = (
                "invalid_input"
                if isinstance(exc, (JobInputError, ValueError, FileNotFoundError))
                else "internal"
            )
        details = getattr(exc, "details", None)
        jobs.transition(
            job_id,
            JobState.FAILED,
            error={
                "code": code,
                "message": (str(exc) or type(exc).__name__)[:8000],
                "details": details if isinstance(details, (dict, list)) else None,
            },
        )
        return None
    if final:
        total = (jobs.get(job_id).get("progress") or {}).get("total") or 1
        done = {"step": total, "total": total, "eta_s": 0.0, "message": "done", "stage": "done"}
        jobs.transition(job_id, JobState.SUCCEEDED, result=result, progress=done)
    return result


def job_task(name: str, **options: Any) -> Callable[[Callable[[JobContext[Any]], Any]], Any]:
    """Register ``fn(ctx)`` as Celery task ``name`` (a ``contracts.TaskName``) taking ``job_id`` (retries
    transient errors)."""

    def wrap(fn: Callable[[JobContext[Any]], Any]) -> Any:
        @app.task(
            name=str(name),
            bind=True,
            autoretry_for=TRANSIENT,
            retry_backoff=2,
            retry_backoff_max=60,
            retry_jitter=True,
            max_retries=8,
            **options,
        )
        def task(self: Any, job_id: str) -> Any:
            return run_job(job_id, fn)

        task.__doc__ = fn.__doc__
        return task

    return wrap


def clear_work_dir(ctx: JobContext[Any]) -> None:
    shutil.rmtree(ctx.work_dir, ignore_errors=True)


if os.environ.get("GMPI_TEST_POISON") == "1":
    # Test-only tasks (tests/services/test_poison.py), registered only in a worker started with
    # GMPI_TEST_POISON=1: each kills the worker process that runs it, like an OOM kill or a segfault.

    def _kill_own_process(ctx: JobContext[Any] | None = None) -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    job_task("gmpi.test.poison_job")(_kill_own_process)
    app.task(name="gmpi.test.poison")(_kill_own_process)
