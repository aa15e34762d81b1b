"""Geometry ground truth carried by a dataset (``PUT /v1/datasets/{id}/ground-truth/{kind}``) and the
depth metrics an ``evaluate`` job computes from it: the gateway app, the evaluator's task body run in this
process (no Celery worker), the real Redis and S3, a real synthetic dataset and the shipped demo model."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from services.common.settings import Settings, get_settings
from tests.services.conftest import KEY
from tests.services.groundtruth_data import deep3dface_zip, zip_of
from tests.services.test_gateway import assert_error

N_VIEWS = 160  # enough views that most geometry renders find >= 8 ground-truth views within 0.3 rad


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``gmpi data synth --res 32 --n 160``: images.zip, meta.json, poses.json, depth/, mask/, ..."""
    from gmpi_core.data.synthetic import synthesize_dataset

    return synthesize_dataset(
        tmp_path_factory.mktemp("gt") / "s32", res=32, n=N_VIEWS, workers=1, progress=False
    )


@pytest.fixture
def big_client(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    """The gateway app with an upload limit that takes the synthetic dataset (the suite's is 200 kB)."""
    import redis

    monkeypatch.setenv("GMPI_MAX_UPLOAD_BYTES", str(20 * 1024 * 1024))
    get_settings.cache_clear()
    redis.Redis.from_url(settings.redis_url).flushdb()
    from services.gateway.app import create_app

    with TestClient(create_app()) as c:
        yield c
    get_settings.cache_clear()


def new_dataset(client: TestClient) -> str:
    return str(client.post("/v1/datasets", json={"name": "synthetic"}, headers=KEY).json()["id"])


def put_gt(client: TestClient, dataset: str, kind: str, data: bytes) -> httpx.Response:
    return client.put(f"/v1/datasets/{dataset}/ground-truth/{kind}", content=data, headers=KEY)


def test_synthetic_ground_truth_is_checked_stored_and_shown(big_client: TestClient, synth: Path) -> None:
    ds = new_dataset(big_client)
    # the whole `gmpi data synth` folder, zipped as a folder: images.zip, poses/, landmarks/ are ignored
    r = put_gt(big_client, ds, "synthetic", zip_of(synth, top="s32/"))
    assert r.status_code == 200, r.text
    gt = r.json()["ground_truth"]["synthetic"]
    assert gt["key"] == f"datasets/{ds}/ground-truth/synthetic.zip"
    assert gt["summary"]["views"] == N_VIEWS and gt["summary"]["resolution"] == 32
    assert big_client.get(f"/v1/datasets/{ds}", headers=KEY).json()["ground_truth"]["synthetic"] == gt
    files = big_client.get(f"/v1/datasets/{ds}/files", params={"prefix": "ground-truth/"}, headers=KEY).json()
    assert "ground-truth/synthetic.zip" in [f["path"] for f in files["items"]]
    assert big_client.delete(f"/v1/datasets/{ds}/ground-truth/synthetic", headers=KEY).status_code == 204
    assert big_client.get(f"/v1/datasets/{ds}", headers=KEY).json()["ground_truth"] == {}
    assert_error(
        big_client.delete(f"/v1/datasets/{ds}/ground-truth/synthetic", headers=KEY), 404, "not_found"
    )


@pytest.mark.parametrize(
    ("kind", "mutate", "mentions"),
    [
        ("synthetic", lambda rel: rel != "depth/00000/img00000007.npy", "depth/00000/img00000007.npy"),
        ("synthetic", lambda rel: not rel.startswith("mask/"), "160 depth/mask files"),
        ("synthetic", lambda rel: rel != "poses.json", "poses.json"),
        ("deep3dface", lambda rel: True, "pred_depth"),
    ],
)
def test_incomplete_ground_truth_is_422_saying_what_is_missing(
    big_client: TestClient, synth: Path, kind: str, mutate: Callable[[str], bool], mentions: str
) -> None:
    ds = new_dataset(big_client)
    err = assert_error(
        put_gt(big_client, ds, kind, zip_of(synth, mutate)), 422, "invalid_ground_truth", mentions
    )
    assert err["details"]["field"] == "body"
    assert big_client.get(f"/v1/datasets/{ds}", headers=KEY).json()["ground_truth"] == {}


def test_ground_truth_of_another_generator_or_not_a_zip_is_422(
    big_client: TestClient, synth: Path, tmp_path: Path
) -> None:
    ds = new_dataset(big_client)
    assert_error(put_gt(big_client, ds, "synthetic", b"not a zip"), 422, "invalid_ground_truth", "zip")
    other = tmp_path / "other"
    for rel in ("meta.json", "poses.json"):
        (other / rel).parent.mkdir(parents=True, exist_ok=True)
        (other / rel).write_bytes((synth / rel).read_bytes())
    (other / "meta.json").write_text('{"generator": "my-renderer/2"}')
    assert_error(
        put_gt(big_client, ds, "synthetic", zip_of(other)), 422, "invalid_ground_truth", "my-renderer/2"
    )
    r = big_client.put(f"/v1/datasets/{ds}/ground-truth/lidar", content=b"x", headers=KEY)
    assert_error(r, 422, "validation_error", "kind")


def run_evaluate(client: TestClient, params: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Submit through the API, run the evaluator's task in a thread, and watch the job through the API
    until it ends; → (the final job, the distinct progress snapshots seen while it ran)."""
    from services.evaluator.tasks import evaluate

    r = client.post("/v1/jobs", json={"type": "evaluate", "params": params}, headers=KEY)
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    worker = threading.Thread(target=evaluate, args=(job_id,))
    worker.start()
    seen: list[dict[str, Any]] = []
    while worker.is_alive():
        job = client.get(f"/v1/jobs/{job_id}", headers=KEY).json()
        if job["state"] == "running" and (not seen or job["progress"] != seen[-1]):
            seen.append(job["progress"])
        time.sleep(0.05)
    worker.join()
    return client.get(f"/v1/jobs/{job_id}", headers=KEY).json(), seen


def test_evaluate_computes_the_depth_metrics_from_the_datasets_ground_truth(
    big_client: TestClient, synth: Path, settings: Settings
) -> None:
    import services.__main__ as entry
    from services.common.storage import get_storage

    entry.publish_demo_model(get_storage(settings))
    ds = new_dataset(big_client)
    r = big_client.put(f"/v1/datasets/{ds}/images", content=(synth / "images.zip").read_bytes(), headers=KEY)
    assert r.status_code == 200, r.text
    keep = lambda rel: rel.split("/")[0] in ("meta.json", "poses.json", "depth", "mask")  # noqa: E731
    assert put_gt(big_client, ds, "synthetic", zip_of(synth, keep)).status_code == 200
    params = {"model_id": "demo", "dataset_id": ds, "metrics": ["depth", "pose"], "n_geometry": 32,
              "depth_tolerance": 0.3, "geometry_size": 64, "keep_images": True}  # fmt: skip

    job, seen = run_evaluate(big_client, params)
    assert job["state"] == "succeeded", job["error"]
    assert (
        job["metrics"]["depth_synthetic_mean"] > 0 and "depth_synthetic_mean" not in job["result"]["skipped"]
    )
    assert "depth_deep3dface_mean" in job["result"]["skipped"]  # none carried yet
    # the job said what it did while it ran, and ended with all of it done
    messages = [p["message"] for p in seen]
    assert any(m.startswith(("downloading", "building the model")) for m in messages), messages
    assert any(re.fullmatch(r"geometry: \d+/32 renders", m) for m in messages), messages
    assert job["progress"] == {"step": 32, "total": 32, "eta_s": 0.0, "message": "done", "stage": "done"}
    assert job["attempts"] == 1

    geometry = next(a for a in job["artifacts"] if a["key"].endswith("/geometry.zip"))
    renders = httpx.get(geometry["url"], timeout=30)
    assert renders.status_code == 200
    r = put_gt(big_client, ds, "deep3dface", deep3dface_zip(renders.content))
    assert r.status_code == 200, r.text
    assert r.json()["ground_truth"]["deep3dface"]["summary"] == {"images": 32}

    job, _ = run_evaluate(big_client, params)
    assert job["state"] == "succeeded", job["error"]
    for key in ("depth_synthetic_mean", "depth_deep3dface_mean", "pose_deep3dface_mean"):
        assert job["metrics"][key] is not None and key not in job["result"]["skipped"], key
    # 0.02 rad off in pitch: (1/3)·0.02² per image
    assert job["metrics"]["pose_deep3dface_mean"] == pytest.approx(0.02**2 / 3, rel=0.05)
