"""The whole stack in containers, started once per session with ``scripts/stack.sh up --docker`` (images
built with layer caching under ~/.cache/gmpi/docker, a project name and ports of its own) and removed with
``down --docker``. Needs a Docker engine, or root to start Debian's dockerd; skipped otherwise, and with
GMPI_CONTAINER_TESTS=0."""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import (
    API_KEY,
    ROOT,
    STACK,
    Stack,
    _port,
    stack_env,
    synthetic_zip,  # noqa: F401  (the session fixture, shared with tests/e2e)
)

UP_TIMEOUT_S = float(os.environ.get("GMPI_CONTAINER_UP_TIMEOUT", "2400"))  # a cold build: ~5 min here


class ContainerStack(Stack):
    """``Stack`` of tests/e2e with the stack script's --docker commands."""

    project: str = ""

    def sh(self, *args: str, timeout: float = 600) -> str:
        return super().sh(*args, "--docker", timeout=timeout)

    def log(self, name: str) -> str:
        service = {"worker-train": "trainer", "worker-eval": "evaluator", "worker-render": "renderer",
                   "worker-landmarks": "landmarks", "worker-pose": "pose"}.get(name, name)  # fmt: skip
        out = subprocess.run([str(STACK), "logs", "--docker", service, "80"], env=self.env,
                             capture_output=True, text=True, timeout=60)  # fmt: skip
        return (out.stdout + out.stderr)[-4000:]

    def docker(self, *args: str, timeout: float = 60) -> str:
        out = subprocess.run(["docker", *args], env=self.env, capture_output=True, text=True, timeout=timeout)
        assert out.returncode == 0, f"docker {' '.join(args)}: {out.stderr}"
        return out.stdout

    def container(self, service: str) -> dict:
        label = "com.docker.compose.service"
        return next(c for c in self.containers() if c["Config"]["Labels"][label] == service)

    def containers(self, all_: bool = True) -> list[dict]:
        ids = self.docker("ps", "-q", *(["-a"] if all_ else []),
                          "--filter", f"label=com.docker.compose.project={self.project}").split()  # fmt: skip
        return json.loads(self.docker("inspect", *ids)) if ids else []


def _engine_env() -> dict[str, str]:
    """The environment under which `docker` reaches the engine the stack script uses (or starts)."""
    env = dict(os.environ)
    if "DOCKER_HOST" not in env and not Path("/var/run/docker.sock").exists():
        cache = Path(os.environ.get("GMPI_DOCKER_DIR", Path.home() / ".cache" / "gmpi" / "docker"))
        env["DOCKER_HOST"] = f"unix://{cache / 'run' / 'docker.sock'}"
    return env


@pytest.fixture(scope="session")
def cstack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ContainerStack]:
    if os.environ.get("GMPI_CONTAINER_TESTS", "1") == "0":
        pytest.skip("GMPI_CONTAINER_TESTS=0")
    import shutil

    if shutil.which("docker") is None and os.geteuid() != 0:
        pytest.skip("no docker client, and not root to install Debian's docker.io")
    d = tmp_path_factory.mktemp("cstack")
    port = _port()
    project = f"gmpi-test-{uuid.uuid4().hex[:8]}"
    env = {**stack_env(d, port, _engine_env()), "GMPI_COMPOSE_PROJECT": project}
    up = subprocess.run([str(STACK), "up", "--docker"], env=env, capture_output=True, text=True,
                        timeout=UP_TIMEOUT_S, cwd=ROOT)  # fmt: skip
    if up.returncode != 0 and "starting one needs root" in up.stderr:
        pytest.skip(up.stderr.strip().splitlines()[-1])
    base = f"http://127.0.0.1:{port}"
    client = httpx.Client(base_url=base, headers={"X-API-Key": API_KEY}, timeout=120)
    s = ContainerStack(d, env, base, client)
    s.project = project
    try:
        assert up.returncode == 0, f"stack up --docker failed:\n{up.stdout[-3000:]}\n{up.stderr[-6000:]}"
        yield s
    finally:
        client.close()
        subprocess.run([str(STACK), "down", "--docker"], env=env, capture_output=True, timeout=300)
