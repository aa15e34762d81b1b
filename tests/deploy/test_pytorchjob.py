"""services/trainer/pytorchjob.py: the manifest matches k8s/templates/pytorchjob.yaml and the gpu overlay."""

from __future__ import annotations

import copy
import shutil
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from services.common.settings import Settings
from services.trainer import pytorchjob as pj
from tests.deploy.tools import (
    GPU_POOL_LABEL,
    K8S,
    bad_env_names,
    find,
    kubernetes_validate,
    load_schema,
    objects,
)

TEMPLATE = K8S / "templates" / "pytorchjob.yaml"
EXAMPLE = dict(
    nnodes=2,
    nproc_per_node=8,
    train_args=[],
    image="gmpi/trainer:dev",
    namespace="gmpi",
)
needs_kubectl = pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed")


def example() -> dict[str, Any]:
    return pj.build_pytorchjob("example", **EXAMPLE)


def test_builder_matches_template() -> None:
    assert example() == yaml.safe_load(TEMPLATE.read_text())


def test_schema_and_pod_template_strict() -> None:
    job = example()
    jsonschema.validate(job, load_schema("pytorchjob"))
    worker = job["spec"]["pytorchReplicaSpecs"]["Worker"]
    pod_template = {
        "apiVersion": "v1",
        "kind": "PodTemplate",
        "metadata": {"name": "pytorchjob-worker", "namespace": "gmpi"},
        "template": worker["template"],
    }
    res = kubernetes_validate(yaml.safe_dump(pod_template))
    assert res.returncode == 0 and "passed" in res.stdout, res.stdout + res.stderr


def test_schema_rejects_mistakes() -> None:
    job = example()
    job["spec"]["elasticPolicy"]["rdzvBackend"] = "c10"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(job, load_schema("pytorchjob"))
    job = example()
    job["spec"]["pytorchReplicaSpecs"]["Worker"]["template"]["spec"]["containers"][0]["name"] = "trainer"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(job, load_schema("pytorchjob"))


def test_torchrun_rendezvous_and_resources() -> None:
    job = pj.build_pytorchjob("Job_42", **{**EXAMPLE, "nnodes": 4, "nproc_per_node": 2})
    name = job["metadata"]["name"]
    spec = job["spec"]
    c = spec["pytorchReplicaSpecs"]["Worker"]["template"]["spec"]["containers"][0]
    cmd = c["command"]
    # the node agent wraps torchrun: it stages data, adds the job's arguments, uploads checkpoints
    assert cmd[:6] == ["python", "-m", "services.trainer.node", "--job-id", "Job_42", "--"]
    torchrun = cmd[6:]
    assert torchrun[0] == "torchrun" and "--nnodes=4" in torchrun and "--nproc-per-node=2" in torchrun
    assert "--rdzv-backend=c10d" in torchrun and f"--rdzv-endpoint={name}-worker-0:{pj.RDZV_PORT}" in torchrun
    assert torchrun[torchrun.index("-m") + 1 :] == ["gmpi_core.train.cli"]
    extra = pj.build_pytorchjob("x", **{**EXAMPLE, "train_args": ["--batch", "4"]})
    cmd = extra["spec"]["pytorchReplicaSpecs"]["Worker"]["template"]["spec"]["containers"][0]["command"]
    assert cmd[-3:] == ["gmpi_core.train.cli", "--batch", "4"]
    assert spec["elasticPolicy"]["rdzvPort"] == pj.RDZV_PORT == c["ports"][0]["containerPort"]
    assert spec["elasticPolicy"]["minReplicas"] == spec["elasticPolicy"]["maxReplicas"] == 4
    assert spec["pytorchReplicaSpecs"]["Worker"]["replicas"] == 4
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 2
    pod = spec["pytorchReplicaSpecs"]["Worker"]["template"]["spec"]
    assert {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "16Gi"}} in pod["volumes"]
    assert not bad_env_names({e["name"] for e in c["env"]})
    elastic = pj.build_pytorchjob("x", **{**EXAMPLE, "nnodes": 4, "min_nnodes": 2})
    assert (
        "--nnodes=2:4"
        in elastic["spec"]["pytorchReplicaSpecs"]["Worker"]["template"]["spec"]["containers"][0]["command"]
    )
    with pytest.raises(ValueError):
        pj.build_pytorchjob("x", **{**EXAMPLE, "nnodes": 0})


@pytest.mark.parametrize(
    "job_id", ["example", "Job_42", "a" * 200, "--", "0f8e2c1d-4b6a-4c8e-9a1b-2c3d4e5f6a7b"]
)
def test_job_names_are_dns_labels(job_id: str) -> None:
    name = pj.job_name(job_id)
    name_schema = load_schema("pytorchjob")["properties"]["metadata"]["properties"]["name"]
    jsonschema.validate(name + "-worker-0", name_schema)
    assert len(name) <= 45
    assert pj.job_name(job_id) == name


