"""Ahead-of-time builds of the fused kernels (container images build them without a GPU)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from gmpi_core.ops import _build
from gmpi_core.ops.prebuild import prebuild


def test_every_fused_kernel_is_registered_for_prebuild():
    import gmpi_core.mpi.render
    import gmpi_core.ops.bias_act
    import gmpi_core.ops.upfirdn2d  # noqa: F401

    specs = _build._specs
    assert set(specs) == {"bias_act", "upfirdn2d", "mpi_render_cuda", "mpi_render_cpu", "bias_act_cpu"}
    assert all(src.is_file() for spec in specs.values() for src in spec.sources)
    assert {n for n, s in specs.items() if not s.cuda} == {"mpi_render_cpu", "bias_act_cpu"}


@pytest.mark.skipif(shutil.which("c++") is None, reason="no C++ compiler")
def test_prebuild_builds_the_cpu_kernel_and_first_use_then_loads_it():
    import os

    from torch.utils.cpp_extension import get_default_build_root

    # the default build folder, shared with the rest of the suite: a cold build costs ~1 min on 2 cores
    root = os.environ.get("TORCH_EXTENSIONS_DIR") or get_default_build_root()
    assert prebuild(cuda=False) == {}
    assert _build._cache.get("mpi_render_cpu") is None  # not cached as checked: first use loads it again
    assert list(Path(root).glob("**/gmpi_mpi_render_cpu_*/*.so")), f"no shared object in {root}"
    from gmpi_core.mpi.render import _cpu_kernel

    assert _cpu_kernel() is not None  # loaded from the prebuilt folder


@pytest.mark.skipif(torch.cuda.is_available() or shutil.which("nvcc") is not None, reason="has CUDA")
def test_prebuild_without_a_cuda_toolkit_names_each_cuda_kernel_that_failed(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "8.0")
    with pytest.warns(RuntimeWarning):
        failed = prebuild(cuda=True)
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


# -- the cache key: one build folder per environment (venv, torch, compiler, sources, flags) ----------


def _captured_names(monkeypatch, tmp_path) -> list[str]:
    """Run load_extension with torch's builder replaced by a recorder; → the module names it asked for."""
    from torch.utils import cpp_extension

    names: list[str] = []

    def fake_load(name, **_):
        names.append(name)
        return object()

    monkeypatch.setattr(cpp_extension, "load", fake_load)
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    return names


def _load_fresh(name: str, src: Path) -> None:
    _build._cache.pop(name, None)
    assert _build.load_extension(name, [src]) is not None


def test_two_venvs_build_into_different_folders(tmp_path, monkeypatch):
    """The folder used to be named by the sources alone: two checkouts' venvs rebuilt one folder in turn
    (embedding each venv's paths) and waited on each other's lock."""
    import sys

    src = tmp_path / "k.cpp"
    src.write_text("int f() { return 1; }\n")
    names = _captured_names(monkeypatch, tmp_path / "ext")
    monkeypatch.setattr(sys, "prefix", "/work/a/.venv")
    _load_fresh("keytest", src)
    _load_fresh("keytest", src)  # same environment: same folder
    monkeypatch.setattr(sys, "prefix", "/work/b/.venv")
    _load_fresh("keytest", src)
    assert names[0] == names[1] and names[0] != names[2], names
    _build._cache.pop("keytest", None)


@pytest.mark.parametrize("what", ["source", "checkout", "torch", "compiler", "cuda_home", "flags"])
def test_the_key_changes_with_everything_the_build_depends_on(tmp_path, monkeypatch, what):
    src = tmp_path / "k.cpp"
    src.write_text("int f() { return 1; }\n")
    before = _build.build_key([src], ["-O3"])
    assert _build.build_key([src], ["-O3"]) == before  # deterministic
    if what == "source":
        src.write_text("int f() { return 2; }\n")
    elif what == "checkout":  # the same file in another checkout (same venv): its own folder
        other = tmp_path / "other-checkout" / "k.cpp"
        other.parent.mkdir()
        other.write_text(src.read_text())
        src = other
    elif what == "torch":
        monkeypatch.setattr(torch, "__version__", "9.9.9")
    elif what == "compiler":
        monkeypatch.setenv("CXX", "/usr/bin/clang++-99")
    elif what == "cuda_home":
        monkeypatch.setenv("CUDA_HOME", "/opt/other-cuda")
    assert _build.build_key([src], ["-O3", "-g"] if what == "flags" else ["-O3"]) != before


