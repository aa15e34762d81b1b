"""Upload → preprocess → train → evaluate → render a view and a video → download by presigned URL."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import Any

import httpx
import PIL.Image
import pytest

from tests.e2e.conftest import Stack

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(600)]


def _fetch(artifact: dict[str, Any]) -> bytes:
    r = httpx.get(artifact["url"], timeout=30)  # presigned: no API key
    assert r.status_code == 200, (artifact, r.text[:300])
    if artifact.get("sha256"):
        assert hashlib.sha256(r.content).hexdigest() == artifact["sha256"]
    return r.content


def test_preprocess_writes_landmarks_and_poses_in_the_seed_layout(
    stack: Stack, dataset: str, trained: dict[str, Any]
) -> None:
    prep = trained["prep"]
    assert prep["metrics"]["landmarks_detected"] >= 12
    assert (
        prep["metrics"]["poses_written"]
        == prep["metrics"]["landmarks_detected"] - prep["metrics"]["pose_failed"]
    )
    ds = stack.client.get(f"/v1/datasets/{dataset}").json()
    assert (
        ds["landmarks"] == prep["metrics"]["landmarks_detected"]
        and ds["poses"] == prep["metrics"]["poses_written"]
    )
    fail_list = next(a for a in prep["artifacts"] if a["key"].endswith("landmarks/detections/fail_list.txt"))
    failed = _fetch(fail_list).decode().split()
    assert len(failed) == prep["metrics"]["landmarks_failed"]


def test_training_uploads_its_model_checkpoint_and_log(stack: Stack, trained: dict[str, Any]) -> None:
    train = trained["train"]
    keys = {a["key"].rsplit("/", 1)[-1]: a for a in train["artifacts"]}
    assert {"weights.safetensors", "ema.safetensors", "config.json", "log.jsonl", "latest"} <= set(keys)
    steps = [json.loads(line)["step"] for line in _fetch(keys["log.jsonl"]).decode().splitlines()]
    assert steps == list(range(1, 9))
    assert _fetch(keys["latest"]).decode().strip() == "ckpt_0000008.pt"
    models = stack.client.get("/v1/models").json()["items"]
    assert trained["model_id"] in [m["id"] for m in models]
    assert "demo" in [m["id"] for m in models]  # `stack.sh up` publishes the shipped demo model
    assert train["progress"]["step"] == 8 and "loss_g" in train["metrics"]


def test_evaluate_stores_a_report(stack: Stack, dataset: str, trained: dict[str, Any]) -> None:
    params = {"model_id": trained["model_id"], "dataset_id": dataset, "metrics": ["fid", "kid"],
              "n_fid": 8, "n_real": 8, "kid_subsets": 2, "kid_subset_size": 4}  # fmt: skip
    job = stack.wait(stack.submit("evaluate", params)["id"], timeout=300)
    assert job["state"] == "succeeded", (job, stack.log("worker-eval"))
    report = json.loads(_fetch(next(a for a in job["artifacts"] if a["key"].endswith("report.json"))))
    assert report["counts"]["n_fid"] == 8 and report["metrics"]["fid"] is not None
    assert job["metrics"]["fid"] == pytest.approx(report["metrics"]["fid"])


def test_render_views_are_pngs_and_change_with_yaw(stack: Stack, trained: dict[str, Any]) -> None:
    mid = trained["model_id"]
    images = []
    for body in (
        {"seed": 3, "yaw": -0.4},
        {"seed": 3, "yaw": 0.4},
        {"seed": 3, "yaw": 0.4, "output": "depth", "size": 48},
    ):
        r = stack.client.post(f"/v1/models/{mid}/render", json=body)
        assert r.status_code == 200 and r.headers["content-type"] == "image/png", r.text[:300]
        images.append(PIL.Image.open(io.BytesIO(r.content)))
    assert images[0].size == (32, 32) and images[2].size == (48, 48)
    assert images[0].tobytes() != images[1].tobytes()


def test_mpi_export_serves_plane_images(stack: Stack, trained: dict[str, Any]) -> None:
    r = stack.client.get(f"/v1/models/{trained['model_id']}/mpi", params={"seed": 2, "planes": 8})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["format"] == "gmpi-mpi" and body["n_planes"] == 8 and len(body["planes"]) == 8
    via_gateway = stack.client.get(body["planes"][0]["url"])  # same origin, as the viewer loads it
    assert via_gateway.status_code == 200, via_gateway.text
    assert PIL.Image.open(io.BytesIO(via_gateway.content)).mode == "RGBA"
    presigned = _fetch({"url": body["planes"][0]["presigned_url"]})
    assert presigned == via_gateway.content


def test_render_video_job_writes_an_mp4(stack: Stack, trained: dict[str, Any]) -> None:
    job = stack.wait(
        stack.submit("render_video", {"model_id": trained["model_id"], "seed": 1, "frames": 6})["id"]
    )
    assert job["state"] == "succeeded", (job, stack.log("worker-render"))
    video = next(a for a in job["artifacts"] if a["key"].endswith("video_rgb_horizontal.mp4"))
    assert _fetch(video)[4:8] == b"ftyp"


def test_imported_stylegan2_pickle_becomes_a_model_that_renders(stack: Stack) -> None:
    """A StyleGAN2-ADA persistence pickle (format version 6, nested modules, random tiny weights) goes in
    through POST /v1/models/import and comes out as a committed GMPI model whose views render; the
    pickle's embedded module source is never executed (it would write the marker file)."""
    import tempfile

    from tests.gmpi_core.checkpoints.fixtures import build_sg2_pickle, executing_module_src

    with tempfile.TemporaryDirectory() as tmp:
        marker = Path(tmp) / "module_src-was-executed"
        fx = build_sg2_pickle(executing_module_src(str(marker)))
        r = stack.client.post(
            "/v1/models/import", params={"kind": "stylegan2_pkl", "preset": "FFHQ256"}, content=fx.data
        )
        assert r.status_code == 201, r.text
        model = r.json()
        assert not marker.exists()
    assert model["id"] in {m["id"] for m in stack.client.get("/v1/models").json()["items"]}
    views = []
    for yaw in (-0.3, 0.3):
        r = stack.client.post(f"/v1/models/{model['id']}/render", json={"seed": 1, "yaw": yaw, "planes": 8})
        assert r.status_code == 200 and r.headers["content-type"] == "image/png", r.text[:300]
        views.append(PIL.Image.open(io.BytesIO(r.content)))
    assert views[0].size == (fx.config.resolution, fx.config.resolution)
    assert views[0].tobytes() != views[1].tobytes()
