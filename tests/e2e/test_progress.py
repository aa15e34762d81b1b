"""What a newcomer watching ``GET /v1/jobs/{id}`` sees while jobs run on the stack: progress that moves
in the job's own units with a message saying what is happening and an ETA, a whole count at the end, and
``attempts`` that count runs of the job's own task, not its sub-tasks; and an evaluate job that computes
every metric it offers from the ground truth a dataset carries."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import TERMINAL, Stack, upload_dataset
from tests.services.groundtruth_data import deep3dface_zip, zip_of
from tests.timing import scaled

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(600)]
DONE = {"message": "done", "stage": "done", "eta_s": 0.0}


def watch(s: Stack, job_id: str, timeout: float = 300) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Poll the job through the API (20 per second) until it ends; → (the final job, the distinct
    progress snapshots seen while it was running)."""
    deadline = time.monotonic() + scaled(timeout)
    seen: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        job = s.client.get(f"/v1/jobs/{job_id}").json()
        if job["state"] in TERMINAL:
            # running, yet "queued": what a job said until its task first reported
            assert all(p["message"] != "queued" for p in seen), seen
            return job, seen
        if job["state"] == "running" and (not seen or job["progress"] != seen[-1]):
            seen.append(job["progress"])
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not end in {scaled(timeout):.0f} s: {seen[-3:]}")


def assert_finished(job: dict[str, Any]) -> None:
    p = job["progress"]
    assert job["state"] == "succeeded", job["error"]
    assert p["total"] and p["total"] > 1 and p["step"] == p["total"], p
    assert {k: p.get(k) for k in DONE} == DONE, p
    assert job["attempts"] == 1, job["attempts"]


def test_a_video_job_counts_its_frames(stack: Stack) -> None:
    job = stack.submit("render_video", {"model_id": "demo", "seed": 2, "frames": 96, "size": 128})
    job, seen = watch(stack, job["id"])
    assert_finished(job)
    frames = [p for p in seen if re.fullmatch(r"rendering frames \d+/96", p["message"])]
    assert any(0 < p["step"] < 96 for p in frames), [p["message"] for p in seen]
    assert any(p["eta_s"] is not None and p["eta_s"] > 0 for p in frames), frames
    assert job["progress"]["total"] == 96 + 2 + 1  # frames, the two videos encoded, the upload


def test_a_mesh_job_reports_its_phases(stack: Stack) -> None:
    job = stack.submit("extract_mesh", {"model_id": "demo", "seed": 3})
    job, seen = watch(stack, job["id"])
    assert_finished(job)
    assert job["progress"]["total"] == 4
    phases = ("starting", "loading model", "generating the", "marching cubes", "writing and uploading")
    assert all(p["message"].startswith(phases) for p in seen), seen
    steps = [p["step"] for p in seen]
    assert steps == sorted(steps)


def test_training_says_what_it_does_before_and_between_steps(stack: Stack, trained: dict[str, Any]) -> None:
    dataset = trained["train"]["params"]["dataset_id"]
    params = {
        "dataset_id": dataset,
        "preset": "synthetic32",
        "steps": 6,
        "ckpt_every": 6,
        "log_every": 1,
        "batch": 4,
    }
    job, seen = watch(stack, stack.submit("train", params)["id"])
    assert_finished(job)
    messages = [p["message"] for p in seen]
    first_step = next(i for i, m in enumerate(messages) if re.fullmatch(r"step \d/6", m))
    assert any(m.startswith("building the model") for m in messages[:first_step]), messages
    steps = [p for p in seen if re.fullmatch(r"step \d/6", p["message"])]
    assert all(p["step"] == int(p["message"][5]) and p["total"] == 6 for p in steps)
    assert any(p["eta_s"] is not None for p in steps[1:]), steps  # measured from the steps' own rate


def test_preprocess_and_training_ran_their_tasks_once(trained: dict[str, Any]) -> None:
    """A preprocess job fans out into landmark and pose chunks (three of each here) and two chord
    callbacks: all of that is one attempt."""
    assert trained["prep"]["info"]["chunks"] >= 2
    assert_finished(trained["prep"])
    assert_finished(trained["train"])


def test_evaluate_reports_its_stages_and_computes_every_metric(stack: Stack, synthetic_zip: Path) -> None:
    """A synthetic dataset with its true depth attached, then the Deep3DFaceRecon outputs for the
    renders of a first evaluation (made here from those renders): the second evaluation computes all
    thirteen numbers of the report. (32 geometry renders: MTCNN finds a face in only some of the demo
    model's renders, and the landmark pose metric needs at least one.)"""
    ds = upload_dataset(stack, synthetic_zip)
    keep = lambda rel: rel.split("/")[0] in ("meta.json", "poses.json", "depth", "mask")  # noqa: E731
    r = stack.client.put(
        f"/v1/datasets/{ds}/ground-truth/synthetic", content=zip_of(synthetic_zip.parent, keep)
    )
    assert r.status_code == 200, r.text
    params = {"model_id": "demo", "dataset_id": ds, "n_fid": 16, "n_real": 16, "kid_subsets": 2,
              "kid_subset_size": 8, "n_identity": 16, "n_geometry": 32, "depth_tolerance": 1.0,
              "keep_images": True}  # fmt: skip

    job, seen = watch(stack, stack.submit("evaluate", params)["id"])
    assert_finished(job)
    messages = [p["message"] for p in seen]
    for pattern in (r"FID: \d+/16 fakes", r"identity: \d+/16 view pairs", r"geometry: \d+/32 renders"):
        assert any(re.fullmatch(pattern, m) for m in messages), (pattern, messages)
    assert job["progress"]["total"] == 16 + 16 + 16 + 32
    assert any(p["eta_s"] is not None and p["eta_s"] > 0 for p in seen), seen
    missing = {k for k, v in job["result"]["metrics"].items() if v is None}
    assert missing == {
        "depth_deep3dface_mean",
        "depth_deep3dface_std",
        "pose_deep3dface_mean",
        "pose_deep3dface_std",
    }

    geometry = next(a for a in job["artifacts"] if a["key"].endswith("/geometry.zip"))
    renders = httpx.get(geometry["url"], timeout=60)
    assert renders.status_code == 200
    r = stack.client.put(
        f"/v1/datasets/{ds}/ground-truth/deep3dface", content=deep3dface_zip(renders.content, first=8)
    )
    assert r.status_code == 200, r.text

    job, _ = watch(stack, stack.submit("evaluate", params)["id"])
    assert_finished(job)
    assert job["result"]["skipped"] == {}, job["result"]["skipped"]
    assert all(v is not None for v in job["result"]["metrics"].values()), job["result"]["metrics"]
