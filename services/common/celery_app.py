"""The Celery app of every worker (and the client side of the gateway).

    celery -A services.common.celery_app worker -Q train --concurrency 1 --hostname train@%h -l INFO

Long GPU jobs (services/README.md, "Object store and jobs"): late acks, prefetch 1, a Redis visibility
timeout above the longest task (``GMPI_VISIBILITY_TIMEOUT_S`` > ``GMPI_TASK_TIME_LIMIT_S``), hard/soft
time limits, and re-queueing when a worker dies mid-task; task modules are imported by the worker only,
so the gateway never imports torch.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import threading
import time
from typing import Any

from celery import Celery, Task
from celery.signals import celeryd_after_setup, worker_ready

from services.common.contracts import TASK_QUEUES
from services.common.settings import get_settings

QUEUES = tuple(TASK_QUEUES.values())
KERNEL_QUEUES = ("train", "eval", "render")  # their tasks run the fused kernels
TASK_MODULES = (
    "services.landmarks.tasks",
    "services.pose.tasks",
    "services.trainer.tasks",
    "services.evaluator.tasks",
    "services.renderer.tasks",
)
# task name pattern -> queue (contracts.TaskName: the family of a task's name picks its queue)
ROUTES = {f"{family}.*": {"queue": queue} for family, queue in TASK_QUEUES.items()}


log = logging.getLogger("gmpi.celery")
WORKER_LOST_REPEATEDLY = "worker_lost_repeatedly"


class WorkerLostRepeatedly(RuntimeError):
    """A task message whose worker died at each of its last ``GMPI_MAX_DELIVERIES`` starts: given up."""

    code = WORKER_LOST_REPEATEDLY


def _job_id_of(task: Task, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str | None:
    """The job a task works for: its ``job_id`` argument (keyword, or the first positional parameter of
    that name, as the preprocess chunks take it); None for tasks without one (sync renders, imports)."""
    value = kwargs.get("job_id")
    if value is None and args:
        try:
            first = next(iter(inspect.signature(task.run).parameters), None)
        except (TypeError, ValueError):
            first = None
        value = args[0] if first == "job_id" else None
    return value if isinstance(value, str) and value else None


class DeliveryCappedTask(Task):  # type: ignore[misc]
    """Every task of the stack: caps how often one message runs into a dead worker.

    Late acks with re-queue on worker loss give a task whose worker dies (OOM kill, segfault, SIGKILL)
    back to the queue, and without a cap a task that kills every worker it lands on is delivered again
    and again across the fleet. Each start of a message counts in Redis (``gmpi:delivery:{task id}``, with
    a TTL); an end in the worker (success, failure, Celery retry) clears the count, so only starts whose
    worker died add up. A start that finds ``GMPI_MAX_DELIVERIES`` such starts already counted does not
    run: the job fails with ``worker_lost_repeatedly``, the message is acked (not re-queued) and put on
    the dead-letter list ``gmpi:deadletter``."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        req = self.request
        task_id = getattr(req, "id", None)
        if not task_id or getattr(req, "called_directly", True) or getattr(req, "is_eager", False):
            return super().__call__(*args, **kwargs)  # called in-process: no message to count
        import redis

        from services.common.jobs import get_job_store

        settings = get_settings()
        try:
            jobs = get_job_store(settings.redis_url)
            starts = jobs.count_delivery(task_id, 2 * settings.visibility_timeout_s)
        except redis.RedisError as exc:  # Redis away for a moment: run uncounted (the task retries itself)
            log.warning("cannot count the delivery of task %s[%s]: %s", self.name, task_id, exc)
            return self.run(*args, **kwargs)
        lost = starts - 1
        if lost >= settings.max_deliveries:
            return self._give_up(jobs, task_id, lost, settings.max_deliveries, args, kwargs)
        try:
            return self.run(*args, **kwargs)
        finally:
            try:
                jobs.end_delivery(task_id)
            except redis.RedisError as exc:
                log.warning("cannot clear the delivery count of task %s[%s]: %s", self.name, task_id, exc)

    def _give_up(
        self, jobs: Any, task_id: str, lost: int, cap: int, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        import json

        from services.common.contracts import JobState
        from services.common.jobs import JobNotFound

        job_id = _job_id_of(self, args, kwargs)
        queue = (getattr(self.request, "delivery_info", None) or {}).get("routing_key")
        what = f"job '{job_id}'" if job_id else "it"
        message = (
            f"task {self.name} ({task_id}) was started {lost} times and each time its worker process died "
            f"before it finished (killed for memory, crashed, or stopped with SIGKILL); {what} is not "
            f"tried again (GMPI_MAX_DELIVERIES={cap}). Check the memory limit of the '{queue or '?'}' "
            "workers and their log around these starts (the kernel log for OOM kills); the message is on "
            "the dead-letter list gmpi:deadletter."
        )
        log.error("dead-lettered: %s", message)
        jobs.dead_letter(
            {
                "task_id": task_id,
                "task": self.name,
                "job_id": job_id,
                "queue": queue,
                "attempts": lost,
                "at": round(time.time(), 3),
                "arguments": json.dumps({"args": args, "kwargs": kwargs}, default=str)[:4000],
            }
        )
        if job_id:
            with contextlib.suppress(JobNotFound):
                jobs.transition(
                    job_id,
                    JobState.FAILED,
                    error={
                        "code": WORKER_LOST_REPEATEDLY,
                        "message": message,
                        "details": {"task": self.name, "task_id": task_id, "attempts": lost, "max": cap},
                    },
                )
        jobs.end_delivery(task_id)
        if job_id:
            return None  # the job record says what happened; the message is acked
        raise WorkerLostRepeatedly(message)  # the caller (a sync render) gets the failure; acked too


class GmpiCelery(Celery):
    """The Celery app whose broker and result backend follow the settings (``GMPI_REDIS_URL``) at the time
    a task is sent, not at the time the module was first imported: a process that imported the app
    before its settings were final (a test session, a tool that changes the environment) sends to the
    broker its settings name now. Workers' settings never change, so for them this is one comparison."""

    _follow_lock = threading.Lock()

    def follow_settings(self) -> None:
        """Point the broker and the result backend at ``get_settings().redis_url`` if they point elsewhere
        (dropping the connection pool, the producer pool and the cached backends of the old one)."""
        url = get_settings().redis_url
        if self.conf.broker_url == url and self.conf.result_backend == url:
            return
        with self._follow_lock:
            if self.conf.broker_url == url and self.conf.result_backend == url:
                return
            pool: Any = self.__dict__.get("_pool")
            self.__dict__["_pool"] = None  # Celery makes a new pool (for the new URL) on next use
            if pool is not None:
                pool.force_close_all()
            amqp = self.__dict__.get("amqp")
            if amqp is not None:
                amqp._producer_pool = None
            self.conf.broker_url = url
            self.conf.result_backend = url
            self._backend_cache = None
            self._local = threading.local()

    def send_task(self, *args: Any, **kwargs: Any) -> Any:
        self.follow_settings()
        return super().send_task(*args, **kwargs)


def make_app() -> Celery:
    s = get_settings()
    if s.visibility_timeout_s <= s.task_time_limit_s:
        raise ValueError(
            f"GMPI_VISIBILITY_TIMEOUT_S ({s.visibility_timeout_s}) must exceed GMPI_TASK_TIME_LIMIT_S "
            f"({s.task_time_limit_s}), else Redis re-delivers tasks that are still running"
        )
    app = GmpiCelery(
        "gmpi",
        broker=s.redis_url,
        backend=s.redis_url,
        include=list(TASK_MODULES),
        task_cls=DeliveryCappedTask,
    )
    transport = {"visibility_timeout": s.visibility_timeout_s}
    app.conf.update(
        task_routes=ROUTES,
        task_default_queue="render",
        task_acks_late=True,
        task_reject_on_worker_lost=True,  # a killed worker's task goes back to the queue (trainer resumes)
        worker_prefetch_multiplier=1,
        task_time_limit=s.task_time_limit_s,
        task_soft_time_limit=max(1, s.task_time_limit_s - 60),
        broker_transport_options=transport,
        result_backend_transport_options=transport,
        visibility_timeout=s.visibility_timeout_s,
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_expires=24 * 3600,
        task_track_started=True,
        worker_hijack_root_logger=False,
        worker_cancel_long_running_tasks_on_connection_loss=False,
        redis_backend_health_check_interval=10,
        broker_heartbeat=0,
    )
    return app


app = make_app()
celery = app  # `celery -A services.common.celery_app` finds `app` or `celery`


@worker_ready.connect
def _start_orphan_reaper(sender: Any = None, **_: Any) -> None:
    from services.common.jobs import get_job_store
    from services.common.recovery import start_reaper

    s = get_settings()
    start_reaper(app, get_job_store(s.redis_url), s.orphan_after_s, s.orphan_check_s)


@celeryd_after_setup.connect
def _prebuild_kernels(sender: Any = None, instance: Any = None, **_: Any) -> None:
    """Workers that run the fused kernels build them before taking a task (a no-op when the image or
    ``scripts/dev.sh`` already built them), so the first job does not wait on a compile. In a child
    process: the worker's own process stays free of torch until a task needs it."""
    import subprocess
    import sys

    try:
        queues = set(instance.app.amqp.queues.consume_from or ()) if instance is not None else set()
    except AttributeError:
        queues = set()
    if queues & set(KERNEL_QUEUES):
        subprocess.run([sys.executable, "-m", "gmpi_core.ops.prebuild"], check=False)
