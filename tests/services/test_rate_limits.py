"""Rate limits on every expensive route (429 with Retry-After), a limiter that keys on nothing the client
chooses when auth is disabled, and bounded MPI caches: ψ quantized in every cache key, the exports a
model keeps in the store pruned to GMPI_MPI_EXPORTS_PER_MODEL, the in-process LRUs' sizes bounded."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from services.common.settings import Settings, get_settings
from tests.services.conftest import KEY

OTHER = {"X-API-Key": "other-key"}


@pytest.fixture
def limits(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Two requests a minute on every limited route."""
    for name in ("RENDER", "MPI", "IMPORT", "JOB", "UPLOAD"):
        monkeypatch.setenv(f"GMPI_{name}_RATE_LIMIT", "2")
    get_settings.cache_clear()
    return get_settings()


def _assert_limited(responses: list[Any], first: int) -> None:
    """The first two answered ``first`` (the route's own answer), the third 429 with Retry-After."""
    codes = [r.status_code for r in responses]
    assert codes == [first, first, 429], [(r.status_code, r.text[:200]) for r in responses]
    r = responses[2]
    assert r.json()["error"]["code"] == "rate_limited"
    assert 1 <= int(r.headers["Retry-After"]) <= 60


@pytest.mark.parametrize(
    ("method", "path", "body", "first"),
    [
        ("POST", "/v1/models/model-x/render", {}, 404),
        ("GET", "/v1/models/model-x/mpi?psi=0.5", None, 404),
        ("POST", "/v1/models/import?kind=stylegan2_pkl&preset=nope", None, 422),
        ("POST", "/v1/jobs", {"type": "preprocess", "params": {"dataset_id": "ds-nope"}}, 422),
        ("PUT", "/v1/datasets/ds-nope/images", b"PK", 404),
        ("POST", "/v1/datasets/ds-nope/upload-url", None, 404),
        ("POST", "/v1/datasets/ds-nope/uploads", {"size": 100}, 404),
        ("POST", "/v1/datasets/ds-nope/register", {"prefix": "incoming/x"}, 404),
        ("PUT", "/v1/datasets/ds-nope/ground-truth/synthetic", b"PK", 404),
    ],
)
def test_expensive_routes_are_rate_limited_per_key(
    client: TestClient, limits: Settings, method: str, path: str, body: Any, first: int
) -> None:
    kw: dict[str, Any] = {"content": body} if isinstance(body, bytes) else {"json": body}
    _assert_limited([client.request(method, path, headers=KEY, **kw) for _ in range(3)], first)
    # another key has its own budget
    assert client.request(method, path, headers=OTHER, **kw).status_code == first


def test_limits_of_different_routes_are_separate(client: TestClient, limits: Settings) -> None:
    for _ in range(2):
        assert client.get("/v1/models/model-x/mpi", headers=KEY).status_code == 404
    assert client.get("/v1/models/model-x/mpi", headers=KEY).status_code == 429
    assert client.post("/v1/models/model-x/render", json={}, headers=KEY).status_code == 404


