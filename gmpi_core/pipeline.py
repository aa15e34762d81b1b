"""The GMPI pipeline: a generator plus the camera set-up it was trained with (spec §1-§4).

One object that turns latents into MPIs and MPIs into views; everything else (training, evaluation,
renders, services) goes through it rather than re-assembling generator, planes and cameras.

    >>> gmpi = GMPI.random("synthetic32", seed=0)
    >>> mpi = gmpi.generate(seeds=[0], n_planes=8)
    >>> image, depth = gmpi.render(mpi, yaw=0.2, pitch=0.0)     # [1,3,32,32] in [-1,1], [1,1,32,32]
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from gmpi_core.camera import sphere_c2w
from gmpi_core.config import CameraConfig, ExperimentConfig, preset
from gmpi_core.mpi.planes import confined_extents, normalized_depth, plane_depths, plane_dhw
from gmpi_core.mpi.render import OutOfBounds, render_mpi
from gmpi_core.networks import GMPIGenerator


@dataclass
class MPI:
    """A batch of multiplane images and where their planes sit in the world (spec §2)."""

    rgba: Tensor  # [B, N, 4, T, T] in [0, 1], plane 0 nearest, last plane = opaque background
    plane_dhw: Tensor  # [N, 3] (depth, height, width) in world units
    depth_norm: Tensor  # [N] normalised plane depth z̃ in [0, 1] (spec §2.4)

    @property
    def n_planes(self) -> int:
        return int(self.rgba.shape[1])


@functools.lru_cache(maxsize=16)
def _extents(camera: CameraConfig) -> tuple[tuple[float, float], tuple[float, float]]:
    return confined_extents(
        fov_deg=camera.fov_deg,
        d_far=camera.d_far,
        yaw_std=camera.yaw_std,
        pitch_std=camera.pitch_std,
        k=camera.truncation_k,
        radius=camera.sphere_radius,
        center_z=camera.sphere_center_z,
        yaw_mean=camera.yaw_mean,
        pitch_mean=camera.pitch_mean,
        enlarge=camera.spatial_enlarge_factor,
    )


def plane_layout(camera: CameraConfig, n_planes: int) -> tuple[Tensor, Tensor]:
    """(plane_dhw [N,3], depth_norm [N]) for ``n_planes`` planes of this camera set-up (spec §2.2-§2.4)."""
    if n_planes < 2:
        raise ValueError(f"an MPI needs at least 2 planes (content + background), got {n_planes}")
    depths = plane_depths(camera.d_near, camera.d_far, n_planes, method=camera.plane_spacing)
    box_hw, background_hw = _extents(camera)
    return plane_dhw(depths, box_hw, background_hw), normalized_depth(depths, camera.d_near, camera.d_far)


class GMPI:
    """A GMPI generator together with its experiment configuration."""

    def __init__(self, generator: GMPIGenerator, config: ExperimentConfig) -> None:
        self.generator = generator
        self.config = config

    # -- construction ------------------------------------------------------------------------------
    @classmethod
    def random(cls, config: ExperimentConfig | str, seed: int = 0) -> GMPI:
        """A randomly initialised model (for smoke tests and as the start of training from scratch)."""
        cfg = preset(config) if isinstance(config, str) else config
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            generator = GMPIGenerator(**cfg.generator.model_dump())
        return cls(generator.eval().requires_grad_(False), cfg)

    @classmethod
    def from_pretrained(
        cls, path: str | Path, *, use_ema: bool | None = None, map_location: str = "cpu"
    ) -> GMPI:
        """Load a native checkpoint dir (``config.json`` + ``weights.safetensors`` [+ ``ema.safetensors``]).

        ``use_ema=None`` uses the EMA weights when the checkpoint has them (what evaluation uses, spec §9.1).
        """
        from gmpi_core.checkpoints.native import EMA_FILE, load_pretrained, read_native_config

        meta = read_native_config(path)
        extra = meta.get("extra") or {}
        if "experiment" not in extra:
            raise ValueError(
                f"{path} holds a '{meta.get('class')}' checkpoint without an experiment config; "
                "a GMPI pipeline checkpoint is written by GMPI.save_pretrained or `gmpi train`"
            )
        if use_ema is None:
            use_ema = (Path(path) / EMA_FILE).is_file()
        generator = load_pretrained(path, use_ema=use_ema, map_location=map_location)
        if not isinstance(generator, GMPIGenerator):
            raise ValueError(f"{path} holds a {type(generator).__name__}, not a GMPIGenerator")
        return cls(
            generator.eval().requires_grad_(False), ExperimentConfig.model_validate(extra["experiment"])
        )

    def save_pretrained(self, path: str | Path, *, ema_state: dict[str, Tensor] | None = None) -> Path:
        from gmpi_core.checkpoints.native import save_pretrained

        return save_pretrained(
            path,
            self.generator,
            ema_state=ema_state,
            extra={"experiment": self.config.model_dump(mode="json")},
        )

    @property
    def device(self) -> torch.device:
        return next(self.generator.parameters()).device

    def to(self, device: str | torch.device) -> GMPI:
        self.generator.to(device)
        return self

    # -- latents -> MPI -> views --------------------------------------------------------------------
    def latents(self, seeds: Sequence[int]) -> Tensor:
        """z [B, z_dim] with ``torch.manual_seed(seed)`` per image, as the official evaluation (spec §9.1)."""
        zs = []
        for seed in seeds:
            g = torch.Generator().manual_seed(int(seed))
            zs.append(torch.randn(1, self.generator.z_dim, generator=g))
        return torch.cat(zs).to(self.device)

    @torch.no_grad()
    def generate(
        self,
        seeds: Sequence[int] | None = None,
        *,
        z: Tensor | None = None,
        n_planes: int | None = None,
        truncation_psi: float = 1.0,
        noise_mode: str = "random",
    ) -> MPI:
        """MPIs for the given seeds (or latents ``z``) with ``n_planes`` planes (default: the eval count)."""
        if (seeds is None) == (z is None):
            raise ValueError("pass exactly one of seeds=[...] or z=tensor")
        z = self.latents(seeds) if seeds is not None else z.to(self.device)  # type: ignore[union-attr]
        n = n_planes or self.config.eval.n_planes
        dhw, depth_norm = plane_layout(self.config.camera, n)
        rgba = self.generator(
            z, depth_norm.to(self.device), truncation_psi=truncation_psi, noise_mode=noise_mode
        )
        return MPI(rgba=rgba, plane_dhw=dhw.to(self.device), depth_norm=depth_norm.to(self.device))

    def cameras(
        self, yaw: float | Sequence[float] | Tensor, pitch: float | Sequence[float] | Tensor
    ) -> Tensor:
        """c2w [B, 4, 4] on this model's camera sphere (spec §1.3)."""
        yaw_t = torch.as_tensor(yaw, dtype=torch.float32).reshape(-1)
        pitch_t = torch.as_tensor(pitch, dtype=torch.float32).reshape(-1)
        yaw_t, pitch_t = torch.broadcast_tensors(yaw_t, pitch_t)
        cam = self.config.camera
        return sphere_c2w(yaw_t, pitch_t, radius=cam.sphere_radius, center_z=cam.sphere_center_z).to(
            self.device
        )

    @torch.no_grad()
    def render(
        self,
        mpi: MPI,
        yaw: float | Sequence[float] | Tensor,
        pitch: float | Sequence[float] | Tensor,
        *,
        size: int | None = None,
        out_of_bounds: OutOfBounds = "raise",
    ) -> tuple[Tensor, Tensor]:
        """Render every MPI of the batch at the given pose(s).

        With one MPI and V poses, returns V views of it; with B MPIs and B poses, one view each.
        Returns (image [V,3,H,W] in [-1,1], depth [V,1,H,W] camera z-depth).
        """
        c2w = self.cameras(yaw, pitch)
        rgba = mpi.rgba
        if rgba.shape[0] == 1 and c2w.shape[0] > 1:
            rgba = rgba.expand(c2w.shape[0], *rgba.shape[1:])
        elif rgba.shape[0] != c2w.shape[0]:
            if c2w.shape[0] != 1:
                raise ValueError(
                    f"{rgba.shape[0]} MPIs but {c2w.shape[0]} poses; pass one pose or one per MPI"
                )
            c2w = c2w.expand(rgba.shape[0], 4, 4)
        return render_mpi(
            rgba,
            mpi.plane_dhw,
            c2w,
            fov_deg=self.config.camera.fov_deg,
            size=size or self.config.generator.img_resolution,
            out_of_bounds=out_of_bounds,
        )
