"""Build-time prebuild of GMPI's fused C++/CUDA kernels into ``$TORCH_EXTENSIONS_DIR`` (CUDA images).

``docker build`` has nvcc but no GPU. ``gmpi_core.ops._build.prebuild`` compiles every registered kernel
through the library's own first-use path (same extension names, source hashes and compiler flags as at
run time), so at run time torch's loader finds the build and ninja has no work. The kernels' numerical
self-checks need a GPU and run on the first use in a GPU container.

    TORCH_CUDA_ARCH_LIST="7.0;7.5;8.0;8.6;8.9;9.0" TORCH_EXTENSIONS_DIR=/opt/gmpi/torch_extensions \\
        python docker/prebuild_ops.py            # exit 1 when a kernel failed to build
"""

from __future__ import annotations

import os
import sys
from pathlib import Path


def main() -> int:
    ext_dir = os.environ.get("TORCH_EXTENSIONS_DIR")
    if not ext_dir:
        print("prebuild_ops: set TORCH_EXTENSIONS_DIR", file=sys.stderr)
        return 2
    os.environ.setdefault("GMPI_BUILD_VERBOSE", "1")
    import torch

    from gmpi_core.ops._build import prebuild

    failed = prebuild(cuda=True)
    built = sorted(p.name for p in Path(ext_dir).glob("**/gmpi_*/*.so"))
    print(f"prebuild_ops: torch {torch.__version__}, built {built}")
    for name, reason in failed.items():
        print(f"prebuild_ops: {name} FAILED: {reason}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
