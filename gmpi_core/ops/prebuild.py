"""Build the fused kernels ahead of their first use, so that nobody waits on a compile mid-request.

    python -m gmpi_core.ops.prebuild            # the CPU kernels (and the CUDA ones when a GPU is visible)
    python -m gmpi_core.ops.prebuild --cuda --strict   # image builds: every kernel, no GPU needed, exit 1
                                                       # when any kernel fails to compile

Used by ``scripts/dev.sh env``, ``scripts/stack.sh up``, the render/train/eval workers at start and the
container images (docs/deploy.md). Each kernel goes through the library's own first-use path (same names,
cache key and flags), so the first use afterwards only loads the shared object.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from gmpi_core.ops import _build, kernels  # noqa: F401  (kernels: declares every kernel)


def prebuild(cuda: bool = True) -> dict[str, str]:
    """Build every fused extension (``gmpi_core.ops.kernels`` declares them) into ``TORCH_EXTENSIONS_DIR``
    now, without a GPU and without the kernels' numerical self-checks (those run on first use on a GPU);
    ``cuda``: the CUDA kernels too. → ``{name: reason}`` for each extension that failed to build (empty:
    all built)."""
    failed: dict[str, str] = {}
    for spec in _build.registered_specs():  # importing ops.kernels declared them all
        if spec.cuda and not cuda:
            continue
        reason = _build.prebuild_one(spec)
        if reason is not None:
            failed[spec.name] = reason
    return failed


def prebuild_kernels(cuda: bool | None = None) -> dict[str, str]:
    """Build the CPU kernels, and the CUDA kernels when ``cuda`` (default: when a GPU is visible);
    → ``{name: reason}`` of those that failed (empty: all built or fused kernels are disabled)."""
    if not _build.fused_enabled():
        return {}
    return prebuild(cuda=torch.cuda.is_available() if cuda is None else cuda)


def main(argv: list[str] | None = None) -> int:
    doc = (__doc__ or "").split("\n\n")[0]
    ap = argparse.ArgumentParser(prog="python -m gmpi_core.ops.prebuild", description=doc)
    g = ap.add_mutually_exclusive_group()
    g.add_argument(
        "--cuda",
        dest="cuda",
        action="store_true",
        default=None,
        help="also compile the CUDA kernels (needs nvcc, not a GPU)",
    )
    g.add_argument("--cpu-only", dest="cuda", action="store_false", help="only the CPU kernels")
    ap.add_argument(
        "--strict",
        action="store_true",
        help="exit 1 when any kernel fails to build (image builds; default: warn and go on)",
    )
    args = ap.parse_args(argv)  # fmt: skip
    if not _build.fused_enabled():
        print("prebuild: fused kernels are disabled (GMPI_FUSED=0); nothing to build")
        return 0
    t0 = time.monotonic()
    cuda = torch.cuda.is_available() if args.cuda is None else args.cuda
    failed = prebuild_kernels(cuda)
    for name, reason in failed.items():
        output = (_build.build_error(name, details=True) or "").strip().splitlines()
        tail = "\n".join(f"    {line}" for line in output[-40:])
        print(f"prebuild: {name} FAILED: {reason}\n{tail}", file=sys.stderr)
    built = [n for n, s in _build._specs.items() if n not in failed and (cuda or not s.cuda)]
    print(f"prebuild: torch {torch.__version__} (CUDA {torch.version.cuda}), built {sorted(built)} "
          f"in {time.monotonic() - t0:.0f} s")  # fmt: skip
    return 1 if failed and args.strict else 0


if __name__ == "__main__":
    sys.exit(main())
