"""scripts/dev.sh installs the CPU torch build, from a local wheel when one exists, else from the CPU index.

A plain ``pip install torch==X`` on an ordinary machine takes PyPI's CUDA build (gigabytes). These tests
run the real set-up step (``scripts/dev.sh torch``) in a throw-away venv against stand-in torch wheels
(a few files each, ``torch.version.cuda`` set or not) served from a local find-links folder and a local
simple index, with the machine's pip configuration switched off, so no network is touched.
"""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
VERSION = "2.13.0"
PRINT_SOURCE = "import torch; print(torch.version.source, torch.version.cuda)"


def _fake_torch_wheel(folder: Path, local: str, cuda: str | None) -> Path:
    """A minimal valid wheel: torch ``VERSION+local`` whose ``torch.version.cuda`` is ``cuda``."""
    version = f"{VERSION}+{local}"
    dist = f"torch-{version}.dist-info"
    files = {
        "torch/__init__.py": f"__version__ = {version!r}\nfrom . import version\n",
        "torch/version.py": f"cuda = {cuda!r}\nsource = {local!r}\n",
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: torch\nVersion: {version}\n",
        f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    for name, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{name},sha256={digest},{len(text.encode())}")
    record.append(f"{dist}/RECORD,,")
    files[f"{dist}/RECORD"] = "\n".join(record) + "\n"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"torch-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as zf:
        for name, text in files.items():
            zf.writestr(name, text)
    return path


def _simple_index(root: Path, wheel: Path) -> str:
    """A PEP 503 index on disk holding one wheel; returns its file:// URL."""
    project = root / "simple" / "torch"
    project.mkdir(parents=True)
    shutil.copy(wheel, project / wheel.name)
    (project / "index.html").write_text(f'<html><body><a href="{wheel.name}">{wheel.name}</a></body></html>')
    (root / "simple" / "index.html").write_text('<html><body><a href="torch/">torch</a></body></html>')
    return (root / "simple").as_uri()


def _run_torch_step(
    tmp_path: Path, find_links: Path, index_url: str
) -> tuple[subprocess.CompletedProcess, str]:
    venv = tmp_path / "venv"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env.update(
        PIP_CONFIG_FILE=os.devnull,  # not this machine's find-links/indexes: only what the test serves
        PIP_FIND_LINKS=str(find_links),
        GMPI_VENV=str(venv),
        PYTHON=sys.executable,
        TORCH_INDEX_URL=index_url,
        TORCH_EXTRA_INDEX_URL=index_url,
    )
    proc = subprocess.run(
        ["bash", str(REPO / "scripts" / "dev.sh"), "torch"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    which = ""
    if proc.returncode == 0:
        which = subprocess.run(
            [str(venv / "bin" / "python"), "-c", PRINT_SOURCE],
            capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
    return proc, which


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_local_cpu_wheel_wins_over_the_index(tmp_path: Path) -> None:
    local = _fake_torch_wheel(tmp_path / "links", "cpu", None)
    assert local.exists()
    # the index offers only a CUDA build: if the set-up asked the index, the venv would hold it
    index = _simple_index(tmp_path / "idx", _fake_torch_wheel(tmp_path / "cuda", "cu130", "13.0"))
    proc, which = _run_torch_step(tmp_path, tmp_path / "links", index)
    assert proc.returncode == 0, proc.stderr
    assert which == "cpu None", (which, proc.stderr)
    assert "from a local wheel" in proc.stderr


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_without_a_local_wheel_the_cpu_index_is_named(tmp_path: Path) -> None:
    (tmp_path / "links").mkdir()
    index = _simple_index(tmp_path / "idx", _fake_torch_wheel(tmp_path / "cpuidx", "cpu", None))
    proc, which = _run_torch_step(tmp_path, tmp_path / "links", index)
    assert proc.returncode == 0, proc.stderr
    assert which == "cpu None", (which, proc.stderr)
    assert index in proc.stderr  # says where torch came from


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_unreachable_index_says_what_to_do(tmp_path: Path) -> None:
    (tmp_path / "links").mkdir()
    missing = (tmp_path / "nowhere" / "simple").as_uri()
    proc, _ = _run_torch_step(tmp_path, tmp_path / "links", missing)
    assert proc.returncode != 0
    assert "TORCH_INDEX_URL" in proc.stderr and "find-links" in proc.stderr
