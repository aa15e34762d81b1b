"""StyleGAN2 resnet discriminator, optionally pose-conditioned as in GMPI (docs/method.md §5, §11.4).

``c_dim = 16`` gives GMPI's discriminator: the flattened 4×4 world-to-camera matrix is embedded by an
ordinary ``torch.nn.Linear(16, cmap_dim)`` (PyTorch default init, not equalised), normalised to unit
second moment, and projected onto the epilogue's ``cmap_dim`` outputs. ``c_dim = 0`` gives the
unconditional StyleGAN2-ADA discriminator, whose ``D`` weights the GMPI D is initialised from.

Precision: blocks with ``r >= max(2^(log2 R + 1 - num_fp16_res), 8)`` run in fp16, but **only on CUDA**
— on CPU every block stays fp32 (fp16 convolutions are slow or unsupported there). ``force_fp32=True``
disables fp16 everywhere. The epilogue always runs in fp32. (A float64 image on a ``.double()`` model
runs entirely in float64, for reference computations.)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from gmpi_core.networks.layers import Conv2dLayer, FullyConnectedLayer, filter_buffer, normalize_2nd_moment

__all__ = ["Discriminator", "DiscriminatorBlock", "DiscriminatorEpilogue", "MinibatchStdLayer"]

_SQRT_HALF = math.sqrt(0.5)


def _compute_dtype(use_fp16: bool, force_fp32: bool, ref: Tensor) -> torch.dtype:
    """fp16 for fp16 blocks on CUDA, else fp32 — or fp64 when the input is fp64 (float64 reference runs)."""
    if ref.dtype == torch.float64:
        return torch.float64
    return torch.float16 if use_fp16 and not force_fp32 and ref.device.type == "cuda" else torch.float32


class DiscriminatorBlock(nn.Module):
    """Resnet block r → r/2 (docs/method.md §5): ``out = skip(x)·√½ + conv1↓(conv0(x))·√½``.

    The first block (``in_channels == 0``) reads the image through a 1×1 ``fromrgb``. ``conv1`` and
    ``skip`` downsample 2× with the FIR ``resample_filter``; ``skip`` has no bias and no clamp.
    """

    resample_filter: Tensor

    def __init__(
        self,
        in_channels: int,
        tmp_channels: int,
        out_channels: int,
        resolution: int,
        img_channels: int = 3,
        activation: str = "lrelu",
        resample_filter: Sequence[float] = (1, 3, 3, 1),
        conv_clamp: float | None = None,
        use_fp16: bool = False,
        fp16_channels_last: bool = False,
    ) -> None:
        super().__init__()
        if in_channels not in (0, tmp_channels):
            raise ValueError(
                f"DiscriminatorBlock: in_channels must be 0 (first block) or tmp_channels={tmp_channels}, "
                f"got {in_channels}"
            )
        self.in_channels = in_channels
        self.tmp_channels = tmp_channels
        self.out_channels = out_channels
        self.resolution = resolution
        self.img_channels = img_channels
        self.use_fp16 = use_fp16
        self.channels_last = use_fp16 and fp16_channels_last
        self.register_buffer("resample_filter", filter_buffer(resample_filter))

        conv_kwargs: dict[str, Any] = dict(
            activation=activation, conv_clamp=conv_clamp, channels_last=self.channels_last
        )
        if in_channels == 0:
            self.fromrgb = Conv2dLayer(img_channels, tmp_channels, kernel_size=1, **conv_kwargs)
        self.conv0 = Conv2dLayer(tmp_channels, tmp_channels, kernel_size=3, **conv_kwargs)
        self.conv1 = Conv2dLayer(
            tmp_channels, out_channels, kernel_size=3, down=2, resample_filter=resample_filter, **conv_kwargs
        )
        self.skip = Conv2dLayer(
            tmp_channels,
            out_channels,
            kernel_size=1,
            bias=False,
            down=2,
            resample_filter=resample_filter,
            channels_last=self.channels_last,
        )

    def forward(self, x: Tensor | None, img: Tensor | None = None, force_fp32: bool = False) -> Tensor:
        """``x`` [B, C_r, r, r] (first block: ``img`` [B, img_channels, r, r]) → [B, C_{r/2}, r/2, r/2]."""
        source = img if self.in_channels == 0 else x
        if source is None:
            needed = "img" if self.in_channels == 0 else "x"
            raise ValueError(f"DiscriminatorBlock b{self.resolution} needs its input '{needed}'")
        dtype = _compute_dtype(self.use_fp16, force_fp32, source)
        memory_format = (
            torch.channels_last if self.channels_last and not force_fp32 else torch.contiguous_format
        )
        if self.in_channels == 0:
            assert img is not None
            _check_shape(img, [self.img_channels, self.resolution, self.resolution], "img")
            h = self.fromrgb(img.to(dtype=dtype, memory_format=memory_format))
        else:
            assert x is not None
            _check_shape(x, [self.in_channels, self.resolution, self.resolution], "x")
            h = x.to(dtype=dtype, memory_format=memory_format)
        y = self.skip(h, gain=_SQRT_HALF)
        h = self.conv1(self.conv0(h), gain=_SQRT_HALF)
        return y + h

    def extra_repr(self) -> str:
        return (
            f"resolution={self.resolution}, in={self.in_channels}, tmp={self.tmp_channels}, "
            f"out={self.out_channels}, use_fp16={self.use_fp16}"
        )


class MinibatchStdLayer(nn.Module):
    """Appends ``num_channels`` channels of the minibatch standard deviation (docs/method.md §5).

    Samples ``i = g·n + j`` (g < G) form group j; per group and channel slice f the appended value is
    ``mean_{c,h,w} sqrt(Var_g(x) + 1e-8)`` (population variance). With G = 1 it is the constant 1e-4.
    """

    def __init__(self, group_size: int | None, num_channels: int = 1) -> None:
        super().__init__()
        if group_size is not None and group_size < 1:
            raise ValueError(
                f"MinibatchStdLayer: group_size must be >= 1 or None (whole batch), got {group_size}"
            )
        if num_channels < 1:
            raise ValueError(f"MinibatchStdLayer: num_channels must be >= 1, got {num_channels}")
        self.group_size = group_size
        self.num_channels = num_channels

    def forward(self, x: Tensor) -> Tensor:
        """``x`` [N, C, H, W] → [N, C + num_channels, H, W]."""
        n, c, h, w = x.shape
        g = n if self.group_size is None else min(self.group_size, n)
        f = self.num_channels
        if n % g != 0:
            raise ValueError(
                f"minibatch-std: batch size {n} is not divisible by the group size {g}; "
                "use a batch size that is a multiple of mbstd_group_size"
            )
        if c % f != 0:
            raise ValueError(f"minibatch-std: {c} channels cannot be split into {f} groups")
        y = x.reshape(g, -1, f, c // f, h, w)  # [G, n, F, c, H, W]
        y = y - y.mean(dim=0)
        y = (y.square().mean(dim=0) + 1e-8).sqrt()  # [n, F, c, H, W]
        y = y.mean(dim=[2, 3, 4]).reshape(-1, f, 1, 1)  # [n, F, 1, 1]
        y = y.repeat(g, 1, h, w)  # [N, F, H, W]
        return torch.cat([x, y], dim=1)

    def extra_repr(self) -> str:
        return f"group_size={self.group_size}, num_channels={self.num_channels}"


class DiscriminatorEpilogue(nn.Module):
    """The 4×4 head ``b4`` (docs/method.md §5): mbstd → conv 3×3 → fc → out, then the optional projection
    ``logit = Σ_k out_k m_k / sqrt(cmap_dim)``. Always fp32.
    """

    def __init__(
        self,
        in_channels: int,
        cmap_dim: int,
        resolution: int = 4,
        img_channels: int = 3,
        mbstd_group_size: int | None = 4,
        mbstd_num_channels: int = 1,
        activation: str = "lrelu",
        conv_clamp: float | None = None,
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.cmap_dim = cmap_dim
        self.resolution = resolution
        self.img_channels = img_channels
        self.mbstd = (
            MinibatchStdLayer(mbstd_group_size, mbstd_num_channels) if mbstd_num_channels > 0 else None
        )
        self.conv = Conv2dLayer(
            in_channels + mbstd_num_channels,
            in_channels,
            kernel_size=3,
            activation=activation,
            conv_clamp=conv_clamp,
        )
        self.fc = FullyConnectedLayer(in_channels * resolution**2, in_channels, activation=activation)
        self.out = FullyConnectedLayer(in_channels, 1 if cmap_dim == 0 else cmap_dim)

    def forward(self, x: Tensor, cmap: Tensor | None = None) -> Tensor:
        """``x`` [B, C_4, 4, 4], ``cmap`` [B, cmap_dim] → logits [B, 1]."""
        _check_shape(x, [self.in_channels, self.resolution, self.resolution], "x")
        x = x.to(dtype=_compute_dtype(False, True, x), memory_format=torch.contiguous_format)
        if self.mbstd is not None:
            x = self.mbstd(x)
        x = self.conv(x)
        x = self.fc(x.flatten(1))
        x = self.out(x)
        if self.cmap_dim > 0:
            if cmap is None or cmap.shape != (x.shape[0], self.cmap_dim):
                got = None if cmap is None else tuple(cmap.shape)
                raise ValueError(
                    f"DiscriminatorEpilogue expects cmap [{x.shape[0]}, {self.cmap_dim}], got {got}"
                )
            x = (x * cmap).sum(dim=1, keepdim=True) * (1 / math.sqrt(self.cmap_dim))
        return x

    def extra_repr(self) -> str:
        return f"in_channels={self.in_channels}, cmap_dim={self.cmap_dim}, resolution={self.resolution}"


class Discriminator(nn.Module):
    """StyleGAN2 resnet discriminator D(img, c) → logits [B, 1] (docs/method.md §5).

    Blocks ``b{R}`` … ``b8`` with C_r = min(channel_base // r, channel_max), then the pose ``mapping``
    (only when ``c_dim > 0``), then the epilogue ``b4`` — this registration order is SG2's and fixes the
    positional order of optimizer states (docs/method.md §11.4).
    """

    def __init__(
        self,
        img_resolution: int,
        img_channels: int = 3,
        c_dim: int = 16,
        channel_base: int = 32768,
        channel_max: int = 512,
        num_fp16_res: int = 4,
        conv_clamp: float | None = 256,
        cmap_dim: int = 16,
        mbstd_group_size: int | None = 1,
        mbstd_num_channels: int = 1,
    ) -> None:
        super().__init__()
        log2 = round(math.log2(img_resolution)) if img_resolution > 0 else 0
        if img_resolution < 8 or 2**log2 != img_resolution:
            raise ValueError(
                f"Discriminator: img_resolution must be a power of two >= 8, got {img_resolution}"
            )
        if c_dim < 0 or (c_dim > 0 and cmap_dim < 1):
            raise ValueError(
                f"Discriminator: need c_dim >= 0 and cmap_dim >= 1 when c_dim > 0 (got {c_dim}, {cmap_dim})"
            )
        self._config: dict[str, Any] = dict(
            img_resolution=img_resolution,
            img_channels=img_channels,
            c_dim=c_dim,
            channel_base=channel_base,
            channel_max=channel_max,
            num_fp16_res=num_fp16_res,
            conv_clamp=conv_clamp,
            cmap_dim=cmap_dim,
            mbstd_group_size=mbstd_group_size,
            mbstd_num_channels=mbstd_num_channels,
        )
        self.img_resolution = img_resolution
        self.img_channels = img_channels
        self.c_dim = c_dim
        self.cmap_dim = cmap_dim if c_dim > 0 else 0
        self.block_resolutions = [2**i for i in range(log2, 2, -1)]
        channels = {r: min(channel_base // r, channel_max) for r in [*self.block_resolutions, 4]}
        fp16_resolution = max(2 ** (log2 + 1 - num_fp16_res), 8)

        for r in self.block_resolutions:
            block = DiscriminatorBlock(
                in_channels=channels[r] if r < img_resolution else 0,
                tmp_channels=channels[r],
                out_channels=channels[r // 2],
                resolution=r,
                img_channels=img_channels,
                conv_clamp=conv_clamp,
                use_fp16=r >= fp16_resolution,
            )
            setattr(self, f"b{r}", block)
        if c_dim > 0:
            self.mapping = nn.Linear(c_dim, self.cmap_dim)  # GMPI: plain Linear, default init (method §5)
        self.b4 = DiscriminatorEpilogue(
            channels[4],
            cmap_dim=self.cmap_dim,
            resolution=4,
            img_channels=img_channels,
            mbstd_group_size=mbstd_group_size,
            mbstd_num_channels=mbstd_num_channels,
            conv_clamp=conv_clamp,
        )

    @property
    def config(self) -> dict[str, Any]:
        """The init kwargs as plain JSON-able data (``Discriminator.from_config(d.config)`` rebuilds d)."""
        return dict(self._config)

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> Discriminator:
        """Build from :attr:`config` (e.g. ``DiscriminatorConfig.model_dump()``); rejects unknown keys."""
        unknown = sorted(set(cfg) - _CONFIG_KEYS)
        if unknown:
            raise ValueError(
                f"unknown Discriminator config keys {unknown}; choose from {sorted(_CONFIG_KEYS)}"
            )
        if "img_resolution" not in cfg:
            raise ValueError("Discriminator config is missing 'img_resolution'")
        return cls(**cfg)

    def cmap(self, c: Tensor) -> Tensor:
        """Pose embedding m = norm2(Linear(c)): ``c`` [B, c_dim] → [B, cmap_dim] (docs/method.md §5)."""
        return normalize_2nd_moment(self.mapping(c.to(self.mapping.weight.dtype)))

    def forward(self, img: Tensor, c: Tensor | None = None, force_fp32: bool = False) -> Tensor:
        """``img`` [B, img_channels, R, R], ``c`` [B, c_dim] (ignored when c_dim = 0) → logits [B, 1]."""
        _check_shape(img, [self.img_channels, self.img_resolution, self.img_resolution], "img")
        cmap = None
        if self.c_dim > 0:
            if c is None or c.shape != (img.shape[0], self.c_dim):
                got = None if c is None else tuple(c.shape)
                raise ValueError(
                    f"Discriminator with c_dim={self.c_dim} needs c [{img.shape[0]}, {self.c_dim}] "
                    f"(flattened world-to-camera matrices), got {got}"
                )
            cmap = self.cmap(c)
        x: Tensor | None = None
        for r in self.block_resolutions:
            block: DiscriminatorBlock = getattr(self, f"b{r}")
            x = block(x, img if x is None else None, force_fp32=force_fp32)
        assert x is not None
        return self.b4(x, cmap)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self._config.items())


_CONFIG_KEYS = frozenset(
    [
        "img_resolution",
        "img_channels",
        "c_dim",
        "channel_base",
        "channel_max",
        "num_fp16_res",
        "conv_clamp",
        "cmap_dim",
        "mbstd_group_size",
        "mbstd_num_channels",
    ]
)


def _check_shape(t: Tensor, tail: list[int], name: str) -> None:
    if t.ndim != 4 or list(t.shape[1:]) != tail:
        raise ValueError(f"expected {name} of shape [B, {', '.join(map(str, tail))}], got {tuple(t.shape)}")
