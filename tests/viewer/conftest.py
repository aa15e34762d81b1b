"""Fixtures of the web viewer tests: an MPI export, a local HTTP server, the real gateway, headless Chromium.

``server`` is a stand-in for the gateway: it serves the page at ``/`` and ``services/gateway/static`` at
``/static/`` as the gateway does, export folders under ``/exports/<name>/``, and the few API routes the
viewer calls, answered with the shapes that ``services/gateway/static/api.js`` documents (the render route
renders the export with gmpi_core, so the fallback path shows real pixels). It can fake faults and count
requests, which the real gateway cannot.

``gateway`` is the real thing, started as the images start it: ``python -m services init`` (the bucket and
the shipped demo model as ``models/demo``), ``python -m services gateway`` and ``python -m services worker
render`` on a real Redis and SeaweedFS (the fixtures of tests/services), so that what a newcomer opens at
``/`` is what the browser tests open.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import numpy as np
import pytest
import torch
from PIL import Image

from gmpi_core.camera import sphere_c2w
from gmpi_core.mpi.render import render_mpi
from gmpi_core.pipeline import GMPI, MPI
from gmpi_core.render.export import export_mpi, load_mpi_export
from gmpi_core.render.views import generate_mpi
from tests.services import conftest as services_fixtures
from tests.services.procs import ACCESS, SECRET, RedisServer, S3Server, free_port, wait_port

ROOT = Path(__file__).resolve().parents[2]
STATIC = Path(__file__).resolve().parents[2] / "services" / "gateway" / "static"
MODEL_ID = "synthetic64-test"
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".webp": "image/webp",
    ".png": "image/png",
}
FAKE_JOBS = [
    {"id": "job-1", "type": "train", "state": "running", "progress": {"step": 30, "total": 120, "eta_s": 75}},
    {"id": "job-2", "type": "evaluate", "state": "succeeded", "progress": {"step": 8, "total": 8}},
]


def chromium_path() -> str | None:
    """Debian's chromium (or $GMPI_CHROMIUM); Playwright's own browser downloads are never used."""
    for candidate in (os.environ.get("GMPI_CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium")):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


# -- the MPI under test ---------------------------------------------------------------------------------


@dataclass
class Export:
    """An exported MPI as the viewer loads it, plus what is needed to render it with gmpi_core."""

    root: Path
    rgba: torch.Tensor  # [1, N, 4, T, T] float in [0, 1], exactly the exported 8-bit values
    plane_dhw: torch.Tensor
    manifest: dict[str, Any]

    def render(self, yaw: float, pitch: float, size: int) -> np.ndarray:
        """render_mpi of the exported textures → uint8 [size, size, 3] (round half up, as GL quantises)."""
        cam = self.manifest["camera"]
        c2w = sphere_c2w(
            torch.tensor([yaw], dtype=torch.float64),
            torch.tensor([pitch], dtype=torch.float64),
            radius=cam["sphere_radius"],
            center_z=cam["sphere_center_z"],
        ).float()
        image, _ = render_mpi(self.rgba, self.plane_dhw, c2w, fov_deg=cam["fov_deg"], size=size)
        rgb01 = (image[0].permute(1, 2, 0).double() + 1) / 2
        return (rgb01.clamp(0, 1) * 255 + 0.5).floor().to(torch.uint8).numpy()


@pytest.fixture(scope="session")
def exports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Export]:
    """The same random synthetic64 MPI (16 planes of 64²) exported as WebP planes and as a PNG atlas."""
    gmpi = GMPI.random("synthetic64", seed=0)
    mpi = generate_mpi(gmpi, seed=0, n_planes=16)
    # Transparent texels whose colour still matters: bilinear sampling of non-premultiplied RGBA reads the
    # RGB under zero alpha next to opaque texels, so a browser that premultiplied on decode would differ.
    rgba = mpi.rgba.clone()
    rgba[0, 6, 3, :, :24] = 0
    rgba[0, 6, 3, :, 24:40] = 1
    mpi = MPI(rgba=rgba, plane_dhw=mpi.plane_dhw, depth_norm=mpi.depth_norm)
    root = tmp_path_factory.mktemp("exports")
    variants: dict[str, dict[str, Any]] = {
        "planes": {},  # the default: one lossless WebP per plane
        "atlas": {"layout": "atlas", "fmt": "png", "atlas_columns": 4},  # one PNG sprite sheet
    }
    out = {}
    for name, kwargs in variants.items():
        path = export_mpi(mpi, gmpi.config.camera, root / name, extra={"seed": 0, "psi": 1.0}, **kwargs)
        rgba, dhw, manifest = load_mpi_export(path)
        out[name] = Export(path, rgba, dhw, manifest)
    return out


# -- the HTTP server ------------------------------------------------------------------------------------


@dataclass
class Server:
    url: str
    exports: dict[str, Export]
    requests: list[dict[str, Any]] = field(default_factory=list)  # {"method", "path", "headers", "body"}
    renders: list[dict[str, Any]] = field(default_factory=list)  # {"params", "png"} of the render route


def _handler(server: Server) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:  # keep pytest output clean
            pass

        def do_GET(self) -> None:
            self._record(None)
            parsed = urlparse(self.path)
            path, query = parsed.path, parse_qs(parsed.query)
            if path == "/v1/models":
                self._json({"items": [{"id": MODEL_ID, "name": "Synthetic 64 (test)"}]})
            elif path == f"/v1/models/{MODEL_ID}/mpi":
                self._mpi(query)
            elif path.startswith("/v1/models/"):
                self._error(HTTPStatus.NOT_FOUND, "model_not_found", f"no model {path.split('/')[3]!r}")
            elif path == "/v1/jobs":
                self._json({"items": FAKE_JOBS[: int(query.get("limit", ["20"])[0])]})
            elif path.startswith("/exports/"):
                name, _, rest = path[len("/exports/") :].partition("/")
                if name in server.exports:
                    self._file(server.exports[name].root, rest)
                else:
                    self._error(HTTPStatus.NOT_FOUND, "not_found", path)
            elif path == "/":  # the gateway's layout (services/gateway/app.py): the page at /, its folder
                self._file(STATIC, "index.html")
            elif path.startswith("/static/"):
                self._file(STATIC, path[len("/static/") :])
            else:
                self._error(HTTPStatus.NOT_FOUND, "not_found", path)

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            self._record(body)
            if urlparse(self.path).path != f"/v1/models/{MODEL_ID}/render":
                self._error(HTTPStatus.NOT_FOUND, "not_found", self.path)
                return
            params = json.loads(body)
            rgb = server.exports["planes"].render(params["yaw"], params["pitch"], params["size"])
            buffer = io.BytesIO()
            Image.fromarray(rgb).save(buffer, "PNG")
            server.renders.append({"params": params, "png": buffer.getvalue()})
            self._send(HTTPStatus.OK, "image/png", buffer.getvalue())

        def _record(self, body: bytes | None) -> None:
            server.requests.append(
                {"method": self.command, "path": self.path, "headers": dict(self.headers), "body": body}
            )

        def _mpi(self, query: dict[str, list[str]]) -> None:
            """The planes export's manifest, pointing at its files through base_url (as a gateway would)."""
            manifest = dict(server.exports["planes"].manifest, base_url="/exports/planes")
            manifest["source"] = {key: values[0] for key, values in query.items()}
            self._json(manifest)

        def _file(self, root: Path, relative: str) -> None:
            path = (root / relative).resolve()
            if not path.is_relative_to(root.resolve()) or not path.is_file():
                self._error(HTTPStatus.NOT_FOUND, "not_found", relative)
                return
            content_type = CONTENT_TYPES.get(path.suffix, "application/octet-stream")
            self._send(HTTPStatus.OK, content_type, path.read_bytes())

        def _json(self, body: Any) -> None:
            self._send(HTTPStatus.OK, "application/json", json.dumps(body).encode())

        def _error(self, status: HTTPStatus, code: str, message: str) -> None:
            body = {"error": {"code": code, "message": message, "details": {}}}
            self._send(status, "application/json", json.dumps(body).encode())

        def _send(self, status: HTTPStatus, content_type: str, data: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(data)

    return Handler


@pytest.fixture(scope="session")
def server(exports: dict[str, Export]) -> Iterator[Server]:
    state = Server(url="", exports=exports)
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    httpd.daemon_threads = True
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield state
    httpd.shutdown()
    httpd.server_close()


# -- the real gateway -----------------------------------------------------------------------------------

# the real Redis and SeaweedFS of tests/services, one of each per session
redis_server = services_fixtures.redis_server
s3_server = services_fixtures.s3_server

GATEWAY_KEY = "viewer-key"


@dataclass
class Gateway:
    url: str
    api_key: str
    log_dir: Path

    def logs(self) -> str:
        """The tails of the gateway's and the render worker's logs (for assertion messages)."""
        return "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}"
            for p in sorted(self.log_dir.glob("*.log"))
        )


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


