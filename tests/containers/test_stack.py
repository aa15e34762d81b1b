"""The containerised stack, end to end: every service healthy through its own image HEALTHCHECK on host
networking only; the REST happy path (upload → preprocess → train → render → evaluate) through the
containerised gateway and workers; the demo model in a fresh stack; a SIGKILLed trainer container
that resumes after `docker compose up`; and `down -v` leaving nothing behind (last: it ends the stack)."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import httpx
import PIL.Image
import pytest

from tests.containers.conftest import ContainerStack
from tests.e2e.conftest import API_KEY, ROOT, upload_dataset

pytestmark = [pytest.mark.containers, pytest.mark.slow, pytest.mark.timeout(3600)]

SERVICES = {"gateway", "landmarks", "pose", "trainer", "evaluator", "renderer"}


@pytest.fixture(scope="module")
def cdataset(cstack: ContainerStack, synthetic_zip: Path) -> str:
    return upload_dataset(cstack, synthetic_zip)


@pytest.fixture(scope="module")
def ctrained(cstack: ContainerStack, cdataset: str) -> dict[str, Any]:
    prep = cstack.submit("preprocess", {"dataset_id": cdataset, "chunk_size": 8})
    prep = cstack.wait(prep["id"], timeout=600)
    assert prep["state"] == "succeeded", (prep, cstack.log("landmarks"), cstack.log("pose"))
    params = {"dataset_id": cdataset, "preset": "synthetic32", "steps": 8, "ckpt_every": 4, "log_every": 1,
              "batch": 4}  # fmt: skip
    train = cstack.wait(cstack.submit("train", params)["id"], timeout=900)
    assert train["state"] == "succeeded", (train, cstack.log("trainer"))
    return {"prep": prep, "train": train, "model_id": train["result"]["model_id"]}


def test_every_service_is_healthy_by_its_image_healthcheck_on_host_networking(cstack: ContainerStack) -> None:
    by_service = {c["Config"]["Labels"]["com.docker.compose.service"]: c for c in cstack.containers()}
    assert SERVICES | {"redis", "minio", "preflight", "store-init", "bucket-init"} <= set(by_service), sorted(
        by_service
    )
    for name in SERVICES:
        c = by_service[name]
        assert c["State"]["Health"]["Status"] == "healthy", (name, c["State"])
        # the image's own HEALTHCHECK (compose.yaml sets none for our services)
        assert c["Config"]["Healthcheck"]["Test"] == ["CMD", "python", "-m", "services", "health"], name
        assert c["Config"]["User"] == "10001:10001", name
    for one_shot in ("preflight", "store-init", "bucket-init"):
        state = by_service[one_shot]["State"]
        assert state["Status"] == "exited" and state["ExitCode"] == 0, (one_shot, state)
    for name, c in by_service.items():
        assert c["HostConfig"]["NetworkMode"] == "host", (name, c["HostConfig"]["NetworkMode"])
    label = f"label=com.docker.compose.project={cstack.project}"
    networks = cstack.docker("network", "ls", "-q", "--filter", label)
    assert networks.strip() == "", "compose created a network; containers here must use host networking only"


def test_the_running_stack_uses_its_least_privileged_identities(cstack: ContainerStack) -> None:
    """Redis refuses clients without the password; the gateway's and workers' S3 users are not the root
    account and may not create buckets (SeaweedFS stands in for MinIO here)."""
    import subprocess

    def env(service: str) -> dict[str, str]:
        return dict(e.split("=", 1) for e in cstack.container(service)["Config"]["Env"])

    store = env("minio")
    gateway, worker = env("gateway"), env("landmarks")
    assert gateway["GMPI_S3_ACCESS_KEY"] not in (store["S3_ROOT_USER"], worker["GMPI_S3_ACCESS_KEY"])
    assert store["S3_ROOT_PASSWORD"] not in (gateway["GMPI_S3_SECRET_KEY"], worker["GMPI_S3_SECRET_KEY"])
    cid = cstack.container("redis")["Id"]
    port = cstack.env["GMPI_STACK_REDIS_PORT"]
    cmd = ["docker", "exec", cid, "env", "-u", "REDISCLI_AUTH", "redis-cli", "-p", port, "ping"]
    noauth = subprocess.run(cmd, env=cstack.env, capture_output=True, text=True, timeout=60)
    assert "NOAUTH" in noauth.stdout + noauth.stderr, noauth
    code = (
        "from minio import Minio; from minio.error import S3Error; import os\n"
        "c = Minio(os.environ['GMPI_S3_ENDPOINT'], os.environ['GMPI_S3_ACCESS_KEY'],"
        " os.environ['GMPI_S3_SECRET_KEY'], secure=False)\n"
        "assert c.bucket_exists(os.environ['GMPI_S3_BUCKET'])\n"
        "try:\n    c.make_bucket('gmpi-not-allowed')\nexcept S3Error as e:\n    print(e.code)\n"
    )
    out = subprocess.run(["docker", "exec", cstack.container("gateway")["Id"], "python", "-c", code],
                         env=cstack.env, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert out.returncode == 0 and out.stdout.strip() == "AccessDenied", out


def test_the_health_command_is_not_a_constant(cstack: ContainerStack) -> None:
    """`python -m services health` passes in a running worker, and fails when the role is unknown or the
    worker's broker does not answer."""
    import subprocess

    cid = cstack.container("pose")["Id"]

    def health(*env: str) -> subprocess.CompletedProcess[str]:
        cmd = ["docker", "exec", *(f"-e{e}" for e in env), cid, "timeout", "30", "python", "-m", "services"]
        cmd.append("health")
        return subprocess.run(cmd, env=cstack.env, capture_output=True, text=True, timeout=90)

    assert health().returncode == 0
    no_role = health("GMPI_RUN_DIR=/nonexistent")
    assert no_role.returncode == 1 and "no role recorded" in no_role.stderr, no_role
    closed = _closed_port()
    no_broker = health(f"GMPI_REDIS_URL=redis://127.0.0.1:{closed}/0")
    assert no_broker.returncode != 0, no_broker


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_fresh_stack_shows_the_demo_model(cstack: ContainerStack) -> None:
    page = httpx.get(cstack.base_url + "/", timeout=30)  # the viewer ships in the gateway image
    assert page.status_code == 200 and "text/html" in page.headers["content-type"], page.text[:200]
    models = {m["id"]: m for m in cstack.client.get("/v1/models").json()["items"]}
    assert "demo" in models and models["demo"]["source"] == "demo", models
    r = cstack.client.get("/v1/models/demo/mpi", params={"seed": 1, "planes": 8})
    assert r.status_code == 200, r.text
    plane = cstack.client.get(r.json()["planes"][0]["url"])
    assert plane.status_code == 200 and PIL.Image.open(io.BytesIO(plane.content)).mode == "RGBA"
    view = cstack.client.post("/v1/models/demo/render", json={"seed": 1, "yaw": 0.2})
    assert view.status_code == 200 and view.headers["content-type"] == "image/png", view.text[:300]
    assert PIL.Image.open(io.BytesIO(view.content)).size == (64, 64)


