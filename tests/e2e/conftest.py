"""The running stack, started once per session through ``scripts/stack.sh up`` (the containers'
entrypoints as local processes on free loopback ports) and stopped with ``down``."""

from __future__ import annotations

import contextlib
import os
import random
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.timing import scale_timeout_markers, scaled

ROOT = Path(__file__).resolve().parents[2]
STACK = ROOT / "scripts" / "stack.sh"
API_KEY = "e2e-key"
TERMINAL = ("succeeded", "failed", "cancelled")
# how long the gateway waits for a sync render before its 504 (the default 30 s is too short for a
# render worker that shares the machine with trainers, under load)
RENDER_TIMEOUT_S = 300


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Per-test limits (``pytest.mark.timeout``) grow with the load like every wait (tests/timing.py)."""
    scale_timeout_markers(items)


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def _s3_port() -> int:
    """An S3 port whose derived SeaweedFS ports (and their grpc twins) are all free."""
    for _ in range(200):
        off = random.randrange(100, 4000)
        ports = [18333, 18888, 19333, 19340, 23646, 9101]
        if all(_free(p + off) and (p == 9101 or _free(p + off + 10000)) for p in ports):
            return 18333 + off
    raise RuntimeError("no free port range for SeaweedFS")


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Stack:
    dir: Path
    env: dict[str, str]
    base_url: str
    client: httpx.Client
    shared: dict[str, Any] = field(default_factory=dict)

    def sh(self, *args: str, timeout: float = 120) -> str:
        """``stack.sh ARGS`` (``timeout``: the limit on an idle machine, scaled with the load)."""
        out = subprocess.run(
            [str(STACK), *args], env=self.env, capture_output=True, text=True, timeout=scaled(timeout)
        )
        assert out.returncode == 0, f"stack.sh {' '.join(args)} failed:\n{out.stdout}\n{out.stderr}"
        return out.stdout

    def wait(self, job_id: str, timeout: float = 240, until: Any = None) -> dict[str, Any]:
        """Poll a job until it ends (or ``until(job)`` holds); fails with the job on timeout (``timeout``:
        the limit on an idle machine, scaled with the load)."""
        deadline = time.monotonic() + scaled(timeout)
        job: dict[str, Any] = {}
        while time.monotonic() < deadline:
            job = self.client.get(f"/v1/jobs/{job_id}").json()
            if (until(job) if until else job["state"] in TERMINAL) or job["state"] in TERMINAL:
                return job
            time.sleep(0.5)
        raise AssertionError(f"job {job_id} timed out after {scaled(timeout):.0f} s: {job}")

    def submit(self, job_type: str, params: dict[str, Any], **headers: str) -> dict[str, Any]:
        r = self.client.post("/v1/jobs", json={"type": job_type, "params": params}, headers=headers)
        assert r.status_code == 202, r.text
        return r.json()

    def log(self, name: str) -> str:
        return (self.dir / "logs" / f"{name}.log").read_text(errors="replace")[-4000:]


def stack_env(d: Path, port: int, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a test stack (process or container): its own folder, free ports, a test key,
    a short orphan timeout (killed workers' tasks come back within seconds), a sync render timeout that
    holds under load."""
    return {
        **(os.environ if base is None else base),
        "GMPI_STACK_DIR": str(d),
        "GMPI_PYTHON": sys.executable,
        "GMPI_PORT": str(port),
        "GMPI_STACK_REDIS_PORT": str(_port()),
        "GMPI_STACK_S3_PORT": str(_s3_port()),
        "GMPI_API_KEYS": API_KEY,
        "GMPI_ORPHAN_AFTER_S": "10",
        "GMPI_ORPHAN_CHECK_S": "2",
        "GMPI_RENDER_RATE_LIMIT": "100000",
        "GMPI_MAX_UPLOAD_BYTES": str(5 * 1024 * 1024),
        "GMPI_RENDER_TIMEOUT_S": str(int(scaled(RENDER_TIMEOUT_S))),
    }


def upload_dataset(s: Stack, images_zip: Path) -> str:
    ds = s.client.post("/v1/datasets", json={"name": "synthetic32"}).json()
    r = s.client.put(f"/v1/datasets/{ds['id']}/images", content=images_zip.read_bytes())
    assert r.status_code == 200, r.text
    return str(ds["id"])


@contextlib.contextmanager
def running_stack(d: Path, port: int, up_timeout: float = 180) -> Iterator[Stack]:
    """``stack.sh up`` in ``d`` → the Stack; ``stack.sh down`` on the way out, also when ``up`` failed or
    timed out half-way (it stops whatever ``up`` had started by then: nothing leaks)."""
    env = stack_env(d, port)
    base = f"http://127.0.0.1:{port}"
    # the client outwaits the gateway's render timeout (a slow render is the gateway's 504, not ours)
    client = httpx.Client(
        base_url=base, headers={"X-API-Key": API_KEY}, timeout=scaled(RENDER_TIMEOUT_S) + 60
    )
    try:
        up = run_up(env, timeout=scaled(up_timeout))
        assert up.returncode == 0, f"stack up failed:\n{up.stdout}\n{up.stderr}"
        yield Stack(d, env, base, client)
    finally:
        client.close()
        subprocess.run([str(STACK), "down"], env=env, capture_output=True, timeout=scaled(120))


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(tmp_path_factory.mktemp("stack"), _port()) as s:
        yield s


def run_up(env: dict[str, str], timeout: float) -> subprocess.CompletedProcess[str]:
    """``stack.sh up``; a timeout is a failed ``up`` (its output kept), not an exception that skips the
    caller's cleanup."""
    try:
        return subprocess.run([str(STACK), "up"], env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:

        def text(b: bytes | str | None) -> str:
            return b.decode(errors="replace") if isinstance(b, bytes) else (b or "")

        out = text(e.stdout) + f"\n(stack.sh up did not finish in {timeout:.0f} s)"
        return subprocess.CompletedProcess(e.cmd, 124, out, text(e.stderr))


@pytest.fixture(scope="session")
def synthetic_zip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "s32"
    gmpi = Path(sys.executable).parent / "gmpi"
    cmd = [
        str(gmpi),
        "data",
        "synth",
        "--out",
        str(out),
        "--res",
        "32",
        "--n",
        "24",
        "--workers",
        "1",
        "--no-progress",
    ]
    subprocess.run(cmd, check=True, timeout=scaled(180), capture_output=True)
    return out / "images.zip"


@pytest.fixture(scope="session")
def dataset(stack: Stack, synthetic_zip: Path) -> str:
    return upload_dataset(stack, synthetic_zip)


@pytest.fixture(scope="session")
def trained(stack: Stack, dataset: str) -> dict[str, Any]:
    """preprocess → train a tiny model: the two jobs every later test builds on."""
    prep = stack.wait(stack.submit("preprocess", {"dataset_id": dataset, "chunk_size": 8})["id"])
    assert prep["state"] == "succeeded", (prep, stack.log("worker-landmarks"), stack.log("worker-pose"))
    params = {
        "dataset_id": dataset,
        "preset": "synthetic32",
        "steps": 8,
        "ckpt_every": 4,
        "log_every": 1,
        "batch": 4,
    }
    train = stack.wait(stack.submit("train", params)["id"], timeout=300)
    assert train["state"] == "succeeded", (train, stack.log("worker-train"))
    return {"prep": prep, "train": train, "model_id": train["result"]["model_id"]}
