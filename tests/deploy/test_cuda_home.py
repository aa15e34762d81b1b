"""docker/cuda_home.py: a CUDA_HOME assembled from the NVIDIA wheels' layouts (CUDA 12: one folder per
package; CUDA 13: one cu13/ tree), as torch's extension builder expects it."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from tests.deploy.tools import DOCKER

spec = importlib.util.spec_from_file_location("cuda_home", DOCKER / "cuda_home.py")
assert spec and spec.loader
cuda_home = importlib.util.module_from_spec(spec)
spec.loader.exec_module(cuda_home)


def _touch(root: Path, *files: str) -> None:
    for f in files:
        (root / f).parent.mkdir(parents=True, exist_ok=True)
        (root / f).write_text(f)


def test_cuda12_layout_one_folder_per_package(tmp_path: Path) -> None:
    nv = tmp_path / "nvidia"
    _touch(nv / "cuda_nvcc", "bin/nvcc", "bin/ptxas", "nvvm/bin/cicc", "include/crt/host_config.h")
    _touch(nv / "cuda_runtime", "include/cuda_runtime.h", "include/cuda_fp16.h", "lib/libcudart.so.12")
    _touch(nv / "cublas", "include/cublas_v2.h", "lib/libcublas.so.12")
    home = tmp_path / "cuda"
    assert cuda_home.assemble(nv, home) == []
    for f in ("bin/nvcc", "nvvm/bin/cicc", "include/cuda_runtime.h", "include/crt/host_config.h",
              "include/cublas_v2.h", "lib64/libcudart.so.12", "lib64/libcublas.so.12"):  # fmt: skip
        assert (home / f).exists(), f
    assert (home / "bin" / "nvcc").resolve() == (nv / "cuda_nvcc" / "bin" / "nvcc").resolve()
    assert (home / "lib" / "libcudart.so").resolve() == (nv / "cuda_runtime" / "lib" / "libcudart.so.12")


def test_cuda13_layout_one_tree(tmp_path: Path) -> None:
    nv = tmp_path / "nvidia"
    _touch(nv / "cu13", "bin/nvcc", "nvvm/bin/cicc", "include/cuda_runtime.h", "include/cuda_fp16.h",
           "include/cccl/cuda/std/cstdint", "lib/libcudart.so.13")  # fmt: skip
    home = tmp_path / "cuda"
    assert cuda_home.assemble(nv, home) == []
    assert (home / "include" / "cccl" / "cuda" / "std" / "cstdint").exists()
    assert (home / "lib64" / "libcudart.so").exists()


@pytest.mark.parametrize("missing", ["bin/nvcc", "lib/libcudart.so.12", "include/cuda_fp16.h"])
def test_a_missing_piece_is_named(tmp_path: Path, missing: str) -> None:
    nv = tmp_path / "nvidia"
    files = ["bin/nvcc", "include/cuda_runtime.h", "include/cuda_fp16.h", "lib/libcudart.so.12"]
    _touch(nv / "cu12", *[f for f in files if f != missing])
    problems = cuda_home.assemble(nv, tmp_path / "cuda")
    assert problems and any(Path(missing).name.split(".so")[0] in p for p in problems), problems


def test_compiler_wheels_of_different_cuda_versions_are_refused(monkeypatch) -> None:
    """nvidia-cuda-nvcc does not pin nvidia-nvvm: a newer cicc wrote PTX 9.5 that ptxas 9.0 rejected."""

    class Dist:
        def __init__(self, name: str, version: str) -> None:
            self.metadata = {"Name": name}
            self.version = version

    from importlib import metadata

    dists = [Dist("nvidia-cuda-nvcc", "13.0.88"), Dist("nvidia-nvvm", "13.2.1"), Dist("numpy", "2.0")]
    monkeypatch.setattr(metadata, "distributions", lambda: dists)
    (problem,) = cuda_home.compiler_version_skew()
    assert "nvidia-nvvm 13.2" in problem and "nvidia-cuda-nvcc 13.0" in problem
    dists[1] = Dist("nvidia-nvvm", "13.0.88")
    assert cuda_home.compiler_version_skew() == []