def test_rest_happy_path_through_the_containers(cstack: ContainerStack, ctrained: dict[str, Any]) -> None:
    prep, train = ctrained["prep"], ctrained["train"]
    assert prep["metrics"]["landmarks_detected"] >= 12 and prep["metrics"]["poses_written"] >= 1
    keys = {a["key"].rsplit("/", 1)[-1]: a for a in train["artifacts"]}
    steps = [json.loads(line)["step"] for line in httpx.get(keys["log.jsonl"]["url"]).text.splitlines()]
    assert steps == list(range(1, 9))
    mid = ctrained["model_id"]
    views = []
    for yaw in (-0.4, 0.4):
        r = cstack.client.post(f"/v1/models/{mid}/render", json={"seed": 3, "yaw": yaw})
        assert r.status_code == 200 and r.headers["content-type"] == "image/png", r.text[:300]
        views.append(PIL.Image.open(io.BytesIO(r.content)))
    assert views[0].size == (32, 32) and views[0].tobytes() != views[1].tobytes()
    params = {"model_id": mid, "dataset_id": train["params"]["dataset_id"], "metrics": ["fid", "kid"],
              "n_fid": 8, "n_real": 8, "kid_subsets": 2, "kid_subset_size": 4}  # fmt: skip
    ev = cstack.wait(cstack.submit("evaluate", params)["id"], timeout=900)
    assert ev["state"] == "succeeded", (ev, cstack.log("evaluator"))
    report = next(a for a in ev["artifacts"] if a["key"].endswith("report.json"))
    assert json.loads(httpx.get(report["url"]).text)["metrics"]["fid"] == pytest.approx(ev["metrics"]["fid"])


