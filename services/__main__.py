"""One entry point for every service of the stack, so that one image can run each of them.

    python -m services gateway            the REST gateway (uvicorn on $GMPI_HOST:$GMPI_PORT)
    python -m services worker QUEUE       the Celery worker of one queue: landmarks|pose|train|eval|render
    python -m services init               create the bucket and publish the demo model (idempotent; exits)
    python -m services health             exit 0 when this container's service answers (the images'
                                          HEALTHCHECK): the gateway's /healthz, or a Celery ping of the
                                          worker's own node over the broker

The role a container was started with is written to ``$GMPI_RUN_DIR/role`` (default /tmp), which is how
``health`` knows what to check without a per-service health command.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
from pathlib import Path

from services.common.celery_app import QUEUES

DEMO_MODEL_ID = "demo"


def _role_file() -> Path:
    return Path(os.environ.get("GMPI_RUN_DIR", "/tmp")) / "gmpi-role"


def _record_role(role: str) -> None:
    try:
        from gmpi_core.atomic import atomic_write

        atomic_write(_role_file(), role)
    except OSError as exc:  # a read-only /tmp must not stop the service; health then says why
        print(f"services: cannot record the role in {_role_file()}: {exc}", file=sys.stderr)


def node_name(queue: str) -> str:
    """The worker's Celery node name (``--hostname``): what ``health`` pings."""
    return f"{queue}@{socket.gethostname()}"


def run_worker(queue: str) -> None:
    from services.common.celery_app import app

    _record_role(f"worker:{queue}")
    concurrency = os.environ.get("GMPI_WORKER_CONCURRENCY", "1")
    app.worker_main(
        ["worker", "-Q", queue, "--concurrency", concurrency, "--hostname", node_name(queue), "-l", "INFO"]
    )


def run_gateway() -> None:
    from services.gateway.__main__ import main

    _record_role("gateway")
    main()


def publish_demo_model(storage: object | None = None) -> str:
    """Upload the shipped demo model as ``models/demo/`` unless a committed one is there; → its state."""
    import json

    import gmpi_core
    from services.common.keys import model_prefix
    from services.common.storage import Storage, get_storage

    store: Storage = storage if isinstance(storage, Storage) else get_storage()
    prefix = model_prefix(DEMO_MODEL_ID)
    if store.manifest(prefix) is not None:
        return "present"
    demo = Path(gmpi_core.__file__).parent / "assets" / "demo_model"
    experiment = json.loads((demo / "config.json").read_text()).get("extra", {}).get("experiment", {})
    # the generator files only (the discriminator is for fine-tuning, not for the viewer)
    files = {
        p.name: store.put_file(prefix + p.name, p)
        for p in sorted(demo.glob("*"))
        if p.is_file() and p.suffix != ".md"
    }
    # shared: every API key may read and render it (SECURITY.md, "API keys and ownership")
    extra = {"model_id": DEMO_MODEL_ID, "source": "demo", "preset": experiment.get("name"), "public": True}
    store.commit(prefix, files, extra)
    return "published"


def run_init() -> int:
    from services.common.storage import get_storage

    storage = get_storage()
    storage.ensure_ready()
    state = publish_demo_model(storage)
    print(f"services init: bucket ready; demo model {state} as models/{DEMO_MODEL_ID}/", flush=True)
    return 0


def check_health(timeout: float = 8.0) -> str | None:
    """None when this container's service answers, else what is wrong."""
    try:
        role = _role_file().read_text().strip()
    except OSError:
        return f"no role recorded in {_role_file()} (the service has not started yet)"
    if role == "gateway":
        import urllib.request

        port = os.environ.get("GMPI_PORT", "8000")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=timeout) as r:
                return None if r.status == 200 else f"/healthz answered {r.status}"
        except OSError as exc:
            return f"/healthz: {exc}"
    if role.startswith("worker:"):
        from services.common.celery_app import app

        node = node_name(role.split(":", 1)[1])
        try:
            replies = app.control.ping(destination=[node], timeout=timeout)
        except Exception as exc:  # the broker is away: unhealthy, with the reason
            return f"cannot ping {node}: {type(exc).__name__}: {exc}"
        return None if any(node in r for r in replies) else f"worker {node} did not answer a ping"
    return f"unknown role {role!r}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m services", description=(__doc__ or "").split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("gateway", help="the REST gateway")
    w = sub.add_parser("worker", help="the Celery worker of one queue")
    w.add_argument("queue", choices=QUEUES)
    sub.add_parser("init", help="create the bucket and publish the demo model, then exit")
    sub.add_parser("health", help="exit 0 when this container's service answers")
    args = ap.parse_args(argv)
    if args.cmd == "gateway":
        run_gateway()
        return 0
    if args.cmd == "worker":
        run_worker(args.queue)
        return 0
    if args.cmd == "init":
        return run_init()
    problem = check_health()
    if problem:
        print(f"unhealthy: {problem}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
