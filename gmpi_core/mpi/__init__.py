"""Multiplane images: plane placement (``planes``) and the renderer (``render``) (docs/method.md §2, §3)."""

from gmpi_core.mpi.planes import confined_extents, normalized_depth, plane_depths, plane_dhw, texel_xyz
from gmpi_core.mpi.render import RayOutsideMPIError, render_mpi, render_mpi_reference

__all__ = [
    "RayOutsideMPIError",
    "confined_extents",
    "normalized_depth",
    "plane_depths",
    "plane_dhw",
    "render_mpi",
    "render_mpi_reference",
    "texel_xyz",
]
