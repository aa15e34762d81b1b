"""The PyTorchJob node agent (``python -m services.trainer.node``) as the pods run it: two "nodes" with
their own cache folders (no shared disk) around a two-node torchrun, against the real Redis and S3."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from services.common.jobs import JobStore
from services.common.settings import Settings
from services.common.storage import get_storage
from services.trainer.node import holds_final_model, with_job_args
from tests.timing import scaled

REPO = Path(__file__).resolve().parents[2]


def test_job_arguments_go_after_the_module_and_before_extras() -> None:
    cmd = ["torchrun", "--nnodes=2", "-m", "gmpi_core.train.cli", "--batch", "4"]
    assert with_job_args(cmd, ["--steps", "9"]) == [
        "torchrun", "--nnodes=2", "-m", "gmpi_core.train.cli", "--steps", "9", "--batch", "4",
    ]  # fmt: skip
    with pytest.raises(SystemExit, match="must run a module"):
        with_job_args(["torchrun", "train.py"], [])


def test_only_the_folder_rank0_finished_in_publishes(tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert not holds_final_model(run, 4)
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "latest").write_text("ckpt_0000004.pt\n")
    (run / "model").mkdir()
    (run / "model" / "config.json").write_text("{}")
    (run / "log.jsonl").write_text(json.dumps({"step": 3}) + "\n")
    assert not holds_final_model(run, 4)  # restored log of an earlier rank 0, not this run's end
    (run / "log.jsonl").write_text(json.dumps({"step": 3}) + "\n" + json.dumps({"step": 4}) + "\n")
    assert holds_final_model(run, 4) and not holds_final_model(run, 6)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run_nodes(job_id: str, caches: list[Path]) -> list[str]:
    port = _free_port()
    procs = []
    for rank, cache in enumerate(caches):
        env = {**os.environ, "GMPI_CACHE_DIR": str(cache), "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
        for k in ("LOCAL_RANK", "RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
            env.pop(k, None)
        cmd = [
            sys.executable, "-m", "services.trainer.node", "--job-id", job_id, "--",
            sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc-per-node=1",
            f"--node-rank={rank}", "--master-addr=127.0.0.1", f"--master-port={port}",
            "-m", "gmpi_core.train.cli",
        ]  # fmt: skip
        procs.append(subprocess.Popen(cmd, env=env, cwd=REPO, stderr=subprocess.PIPE, text=True))
    logs = [p.communicate(timeout=scaled(400))[1] for p in procs]
    for p, err in zip(procs, logs, strict=True):
        assert p.returncode == 0, err[-4000:]
    return logs


def _stored_steps(storage: Any, job_id: str) -> list[int]:
    text = storage.get_bytes(f"jobs/{job_id}/log.jsonl").decode()
    return [json.loads(line)["step"] for line in text.splitlines()]


@pytest.mark.slow
def test_two_node_agents_train_publish_and_resume_from_the_store(settings: Settings, tmp_path: Path) -> None:
    from gmpi_core.data.synthetic import synthesize_dataset

    storage = get_storage(settings)
    storage.ensure_ready()
    data = synthesize_dataset(tmp_path / "synth", 32, 8, seed=0, progress=False)
    storage.put_file("datasets/ds-node/images.zip", data / "images.zip")
    storage.upload_dir(data / "poses", "datasets/ds-node/poses/")
    jobs = JobStore.from_url(settings.redis_url)
    params = {
        "dataset_id": "ds-node", "model_id": "model-node", "preset": "synthetic32", "steps": 4,
        "ckpt_every": 2, "log_every": 1, "batch": 2, "planes": 4, "device": "cpu",
    }  # fmt: skip
    rec, _ = jobs.create("train", params)
    job_id = rec["id"]
    jobs.transition(job_id, "running")  # as the trainer worker's task does before submitting
    caches = [tmp_path / "node0", tmp_path / "node1"]

    logs = _run_nodes(job_id, caches)
    assert sum("published model model-node" in log for log in logs) == 1, logs
    manifest = storage.manifest("models/model-node/")
    assert manifest is not None and "weights.safetensors" in json.dumps(manifest)
    assert storage.get_bytes("models/model-node/train-state/latest").decode().strip() == "ckpt_0000004.pt"
    assert _stored_steps(storage, job_id) == [1, 2, 3, 4]
    job = jobs.get(job_id)
    assert job["progress"]["step"] == 4 and "loss_g" in job["metrics"]
    assert "models/model-node/weights.safetensors" in job["artifacts"]

    # a longer run of the same job (as after a pod restart): both nodes restore step 4 from the store;
    # rank 0 moves to the other node, whose restored log must not be overwritten by the old one's
    jobs.update(job_id, params={**params, "steps": 6})
    logs = _run_nodes(job_id, caches[::-1])
    assert jobs.get(job_id)["info"]["resumed_from_step"] == 4
    assert storage.get_bytes("models/model-node/train-state/latest").decode().strip() == "ckpt_0000006.pt"
    assert _stored_steps(storage, job_id) == [1, 2, 3, 4, 5, 6]
    stored = {k.rsplit("/", 1)[1] for k in storage.list("models/model-node/train-state/")}
    assert stored == {"latest", "ckpt_0000004.pt", "ckpt_0000006.pt"}
    assert jobs.get(job_id)["progress"]["step"] == 6


def test_a_job_that_already_ended_runs_nothing(settings: Settings) -> None:
    from services.trainer.node import run_node

    jobs = JobStore.from_url(settings.redis_url)
    rec, _ = jobs.create("train", {"dataset_id": "x", "model_id": "m", "steps": 1})
    jobs.transition(rec["id"], "cancelled")
    assert run_node(rec["id"], ["false", "-m", "never.runs"]) == 0
    assert run_node("job-missing", ["false", "-m", "never.runs"]) == 2


def test_a_missing_dataset_fails_the_job_without_restarts(settings: Settings) -> None:
    from services.trainer.node import run_node

    get_storage(settings).ensure_ready()
    jobs = JobStore.from_url(settings.redis_url)
    params = {"dataset_id": "ds-none", "model_id": "m", "preset": "synthetic32", "steps": 1}
    rec, _ = jobs.create("train", params)
    jobs.transition(rec["id"], "running")
    assert run_node(rec["id"], ["false", "-m", "never.runs"]) == 2
    job = jobs.get(rec["id"])
    assert job["state"] == "failed" and "ds-none" in job["error"]["message"]


class _FakeCluster:
    """The Kubernetes API (cannot run here): PyTorchJob create / get / delete with scripted states."""

    def __init__(self, states: list[str]) -> None:
        self.states, self.calls = states, []

    def request(self, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, dict]:
        self.calls.append((method, path))
        if method == "POST":
            return 201, {}
        if method == "DELETE":
            return 200, {}
        state = self.states.pop(0) if len(self.states) > 1 else self.states[0]
        return 200, {"status": {"conditions": [{"type": state, "status": "True"}]}}


def _k8s_ctx(settings: Settings, monkeypatch: pytest.MonkeyPatch, cluster: _FakeCluster) -> Any:
    from services.common.tasks import JobContext
    from services.trainer import pytorchjob

    monkeypatch.setattr(pytorchjob.KubeClient, "in_cluster", classmethod(lambda cls: cluster))
    monkeypatch.setenv("GMPI_TRAINER_IMAGE", "gmpi/trainer:test")
    get_storage(settings).ensure_ready()
    jobs = JobStore.from_url(settings.redis_url)
    params = {"dataset_id": "d", "model_id": "model-k8s", "preset": "synthetic32", "steps": 3, "gpus": 16}
    rec, _ = jobs.create("train", params)
    jobs.transition(rec["id"], "running")
    return JobContext(rec["id"], params, jobs, get_storage(settings), settings, job_type="train")


def test_k8s_training_without_a_published_model_is_an_error(settings: Settings, monkeypatch) -> None:
    from services.trainer import pytorchjob
    from services.trainer.tasks import _k8s_train

    monkeypatch.setattr(pytorchjob, "POLL_S", 0.01)
    cluster = _FakeCluster(["Created", "Running", "Succeeded"])
    ctx = _k8s_ctx(settings, monkeypatch, cluster)
    with pytest.raises(RuntimeError, match=r"no node published model model-k8s.*logs"):
        _k8s_train(ctx, nproc=8)
    assert cluster.calls[0][0] == "POST" and ctx.jobs.get(ctx.job_id)["info"]["nnodes"] == 2

    ctx.storage.put_bytes("models/model-k8s/config.json", b"{}", "application/json")
    ctx.storage.commit("models/model-k8s/", {}, {"model_id": "model-k8s"})
    cluster.states = ["Succeeded"]
    assert _k8s_train(ctx, nproc=8)["pytorchjob"] == pytorchjob.job_name(ctx.job_id)


def test_cancelling_a_k8s_training_deletes_its_pytorchjob(settings: Settings, monkeypatch) -> None:
    from services.common.tasks import JobCancelled
    from services.trainer.tasks import _k8s_train

    cluster = _FakeCluster(["Running"])
    ctx = _k8s_ctx(settings, monkeypatch, cluster)
    ctx.jobs.transition(ctx.job_id, "cancelled")
    with pytest.raises(JobCancelled):
        _k8s_train(ctx, nproc=8)
    assert [m for m, _ in cluster.calls] == ["POST", "GET", "DELETE"]


def test_the_node_agent_never_logs_the_redis_password() -> None:
    from services.trainer.node import _redacted

    assert _redacted("redis://:s3cret@redis:6379/0") == "redis://:***@redis:6379/0"
    assert _redacted("redis://gmpi:p%40ss@10.0.0.1:6379/1") == "redis://gmpi:***@10.0.0.1:6379/1"
    assert _redacted("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"
