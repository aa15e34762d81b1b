"""Real Redis and SeaweedFS processes for the tests, on free loopback ports, stopped by pid."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from tests.timing import scaled

ACCESS, SECRET = "test-access", "test-secret-123"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 30.0) -> None:
    timeout = scaled(timeout)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.3).close()
            return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


class RedisServer:
    def __init__(self, workdir: Path) -> None:
        self.dir = workdir
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        self.dir.mkdir(parents=True, exist_ok=True)
        cmd = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir),
               "--save", "", "--appendonly", "yes"]  # fmt: skip
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port)
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(10)


# weed derives its volume limit from the free disk (free / 128 MB by default); every bucket takes several
# volumes, so a machine with little free disk (container images take tens of GB) answered 500 after a
# few buckets. Volumes are not preallocated, so a fixed limit costs nothing.
WEED_MAX_VOLUMES = 1000


class S3Server:
    """SeaweedFS ``weed mini`` (S3 API) with one identity; all ports derived from free ones."""

    def __init__(self, workdir: Path) -> None:
        self.dir = workdir
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.ports: list[int] = []  # kept across restarts: the filer remembers its volume server

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> S3Server:
        data = self.dir / "data"
        data.mkdir(parents=True, exist_ok=True)
        ident = {"identities": [{"name": "t", "credentials": [{"accessKey": ACCESS, "secretKey": SECRET}],
                                 "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}  # fmt: skip
        (self.dir / "s3.json").write_text(json.dumps(ident))
        weed = shutil.which("weed", path=str(Path(sys.executable).parent)) or "weed"
        self.ports = self.ports or [free_port() for _ in range(5)]
        ports = self.ports
        cmd = [weed, "mini", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
               f"-master.port={ports[0]}", f"-volume.port={ports[1]}", f"-filer.port={ports[2]}",
               f"-s3.port={self.port}", "-s3.port.iceberg=0", "-s3.port.lance=0", f"-admin.port={ports[3]}",
               f"-metricsPort={ports[4]}", "-master.telemetry=false", "-webdav=false", "-admin.ui=false",
               f"-s3.config={self.dir / 's3.json'}", f"-volume.max={WEED_MAX_VOLUMES}"]  # fmt: skip
        # grpc ports are http + 10000: pick bases whose +10000 twins are free too (rarely a clash)
        with open(self.dir / "weed.log", "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        wait_port(self.port, 60)
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
