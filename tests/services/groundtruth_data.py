"""Ground-truth zips as users make them: a `gmpi data synth` folder zipped, and Deep3DFaceRecon outputs
for the geometry renders of an evaluate job (shared by the services and e2e tests)."""

from __future__ import annotations

import io
import re
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np


def zip_of(folder: Path, keep: Callable[[str], bool] = lambda rel: True, top: str = "") -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for p in sorted(folder.rglob("*")):
            rel = p.relative_to(folder).as_posix()
            if p.is_file() and keep(rel):
                z.write(p, top + rel)
    return buf.getvalue()


def deep3dface_zip(geometry_zip: bytes, first: int | None = None) -> bytes:
    """What the Deep3DFaceRecon fork writes for the geometry renders of an evaluate job (stand-in numbers:
    its depth a scaled, rippled copy of GMPI's, its angles the render pose off by 0.02 rad), zipped as
    the folder it worked in. ``first``: only for the first renders (the fork may process a subset)."""
    import scipy.io

    src = zipfile.ZipFile(io.BytesIO(geometry_zip))
    indices = sorted(re.findall(r"geometry/depth/(\d{6})\.npy", "\n".join(src.namelist())))
    assert indices, src.namelist()
    indices = indices[:first]
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:

        def npy(name: str, array: np.ndarray) -> None:
            b = io.BytesIO()
            np.save(b, array)
            z.writestr(name, b.getvalue())

        for i in indices:
            depth = np.load(io.BytesIO(src.read(f"geometry/depth/{i}.npy")))[..., 0]
            pitch, yaw = np.load(io.BytesIO(src.read(f"geometry/angle/{i}.npy")))
            ripple = 0.01 * np.sin(np.arange(depth.size, dtype=np.float32)).reshape(depth.shape)
            npy(f"geometry/recon/aligned_depth/{i}.npy", depth)
            npy(f"geometry/recon/pred_depth/{i}.npy", depth * 1.05 + ripple)
            npy(f"geometry/recon/pred_mask/{i}.npy", np.ones_like(depth))
            mat = io.BytesIO()
            scipy.io.savemat(mat, {"angle": np.array([[pitch + 0.02, -yaw, 0.0]], np.float32)})
            z.writestr(f"geometry/recon/coeffs/{i}.mat", mat.getvalue())
            z.writestr(f"geometry/angle/{i}.npy", src.read(f"geometry/angle/{i}.npy"))
    return buf.getvalue()
