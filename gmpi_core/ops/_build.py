"""JIT-building of the optional fused C++/CUDA extensions (one mechanism for every kernel).

A fused kernel is an optimisation, never a requirement: when a build fails (no compiler, no ninja,
no CUDA toolkit) the caller gets ``None`` and falls back to the reference implementation, and the
user sees exactly one warning per extension naming the reason and how to silence it.

Environment:
    GMPI_FUSED=0        never build or use fused kernels (reference paths only)
    GMPI_BUILD_VERBOSE=1  print the compiler output
    TORCH_EXTENSIONS_DIR  where builds are cached (torch's own variable)
    GMPI_BUILD_LOCK_TIMEOUT  seconds after which a build lock is taken as stale (default 300)

torch guards each build directory with a ``lock`` file and waits for it to vanish, forever: a process
killed mid-build (Ctrl-C twice, SIGKILL, a CI timeout) leaves one behind and every later process hangs on
its first fused op. Before a build we wait for a lock at most ``GMPI_BUILD_LOCK_TIMEOUT`` seconds of its
age, then remove it with a warning (a build takes about a minute; the lock holds no process id to ask).
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import torch

_lock = threading.Lock()
DEFAULT_LOCK_TIMEOUT_S = 300.0
_cache: dict[str, ModuleType | None] = {}
_errors: dict[str, str] = {}


def _build_directory(full_name: str) -> Path | None:
    """Where torch builds ``full_name`` (its own private rule; None if a torch release changed it)."""
    from torch.utils import cpp_extension

    try:
        return Path(cpp_extension._get_build_directory(full_name, verbose=False))
    except Exception:
        return None


def clear_stale_lock(build_dir: Path, timeout_s: float | None = None, poll_s: float = 0.5) -> bool:
    """Wait while ``build_dir/lock`` is younger than ``timeout_s`` (another process is building); remove
    it once older (its builder died). Returns True when a stale lock was removed."""
    if timeout_s is None:
        timeout_s = float(os.environ.get("GMPI_BUILD_LOCK_TIMEOUT", DEFAULT_LOCK_TIMEOUT_S))
    lock = build_dir / "lock"
    while True:
        try:
            age = time.time() - lock.stat().st_mtime
        except FileNotFoundError:
            return False
        if age >= timeout_s:
            break
        time.sleep(min(poll_s, timeout_s - age))
    warnings.warn(
        f"gmpi: removing a stale build lock {lock} ({age:.0f} s old; a process building there was "
        "killed). Set GMPI_BUILD_LOCK_TIMEOUT to wait longer for slow builds.",
        RuntimeWarning,
        stacklevel=2,
    )
    lock.unlink(missing_ok=True)
    return True


@dataclass(frozen=True)
class ExtensionSpec:
    """Everything ``load_extension`` needs to build one kernel; ``cuda_flags`` is called at build time
    (it may run nvcc), so declaring a spec at import costs nothing."""

    name: str
    sources: list[Path]
    cuda: bool = False
    cuda_flags: Callable[[], list[str]] = field(default=list)


_specs: dict[str, ExtensionSpec] = {}


def register_extension(spec: ExtensionSpec) -> ExtensionSpec:
    """Declare a kernel so that :func:`prebuild` can build it ahead of its first use."""
    _specs[spec.name] = spec
    return spec


def load_registered(spec: ExtensionSpec) -> ModuleType | None:
    """``load_extension`` for a registered spec (the one code path for first use and prebuild)."""
    flags = spec.cuda_flags() if spec.cuda else None
    return load_extension(spec.name, spec.sources, cuda=spec.cuda, extra_cuda_cflags=flags)


def prebuild(cuda: bool = True) -> dict[str, str]:
    """Build every fused extension into ``TORCH_EXTENSIONS_DIR`` now, without a GPU and without the
    kernels' numerical self-checks (those run on first use on a GPU). For container builds:
    ``TORCH_CUDA_ARCH_LIST=... python -c "from gmpi_core.ops._build import prebuild; prebuild()"``.
    Returns ``{name: reason}`` for each extension that failed to build (empty: all built)."""
    global _allow_without_gpu
    import gmpi_core.mpi.render
    import gmpi_core.ops.bias_act
    import gmpi_core.ops.upfirdn2d  # noqa: F401

    failed: dict[str, str] = {}
    _allow_without_gpu = True
    try:
        for spec in _specs.values():
            if spec.cuda and not cuda:
                continue
            with _lock:
                _cache.pop(spec.name, None)
                _errors.pop(spec.name, None)
            if load_registered(spec) is None:
                failed[spec.name] = _errors.get(spec.name, "disabled with GMPI_FUSED=0")
            with _lock:  # a prebuilt module was never self-checked: first use must load and check it
                _cache.pop(spec.name, None)
    finally:
        _allow_without_gpu = False
    return failed


_allow_without_gpu = False  # True only inside prebuild(): compile CUDA sources on a machine without a GPU


def fused_enabled() -> bool:
    """False when the user disabled fused kernels with ``GMPI_FUSED=0``."""
    return os.environ.get("GMPI_FUSED", "1").strip().lower() not in ("0", "false", "no", "off")


def build_error(name: str) -> str | None:
    """Why the extension ``name`` is unavailable (``None`` when it loaded or was never tried)."""
    return _errors.get(name)


def load_extension(
    name: str,
    sources: list[Path],
    *,
    cuda: bool = False,
    extra_cflags: list[str] | None = None,
    extra_cuda_cflags: list[str] | None = None,
) -> ModuleType | None:
    """Build (once, cached on disk by torch) and import a C++/CUDA extension, or return ``None``.

    The module name gets a hash of the sources so that editing a kernel never loads a stale build.
    """
    if not fused_enabled():
        return None
    with _lock:
        if name in _cache:
            return _cache[name]
        module: ModuleType | None = None
        try:
            if cuda and not torch.cuda.is_available() and not _allow_without_gpu:
                raise RuntimeError("CUDA is not available")
            from torch.utils import cpp_extension

            digest = hashlib.sha256()
            for src in sources:
                digest.update(Path(src).read_bytes())
            full_name = f"gmpi_{name}_{digest.hexdigest()[:10]}"
            build_dir = _build_directory(full_name)
            if build_dir is not None:
                clear_stale_lock(build_dir)
            cflags = ["-O3", *(extra_cflags or [])]
            if not cuda:
                cflags += ["-fopenmp"]
            module = cpp_extension.load(
                name=full_name,
                sources=[str(s) for s in sources],
                extra_cflags=cflags,
                extra_cuda_cflags=["-O3", "--use_fast_math", *(extra_cuda_cflags or [])] if cuda else None,
                extra_ldflags=["-fopenmp"] if not cuda else None,
                verbose=os.environ.get("GMPI_BUILD_VERBOSE") == "1",
            )
        except Exception as exc:  # any build/import failure means "use the reference path"
            reason = f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1] if str(exc).strip() else ''}"
            _errors[name] = reason
            warnings.warn(
                f"gmpi: fused '{name}' kernel unavailable ({reason}); using the reference PyTorch "
                "implementation (same results, slower). Set GMPI_BUILD_VERBOSE=1 to see the compiler "
                "output or GMPI_FUSED=0 to silence this.",
                RuntimeWarning,
                stacklevel=3,
            )
            module = None
        _cache[name] = module
        return module
