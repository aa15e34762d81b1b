"""Sync renders through HTTP with a real render worker (the shipped demo model as ``models/demo``): a pose
the schema allows but the MPI cannot show is a 422 ``unrenderable_view`` saying why and which yaw works,
not a 500 from the worker's exception."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from services.common.settings import Settings
from tests.services.conftest import KEY
from tests.timing import scaled

pytestmark = pytest.mark.timeout(600)


@pytest.fixture
def render_worker(client: TestClient, settings: Settings, tmp_path: Path) -> Iterator[None]:
    from services.__main__ import publish_demo_model
    from services.common.storage import get_storage

    publish_demo_model(get_storage(settings))
    env = {**os.environ, "GMPI_RUN_DIR": str(tmp_path), "OMP_NUM_THREADS": "1"}  # the settings fixture's env
    worker = subprocess.Popen(
        [sys.executable, "-m", "services", "worker", "render"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=open(tmp_path / "worker.log", "wb"),  # noqa: SIM115
    )
    try:
        yield
    finally:
        worker.terminate()
        try:
            worker.wait(scaled(30))
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()


def _render(client: TestClient, key: dict[str, str] = KEY, **body: float) -> object:
    return client.post("/v1/models/demo/render", json={"seed": 0, "size": 32, **body}, headers=key)


def test_a_yaw_the_schema_allows_but_the_mpi_cannot_show_is_422_with_the_range(
    client: TestClient, render_worker: None
) -> None:
    ok = _render(client, yaw=0.3)
    assert ok.status_code == 200, ok.text  # type: ignore[attr-defined]
    assert ok.content[:8] == b"\x89PNG\r\n\x1a\n"  # type: ignore[attr-defined]
    # the camera passes the nearest plane / looks past the planes (each key: 3 renders a minute)
    for yaw, key in ((math.pi / 2, KEY), (-1.5, {"X-API-Key": "other-key"})):
        r = _render(client, key, yaw=yaw)
        assert r.status_code == 422, r.text  # type: ignore[attr-defined]
        err = r.json()["error"]  # type: ignore[attr-defined]
        assert err["code"] == "unrenderable_view", err
        assert "|yaw| <=" in err["message"] and "trained on yaw" in err["message"], err
        limit = err["details"]["max_abs_yaw_at_pitch"]
        assert 1.3 < limit < abs(yaw), err["details"]
        # just inside the limit it renders
        assert _render(client, key, yaw=math.copysign(limit * 0.999, yaw)).status_code == 200  # type: ignore[attr-defined]
