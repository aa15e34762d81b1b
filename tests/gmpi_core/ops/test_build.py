"""Ahead-of-time builds of the fused kernels (container images build them without a GPU)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from gmpi_core.ops import _build


def test_every_fused_kernel_is_registered_for_prebuild():
    import gmpi_core.mpi.render
    import gmpi_core.ops.bias_act
    import gmpi_core.ops.upfirdn2d  # noqa: F401

    specs = _build._specs
    assert set(specs) == {"bias_act", "upfirdn2d", "mpi_render_cuda", "mpi_render_cpu"}
    assert all(src.is_file() for spec in specs.values() for src in spec.sources)
    assert {n for n, s in specs.items() if not s.cuda} == {"mpi_render_cpu"}


@pytest.mark.skipif(shutil.which("c++") is None, reason="no C++ compiler")
def test_prebuild_builds_the_cpu_kernel_and_first_use_then_loads_it():
    import os

    from torch.utils.cpp_extension import get_default_build_root

    # the default build folder, shared with the rest of the suite: a cold build costs ~1 min on 2 cores
    root = os.environ.get("TORCH_EXTENSIONS_DIR") or get_default_build_root()
    assert _build.prebuild(cuda=False) == {}
    assert _build._cache.get("mpi_render_cpu") is None  # not cached as checked: first use loads it again
    assert list(Path(root).glob("**/gmpi_mpi_render_cpu_*/*.so")), f"no shared object in {root}"
    from gmpi_core.mpi.render import _cpu_kernel

    assert _cpu_kernel() is not None  # loaded from the prebuilt folder


@pytest.mark.skipif(torch.cuda.is_available() or shutil.which("nvcc") is not None, reason="has CUDA")
def test_prebuild_without_a_cuda_toolkit_names_each_cuda_kernel_that_failed(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "8.0")
    with pytest.warns(RuntimeWarning):
        failed = _build.prebuild(cuda=True)
    assert set(failed) == {"bias_act", "upfirdn2d", "mpi_render_cuda"}
    assert all(reason for reason in failed.values())
    assert not torch.cuda.is_available() and _build._allow_without_gpu is False


def test_a_stale_build_lock_is_removed_with_a_warning(tmp_path):
    """A process killed mid-build leaves torch's ``lock``; torch would wait for it forever."""
    import os
    import time

    lock = tmp_path / "lock"
    lock.touch()
    old = time.time() - 120
    os.utime(lock, (old, old))
    with pytest.warns(RuntimeWarning, match="stale build lock"):
        assert _build.clear_stale_lock(tmp_path, timeout_s=60) is True
    assert not lock.exists()
    assert _build.clear_stale_lock(tmp_path, timeout_s=60) is False  # no lock: nothing to do


def test_a_live_build_lock_is_waited_for_not_removed(tmp_path):
    import threading
    import time
    import warnings

    lock = tmp_path / "lock"
    lock.touch()
    # the "other builder" finishes after 0.3 s; the timeout is far away, so we wait and remove nothing
    done = threading.Timer(0.3, lock.unlink)
    done.start()
    t0 = time.monotonic()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _build.clear_stale_lock(tmp_path, timeout_s=30, poll_s=0.05) is False
    assert 0.25 <= time.monotonic() - t0 < 10
    done.join()


def test_build_directory_is_torchs(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    assert _build._build_directory("gmpi_x_0123456789") == tmp_path / "gmpi_x_0123456789"
