"""Fixtures: a real Redis and a real SeaweedFS S3 server per test session, settings pointing at them."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from services.common.settings import Settings, get_settings
from tests.services.procs import ACCESS, SECRET, RedisServer, S3Server
from tests.timing import scale_timeout_markers, scaled

KEY = {"X-API-Key": "good-key"}  # one of GMPI_API_KEYS below


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Per-test limits (``pytest.mark.timeout``) grow with the load like every wait (tests/timing.py)."""
    scale_timeout_markers(items)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    server = S3Server(tmp_path_factory.mktemp("s3")).start()
    yield server
    server.stop()


@pytest.fixture
def settings(
    redis_server: RedisServer, s3_server: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Settings]:
    env = {
        "GMPI_REDIS_URL": redis_server.url,
        "GMPI_STORAGE": "s3",
        "GMPI_S3_ENDPOINT": s3_server.endpoint,
        "GMPI_S3_ACCESS_KEY": ACCESS,
        "GMPI_S3_SECRET_KEY": SECRET,
        "GMPI_S3_BUCKET": f"t{uuid.uuid4().hex[:12]}",
        "GMPI_API_KEYS": "good-key,other-key",
        "GMPI_EXPOSE_DOCS": "true",  # test_openapi_documents_every_route; the default is off
        "GMPI_CACHE_DIR": str(tmp_path / "cache"),
        "GMPI_MAX_UPLOAD_BYTES": "200000",
        "GMPI_RENDER_RATE_LIMIT": "3",
        "GMPI_RENDER_TIMEOUT_S": str(int(scaled(300))),  # a sync render under load: not the default 30 s
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    get_settings.cache_clear()
    yield get_settings()
    get_settings.cache_clear()


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    """The gateway app in-process on an empty job store."""
    import redis

    redis.Redis.from_url(settings.redis_url).flushdb()
    from services.gateway.app import create_app

    with TestClient(create_app()) as c:
        yield c


@pytest.fixture
def dataset(client: TestClient) -> str:
    """An empty dataset created through the API."""
    return str(client.post("/v1/datasets", json={"name": "t"}, headers=KEY).json()["id"])
