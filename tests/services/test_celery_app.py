from __future__ import annotations

import subprocess
import sys

import services.common.celery_app  # noqa: F401  (before any fixture: the import order of a full run)
from services.common.settings import Settings


def test_long_task_settings_follow_the_field_notes(settings: Settings) -> None:
    from services.common.celery_app import make_app

    conf = make_app().conf
    assert conf.task_acks_late and conf.worker_prefetch_multiplier == 1
    assert conf.broker_transport_options["visibility_timeout"] > conf.task_time_limit
    assert conf.task_routes["gmpi.train.*"] == {"queue": "train"}


def test_visibility_timeout_below_the_time_limit_is_refused(settings: Settings, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import pytest

    from services.common.celery_app import make_app
    from services.common.settings import get_settings

    monkeypatch.setenv("GMPI_VISIBILITY_TIMEOUT_S", "100")
    monkeypatch.setenv("GMPI_TASK_TIME_LIMIT_S", "200")
    get_settings.cache_clear()
    with pytest.raises(ValueError, match="VISIBILITY"):
        make_app()


def test_gateway_and_celery_app_import_without_torch() -> None:
    code = (
        "import sys; import services.gateway.app, services.common.celery_app as c;"
        "c.app.loader.import_default_modules();"
        "sys.exit(1 if 'torch' in sys.modules else 0)"
    )
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0


def test_tasks_go_to_the_broker_of_the_current_settings_not_of_the_first_import(
    settings: Settings, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    """The app made while the settings named another Redis (a module imported before the test stack
    existed: test_node_agent's import in a full run) sends to the Redis the settings name now."""
    import redis

    from services.common.celery_app import make_app
    from services.common.settings import get_settings

    monkeypatch.setenv("GMPI_REDIS_URL", "redis://127.0.0.1:1/0")  # nothing listens there
    get_settings.cache_clear()
    app = make_app()
    assert app.conf.broker_url == "redis://127.0.0.1:1/0"
    monkeypatch.setenv("GMPI_REDIS_URL", settings.redis_url)
    get_settings.cache_clear()
    r = redis.Redis.from_url(settings.redis_url)
    r.delete("train")
    app.send_task("gmpi.train.run", kwargs={"job_id": "where-did-it-land"}, retry=False)
    assert r.llen("train") == 1
    assert b"where-did-it-land" in r.lindex("train", 0)  # type: ignore[operator]
    assert (
        app.backend.client.connection_pool.connection_kwargs["port"]
        == r.connection_pool.connection_kwargs["port"]
    )
    r.delete("train")


def test_the_gateway_queues_jobs_on_the_settings_broker_after_an_early_import(
    client, settings: Settings
) -> None:  # type: ignore[no-untyped-def]
    """services.common.celery_app is imported at the top of this module (collection time, before any test
    Redis exists); a job the gateway accepts is still queued on the test Redis."""
    import redis

    from tests.services.conftest import KEY

    storage_key = "models/m-broker/manifest.json"
    from services.common.storage import get_storage

    get_storage(settings).put_bytes(storage_key, b"{}", "application/json")
    r = redis.Redis.from_url(settings.redis_url)
    r.delete("render")
    resp = client.post(
        "/v1/jobs", json={"type": "extract_mesh", "params": {"model_id": "m-broker"}}, headers=KEY
    )
    assert resp.status_code == 202, resp.text
    assert r.llen("render") == 1, r.keys()
    r.delete("render")
