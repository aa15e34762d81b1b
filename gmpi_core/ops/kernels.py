"""Every fused kernel of gmpi_core, declared once: its name, sources and kind (CPU or CUDA).

This module imports nothing of gmpi_core but the builder, so the GPU image can compile every kernel in
a layer that depends on the kernel sources alone (docker/Dockerfile, stage ``gpu-kernels``): editing
Python code does not recompile CUDA. The modules that use a kernel (``ops.bias_act``, ``ops.upfirdn2d``,
``mpi.render``) take their spec from here.
"""

from __future__ import annotations

from pathlib import Path

from gmpi_core.ops._build import ExtensionSpec, register_extension

_OPS = Path(__file__).parent / "csrc"
_MPI = Path(__file__).parent.parent / "mpi" / "csrc"

BIAS_ACT = register_extension(
    ExtensionSpec("bias_act", [_OPS / "bias_act_binding.cpp", _OPS / "bias_act_kernel.cu"], cuda=True)
)
UPFIRDN2D = register_extension(
    ExtensionSpec("upfirdn2d", [_OPS / "upfirdn2d_binding.cpp", _OPS / "upfirdn2d_kernel.cu"], cuda=True)
)
MPI_RENDER_CUDA = register_extension(
    ExtensionSpec("mpi_render_cuda", [_MPI / "render_cuda_binding.cpp", _MPI / "render_cuda.cu"], cuda=True)
)
MPI_RENDER_CPU = register_extension(ExtensionSpec("mpi_render_cpu", [_MPI / "render_cpu.cpp"]))
BIAS_ACT_CPU = register_extension(ExtensionSpec("bias_act_cpu", [_OPS / "bias_act_cpu.cpp"]))

ALL = (BIAS_ACT, UPFIRDN2D, MPI_RENDER_CUDA, MPI_RENDER_CPU, BIAS_ACT_CPU)
