from __future__ import annotations

import subprocess
import sys

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
