"""k8s/: each overlay renders, passes kubernetes-validate --strict, and places every worker correctly."""

from __future__ import annotations

import shutil
from typing import Any

import jsonschema
import pytest

from tests.deploy.tools import (
    APP_UID,
    CPU_IMAGES,
    GPU_IMAGES,
    GPU_POOL_LABEL,
    GPU_TAINT_KEY,
    OVERLAYS,
    QUEUES,
    bad_env_names,
    dockerfile_queue,
    find,
    is_crd_object,
    kubernetes_validate,
    kustomize,
    load_schema,
    objects,
    pod_specs,
    split_crds,
)

pytestmark = pytest.mark.skipif(
    shutil.which("kubectl") is None, reason="kubectl (for kustomize) not installed"
)


def deployments(overlay: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in objects(overlay) if o["kind"] == "Deployment"}


def container(dep: dict[str, Any]) -> dict[str, Any]:
    return dep["spec"]["template"]["spec"]["containers"][0]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_kubernetes_validate_strict(overlay: str) -> None:
    core, crds = split_crds(kustomize(overlay))
    res = kubernetes_validate(core)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out
    assert "Couldn't find schema" not in out, out  # an unknown kind would pass silently otherwise
    n_core = len([o for o in objects(overlay) if not is_crd_object(o)])
    assert out.count("passed for resource") == n_core >= 20
    assert {o["kind"] for o in crds} == {"ScaledObject", "TriggerAuthentication"}


def test_strict_validation_catches_typos() -> None:
    res = kubernetes_validate(
        "apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec:\n  portz: [{port: 80}]\n"
    )
    assert res.returncode != 0


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_scaledobjects_match_schema_and_queues(overlay: str) -> None:
    schema = load_schema("scaledobject")
    objs = objects(overlay)
    scaled = {o["spec"]["scaleTargetRef"]["name"]: o for o in objs if o["kind"] == "ScaledObject"}
    for obj in scaled.values():
        jsonschema.validate(obj, schema)
    deps = deployments(overlay)
    redis_svc = find(objs, "Service", "redis")
    for queue, image in QUEUES.items():
        dep = deps[image]
        args = container(dep)["args"]
        assert args == ["python", "-m", "services", "worker", queue] and dockerfile_queue(image) == queue
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):  # the images' own health check
            if probe in container(dep):
                assert container(dep)[probe]["exec"]["command"] == ["python", "-m", "services", "health"]
        assert container(dep)["image"].split(":")[0].endswith(f"gmpi/{image}")
        trigger = scaled[image]["spec"]["triggers"][0]
        assert trigger["type"] == "redis" and trigger["metadata"]["listName"] == queue
        # KEDA's operator resolves the address from its own namespace: it must name ours in full
        host, port = trigger["metadata"]["address"].rsplit(":", 1)
        assert host == f"redis.{dep['metadata']['namespace']}.svc.cluster.local", host
        assert int(port) == redis_svc["spec"]["ports"][0]["port"]
        assert scaled[image]["metadata"]["namespace"] == dep["metadata"]["namespace"]
    assert set(scaled) == set(QUEUES.values())


def test_scaledobject_schema_rejects_mistakes() -> None:
    obj = next(o for o in objects("gpu") if o["kind"] == "ScaledObject")
    bad = {**obj, "spec": {**obj["spec"], "triggers": [{"type": "redis", "metadata": {"listLength": 5}}]}}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, load_schema("scaledobject"))


def test_gpu_overlay_places_gpu_workers() -> None:
    deps = deployments("gpu")
    for image in GPU_IMAGES:
        spec = deps[image]["spec"]["template"]["spec"]
        assert spec.get("nodeSelector", {}).get(GPU_POOL_LABEL) == "gpu", image
        assert any(
            t["key"] == GPU_TAINT_KEY and t.get("effect") == "NoSchedule" for t in spec.get("tolerations", [])
        ), image
        limits = container(deps[image])["resources"]["limits"]
        assert int(limits.get("nvidia.com/gpu", 0)) >= 1, f"{image} requests no GPU"
        requests = container(deps[image])["resources"]["requests"]
        assert "nvidia.com/gpu" not in requests or requests["nvidia.com/gpu"] == limits["nvidia.com/gpu"]
        assert (
            any(v.get("emptyDir", {}).get("medium") == "Memory" for v in spec["volumes"])
            or image == "renderer"
        )


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_cpu_workers_stay_off_gpu_nodes(overlay: str) -> None:
    deps = deployments(overlay)
    for image in CPU_IMAGES:
        spec = deps[image]["spec"]["template"]["spec"]
        assert not spec.get("tolerations"), f"{image} tolerates a taint"
        assert "nvidia.com/gpu" not in str(container(deps[image])["resources"]), image
        terms = spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        exprs = [e for t in terms["nodeSelectorTerms"] for e in t["matchExpressions"]]
        assert {"key": GPU_POOL_LABEL, "operator": "NotIn", "values": ["gpu"]} in exprs, image


