"""JIT-building of the optional fused C++/CUDA extensions (one mechanism for every kernel).

A fused kernel is an optimisation, never a requirement: when a build fails (no compiler, no ninja,
no CUDA toolkit) the caller gets ``None`` and falls back to the reference implementation, and the
user sees exactly one warning per extension naming the reason and how to silence it.

Environment:
    GMPI_FUSED=0        never build or use fused kernels (reference paths only)
    GMPI_BUILD_VERBOSE=1  print the compiler output
    TORCH_EXTENSIONS_DIR  where builds are cached (torch's own variable)
    GMPI_BUILD_LOCK_TIMEOUT  seconds after which a build lock is taken as stale (default 300)

Cache key: a build embeds the paths of the interpreter, torch and the compiler it was made with, so the
build folder is named by a hash of everything the build depends on (:func:`build_key`): the sources, the
compiler flags, the interpreter (``sys.prefix``: the venv), Python's and torch's versions, torch's CUDA
version, the compiler and ``CUDA_HOME``. Two checkouts or two venvs on one machine (a developer's and
CI's fresh clone) therefore build side by side instead of rebuilding one folder in turn and waiting on
each other's lock; a build is reused only by the environment that made it.

torch up to 2.13 guards each build directory with a ``lock`` file and waits for it to vanish, forever: a
process killed mid-build (Ctrl-C twice, SIGKILL, a CI timeout) leaves one behind and every later process
hangs on its first fused op. Before a build we wait for a lock at most ``GMPI_BUILD_LOCK_TIMEOUT`` seconds
of its age, then remove it with a warning (a build takes about a minute; the lock holds no process id to
ask). torch 2.14 takes an OS-level lock instead (the file stays and means nothing): no clearing then.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
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
_error_details: dict[str, str] = {}  # the whole compiler output of a failed build (prebuild prints it)


def _build_directory(full_name: str) -> Path | None:
    """Where torch builds ``full_name`` (its own private rule; None if a torch release changed it)."""
    from torch.utils import cpp_extension

    try:
        return Path(cpp_extension._get_build_directory(full_name, verbose=False))
    except Exception:
        return None


def _lock_file_blocks() -> bool:
    """True while torch guards builds with a lock *file* whose existence blocks (``FileBaton``, torch
    <= 2.13); torch 2.14 holds an OS-level advisory lock on a file that stays, which a killed builder
    releases by itself, so there is nothing stale to clear (and a present file means nothing)."""
    from torch.utils import cpp_extension

    return hasattr(cpp_extension, "FileBaton")


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


def nvcc_major_version() -> int:
    """Major version of the nvcc that torch's extension builder will use (torch's CUDA as a fallback)."""
    try:
        from torch.utils.cpp_extension import CUDA_HOME

        nvcc = os.path.join(CUDA_HOME, "bin", "nvcc") if CUDA_HOME else (shutil.which("nvcc") or "nvcc")
        text = subprocess.run([nvcc, "--version"], capture_output=True, text=True, timeout=60).stdout
        found = re.search(r"release (\d+)\.", text)
        if found:
            return int(found.group(1))
    except (OSError, subprocess.SubprocessError):
        pass
    return int((torch.version.cuda or "12.0").split(".")[0])


def cuda_arch_flags() -> list[str]:
    """``-gencode`` flags of every CUDA kernel: ``TORCH_CUDA_ARCH_LIST`` when set ("7.5;8.0;9.0+PTX"),
    else V100..H100 (sm_70 is gone from CUDA 13) plus compute_90 PTX for newer GPUs."""
    wanted = os.environ.get("TORCH_CUDA_ARCH_LIST", "").replace(",", ";").replace(" ", ";")
    if wanted.strip(";"):
        flags: list[str] = []
        for item in filter(None, wanted.split(";")):
            arch = item.removesuffix("+PTX").replace(".", "")
            if not arch.isdigit():
                raise ValueError(f"TORCH_CUDA_ARCH_LIST: cannot read {item!r} (expected '8.6' or '9.0+PTX')")
            flags.append(f"-gencode=arch=compute_{arch},code=sm_{arch}")
            if item.endswith("+PTX"):
                flags.append(f"-gencode=arch=compute_{arch},code=compute_{arch}")
        return flags
    archs = [75, 80, 86, 89, 90] if nvcc_major_version() >= 13 else [70, 75, 80, 86, 89, 90]
    flags = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in archs]
    return [*flags, "-gencode=arch=compute_90,code=compute_90"]


@dataclass(frozen=True)
class ExtensionSpec:
    """Everything ``load_extension`` needs to build one kernel; ``cuda_flags`` is called at build time
    (it may run nvcc), so declaring a spec at import costs nothing."""

    name: str
    sources: list[Path]
    cuda: bool = False
    cuda_flags: Callable[[], list[str]] = field(default=cuda_arch_flags)


_specs: dict[str, ExtensionSpec] = {}


def register_extension(spec: ExtensionSpec) -> ExtensionSpec:
    """Declare a kernel so that ``ops.prebuild`` can build it ahead of its first use."""
    _specs[spec.name] = spec
    return spec


def load_registered(spec: ExtensionSpec) -> ModuleType | None:
    """``load_extension`` for a registered spec (the one code path for first use and prebuild)."""
    flags = spec.cuda_flags() if spec.cuda else None
    return load_extension(spec.name, spec.sources, cuda=spec.cuda, extra_cuda_cflags=flags)


def registered_specs() -> list[ExtensionSpec]:
    """Every kernel declared with :func:`register_extension` (``ops.kernels`` declares them all)."""
    return list(_specs.values())


def prebuild_one(spec: ExtensionSpec) -> str | None:
    """Build ``spec`` into ``TORCH_EXTENSIONS_DIR`` now, without a GPU and without its numerical
    self-check (that runs on first use on a GPU); → why it failed, or ``None`` when it built. The module is
    not kept as loaded: its first use loads and checks it (``ops.prebuild`` builds every kernel)."""
    global _allow_without_gpu
    with _lock:
        _cache.pop(spec.name, None)
        _errors.pop(spec.name, None)
    _allow_without_gpu = True
    try:
        module = load_registered(spec)
    finally:
        _allow_without_gpu = False
    with _lock:  # a prebuilt module was never self-checked: first use must load and check it
        _cache.pop(spec.name, None)
    return None if module is not None else _errors.get(spec.name, "disabled with GMPI_FUSED=0")


class CheckedKernel:
    """A fused kernel built on first use and self-checked once against its reference (``self_check`` →
    a problem or ``None``); a kernel that fails to build or to check is disabled, with one warning."""

    def __init__(self, spec: ExtensionSpec, self_check: Callable[[], str | None]) -> None:
        self.name = spec.name
        self.spec = spec
        self.self_check = self_check
        self.module: ModuleType | None = None
        self._state = "untried"  # untried -> checking -> ready | disabled
        self._lock = threading.RLock()

    def get(self) -> ModuleType | None:
        """The kernel's module, or ``None`` (use the reference). During the self-check (same thread) the
        module is returned, so that the check's own calls run the kernel."""
        with self._lock:
            if self._state == "untried":
                self._state = "checking"
                self.module = load_registered(self.spec)
                problem = "build failed" if self.module is None else self._run_self_check()
                if problem is None:
                    self._state = "ready"
                else:
                    self._state, self.module = "disabled", None
                    if problem != "build failed":  # load_extension already warned about build failures
                        warnings.warn(
                            f"gmpi: fused CUDA '{self.name}' kernel failed its self-check ({problem}); "
                            "using the reference PyTorch implementation from now on.",
                            RuntimeWarning,
                            stacklevel=4,
                        )
            return self.module

    def _run_self_check(self) -> str | None:
        try:  # independent of the caller's mode: no inference mode, grad on, no autocast
            with torch.inference_mode(False), torch.enable_grad(), torch.autocast("cuda", enabled=False):
                return self.self_check()
        except Exception as exc:  # a crashing kernel is a failed self-check
            return f"{type(exc).__name__}: {exc}"


