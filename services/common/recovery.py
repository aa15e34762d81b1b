"""Re-queue the tasks of workers that died (SIGKILL, node loss) without waiting for the Redis
visibility timeout, which must stay longer than the longest task.

Kombu keeps every delivered, un-acked message in the ``unacked`` hash until it is acked. A message whose
job is still live but whose heartbeat (``services.common.tasks``) is older than ``orphan_after_s`` belongs
to a dead worker: it is put back on its queue (``QoS.restore_by_tag``), and the next worker resumes the
job (the trainer from its last uploaded checkpoint). Runs in every worker's main process.
"""

from __future__ import annotations

import base64
import json
import logging
import threading
import time
from typing import Any

from celery import Celery

from services.common.jobs import TERMINAL, JobNotFound, JobStore

log = logging.getLogger("gmpi.recovery")


def _job_id(raw: bytes) -> tuple[str | None, dict[str, Any]]:
    payload, _, _ = json.loads(raw)
    body = payload.get("body", "")
    if payload.get("properties", {}).get("body_encoding") == "base64":
        body = base64.b64decode(body)
    args, kwargs, _ = json.loads(body)
    return kwargs.get("job_id") or (args[0] if args and isinstance(args[0], str) else None), payload


def requeue_orphans(app: Celery, jobs: JobStore, orphan_after_s: float) -> list[str]:
    """Restore un-acked messages of live jobs whose heartbeat is stale; → the job ids re-queued."""
    restored = []
    now = time.time()
    with app.connection_for_write() as conn:
        channel = conn.default_channel
        client = channel.client
        for tag, raw in client.hgetall(channel.unacked_key).items():
            try:
                job_id, _ = _job_id(raw)
            except (ValueError, KeyError, TypeError):
                continue
            if not job_id:
                continue
            try:
                rec = jobs.get(job_id)
            except JobNotFound:
                continue
            if rec["state"] in TERMINAL:
                continue
            delivered = client.zscore(channel.unacked_index_key, tag) or now
            beat = rec.get("heartbeat_at") or delivered
            if now - float(beat) > orphan_after_s and now - float(delivered) > orphan_after_s:
                channel.qos.restore_by_tag(tag.decode() if isinstance(tag, bytes) else tag, leftmost=False)
                log.warning(
                    "re-queued job %s: its worker stopped beating %.0f s ago", job_id, now - float(beat)
                )
                restored.append(job_id)
    return restored


def start_reaper(app: Celery, jobs: JobStore, orphan_after_s: float, every_s: float) -> threading.Thread:
    def loop() -> None:
        while True:
            try:
                requeue_orphans(app, jobs, orphan_after_s)
            except Exception as exc:  # broker away for a moment: try again later
                log.warning("orphan check failed: %s", exc)
            time.sleep(every_s)

    t = threading.Thread(target=loop, daemon=True, name="gmpi-orphan-reaper")
    t.start()
    return t
