"""The Celery app of every worker (and the client side of the gateway).

    celery -A services.common.celery_app worker -Q train --concurrency 1 --hostname train@%h -l INFO

Long GPU jobs (DESIGN.md, field notes §5): late acks, prefetch 1, a Redis visibility timeout above the
longest task (``GMPI_VISIBILITY_TIMEOUT_S`` > ``GMPI_TASK_TIME_LIMIT_S``), hard/soft time limits, and
re-queueing when a worker dies mid-task; task modules are imported by the worker only, so the gateway
never imports torch.
"""

from __future__ import annotations

import threading
from typing import Any

from celery import Celery
from celery.signals import celeryd_after_setup, worker_ready

from services.common.settings import get_settings

QUEUES = ("landmarks", "pose", "train", "eval", "render")
KERNEL_QUEUES = ("train", "eval", "render")  # their tasks run the fused kernels
TASK_MODULES = (
    "services.landmarks.tasks",
    "services.pose.tasks",
    "services.trainer.tasks",
    "services.evaluator.tasks",
    "services.renderer.tasks",
)
# task name prefix -> queue
ROUTES = {
    "gmpi.landmarks.*": {"queue": "landmarks"},
    "gmpi.pose.*": {"queue": "pose"},
    "gmpi.train.*": {"queue": "train"},
    "gmpi.eval.*": {"queue": "eval"},
    "gmpi.render.*": {"queue": "render"},
}


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
    app = GmpiCelery("gmpi", broker=s.redis_url, backend=s.redis_url, include=list(TASK_MODULES))
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
