"""docs/deploy.md, "Images for a cluster" and the overlays' prerequisites: the commands and the kustomize
`images:` list it shows work with compose.yaml and the overlays as they are."""

from __future__ import annotations

import os
import re
import shlex
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.tools import IMAGES, K8S, OVERLAYS, REPO, compose_config, find, objects, run

DOC = REPO / "docs" / "deploy.md"
needs_kubectl = pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed")


def block(marker: str) -> str:
    """The fenced code block right after `<!-- deploy-docs: MARKER -->`."""
    m = re.search(rf"<!-- deploy-docs: {marker} -->\n```\w*\n(.*?)\n```", DOC.read_text(), re.S)
    assert m, f"docs/deploy.md has no block marked {marker}"
    return m.group(1)


def exports(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        if line.startswith("export "):
            for word in shlex.split(line)[1:]:
                k, _, v = word.partition("=")
                out[k] = v
    return out


def compose_commands(text: str) -> list[list[str]]:
    return [shlex.split(line) for line in text.splitlines() if line.startswith("docker compose ")]


def test_the_build_and_push_commands_name_real_services_and_variables() -> None:
    text = block("build-push")
    env = exports(text)
    assert set(env) == {"IMAGE_REGISTRY", "IMAGE_TAG"}
    compose_text = (REPO / "compose.yaml").read_text()
    assert all(f"${{{k}:-" in compose_text for k in env), "compose.yaml does not read these"
    cfg = compose_config("compose.yaml", env=env)["services"]
    cmds = compose_commands(text)
    assert [c[2] for c in cmds] == ["build", "push"]
    for cmd in cmds:
        services = cmd[3:]
        assert sorted(services) == sorted(IMAGES), cmd  # exactly the images the k8s manifests run
        for svc in services:
            assert cfg[svc]["build"]["target"] == svc  # a stage of docker/Dockerfile
            assert cfg[svc]["image"] == f"{env['IMAGE_REGISTRY']}/{svc}:{env['IMAGE_TAG']}"
    # the BUILD_* variables the page points at are build arguments of compose.yaml
    for var in set(re.findall(r"\bBUILD_[A-Z_]+\b", DOC.read_text())):
        assert f"${{{var}:-" in compose_text, var
    assert "TORCH_CUDA_ARCH_LIST" in text and "${TORCH_CUDA_ARCH_LIST:-" in compose_text


def images_list() -> list[dict[str, Any]]:
    return yaml.safe_load(block("images"))["images"]


def test_the_images_list_matches_what_compose_pushes_and_the_base_uses() -> None:
    env = exports(block("build-push"))
    listed = {i["name"]: i for i in images_list()}
    base = yaml.safe_load((K8S / "base" / "kustomization.yaml").read_text())["images"]
    assert set(listed) == {i["name"] for i in base} == {f"gmpi/{name}" for name in IMAGES}
    for name, entry in listed.items():
        assert (
            f"{entry['newName']}:{entry['newTag']}"
            == f"{env['IMAGE_REGISTRY']}/{name[5:]}:{env['IMAGE_TAG']}"
        )


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_images_list_rewrites_every_image_of_an_overlay(overlay: str, tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    doc = {"resources": [os.path.relpath(K8S / "overlays" / overlay, site)], "images": images_list()}
    (site / "kustomization.yaml").write_text(yaml.safe_dump(doc))
    res = run([shutil.which("kubectl") or "kubectl", "kustomize", str(site)])
    assert res.returncode == 0, res.stderr
    objs = [d for d in yaml.safe_load_all(res.stdout) if d]
    ours = [c for o in objs if o["kind"] == "Deployment" for c in o["spec"]["template"]["spec"]["containers"]]
    assert len(ours) == len(IMAGES)
    assert {c["image"] for c in ours} == {f"registry.example.com/gmpi/{name}:1.0" for name in IMAGES}
    trainer = find(objs, "Deployment", "trainer")["spec"]["template"]["spec"]["containers"][0]
    assert {"name": "GMPI_TRAINER_IMAGE", "value": trainer["image"]} in trainer["env"]


@needs_kubectl
def test_the_example_addresses_to_change_are_the_gpu_overlays() -> None:
    text = DOC.read_text()
    objs = objects("gpu")
    host = find(objs, "Ingress", "gateway")["spec"]["rules"][0]["host"]
    public = find(objs, "ConfigMap", "gmpi-settings")["data"]["GMPI_S3_PUBLIC_ENDPOINT"]
    section = text[text.index("### The gpu overlay's example addresses") :]
    section = section[: section.index("\n### ", 5)]
    assert f"`{host}`" in section and f"`{public}`" in section
    assert "/spec/rules/0/host" in section and "/data/GMPI_S3_PUBLIC_ENDPOINT" in section


@needs_kubectl
def test_the_page_says_every_overlay_needs_keda() -> None:
    k8s_section = DOC.read_text().split("## Kubernetes", 1)[1]
    assert "for **both** overlays: KEDA" in k8s_section
    for overlay in OVERLAYS:
        kinds = {o["kind"] for o in objects(overlay) if o["apiVersion"].startswith("keda.sh/")}
        assert kinds == {"ScaledObject", "TriggerAuthentication"}, overlay
    assert "keda" in {
        peer.get("namespaceSelector", {}).get("matchLabels", {}).get("kubernetes.io/metadata.name")
        for rule in find(objects("cpu-dev"), "NetworkPolicy", "redis-ingress")["spec"]["ingress"]
        for peer in rule["from"]
    }
