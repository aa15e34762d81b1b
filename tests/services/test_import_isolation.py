"""Checkpoint imports (issue 13, items 4 and 9): the gateway only streams the upload to the store after
header checks, the renderer's import task decompresses it; what a failed import tells the client names
no file of the gateway or the worker and carries no traceback.

The import task runs in this process in place of a Celery worker (``models._wait`` replaced), with
``zipfile.ZipFile.open`` (reading a member: decompression) refused unless the task is running."""

from __future__ import annotations

import io
import re
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient

from services.common.settings import Settings, get_settings
from services.common.storage import get_storage
from tests.services.conftest import KEY
from tests.services.test_zip_safety import bomb

pytestmark = pytest.mark.timeout(300)
MIB = 1024 * 1024
SERVER_PATH = re.compile(r"(?<![\w.])/(tmp|var|root|home|work|usr|srv|opt|app|proc)/")


def assert_public(message: str) -> None:
    assert not SERVER_PATH.search(message), f"a server path reached the client: {message}"
    assert "Traceback" not in message and 'File "' not in message, message


@pytest.fixture
def importer(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[TestClient, dict[str, Any]]]:
    from services.gateway.app import create_app
    from services.gateway.routes import models
    from services.renderer import tasks

    monkeypatch.setenv("GMPI_MAX_UPLOAD_BYTES", str(8 * MIB))
    get_settings.cache_clear()
    state: dict[str, Any] = {"in_worker": False, "gateway_reads": [], "worker_reads": 0}
    real_open = zipfile.ZipFile.open

    def guarded_open(self: zipfile.ZipFile, name: Any, mode: str = "r", *a: Any, **k: Any) -> Any:
        if mode == "r":
            if not state["in_worker"]:
                state["gateway_reads"].append(getattr(name, "filename", name))
                raise AssertionError(f"the gateway decompressed zip member {name!r}")
            state["worker_reads"] += 1
        return real_open(self, name, mode, *a, **k)  # type: ignore[arg-type]

    async def run_in_this_process(
        celery: Any, name: str, kwargs: dict[str, Any], timeout: float, **_: Any
    ) -> Any:
        assert name == "gmpi.render.import_model"
        state["kwargs"] = kwargs
        state["in_worker"] = True
        try:
            return tasks.import_model.run(**kwargs)
        finally:
            state["in_worker"] = False

    monkeypatch.setattr(zipfile.ZipFile, "open", guarded_open)
    monkeypatch.setattr(models, "_wait", run_in_this_process)
    redis.Redis.from_url(settings.redis_url).flushdb()
    with TestClient(create_app()) as c:
        yield c, state
    get_settings.cache_clear()


def _zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return buf.getvalue()


def _official_zip(tmp_path: Path) -> bytes:
    from tests.gmpi_core.checkpoints.fixtures import official_config, write_official_checkpoint
    from tests.gmpi_core.checkpoints.test_official_gmpi import _param_names, _random_generator_state

    directory = tmp_path / "checkpoints"
    state = _random_generator_state()
    write_official_checkpoint(
        directory, state, [state[n] for n in _param_names()], official_config("FFHQ256")
    )
    return _zip({f"checkpoints/{p.name}": p.read_bytes() for p in sorted(directory.iterdir())})


def test_a_gmpi_pth_zip_is_extracted_by_the_worker_not_the_gateway(
    importer: tuple[TestClient, dict[str, Any]], tmp_path: Path, settings: Settings
) -> None:
    client, state = importer
    r = client.post("/v1/models/import?kind=gmpi_pth", content=_official_zip(tmp_path), headers=KEY)
    assert r.status_code == 201, r.text
    assert state["gateway_reads"] == [] and state["worker_reads"] >= 2, state
    assert [k.rsplit("/", 1)[-1] for k in state["kwargs"]["keys"]] == ["checkpoint.zip"]  # as uploaded
    model_id = r.json()["id"]
    storage = get_storage(settings)
    assert storage.list(f"models/{model_id}/source/") == []  # the upload is dropped once converted
    assert storage.manifest(f"models/{model_id}/") is not None


def test_a_bomb_that_lies_in_its_directory_is_refused_by_the_worker(
    importer: tuple[TestClient, dict[str, Any]], tmp_path: Path, settings: Settings
) -> None:
    client, state = importer
    data = bomb(tmp_path / "liar.zip", 300 * MIB, lie=1000)
    r = client.post("/v1/models/import?kind=gmpi_pth", content=data, headers=KEY)
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["code"] == "invalid_zip" and err["details"]["member"] == "ema.pth", err
    assert_public(err["message"])
    assert state["gateway_reads"] == [], state
    model = state["kwargs"]["model_id"]
    assert get_storage(settings).list(f"models/{model}/") == []


@pytest.mark.parametrize("kind", ["gmpi_pth", "stylegan2_pkl"])
def test_a_bad_checkpoint_names_its_file_but_no_server_path(
    importer: tuple[TestClient, dict[str, Any]], kind: str
) -> None:
    client, _ = importer
    body = _zip({"config.pth": b"garbage", "ema.pth": b"garbage"}) if kind == "gmpi_pth" else b"garbage"
    r = client.post(f"/v1/models/import?kind={kind}", content=body, headers=KEY)
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["code"] == "invalid_checkpoint", err
    assert ("config.pth" if kind == "gmpi_pth" else "network.pkl") in err["message"], err
    assert_public(err["message"])


def test_a_zip_the_gateway_cannot_read_says_so_without_its_spool_path(
    importer: tuple[TestClient, dict[str, Any]], settings: Settings
) -> None:
    client, _ = importer
    r = client.post("/v1/models/import?kind=gmpi_pth", content=b"PK\x03\x04 not really a zip", headers=KEY)
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["code"] == "invalid_zip", err
    assert_public(err["message"])
    assert settings.cache_dir not in err["message"]


@pytest.mark.parametrize("kind", ["gmpi_pth", "stylegan2_pkl"])
def test_the_import_task_tells_no_worker_paths(settings: Settings, kind: str, tmp_path: Path) -> None:
    """The worker's answer, as an older gateway (per-file keys) or this one gets it."""
    from services.renderer import tasks

    storage = get_storage(settings)
    storage.ensure_ready()
    names = ["config.pth", "ema.pth"] if kind == "gmpi_pth" else ["network.pkl"]
    keys = [storage.put_bytes(f"models/m-leak/source/{n}", b"garbage").key for n in names]
    out = tasks.import_model.run("m-leak", kind, None, keys)
    err = out["error"]
    assert err["code"] == "invalid_checkpoint", err
    assert names[0] in err["message"], err
    assert_public(err["message"])


def test_an_unexpected_import_failure_is_logged_not_told(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from gmpi_core.pipeline import GMPI
    from services.renderer import tasks

    def broken(*_: Any, **__: Any) -> Any:
        raise RuntimeError("internal state at /srv/gmpi/secret/module.py line 12")

    monkeypatch.setattr(GMPI, "load", broken)  # the import's one way to open the checkpoint
    storage = get_storage(settings)
    storage.ensure_ready()
    keys = [storage.put_bytes(f"models/m-bug/source/{n}", b"x").key for n in ("config.pth", "ema.pth")]
    with caplog.at_level("ERROR", logger="gmpi.renderer"):
        err = tasks.import_model.run("m-bug", "gmpi_pth", None, keys)["error"]
    assert err["code"] == "invalid_checkpoint" and "secret" not in err["message"], err
    assert "m-bug" in err["message"]  # the reference to find it in the log
    assert any("secret" in (r.exc_text or "") or r.exc_info for r in caplog.records)
