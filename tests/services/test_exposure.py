"""What the gateway shows without an API key: by default neither the API description (``/docs``,
``/redoc``, ``/openapi.json``: 404) nor the Prometheus metrics (``/metrics``: 401 without a key);
``GMPI_EXPOSE_DOCS`` / ``GMPI_EXPOSE_METRICS`` open them."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from fastapi.testclient import TestClient

from services.common.settings import Settings, get_settings
from tests.services.conftest import KEY

DOCS = ("/docs", "/redoc", "/openapi.json", "/docs/oauth2-redirect")


@pytest.fixture
def make_client(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., TestClient]]:
    clients: list[TestClient] = []

    def make(**env: str) -> TestClient:
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        get_settings.cache_clear()
        from services.gateway.app import create_app

        c = TestClient(create_app())
        c.__enter__()
        clients.append(c)
        return c

    yield make
    for c in clients:
        c.__exit__(None, None, None)
    get_settings.cache_clear()


def test_by_default_no_api_description_and_no_metrics_without_a_key(
    make_client: Callable[..., TestClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("GMPI_EXPOSE_DOCS", raising=False)
    monkeypatch.delenv("GMPI_EXPOSE_METRICS", raising=False)
    client = make_client()
    for path in DOCS:
        assert client.get(path).status_code == 404, path
        assert client.get(path, headers=KEY).status_code == 404, path  # off for key holders too
    r = client.get("/metrics")
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
    assert "gmpi_http" not in r.text
    assert client.get("/metrics", headers={"X-API-Key": "wrong"}).status_code == 401
    ok = client.get("/metrics", headers=KEY)
    assert ok.status_code == 200 and "gmpi_http_requests_total" in ok.text
    assert client.get("/healthz").status_code == 200  # liveness stays open


def test_the_settings_expose_the_api_description_and_the_metrics(
    make_client: Callable[..., TestClient],
) -> None:
    client = make_client(GMPI_EXPOSE_DOCS="true", GMPI_EXPOSE_METRICS="true")
    assert "/v1/jobs" in client.get("/openapi.json").json()["paths"]
    assert client.get("/docs").status_code == 200
    assert client.get("/redoc").status_code == 200
    r = client.get("/metrics")
    assert r.status_code == 200 and "gmpi_http_requests_total" in r.text


def test_each_setting_opens_only_its_own_part(make_client: Callable[..., TestClient]) -> None:
    docs_only = make_client(GMPI_EXPOSE_DOCS="true", GMPI_EXPOSE_METRICS="false")
    assert docs_only.get("/openapi.json").status_code == 200
    assert docs_only.get("/metrics").status_code == 401
    metrics_only = make_client(GMPI_EXPOSE_DOCS="false", GMPI_EXPOSE_METRICS="true")
    assert metrics_only.get("/openapi.json").status_code == 404
    assert metrics_only.get("/metrics").status_code == 200
