"""Assemble a CUDA_HOME from the NVIDIA wheels of PyPI, for torch's extension builder (GPU image build).

    python docker/cuda_home.py /opt/cuda

The wheels (``nvidia-cuda-nvcc``, ``-runtime``, ``-cccl`` ... and torch's own cuBLAS/cuSPARSE/cuSOLVER
wheels) unpack under ``site-packages/nvidia/``: CUDA 12 as one folder per package (``cuda_nvcc/bin``,
``cuda_runtime/include``...), CUDA 13 as one ``cu13/`` tree. torch expects one toolkit folder with
``bin/nvcc``, ``include/`` and ``lib64/libcudart.so``; this links every package's ``bin``, ``include``,
``lib`` and ``nvvm`` into one such folder (symbolic links, nothing copied), adds ``lib64`` and the
unversioned ``libcudart.so`` the linker asks for, then checks that nvcc runs. Exit 1 with the reason
when something a kernel build needs is missing.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

PARTS = ("bin", "include", "lib", "nvvm")


def _link_tree(src: Path, dst: Path) -> None:
    """Merge ``src`` into ``dst``: folders are created, files linked; the first package wins a clash."""
    dst.mkdir(parents=True, exist_ok=True)
    for entry in src.iterdir():
        target = dst / entry.name
        if entry.is_dir() and not entry.is_symlink():
            _link_tree(entry, target)
        elif not target.exists() and not target.is_symlink():
            target.symlink_to(entry.resolve())


def assemble(nvidia_root: Path, home: Path) -> list[str]:
    """Build ``home`` from the packages under ``nvidia_root``; → problems (empty when usable)."""
    packages = sorted(p for p in nvidia_root.iterdir() if p.is_dir() and not p.name.startswith("__"))
    # nvcc's own package first, so that its bin/ and nvvm/ win any clash
    packages.sort(key=lambda p: not (p / "bin" / "nvcc").exists())
    for pkg in packages:
        for part in PARTS:
            if (pkg / part).is_dir():
                _link_tree(pkg / part, home / part)
    lib = home / "lib"
    lib.mkdir(exist_ok=True)
    if not (home / "lib64").exists():
        (home / "lib64").symlink_to("lib")
    problems = []
    versioned = sorted(lib.glob("libcudart.so.*"))
    if not (lib / "libcudart.so").exists():
        if versioned:
            (lib / "libcudart.so").symlink_to(versioned[0].name)
        else:
            problems.append("no libcudart.so.* (install the nvidia-cuda-runtime wheel)")
    for need in ("bin/nvcc", "include/cuda_runtime.h", "include/cuda_fp16.h"):
        if not (home / need).exists():
            problems.append(f"{need} is missing (install the nvcc/runtime/cccl wheels of torch's CUDA)")
    return problems


def compiler_version_skew() -> list[str]:
    """The CUDA compiler wheels must share one CUDA minor version: ``nvidia-cuda-nvcc`` does not pin its
    ``nvidia-nvvm``/``nvidia-cuda-crt`` dependencies, and a newer cicc writes PTX that the older ptxas
    rejects ("Unsupported .version 9.5; current version is '9.0'")."""
    from importlib import metadata

    versions = {}
    for dist in metadata.distributions():
        name = (dist.metadata["Name"] or "").lower()
        if name.startswith(("nvidia-cuda-nvcc", "nvidia-nvvm", "nvidia-cuda-crt", "nvidia-cuda-runtime")):
            versions[name] = ".".join(dist.version.split(".")[:2])
    if len(set(versions.values())) > 1:
        listed = ", ".join(f"{n} {v}" for n, v in sorted(versions.items()))
        return [f"CUDA compiler wheels of different versions ({listed}): pin them all to one, e.g. ==13.0.*"]
    return []


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    try:
        import nvidia  # namespace package of the NVIDIA wheels
    except ImportError:
        print("cuda_home: no NVIDIA wheels installed (pip install the CUDA_PIP_PACKAGES)", file=sys.stderr)
        return 1
    home = Path(argv[0])
    problems: list[str] = []
    for root in nvidia.__path__:
        problems = assemble(Path(root), home)
    problems += compiler_version_skew()
    if not problems:
        out = subprocess.run([str(home / "bin" / "nvcc"), "--version"], capture_output=True, text=True)
        if out.returncode != 0:
            problems.append(f"nvcc does not run: {out.stderr.strip() or out.stdout.strip()}")
        else:
            print(f"cuda_home: {home} ready; {out.stdout.strip().splitlines()[-1]}")
    for p in problems:
        print(f"cuda_home: {p}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
