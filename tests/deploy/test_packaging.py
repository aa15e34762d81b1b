"""The images install the project as a wheel (not editable): everything the services read from their
package folders at run time must be in it."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.deploy.tools import REPO


@pytest.mark.slow
def test_the_wheel_carries_the_viewer_kernel_sources_and_demo_model(tmp_path: Path) -> None:
    """Built like the images build it: from what the build context holds (no egg-info of an editable
    install, whose file list would hide a missing package-data entry)."""
    import shutil

    src = tmp_path / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.so", "*.egg-info")
    for name in ("gmpi_core", "services"):
        shutil.copytree(REPO / name, src / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    out = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path),
         str(src)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    (wheel,) = tmp_path.glob("gmpi-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    needed = [f"services/gateway/static/{p.name}" for p in (REPO / "services/gateway/static").iterdir()]
    needed += [f"gmpi_core/{p.relative_to(REPO / 'gmpi_core')}" for p in REPO.glob("gmpi_core/*/csrc/*")]
    needed += ["gmpi_core/assets/demo_model/config.json", "gmpi_core/assets/demo_model/weights.safetensors"]
    missing = sorted(n for n in needed if n not in names)
    assert not missing, f"not in the wheel: {missing}"