_allow_without_gpu = False  # True only inside prebuild_one(): compile CUDA sources on a machine without a GPU


def fused_enabled() -> bool:
    """False when the user disabled fused kernels with ``GMPI_FUSED=0``."""
    return os.environ.get("GMPI_FUSED", "1").strip().lower() not in ("0", "false", "no", "off")


def build_error(name: str, *, details: bool = False) -> str | None:
    """Why the extension ``name`` is unavailable (``None`` when it loaded or was never tried); with
    ``details`` the compiler's whole output."""
    return (_error_details if details else _errors).get(name)


def _compiler() -> str:
    cxx = os.environ.get("CXX", "c++")
    return os.path.realpath(shutil.which(cxx) or cxx)


def build_key(
    sources: list[Path],
    cflags: list[str],
    cuda_cflags: list[str] | None = None,
    ldflags: list[str] | None = None,
) -> str:
    """Hex digest of everything a build depends on (see the module docstring): the cache folder's name."""
    digest = hashlib.sha256()
    for src in sources:
        # the full path too: the build files name the sources by absolute path, so two checkouts sharing
        # one venv (or a copy of the tree next to it) would otherwise rebuild one folder in turn
        digest.update(os.path.realpath(src).encode() + b"\0" + Path(src).read_bytes() + b"\0")
    parts = [
        "cflags=" + " ".join(cflags),
        "cuda_cflags=" + " ".join(cuda_cflags or []),
        "ldflags=" + " ".join(ldflags or []),
        "prefix=" + os.path.realpath(sys.prefix),
        "python=" + sys.version,
        "torch=" + torch.__version__ + "|" + str(torch.version.cuda) + "|" + os.path.dirname(torch.__file__),
        "cxx=" + _compiler(),
        "cuda_home=" + (os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH") or ""),
    ]
    digest.update("\n".join(parts).encode())
    return digest.hexdigest()


def _flags(
    cuda: bool, extra_cflags: list[str] | None = None, extra_cuda_cflags: list[str] | None = None
) -> tuple[list[str], list[str] | None, list[str] | None]:
    """(cflags, cuda_cflags, ldflags) of a build: OpenMP for the CPU kernels, fast math for the CUDA ones."""
    cflags = ["-O3", *(extra_cflags or [])]
    if cuda:
        return cflags, ["-O3", "--use_fast_math", *(extra_cuda_cflags or [])], None
    return [*cflags, "-fopenmp"], None, ["-fopenmp"]


def _module_name(
    name: str,
    sources: list[Path],
    cflags: list[str],
    cuda_cflags: list[str] | None,
    ldflags: list[str] | None,
) -> str:
    return f"gmpi_{name}_{build_key(sources, cflags, cuda_cflags, ldflags)[:16]}"


def registered_module_name(spec: ExtensionSpec) -> str:
    """The module (and build folder) name a registered kernel gets, without building it."""
    flags = _flags(spec.cuda, None, spec.cuda_flags() if spec.cuda else None)
    return _module_name(spec.name, spec.sources, *flags)


def _announce(name: str, cuda: bool, build_dir: Path | None, full_name: str) -> None:
    """One line on stderr before a build that will compile (not before loading a finished build)."""
    if build_dir is not None and (build_dir / f"{full_name}.so").is_file():
        return
    what = "CUDA kernel" if cuda else "CPU kernel"
    where = f" in {build_dir}" if build_dir is not None else ""
    print(
        f"gmpi: building the fused {name} {what}{where} (first use in this environment; "
        f"{'several minutes' if cuda else 'about a minute'}, then cached)...",
        file=sys.stderr,
        flush=True,
    )


def load_extension(
    name: str,
    sources: list[Path],
    *,
    cuda: bool = False,
    extra_cflags: list[str] | None = None,
    extra_cuda_cflags: list[str] | None = None,
) -> ModuleType | None:
    """Build (once, cached on disk by torch) and import a C++/CUDA extension, or return ``None``.

    The module name carries :func:`build_key`, so that editing a kernel, another venv or another torch
    never loads (or waits on) a build made for something else.
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

            cflags, cuda_cflags, ldflags = _flags(cuda, extra_cflags, extra_cuda_cflags)
            full_name = _module_name(name, sources, cflags, cuda_cflags, ldflags)
            build_dir = _build_directory(full_name)
            if build_dir is not None and _lock_file_blocks():
                clear_stale_lock(build_dir)
            _announce(name, cuda, build_dir, full_name)
            module = cpp_extension.load(
                name=full_name,
                sources=[str(s) for s in sources],
                extra_cflags=cflags,
                extra_cuda_cflags=cuda_cflags,
                extra_ldflags=ldflags,
                verbose=os.environ.get("GMPI_BUILD_VERBOSE") == "1",
            )
        except Exception as exc:  # any build/import failure means "use the reference path"
            reason = f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1] if str(exc).strip() else ''}"
            _errors[name] = reason
            _error_details[name] = str(exc)
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
