"""StyleGAN2 synthesis network (method §4.1) and its GMPI extension producing an MPI (method §4.2-4.4).

Names follow SG2-ADA / the official GMPI checkpoints (docs/method.md §11.4): blocks ``b4 … b{R}``, each with
``const`` (b4 only), buffer ``resample_filter``, ``conv0`` (r > 4), ``conv1``, ``torgb``; the GMPI
alpha head adds its embedding (e.g. ``pos_enc_embed``) before the convolutions and its alpha layer
(e.g. ``toalpha``) after ``torgb`` (docs/method.md §4.5).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from gmpi_core.networks.alpha import AlphaHead, PlaneLogits, border_background, to_unit_interval
from gmpi_core.networks.layers import SynthesisLayer, ToRGBLayer
from gmpi_core.ops.upfirdn2d import setup_filter, upsample2d

__all__ = ["IMPLS", "MPISynthesisNetwork", "SynthesisBlock", "SynthesisNetwork", "assemble_mpi"]

IMPLS = ("fast", "reference")


class SynthesisBlock(nn.Module):
    """One resolution of the skip-architecture generator (docs/method.md §4.1).

    b4: learned ``const`` [C, 4, 4] → ``conv1``; other blocks: ``conv0`` (2× up) → ``conv1``. One
    ``torgb`` per block. ``ws`` [B, num_conv + 1, w_dim]: conv latents, then the ToRGB latent (shared by
    the alpha head, docs/method.md §4.1). Runs in fp16 when ``use_fp16`` and on CUDA; CPU always runs fp32.
    """

    resample_filter: Tensor

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        w_dim: int,
        resolution: int,
        img_channels: int = 3,
        use_fp16: bool = False,
        conv_clamp: float | None = None,
        resample_filter: Sequence[float] = (1, 3, 3, 1),
        alpha_head: AlphaHead | None = None,
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.w_dim = w_dim
        self.resolution = resolution
        self.img_channels = img_channels
        self.use_fp16 = use_fp16
        self.conv_clamp = conv_clamp
        self.alpha_head = alpha_head
        self.has_alpha = alpha_head is not None and alpha_head.carries_alpha(resolution)
        self.num_conv = 1 if in_channels == 0 else 2
        self.num_torgb = 1

        # Registration order = official state_dict order (docs/method.md §11.4): const, resample_filter,
        # embedding, conv0, conv1, torgb, alpha layer.
        self.register_buffer("resample_filter", setup_filter(list(resample_filter)))
        if alpha_head is not None and self.has_alpha:
            alpha_head.attach_embedding(self, out_channels, w_dim, conv_clamp)
        if in_channels == 0:
            self.const = nn.Parameter(torch.randn([out_channels, resolution, resolution]))
        self.conv0 = (
            SynthesisLayer(
                in_channels,
                out_channels,
                w_dim,
                resolution,
                up=2,
                resample_filter=resample_filter,
                conv_clamp=conv_clamp,
            )
            if in_channels != 0
            else None
        )
        self.conv1 = SynthesisLayer(out_channels, out_channels, w_dim, resolution, conv_clamp=conv_clamp)
        self.torgb = ToRGBLayer(out_channels, img_channels, w_dim, conv_clamp=conv_clamp)
        if alpha_head is not None and self.has_alpha:
            alpha_head.attach_alpha_layer(self, out_channels, w_dim, conv_clamp)

    def compute_dtype(self, device: torch.device, force_fp32: bool = False) -> torch.dtype:
        """fp16 for fp16 blocks on CUDA, else fp32 (docs/method.md §4.1)."""
        use_fp16 = self.use_fp16 and not force_fp32 and device.type == "cuda"
        return torch.float16 if use_fp16 else torch.float32

    def fused_modconv(self, x: Tensor) -> bool:
        """SG2's rule: fused iff not training and (fp32 or batch 1) (docs/method.md §4.1)."""
        return not self.training and (x.dtype == torch.float32 or x.shape[0] == 1)

    def features(
        self, x: Tensor | None, ws: Tensor, noise_mode: str = "random", force_fp32: bool = False
    ) -> Tensor:
        """Main layers: ``x`` [B, C_in, r/2, r/2] (None for b4) → [B, C, r, r] in the block's dtype."""
        if ws.ndim != 3 or ws.shape[1] != self.num_conv + self.num_torgb or ws.shape[2] != self.w_dim:
            raise ValueError(
                f"block b{self.resolution} expects ws [B, {self.num_conv + self.num_torgb}, {self.w_dim}], "
                f"got {tuple(ws.shape)}"
            )
        dtype = self.compute_dtype(ws.device, force_fp32)
        if self.conv0 is None:
            x = self.const.to(dtype).unsqueeze(0).repeat(ws.shape[0], 1, 1, 1)
            return self.conv1(x, ws[:, 0], noise_mode=noise_mode, fused_modconv=self.fused_modconv(x))
        if x is None:
            raise ValueError(f"block b{self.resolution} needs the features of the previous block")
        x = x.to(dtype)
        fused = self.fused_modconv(x)
        x = self.conv0(x, ws[:, 0], noise_mode=noise_mode, fused_modconv=fused)
        return self.conv1(x, ws[:, 1], noise_mode=noise_mode, fused_modconv=fused)

    def rgb(self, x: Tensor, w_rgb: Tensor) -> Tensor:
        """StyleGAN2's ToRGB (docs/method.md §4.1): [B, C, r, r] → [B, img_channels, r, r] float32."""
        return self.torgb(x, w_rgb, fused_modconv=self.fused_modconv(x)).float()

    def background_rgb(self, x: Tensor, w_rgb: Tensor) -> Tensor:
        """The same ToRGB on the detached border-interpolated features (method §4.2 step 7), float32."""
        return self.rgb(border_background(x), w_rgb)

    def alpha_logits(
        self, x: Tensor, ws: Tensor, plane_depth_norm: Tensor, factorised: bool = True
    ) -> PlaneLogits:
        """This block's alpha contribution (method §4.2 steps 2-5); empty above ``alpha_largest_res``."""
        if self.alpha_head is None or not self.has_alpha:
            return PlaneLogits()
        w_embed, w_rgb = ws[:, self.num_conv - 1], ws[:, self.num_conv]
        return self.alpha_head.block_logits(self, x, w_embed, w_rgb, plane_depth_norm, factorised=factorised)

    def forward(
        self,
        x: Tensor | None,
        img: Tensor | None,
        ws: Tensor,
        noise_mode: str = "random",
        force_fp32: bool = False,
    ) -> tuple[Tensor, Tensor]:
        """StyleGAN2 step: ``img_r = Up₂(img_{r/2}) + ToRGB(x_r)`` (method §4.1). Returns (x, img fp32)."""
        x = self.features(x, ws, noise_mode, force_fp32)
        y = self.rgb(x, ws[:, self.num_conv])
        return x, y if img is None else upsample2d(img, self.resample_filter) + y

    def extra_repr(self) -> str:
        head = None if self.alpha_head is None else self.alpha_head.name
        return (
            f"resolution={self.resolution}, in_channels={self.in_channels}, "
            f"out_channels={self.out_channels}, use_fp16={self.use_fp16}, "
            f"conv_clamp={self.conv_clamp}, alpha_head={head}"
        )