def test_a_killed_trainer_container_resumes_after_compose_up(
    cstack: ContainerStack, ctrained: dict[str, Any]
) -> None:
    params = {"dataset_id": ctrained["train"]["params"]["dataset_id"], "preset": "synthetic32", "steps": 16,
              "ckpt_every": 4, "log_every": 1, "batch": 4}  # fmt: skip
    job = cstack.submit("train", params)
    running = cstack.wait(
        job["id"], timeout=900, until=lambda j: j["info"].get("last_checkpoint_step", 0) >= 4
    )
    assert running["state"] == "running", running
    cstack.sh("kill", "trainer", "KILL")  # docker compose kill -s KILL: tini, the worker and torchrun die
    state = cstack.container("trainer")["State"]
    assert state["Status"] == "exited", state
    cstack.sh("start", "trainer")  # docker compose up -d --wait trainer
    done = cstack.wait(job["id"], timeout=900)
    assert done["state"] == "succeeded", (done, cstack.log("trainer"))
    assert done["attempts"] >= 2 and done["info"]["resumed_from_step"] >= 4, done
    log = next(a for a in done["artifacts"] if a["key"].endswith("log.jsonl"))
    steps = [json.loads(line)["step"] for line in httpx.get(log["url"]).text.splitlines()]
    assert steps == list(range(1, 17)), steps  # no step lost, none repeated


def quickstart_block() -> str:
    """The block of docs/deploy.md marked as executed verbatim."""
    text = (ROOT / "docs" / "deploy.md").read_text()
    marker = text.index("<!-- quickstart: executed verbatim")
    start = text.index("```bash\n", marker) + len("```bash\n")
    return text[start : text.index("```", start)]


def test_the_deploy_quickstart_runs_verbatim(cstack: ContainerStack, tmp_path: Path) -> None:
    """docs/deploy.md's quickstart, as written: synthetic data from the image, dataset upload,
    preprocess, a (short) training, a render saved as view.png."""
    import subprocess

    env = {**cstack.env, "GMPI_URL": cstack.base_url, "GMPI_API_KEY": API_KEY, "STEPS": "8"}
    out = subprocess.run(["bash", "-euo", "pipefail", "-c", quickstart_block()], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=1200)  # fmt: skip
    assert out.returncode == 0, f"{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    view = PIL.Image.open(tmp_path / "view.png")
    assert view.format == "PNG" and view.size == (32, 32)
    assert "succeeded" in out.stdout and "view.png: model model-" in out.stdout


def test_down_removes_every_container_volume_and_network(cstack: ContainerStack) -> None:
    """Last in the module: `docker compose down -v` ends the stack and leaves nothing of it (the fixture's
    `stack.sh down --docker` then also stops the engine, if it started one)."""
    label = f"label=com.docker.compose.project={cstack.project}"
    assert cstack.docker("volume", "ls", "-q", "--filter", label).split(), "the stack has named volumes"
    cstack.sh("compose", "down", "-v", "--remove-orphans", timeout=300)
    assert cstack.docker("ps", "-aq", "--filter", label).strip() == ""
    assert cstack.docker("volume", "ls", "-q", "--filter", label).strip() == ""
    assert cstack.docker("network", "ls", "-q", "--filter", label).strip() == ""
