"""``python -m services``: the one entry point of every image (roles, health, init)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import services.__main__ as entry
from services.common.storage import DirStorage
from tests.timing import scaled

DEMO = Path(entry.__file__).resolve().parents[1] / "gmpi_core" / "assets" / "demo_model"


def test_init_publishes_the_demo_model_once(tmp_path: Path) -> None:
    store = DirStorage(tmp_path)
    store.ensure_ready()
    assert entry.publish_demo_model(store) == "published"
    manifest = store.manifest("models/demo/")
    assert manifest is not None and manifest["source"] == "demo" and manifest["preset"] == "synthetic64"
    assert set(manifest["files"]) == {"config.json", "weights.safetensors"}
    assert store.get_bytes("models/demo/weights.safetensors") == (DEMO / "weights.safetensors").read_bytes()
    cfg = json.loads(store.get_bytes("models/demo/config.json"))
    assert cfg["kwargs"]["img_resolution"] == 64
    assert entry.publish_demo_model(store) == "present"  # idempotent: a second init keeps the first


def test_health_without_a_role_or_with_a_dead_gateway_says_why(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("GMPI_RUN_DIR", str(tmp_path))
    assert "no role recorded" in (entry.check_health() or "")
    entry._record_role("gateway")
    assert (tmp_path / "gmpi-role").read_text() == "gateway"
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        monkeypatch.setenv("GMPI_PORT", str(s.getsockname()[1]))
    assert "/healthz" in (entry.check_health(timeout=2) or "")
    entry._record_role("janitor")
    assert "unknown role" in (entry.check_health() or "")


def test_worker_health_pings_its_own_node(settings, tmp_path: Path) -> None:
    """A real worker on the real broker answers `python -m services health` (run as the image's
    HEALTHCHECK runs it, in its own process); once the worker is stopped the same command fails."""
    import os
    import time

    env = {**os.environ, "GMPI_RUN_DIR": str(tmp_path)}  # the settings fixture's broker and store

    def health() -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "services", "health"], env=env, capture_output=True,
                              text=True, timeout=scaled(60))  # fmt: skip

    worker = subprocess.Popen([sys.executable, "-m", "services", "worker", "pose"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.monotonic() + scaled(90)
        result = health()
        while result.returncode != 0 and time.monotonic() < deadline:
            time.sleep(1)
            result = health()
        assert result.returncode == 0, result.stderr
        assert (tmp_path / "gmpi-role").read_text() == "worker:pose"
    finally:
        worker.terminate()
        worker.wait(30)
    stopped = health()
    assert stopped.returncode == 1 and "did not answer" in stopped.stderr, stopped.stderr


def test_cli_rejects_an_unknown_queue(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        entry.main(["worker", "painting"])
    assert exc.value.code == 2 and "invalid choice" in capsys.readouterr().err