def block_channels(resolution: int, channel_base: int, channel_max: int) -> int:
    """C_r = min(channel_base / r, channel_max) (docs/method.md §4.1)."""
    return min(channel_base // resolution, channel_max)


class SynthesisNetwork(nn.Module):
    """StyleGAN2 synthesis network, skip architecture (docs/method.md §4.1): blocks ``b4 … b{R}``.

    Block k consumes ``ws[:, 2k-1 … 2k+1]`` (overlapping by one); ``num_ws = 2·log2(R) − 2``. Blocks with
    ``r ≥ max(2^(log2 R + 1 − num_fp16_res), 8)`` run in fp16 on CUDA. ``forward`` returns the raw
    StyleGAN2 image [B, img_channels, R, R] (≈ [−1, 1]).
    """

    def __init__(
        self,
        w_dim: int,
        img_resolution: int,
        img_channels: int = 3,
        channel_base: int = 32768,
        channel_max: int = 512,
        num_fp16_res: int = 4,
        conv_clamp: float | None = 256,
        alpha_head: AlphaHead | None = None,
    ) -> None:
        super().__init__()
        if img_resolution < 4 or img_resolution & (img_resolution - 1):
            raise ValueError(f"img_resolution must be a power of two >= 4, got {img_resolution}")
        self.w_dim = w_dim
        self.img_resolution = img_resolution
        self.img_channels = img_channels
        self.block_resolutions = [2**i for i in range(2, int(math.log2(img_resolution)) + 1)]
        fp16_resolution = max(2 ** (int(math.log2(img_resolution)) + 1 - num_fp16_res), 8)
        self.num_ws = 0
        for res in self.block_resolutions:
            block = SynthesisBlock(
                in_channels=block_channels(res // 2, channel_base, channel_max) if res > 4 else 0,
                out_channels=block_channels(res, channel_base, channel_max),
                w_dim=w_dim,
                resolution=res,
                img_channels=img_channels,
                use_fp16=res >= fp16_resolution,
                conv_clamp=conv_clamp,
                alpha_head=alpha_head,
            )
            self.num_ws += block.num_conv
            setattr(self, f"b{res}", block)
        self.num_ws += 1  # the last block's ToRGB latent

    def blocks(self) -> list[SynthesisBlock]:
        return [getattr(self, f"b{res}") for res in self.block_resolutions]

    def split_ws(self, ws: Tensor) -> list[Tensor]:
        """ws [B, num_ws, w_dim] → per block [B, num_conv + 1, w_dim], overlapping by one (method §4.1)."""
        if ws.ndim != 3 or ws.shape[1] != self.num_ws or ws.shape[2] != self.w_dim:
            raise ValueError(f"synthesis expects ws [B, {self.num_ws}, {self.w_dim}], got {tuple(ws.shape)}")
        ws = ws.to(torch.float32)
        out, start = [], 0
        for block in self.blocks():
            out.append(ws.narrow(1, start, block.num_conv + block.num_torgb))
            start += block.num_conv
        return out

    def image(self, ws: Tensor, noise_mode: str = "random", force_fp32: bool = False) -> Tensor:
        """The StyleGAN2 image: ws [B, num_ws, w_dim] → [B, img_channels, R, R] float32."""
        x: Tensor | None = None
        img: Tensor | None = None
        for block, block_ws in zip(self.blocks(), self.split_ws(ws)):
            x, img = block(x, img, block_ws, noise_mode=noise_mode, force_fp32=force_fp32)
        assert img is not None
        return img

    def forward(self, ws: Tensor, noise_mode: str = "random", force_fp32: bool = False) -> Tensor:
        """ws [B, num_ws, w_dim] → raw StyleGAN2 image [B, img_channels, R, R]."""
        return self.image(ws, noise_mode, force_fp32)


def assemble_mpi(
    rgb: Tensor, background: Tensor, alpha: Tensor, background_alpha_full: bool = True
) -> Tensor:
    """MPI from its parts (method §4.2 step 8, §4.3): planes 0..N−2 carry ``rgb``, plane N−1 ``background``.

    ``rgb``, ``background`` [B, 3, R, R], ``alpha`` [B, N, R, R] → [B, N, 4, R, R]; with
    ``background_alpha_full`` the last plane's alpha is 1.
    """
    batch, n_planes = alpha.shape[:2]
    out = alpha.new_empty(batch, n_planes, 4, *alpha.shape[2:])
    out[:, : n_planes - 1, :3] = rgb[:, None]
    out[:, n_planes - 1, :3] = background
    out[:, :, 3] = alpha
    if background_alpha_full:
        out[:, n_planes - 1, 3] = 1
    return out


class MPISynthesisNetwork(SynthesisNetwork):
    """The GMPI synthesis network: StyleGAN2's blocks plus one alpha head (docs/method.md §4.2-4.4).

    ``forward(ws, plane_depth_norm)`` returns the MPI [B, N, 4, R, R] in [0, 1]; ``image(ws)`` is the
    unchanged StyleGAN2 path. ``impl="fast"`` keeps the alpha logits factorised (see
    :mod:`gmpi_core.networks.alpha`) and accumulates RGB and background once; ``impl="reference"``
    computes every plane's alpha from its own ``[B·N, C, r, r]`` features and skip-accumulates the
    full ``[B, 4N, r, r]`` tensor (docs/method.md §4.2 step 8). Both agree to float rounding.
    """

    def __init__(
        self,
        w_dim: int,
        img_resolution: int,
        alpha_head: AlphaHead,
        channel_base: int = 32768,
        channel_max: int = 512,
        num_fp16_res: int = 4,
        conv_clamp: float | None = 256,
    ) -> None:
        super().__init__(
            w_dim,
            img_resolution,
            3,
            channel_base,
            channel_max,
            num_fp16_res,
            conv_clamp,
            alpha_head=alpha_head,
        )
        self.alpha_head = alpha_head

    def forward(  # type: ignore[override]  # the MPI network's output is the MPI; image() is the 2D path
        self,
        ws: Tensor,
        plane_depth_norm: Tensor,
        noise_mode: str = "random",
        background_alpha_full: bool = True,
        impl: str = "fast",
        force_fp32: bool = False,
    ) -> Tensor:
        """ws [B, num_ws, w_dim], z̃ [N] (nearest first, method §2.4) → MPI [B, N, 4, R, R] in [0, 1]."""
        if impl not in IMPLS:
            raise ValueError(f"unknown impl '{impl}'; choose one of {IMPLS}")
        if plane_depth_norm.ndim != 1 or plane_depth_norm.numel() < 1:
            raise ValueError(
                "plane_depth_norm must be a 1-D tensor of N >= 1 normalised depths, "
                f"got shape {tuple(plane_depth_norm.shape)}"
            )
        plane_depth_norm = plane_depth_norm.to(device=ws.device, dtype=torch.float32)
        self.alpha_head.check_planes(plane_depth_norm)
        background_alpha_full = background_alpha_full and not self.alpha_head.generates_background_alpha
        if impl == "reference" and self.alpha_head.conditions_features:
            return self._mpi_reference(ws, plane_depth_norm, noise_mode, background_alpha_full, force_fp32)

        x: Tensor | None = None
        colour: Tensor | None = None  # [B, 6, r, r]: accumulated RGB and background
        logits = PlaneLogits()
        for block, block_ws in zip(self.blocks(), self.split_ws(ws)):
            x = block.features(x, block_ws, noise_mode, force_fp32)
            w_rgb = block_ws[:, block.num_conv]
            y = torch.cat([block.rgb(x, w_rgb), block.background_rgb(x, w_rgb)], dim=1)
            contribution = block.alpha_logits(x, block_ws, plane_depth_norm, factorised=True)
            if colour is not None:
                colour = upsample2d(colour, block.resample_filter)
                logits = logits.upsampled(block.resample_filter)
            colour = y if colour is None else colour + y
            logits = logits + contribution
        assert colour is not None
        colour = to_unit_interval(colour)
        alpha = self.alpha_head.alpha(logits, plane_depth_norm)
        return assemble_mpi(colour[:, :3], colour[:, 3:], alpha, background_alpha_full)

    def _mpi_reference(
        self,
        ws: Tensor,
        plane_depth_norm: Tensor,
        noise_mode: str,
        background_alpha_full: bool,
        force_fp32: bool,
    ) -> Tensor:
        """method §4.2 step 8 and §4.3 as written: y_r [B, 4N, r, r] per block, img = Up₂(img) + y_r."""
        n_planes = plane_depth_norm.numel()
        x: Tensor | None = None
        img: Tensor | None = None
        for block, block_ws in zip(self.blocks(), self.split_ws(ws)):
            x = block.features(x, block_ws, noise_mode, force_fp32)
            w_rgb = block_ws[:, block.num_conv]
            batch, _, res, _ = x.shape
            rgb, background = block.rgb(x, w_rgb), block.background_rgb(x, w_rgb)
            per_plane = block.alpha_logits(x, block_ws, plane_depth_norm, factorised=False).per_plane
            alpha = per_plane if per_plane is not None else rgb.new_zeros(batch, n_planes, res, res)
            colours = torch.cat(
                [rgb[:, None].expand(-1, n_planes - 1, -1, -1, -1), background[:, None]], dim=1
            )
            y = torch.cat([colours, alpha[:, :, None]], dim=2).reshape(batch, 4 * n_planes, res, res)
            img = y if img is None else upsample2d(img, block.resample_filter) + y
        assert img is not None
        mpi = to_unit_interval(img).reshape(img.shape[0], n_planes, 4, *img.shape[2:])
        if background_alpha_full:
            last_alpha_one = torch.zeros_like(mpi[:1, :, :, :1, :1], dtype=torch.bool)
            last_alpha_one[:, -1, 3] = True
            mpi = mpi.masked_fill(last_alpha_one, 1.0)
        return mpi