def test_a_build_is_announced_and_a_finished_one_is_not(tmp_path, monkeypatch, capsys):
    src = tmp_path / "k.cpp"
    src.write_text("int f() { return 1; }\n")
    names = _captured_names(monkeypatch, tmp_path / "ext")
    _load_fresh("announce", src)
    err = capsys.readouterr().err
    assert "gmpi: building the fused announce CPU kernel" in err and "about a minute" in err
    folder = tmp_path / "ext" / names[0]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{names[0]}.so").write_bytes(b"")
    _load_fresh("announce", src)
    assert "building" not in capsys.readouterr().err
    _build._cache.pop("announce", None)


def test_cuda_arch_flags_follow_torch_cuda_arch_list(monkeypatch):
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "8.0;9.0+PTX")
    assert _build.cuda_arch_flags() == [
        "-gencode=arch=compute_80,code=sm_80",
        "-gencode=arch=compute_90,code=sm_90",
        "-gencode=arch=compute_90,code=compute_90",
    ]
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "Ampere")
    with pytest.raises(ValueError, match="TORCH_CUDA_ARCH_LIST"):
        _build.cuda_arch_flags()
    monkeypatch.delenv("TORCH_CUDA_ARCH_LIST")
    monkeypatch.setattr(_build, "nvcc_major_version", lambda: 13)
    assert "-gencode=arch=compute_70,code=sm_70" not in _build.cuda_arch_flags()  # gone from CUDA 13
    monkeypatch.setattr(_build, "nvcc_major_version", lambda: 12)
    assert _build.cuda_arch_flags()[0] == "-gencode=arch=compute_70,code=sm_70"


@pytest.mark.skipif(shutil.which("c++") is None, reason="no C++ compiler")
def test_prebuild_command_builds_the_cpu_kernels(capsys):
    from gmpi_core.ops import prebuild

    assert prebuild.main(["--cpu-only", "--strict"]) == 0
    assert "built ['bias_act_cpu', 'mpi_render_cpu']" in capsys.readouterr().out


def test_prebuild_command_fails_strictly_and_prints_the_compiler_output(monkeypatch, capsys):
    from gmpi_core.ops import prebuild

    def broken(cuda=None):
        _build._error_details["mpi_render_cpu"] = "render_cpu.cpp:1: error: expected ';'\nninja: stopped"
        return {"mpi_render_cpu": "RuntimeError: ninja: stopped"}

    monkeypatch.setattr(prebuild, "prebuild_kernels", broken)
    assert prebuild.main(["--cpu-only"]) == 0  # warn and go on
    assert prebuild.main(["--cpu-only", "--strict"]) == 1
    err = capsys.readouterr().err
    assert "mpi_render_cpu FAILED" in err and "expected ';'" in err
    _build._error_details.pop("mpi_render_cpu", None)


def test_a_lock_file_is_only_cleared_where_torch_waits_on_its_existence(tmp_path, monkeypatch):
    """torch 2.14 keeps `lock` after every build (an OS-level lock on it): waiting for it to vanish would
    stall each first use for GMPI_BUILD_LOCK_TIMEOUT (seen in the CUDA image build)."""
    from torch.utils import cpp_extension

    src = tmp_path / "k.cpp"
    src.write_text("int f() { return 1; }\n")
    names = _captured_names(monkeypatch, tmp_path / "ext")
    calls: list[Path] = []
    monkeypatch.setattr(_build, "clear_stale_lock", lambda d: calls.append(d))
    monkeypatch.setattr(cpp_extension, "FileBaton", object(), raising=False)
    _load_fresh("locktest", src)
    assert calls == [tmp_path / "ext" / names[0]]  # torch <= 2.13: a stale lock file is cleared
    monkeypatch.delattr(cpp_extension, "FileBaton")
    _load_fresh("locktest", src)
    assert len(calls) == 1  # torch 2.14: the file is not a lock; nothing to clear or wait for
    _build._cache.pop("locktest", None)