@pytest.fixture(scope="session")
def gateway(
    redis_server: RedisServer, s3_server: S3Server, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    """The real gateway with the demo model published and one render worker, on free loopback ports."""
    root = tmp_path_factory.mktemp("gateway")
    port = free_port()
    env = {
        **os.environ,
        # the settings of tests/services/conftest.py's fixture, in a bucket of its own
        "GMPI_REDIS_URL": redis_server.url,
        "GMPI_STORAGE": "s3",
        "GMPI_S3_ENDPOINT": s3_server.endpoint,
        "GMPI_S3_ACCESS_KEY": ACCESS,
        "GMPI_S3_SECRET_KEY": SECRET,
        "GMPI_S3_BUCKET": f"v{uuid.uuid4().hex[:12]}",
        "GMPI_API_KEYS": GATEWAY_KEY,
        "GMPI_CACHE_DIR": str(root / "cache"),
        "GMPI_RUN_DIR": str(root),
        "GMPI_HOST": "127.0.0.1",
        "GMPI_PORT": str(port),
        "GMPI_WORKER_CONCURRENCY": "1",
    }
    services = [sys.executable, "-m", "services"]
    init = subprocess.run([*services, "init"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert init.returncode == 0, f"services init failed:\n{init.stdout}\n{init.stderr}"
    assert "demo model published as models/demo/" in init.stdout, init.stdout
    procs = []
    try:
        for name, role in (("gateway", ["gateway"]), ("worker-render", ["worker", "render"])):
            with open(root / f"{name}.log", "wb") as log:
                procs.append(subprocess.Popen([*services, *role], env=env, cwd=ROOT, stdout=log, stderr=log))
        state = Gateway(f"http://127.0.0.1:{port}", GATEWAY_KEY, root)
        try:
            wait_port(port, 120)
        except TimeoutError as exc:
            raise AssertionError(f"the gateway did not start:\n{state.logs()}") from exc
        yield state
    finally:
        for proc in procs:
            _stop(proc)


# -- the browser ----------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    executable = chromium_path()
    if executable is None:
        pytest.skip("Chromium is not installed (apt-get install chromium, or set GMPI_CHROMIUM)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (e2e extra) is not installed")
    with sync_api.sync_playwright() as playwright:
        # Playwright gives the browser a fresh temporary --user-data-dir; each test gets its own context.
        browser = playwright.chromium.launch(
            executable_path=executable,
            headless=True,
            args=[
                "--no-sandbox",  # tests run as root in containers
                "--disable-gpu",
                "--use-angle=swiftshader",  # WebGL through SwiftShader: no GPU needed
                "--enable-unsafe-swiftshader",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        yield browser
        browser.close()
