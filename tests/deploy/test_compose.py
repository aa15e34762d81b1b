"""compose.yaml (+ compose.cpu.yaml): valid for Compose v2, a worker per queue, GPUs where they belong."""

from __future__ import annotations

import re
from functools import cache
from typing import Any

import pytest

from tests.deploy.tools import (
    CPU_IMAGES,
    GPU_IMAGES,
    QUEUES,
    REPO,
    bad_env_names,
    compose_bin,
    compose_config,
    dockerfile_queue,
    run,
    stages,
)

GPU_FILES = ("compose.yaml",)
CPU_FILES = ("compose.yaml", "compose.cpu.yaml")


@cache
def config(files: tuple[str, ...] = GPU_FILES) -> dict[str, Any]:
    return compose_config(*files)


def ours(cfg: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Long-running services built from docker/Dockerfile, by image (= build target)."""
    out = {}
    for svc in cfg["services"].values():
        build = svc.get("build") or {}
        if build.get("dockerfile") == "docker/Dockerfile" and build.get("target") != "init":
            out[build["target"]] = svc
    return out


@pytest.mark.parametrize("files", [GPU_FILES, CPU_FILES], ids=["gpu", "cpu"])
def test_config_quiet(files: tuple[str, ...]) -> None:
    args = [compose_bin()]
    for f in files:
        args += ["-f", f]
    res = run([*args, "config", "-q"])
    assert res.returncode == 0, res.stderr


def test_compose_binary_rejects_invalid_files(tmp_path) -> None:  # not the always-0 Python wrapper
    bad = tmp_path / "compose.yaml"
    bad.write_text("services:\n  a:\n    image: redis\n    depnds_on: [b]\n")
    res = run([compose_bin(), "-f", str(bad), "config", "-q"])
    assert res.returncode != 0 and "depnds_on" in res.stderr


def test_every_image_and_queue_has_a_service() -> None:
    services = ours(config())
    assert sorted(services) == sorted({*CPU_IMAGES, *GPU_IMAGES})
    served = {dockerfile_queue(image): image for image in services if dockerfile_queue(image)}
    assert served == QUEUES
    for image, svc in services.items():
        assert not svc.get("command"), f"{image}: the image's stage sets the command"
        assert not svc.get("healthcheck"), f"{image}: the image's HEALTHCHECK is the one that counts"
        assert svc["image"].endswith(f"/{image}:${{IMAGE_TAG:-dev}}") or f"/{image}:" in svc["image"]


@pytest.mark.parametrize("files", [GPU_FILES, CPU_FILES], ids=["gpu", "cpu"])
def test_gpu_reservations(files: tuple[str, ...]) -> None:
    for name, svc in config(files)["services"].items():
        reservations = ((svc.get("deploy") or {}).get("resources") or {}).get("reservations") or {}
        devices = reservations.get("devices")
        image = next((i for i, s in ours(config(files)).items() if s is svc), None)
        if files == GPU_FILES and image in GPU_IMAGES:
            assert devices and all("gpu" in d["capabilities"] for d in devices), f"{name} reserves no GPU"
            assert all(d.get("driver") == "nvidia" for d in devices)
        else:
            assert not devices, f"{name} reserves a GPU in {files}"


def test_redis_minio_and_bucket_init() -> None:
    svcs = config()["services"]
    redis = " ".join(svcs["redis"]["command"])
    assert "--maxmemory-policy noeviction" in redis and "--appendonly yes" in redis
    assert any(v["type"] == "volume" and v["target"] == "/data" for v in svcs["redis"]["volumes"])
    assert any(v["type"] == "volume" and v["target"] == "/data" for v in svcs["minio"]["volumes"])
    assert svcs["minio"]["healthcheck"]["test"] and svcs["redis"]["healthcheck"]["test"]
    init = svcs["bucket-init"]
    assert init["build"]["target"] == "init" and init["restart"] == "no"  # python -m services init
    assert init["depends_on"]["minio"]["condition"] == "service_healthy"
    import yaml

    flower = yaml.safe_load((REPO / "compose.yaml").read_text())["services"]["flower"]
    assert flower["image"].startswith("mher/flower:") and flower["profiles"] == ["monitoring"]
    assert "flower" not in svcs  # not started unless asked for


def test_depends_on_healthy_stores() -> None:
    cfg = config()
    for image, svc in ours(cfg).items():
        deps = svc.get("depends_on") or {}
        assert deps.get("redis", {}).get("condition") == "service_healthy", image
        assert deps.get("minio", {}).get("condition") == "service_healthy", image
        assert deps.get("bucket-init", {}).get("condition") == "service_completed_successfully", image
    for name, svc in cfg["services"].items():
        for dep, spec in (svc.get("depends_on") or {}).items():
            if spec["condition"] == "service_healthy":
                target = cfg["services"][dep]
                build = target.get("build") or {}
                has_check = bool(target.get("healthcheck", {}).get("test")) or (
                    build.get("dockerfile") == "docker/Dockerfile"
                    and "HEALTHCHECK NONE" not in stages()[build["target"]]
                )
                assert has_check, f"{name} waits for {dep} to be healthy but {dep} has no healthcheck"


def test_named_volumes_only() -> None:
    cfg = config()
    for name, svc in cfg["services"].items():
        for vol in svc.get("volumes") or []:
            assert vol["type"] == "volume", f"{name}: bind mount {vol.get('source')}"
            assert vol["source"] in cfg["volumes"]


def test_env_vars_are_settings() -> None:
    for image, svc in ours(config()).items():
        assert not bad_env_names(set(svc.get("environment") or {})), image
    example = (REPO / ".env.example").read_text()
    gmpi_vars = set(re.findall(r"(?m)^#?\s*(GMPI_\w+)=", example))
    assert gmpi_vars and not bad_env_names(gmpi_vars)
    # and every ${VAR} the compose file reads is documented in .env.example
    # ($${VAR} is a literal ${VAR} for the container's shell, not read by compose)
    used = set(re.findall(r"(?<!\$)\$\{(\w+)(?::?-[^}]*)?\}", (REPO / "compose.yaml").read_text()))
    documented = set(re.findall(r"(?m)^#?\s*(\w+)=", example))
    assert used <= documented, f"undocumented: {sorted(used - documented)}"


def test_gateway_published_and_workers_not() -> None:
    services = ours(config())
    assert any(p["target"] == 8000 for p in services["gateway"]["ports"])
    for image in ("landmarks", "pose", *GPU_IMAGES):
        assert not services[image].get("ports"), f"{image} publishes ports"


def test_trainer_shared_memory() -> None:
    trainer = ours(config())["trainer"]
    assert int(trainer["shm_size"]) >= 8 * 1024**3
    assert "GMPI_TRAIN_NPROC" in trainer["environment"]
    assert "trainer" in stages()