def test_cpu_dev_requests_no_gpus() -> None:
    assert "nvidia.com/gpu" not in kustomize("cpu-dev")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_security_probes_resources(overlay: str) -> None:
    for name, spec in pod_specs(objects(overlay)):
        psc = spec.get("securityContext", {})
        assert psc.get("runAsNonRoot") is True, name
        assert psc.get("seccompProfile", {}).get("type") == "RuntimeDefault", name
        for c in spec["containers"]:
            sc = c.get("securityContext", {})
            assert sc.get("allowPrivilegeEscalation") is False, name
            assert sc.get("capabilities", {}).get("drop") == ["ALL"], name
            assert c["resources"].get("requests") and c["resources"].get("limits", {}).get("memory"), name
            if c["image"].startswith("gmpi/"):
                assert psc.get("runAsUser") == APP_UID, name
            if not name.startswith("Job/"):
                assert "livenessProbe" in c and "readinessProbe" in c, f"{name}: probes"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_env_vars_are_settings(overlay: str) -> None:
    objs = objects(overlay)
    settings = find(objs, "ConfigMap", "gmpi-settings")
    assert not bad_env_names(set(settings["data"]))
    for name, spec in pod_specs(objs):
        for c in spec["containers"]:
            if c["image"].startswith("gmpi/"):
                assert not bad_env_names({e["name"] for e in c.get("env", [])}), name
    # the Secrets our containers take whole (envFrom) hold settings only; gmpi-store-secrets is MinIO's
    ours = {
        ref["secretRef"]["name"]
        for _, spec in pod_specs(objs)
        for c in spec["containers"]
        if c["image"].startswith("gmpi/")
        for ref in c.get("envFrom", [])
        if "secretRef" in ref
    }
    assert ours == {"gmpi-secrets", "gmpi-gateway-secrets"}
    for s in (o for o in objs if o["kind"] == "Secret" and o["metadata"]["name"] in ours):
        assert not bad_env_names(set(s.get("data", {})) | set(s.get("stringData", {})))


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_references_resolve(overlay: str) -> None:
    """ConfigMaps, PDBs and services point at things that exist (secrets: generated in cpu-dev)."""
    objs = objects(overlay)
    names = {(o["kind"], o["metadata"]["name"]) for o in objs}
    for name, spec in pod_specs(objs):
        for c in spec["containers"]:
            for ref in c.get("envFrom", []):
                if "configMapRef" in ref:
                    assert ("ConfigMap", ref["configMapRef"]["name"]) in names, name
                if "secretRef" in ref and overlay == "cpu-dev":
                    assert ("Secret", ref["secretRef"]["name"]) in names, name
            for env in c.get("env", []):
                ref = env.get("valueFrom", {}).get("secretKeyRef")
                if ref and overlay == "cpu-dev":
                    secret = find(objs, "Secret", ref["name"])
                    assert ref["key"] in {**secret.get("data", {}), **secret.get("stringData", {})}, name
    deps = {o["metadata"]["name"] for o in objs if o["kind"] == "Deployment"}
    pdbs = {
        o["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"]
        for o in objs
        if o["kind"] == "PodDisruptionBudget"
    }
    assert deps <= pdbs, f"no PDB for {sorted(deps - pdbs)}"
    for ingress in (o for o in objs if o["kind"] == "Ingress"):
        backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
        assert ("Service", backend["name"]) in names
    assert ("Ingress", "gateway") in names or overlay == "cpu-dev"  # cpu-dev: port-forward only


def test_gpu_overlay_rbac_for_pytorchjobs() -> None:
    objs = objects("gpu")
    trainer = deployments("gpu")["trainer"]["spec"]["template"]["spec"]
    sa = trainer["serviceAccountName"]
    assert trainer["automountServiceAccountToken"] is True
    binding = next(o for o in objs if o["kind"] == "RoleBinding" and o["subjects"][0]["name"] == sa)
    role = find(objs, "Role", binding["roleRef"]["name"])

    def allowed(group: str, resource: str, verb: str) -> bool:
        return any(
            group in r["apiGroups"] and resource in r["resources"] and verb in r["verbs"]
            for r in role["rules"]
        )

    for verb in ("create", "get", "delete"):
        assert allowed("kubeflow.org", "pytorchjobs", verb), verb
    assert not allowed("", "pods", "get")  # the image comes from GMPI_TRAINER_IMAGE (test_security.py)
    settings = find(objs, "ConfigMap", "gmpi-settings")["data"]
    assert settings["GMPI_K8S_ENABLED"] == "true"
    for image in ("gateway", "landmarks", "pose", "evaluator", "renderer"):
        assert deployments("gpu")[image]["spec"]["template"]["spec"]["automountServiceAccountToken"] is False
