"""Generators: the plain 2D StyleGAN2 generator and the GMPI generator (docs/method.md §4).

Both register ``synthesis`` before ``mapping`` (docs/method.md §11.4), so their ``state_dict`` order is the
official one and pretrained StyleGAN2 ``G_ema`` weights load by name into either.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn

from gmpi_core.networks.alpha import make_alpha_head
from gmpi_core.networks.mapping import MappingNetwork
from gmpi_core.networks.synthesis import MPISynthesisNetwork, SynthesisNetwork

__all__ = ["GMPIGenerator", "StyleGAN2Generator"]


class StyleGAN2Generator(nn.Module):
    """StyleGAN2-ADA generator: ``img = synthesis(mapping(z, c))`` (method §4.1), raw output ≈ [−1, 1]."""

    def __init__(
        self,
        z_dim: int = 512,
        c_dim: int = 0,
        w_dim: int = 512,
        img_resolution: int = 256,
        img_channels: int = 3,
        channel_base: int = 16384,
        channel_max: int = 512,
        num_fp16_res: int = 4,
        conv_clamp: float | None = 256,
        mapping_layers: int = 8,
    ) -> None:
        super().__init__()
        self._config: dict[str, Any] = {
            "z_dim": z_dim,
            "c_dim": c_dim,
            "w_dim": w_dim,
            "img_resolution": img_resolution,
            "img_channels": img_channels,
            "channel_base": channel_base,
            "channel_max": channel_max,
            "num_fp16_res": num_fp16_res,
            "conv_clamp": conv_clamp,
            "mapping_layers": mapping_layers,
        }
        self.z_dim, self.c_dim, self.w_dim = z_dim, c_dim, w_dim
        self.img_resolution, self.img_channels = img_resolution, img_channels
        self.synthesis = SynthesisNetwork(
            w_dim, img_resolution, img_channels, channel_base, channel_max, num_fp16_res, conv_clamp
        )
        self.num_ws = self.synthesis.num_ws
        self.mapping = MappingNetwork(z_dim, c_dim, w_dim, self.num_ws, num_layers=mapping_layers)

    @property
    def config(self) -> dict[str, Any]:
        """The constructor arguments (JSON-able); ``from_config(config)`` rebuilds the architecture."""
        return dict(self._config)

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> StyleGAN2Generator:
        return cls(**cfg)

    def forward(
        self, z: Tensor, c: Tensor | None = None, truncation_psi: float = 1.0, noise_mode: str = "random"
    ) -> Tensor:
        """z [B, z_dim], c [B, c_dim] → image [B, img_channels, R, R]."""
        ws = self.mapping(z, c, truncation_psi=truncation_psi)
        return self.synthesis(ws, noise_mode=noise_mode)


class GMPIGenerator(nn.Module):
    """Generative multiplane images (docs/method.md §4): StyleGAN2 plus one alpha head (docs/method.md §4.4).

    ``alpha_head``: ``"normalize_add_z"`` (paper), ``"none"`` (vanilla, fixed ``n_train_planes``),
    ``"learnable_param"`` (learned tokens; ``train_plane_depth_norm`` = the training planes' z̃, needed
    to interpolate them to other plane sets), ``"depth2alpha"`` (Δ = 1/``depth2alpha_n_z_bins``).
    ``alpha_largest_res``: blocks above it contribute alpha 0 (normalize_add_z, learnable_param).
    """

    def __init__(
        self,
        z_dim: int = 512,
        c_dim: int = 0,
        w_dim: int = 512,
        img_resolution: int = 256,
        img_channels: int = 3,
        channel_base: int = 16384,
        channel_max: int = 512,
        num_fp16_res: int = 4,
        conv_clamp: float | None = 256,
        mapping_layers: int = 8,
        alpha_head: str = "normalize_add_z",
        alpha_largest_res: int = 256,
        n_train_planes: int = 32,
        depth2alpha_n_z_bins: int = 256,
        train_plane_depth_norm: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        if img_channels != 3:
            raise ValueError(
                f"GMPIGenerator produces RGBA planes; img_channels must be 3, got {img_channels}"
            )
        if alpha_largest_res < 4:
            raise ValueError(f"alpha_largest_res must be >= 4 (the first block), got {alpha_largest_res}")
        self._config: dict[str, Any] = {
            "z_dim": z_dim,
            "c_dim": c_dim,
            "w_dim": w_dim,
            "img_resolution": img_resolution,
            "img_channels": img_channels,
            "channel_base": channel_base,
            "channel_max": channel_max,
            "num_fp16_res": num_fp16_res,
            "conv_clamp": conv_clamp,
            "mapping_layers": mapping_layers,
            "alpha_head": alpha_head,
            "alpha_largest_res": alpha_largest_res,
            "n_train_planes": n_train_planes,
            "depth2alpha_n_z_bins": depth2alpha_n_z_bins,
            "train_plane_depth_norm": None
            if train_plane_depth_norm is None
            else list(train_plane_depth_norm),
        }
        self.z_dim, self.c_dim, self.w_dim = z_dim, c_dim, w_dim
        self.img_resolution, self.img_channels = img_resolution, img_channels
        head = make_alpha_head(
            alpha_head,
            alpha_largest_res=alpha_largest_res,
            n_train_planes=n_train_planes,
            depth2alpha_n_z_bins=depth2alpha_n_z_bins,
            train_plane_depth_norm=train_plane_depth_norm,
        )
        self.synthesis = MPISynthesisNetwork(
            w_dim,
            img_resolution,
            head,
            channel_base=channel_base,
            channel_max=channel_max,
            num_fp16_res=num_fp16_res,
            conv_clamp=conv_clamp,
        )
        self.num_ws = self.synthesis.num_ws
        self.mapping = MappingNetwork(z_dim, c_dim, w_dim, self.num_ws, num_layers=mapping_layers)

    @property
    def config(self) -> dict[str, Any]:
        """The constructor arguments (JSON-able); ``from_config(config)`` rebuilds the architecture."""
        return dict(self._config)

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> GMPIGenerator:
        return cls(**cfg)

    def forward(
        self,
        z: Tensor,
        plane_depth_norm: Tensor,
        c: Tensor | None = None,
        truncation_psi: float = 1.0,
        noise_mode: str = "random",
        background_alpha_full: bool = True,
        impl: str = "fast",
    ) -> Tensor:
        """z [B, z_dim], z̃ [N] (nearest first) → MPI [B, N, 4, R, R] in [0, 1] (docs/method.md §4.3)."""
        ws = self.mapping(z, c, truncation_psi=truncation_psi)
        return self.synthesis(
            ws,
            plane_depth_norm,
            noise_mode=noise_mode,
            background_alpha_full=background_alpha_full,
            impl=impl,
        )

    def synthesize_2d(self, ws: Tensor, noise_mode: str = "random") -> Tensor:
        """The pretrained StyleGAN2 path: ws [B, num_ws, w_dim] → raw image [B, 3, R, R]."""
        return self.synthesis.image(ws, noise_mode=noise_mode)
