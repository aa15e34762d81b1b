"""The stack's pose job (``services.pose.tasks``) runs the better estimator by default: ``dlib68`` on the
dataset's images where dlib is installed, the 5-point ``mtcnn5`` when asked for or as the fallback.
Runs one chunk in-process with a stand-in for the job context (no Redis, no S3)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from gmpi_core.data.synthetic import synthesize_dataset
from gmpi_core.preprocess import pose68
from services.common.contracts import PreprocessParams

RES = 128


class FakeStorage:
    """A dict-backed store with the calls ``_chunk`` makes."""

    def __init__(self, files: dict[str, Path]) -> None:
        self.files: dict[str, bytes] = {k: v.read_bytes() for k, v in files.items()}

    def exists(self, key: str) -> bool:
        return key in self.files

    def get_json(self, key: str) -> Any:
        return json.loads(self.files[key])

    def put_json(self, key: str, value: Any) -> None:
        self.files[key] = json.dumps(value).encode()

    def get_file(self, key: str, target: Path) -> None:
        Path(target).parent.mkdir(parents=True, exist_ok=True)
        Path(target).write_bytes(self.files[key])

    def put_file(self, key: str, source: Path) -> None:
        self.files[key] = Path(source).read_bytes()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthesize_dataset(tmp_path_factory.mktemp("synth") / "d", res=RES, n=4, seed=5, progress=False)


def run_chunk(dataset: Path, tmp_path: Path, monkeypatch, pose: dict[str, str]) -> dict[str, Any]:
    from services.common import artifacts
    from services.common.keys import dataset_prefix
    from services.pose import tasks

    results = dataset / "landmarks/detections/results"
    rels = sorted(p.relative_to(results).as_posix() for p in results.rglob("*.txt"))
    prefix = dataset_prefix("ds1")
    storage = FakeStorage({prefix + tasks.RESULTS + r: results / r for r in rels})
    fetched = []

    def fetch(storage_: Any, cache_dir: str, dataset_id: str) -> Path:
        fetched.append(dataset_id)
        local = tmp_path / "cache" / "images.zip"
        local.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(dataset / "images.zip", local)
        return local

    monkeypatch.setattr(artifacts, "fetch_dataset_images", fetch)
    counters: dict[str, int] = {}

    def incr(job_id: str, name: str) -> int:
        counters[name] = counters.get(name, 0) + 1
        return counters[name]

    ctx = SimpleNamespace(
        job_id="job1",
        params=PreprocessParams.model_validate({"dataset_id": "ds1", "resolution": RES, "pose": pose}),
        storage=storage,
        settings=SimpleNamespace(cache_dir=str(tmp_path / "cache")),
        work_dir=str(tmp_path),
        check_cancelled=lambda: None,
        jobs=SimpleNamespace(incr_counter=incr, get=lambda job_id: {"info": {"pose_chunks": 1, "chunks": 1}}),
        progress=lambda *a, **k: None,
    )
    result = tasks._chunk(ctx, 0, rels)
    settings = json.loads(storage.files[prefix + "poses/pose_estimator.json"])
    mats = [k for k in storage.files if k.startswith(prefix + "poses/") and k.endswith(".mat")]
    return {"result": result, "settings": settings, "mats": mats, "fetched": fetched}


@pytest.mark.skipif(pose68.dlib68_unavailable_reason() is not None, reason="dlib68 not installed")
def test_the_pose_job_defaults_to_dlib68_on_the_dataset_images(dataset: Path, tmp_path: Path, monkeypatch):
    got = run_chunk(
        dataset, tmp_path, monkeypatch, {"template": "bfm", "calibration": "none", "intrinsics": "gmpi"}
    )
    assert got["settings"]["estimator"] == "dlib68" and got["settings"]["estimator_fallback"] is None
    assert got["fetched"] == ["ds1"] and len(got["mats"]) == 4 and got["result"]["written"] == 4


def test_the_pose_job_runs_mtcnn5_when_asked_without_fetching_images(
    dataset: Path, tmp_path: Path, monkeypatch
):
    got = run_chunk(dataset, tmp_path, monkeypatch, {"estimator": "mtcnn5"})
    assert got["settings"]["estimator"] == "mtcnn5" and got["settings"]["template"] == "bfm"
    assert got["fetched"] == [] and len(got["mats"]) == 4


def test_the_pose_job_falls_back_to_mtcnn5_without_dlib(dataset: Path, tmp_path: Path, monkeypatch):
    monkeypatch.setattr(pose68, "dlib68_unavailable_reason", lambda: "dlib is not installed (test)")
    with pytest.warns(UserWarning, match="not installed"):
        got = run_chunk(dataset, tmp_path, monkeypatch, {})
    assert (
        got["settings"]["estimator"] == "mtcnn5" and "not installed" in got["settings"]["estimator_fallback"]
    )
    assert got["fetched"] == [] and len(got["mats"]) == 4