@pytest.fixture
def open_gateway(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """GMPI_AUTH_DISABLED=true (single-user mode) with a render limit of 3 a minute."""
    import redis

    monkeypatch.setenv("GMPI_AUTH_DISABLED", "true")
    monkeypatch.setenv("GMPI_RENDER_RATE_LIMIT", "3")
    get_settings.cache_clear()
    redis.Redis.from_url(settings.redis_url).flushdb()
    yield


def test_with_auth_disabled_the_limiter_ignores_the_headers_a_client_sends(open_gateway: None) -> None:
    from services.gateway.app import create_app

    app = create_app()
    with TestClient(app, client=("10.1.2.3", 5000)) as c:
        codes = [
            c.post(
                "/v1/models/model-x/render",
                json={},
                headers={"X-API-Key": f"made-up-{i}", "X-Forwarded-For": f"192.0.2.{i}"},
            ).status_code
            for i in range(4)
        ]
        assert codes == [404, 404, 404, 429]
    # another client address has its own bucket
    with TestClient(app, client=("10.9.9.9", 5000)) as c:
        assert c.post("/v1/models/model-x/render", json={}).status_code == 404


def test_with_auth_disabled_the_header_does_not_pick_an_identity(
    open_gateway: None, settings: Settings
) -> None:
    """Single-user mode: whatever X-API-Key says, every request is the same caller (no one can pose as
    a key of an earlier authenticated setup, or hide their jobs from the others by a made-up header)."""
    from services.common.storage import get_storage
    from services.gateway.app import create_app

    with TestClient(create_app()) as c:
        ds = c.post("/v1/datasets", json={"name": "x"}, headers={"X-API-Key": "alice"}).json()["id"]
        get_storage(get_settings()).put_bytes(f"datasets/{ds}/images/a.png", b"png", "image/png")
        body = {"type": "preprocess", "params": {"dataset_id": ds}}
        job = c.post("/v1/jobs", json=body, headers={"X-API-Key": "alice"}).json()["id"]
        assert c.get(f"/v1/jobs/{job}", headers={"X-API-Key": "bob"}).status_code == 200
        assert c.get("/v1/jobs").json()["total"] == 1


# --- the MPI caches ---------------------------------------------------------------------------------------
def _fake_export(monkeypatch: pytest.MonkeyPatch) -> list[tuple]:
    """The renderer's MPI generation and export replaced by stand-ins that write a tiny export; → the
    (seed, psi) of every generation."""
    import gmpi_core.render.export as export_mod
    import services.renderer.tasks as tasks

    made: list[tuple] = []

    class Cam:
        pass

    class Fake:
        config = type("C", (), {"camera": Cam()})()

    def get_mpi(model_id: str, seed: int, psi: float, planes: int | None) -> tuple[Any, Any]:
        made.append((seed, psi))
        return Fake(), object()

    def write_export(mpi: Any, camera: Any, out: Path, fmt: str, extra: dict) -> Path:
        out.mkdir(parents=True)
        (out / "mpi.json").write_text(json.dumps({"planes": [], **extra}))
        (out / "plane_00.png").write_bytes(b"png")
        return out

    monkeypatch.setattr(tasks, "get_mpi", get_mpi)
    monkeypatch.setattr(export_mod, "export_mpi", write_export)
    return made


def test_mpi_exports_quantize_psi_in_their_key(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    from services.renderer.tasks import export_mpi

    made = _fake_export(monkeypatch)
    first = export_mpi("model-q", 3, psi=0.7012)
    assert first.startswith("models/model-q/mpi/") and "psi0.70-" in first, first
    # every ψ that rounds to 0.70 is the same export: made once
    assert export_mpi("model-q", 3, psi=0.7049) == first == export_mpi("model-q", 3, psi=0.69500001)
    assert made == [(3, 0.7)]


def test_mpi_exports_of_a_model_are_pruned_to_the_bound(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    from services.common.storage import get_storage
    from services.renderer.tasks import export_mpi

    monkeypatch.setenv("GMPI_MPI_EXPORTS_PER_MODEL", "3")
    get_settings.cache_clear()
    storage = get_storage(get_settings())
    _fake_export(monkeypatch)
    # two older exports already in the store (committed at known times), and an unrelated model's
    for i, day in enumerate(("01", "02")):
        prefix = f"models/model-p/mpi/s{100 + i}-p0-psi1.00-png/"
        info = storage.put_bytes(prefix + "mpi.json", b"{}", "application/json")
        storage.put_json(
            prefix + "manifest.json",
            {"committed_utc": f"2020-01-{day}T00:00:00+00:00", "files": {"mpi.json": {"size": info.size}}},
        )
    storage.put_json("models/model-o/mpi/s1-p0-psi1.00-png/manifest.json", {"committed_utc": "2000"})
    newest = [export_mpi("model-p", seed, psi=0.5) for seed in range(4)]

    def exports(model: str) -> set[str]:
        return {
            k.removesuffix("manifest.json")
            for k in storage.list(f"models/{model}/mpi/")
            if k.endswith("manifest.json")
        }

    kept = exports("model-p")
    assert len(kept) == 3 and newest[-1] in kept, kept
    assert not any("s100-" in k or "s101-" in k for k in kept), kept  # the oldest went first
    assert not storage.list("models/model-p/mpi/s100-p0-psi1.00-png/")  # every file of it
    assert len(exports("model-o")) == 1  # other models are not touched


def test_the_renderer_caches_quantize_psi_and_are_bounded(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pydantic

    import gmpi_core.render.views as views
    import services.renderer.tasks as tasks

    monkeypatch.setattr(tasks, "load_model", lambda model_id: (object(), "v1"))
    generated = []
    monkeypatch.setattr(
        views, "generate_mpi", lambda gmpi, seed, n_planes, truncation_psi: generated.append(truncation_psi)
    )
    monkeypatch.setattr(tasks, "_models", None)
    monkeypatch.setattr(tasks, "_mpis", None)
    for psi in (0.3001, 0.2999, 0.30000000001):
        tasks.get_mpi("model-c", 0, psi, None)
    assert generated == [0.3]
    # the LRU sizes are settings with an upper bound
    for field in ("render_cache_models", "render_cache_mpis"):
        with pytest.raises(pydantic.ValidationError):
            Settings.model_validate({field: 10**7})