@needs_kubectl
def test_placement_and_references_match_gpu_overlay() -> None:
    objs = objects("gpu")
    job = example()
    pod = job["spec"]["pytorchReplicaSpecs"]["Worker"]["template"]["spec"]
    trainer = find(objs, "Deployment", "trainer")["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {GPU_POOL_LABEL: trainer["nodeSelector"][GPU_POOL_LABEL]}
    assert pod["tolerations"] == trainer["tolerations"]
    assert pod["securityContext"] == trainer["securityContext"]
    refs = pod["containers"][0]["envFrom"]
    assert refs == trainer["containers"][0]["envFrom"]
    assert find(objs, "ConfigMap", refs[0]["configMapRef"]["name"])
    assert job["metadata"]["namespace"] == find(objs, "Deployment", "trainer")["metadata"]["namespace"]


class FakeKube(pj.KubeClient):
    def __init__(self, replies: list[tuple[int, dict[str, Any]]]):
        super().__init__("https://k8s.invalid", None, None)
        self.replies = replies
        self.calls: list[tuple[str, str, Any]] = []

    def request(
        self, method: str, path: str, body: dict[str, Any] | None = None
    ) -> tuple[int, dict[str, Any]]:
        self.calls.append((method, path, copy.deepcopy(body)))
        return self.replies.pop(0)


def FakeSettings() -> Settings:
    return Settings(k8s_namespace="team-a", task_time_limit_s=60)


def test_submit_uses_own_image_and_is_idempotent(monkeypatch) -> None:
    monkeypatch.setenv("HOSTNAME", "trainer-abc")
    monkeypatch.delenv("GMPI_TRAINER_IMAGE", raising=False)
    kube = FakeKube([(200, {"spec": {"containers": [{"image": "reg/gmpi/trainer:1.2"}]}}), (201, {})])
    name = pj.submit_pytorchjob(
        "j1", nnodes=2, nproc_per_node=4, train_args=["--steps", "5"], settings=FakeSettings(), client=kube
    )
    assert name == "gmpi-train-j1"
    (m1, p1, _), (m2, p2, body) = kube.calls
    assert (m1, p1) == ("GET", "/api/v1/namespaces/team-a/pods/trainer-abc")
    assert (m2, p2) == ("POST", "/apis/kubeflow.org/v1/namespaces/team-a/pytorchjobs")
    assert body["metadata"]["namespace"] == "team-a"
    assert (
        body["spec"]["pytorchReplicaSpecs"]["Worker"]["template"]["spec"]["containers"][0]["image"]
        == "reg/gmpi/trainer:1.2"
    )
    again = FakeKube([(409, {"message": "already exists"})])
    assert (
        pj.submit_pytorchjob(
            "j1", nnodes=2, nproc_per_node=4, train_args=[], settings=FakeSettings(), client=again, image="x"
        )
        == name
    )


@pytest.mark.parametrize("status,hint", [(404, "training-operator"), (403, "rbac.yaml"), (500, "HTTP 500")])
def test_submit_errors_explain(status: int, hint: str) -> None:
    kube = FakeKube([(status, {"message": "nope"})])
    with pytest.raises(pj.PyTorchJobError, match=hint):
        pj.submit_pytorchjob(
            "j", nnodes=2, nproc_per_node=1, train_args=[], settings=FakeSettings(), client=kube, image="x"
        )


def cond(*types: str) -> dict[str, Any]:
    return {"status": {"conditions": [{"type": t, "status": "True", "message": f"{t} msg"} for t in types]}}


def test_wait_reports_progress_until_success() -> None:
    kube = FakeKube(
        [
            (200, {}),
            (200, cond("Created")),
            (200, cond("Created", "Running")),
            (200, cond("Created", "Running", "Succeeded")),
        ]
    )
    seen: list[str] = []
    status = pj.wait_pytorchjob("j", FakeSettings(), lambda s, _: seen.append(s), client=kube, poll_s=0)
    assert seen == ["created", "running", "succeeded"] and status["conditions"]


def test_wait_raises_on_failure_and_timeout() -> None:
    kube = FakeKube([(200, cond("Created", "Running", "Failed"))])
    with pytest.raises(pj.PyTorchJobError, match="Failed msg"):
        pj.wait_pytorchjob("j", FakeSettings(), None, client=kube, poll_s=0)
    kube = FakeKube([(200, cond("Running"))])
    with pytest.raises(TimeoutError):
        pj.wait_pytorchjob("j", FakeSettings(), None, client=kube, poll_s=0, timeout_s=0)
    with pytest.raises(pj.PyTorchJobError, match="disappeared"):
        pj.wait_pytorchjob("j", FakeSettings(), None, client=FakeKube([(404, {})]), poll_s=0)


def test_in_cluster_requires_a_pod(monkeypatch) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(pj.PyTorchJobError, match="service-account"):
        pj.KubeClient.in_cluster()
    assert Path(pj.SA_DIR).name == "serviceaccount"


def test_wait_deletes_the_job_when_told_to_stop() -> None:
    kube = FakeKube([(200, cond("Created", "Running")), (200, {"status": "Success"})])
    asked = []

    def stop() -> bool:
        asked.append(1)
        return True

    with pytest.raises(pj.PyTorchJobCancelled, match="cancelled"):
        pj.wait_pytorchjob("j", FakeSettings(), None, client=kube, poll_s=5, should_stop=stop)
    (m1, _, _), (m2, p2, body) = kube.calls
    assert (m1, m2) == ("GET", "DELETE") and p2.endswith("/namespaces/team-a/pytorchjobs/j")
    assert body["propagationPolicy"] == "Foreground" and asked
