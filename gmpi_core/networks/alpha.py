"""Alpha heads of the GMPI generator: how each variant turns a block's features into plane alphas.

One small head per variant (docs/method.md §4.4); the synthesis network is shared by all of them.

* ``none`` (vanilla): ``toalpha`` ToRGB(C→N_train) in every block; α_i = σ(2 Σ_r Up(toalpha(x)_i)).
* ``normalize_add_z`` (paper): ``pos_enc_embed`` (four modulated 1×1 convs) and ``toalpha`` ToRGB(C→1)
  for r ≤ alpha_largest_res; α_i = σ(2 Σ_r Up(toalpha(IN(x) + e(z̃_i; w)))).
* ``learnable_param``: ``pos_enc_embed_learnable_param`` [1, 32, C, 1, 1] tokens instead of e(z̃),
  interpolated in depth for other plane sets.
* ``depth2alpha``: ``todepth`` ToRGB(C→1) in every block gives one map D; α_i = (clamp(z̃_i − D, ±Δ) + Δ)/(2Δ).

(σ(2t) = (tanh t + 1)/2, docs/method.md §4.3.) The heads are stateless: their tensors are registered on the
synthesis block under the names of the official checkpoints (docs/method.md §4.5, §11.4), so pretrained
weights and EMA lists map one to one.

Fast path (``normalize_add_z``, ``learnable_param``): ``toalpha`` is a 1×1 modulated convolution
without demodulation, i.e. linear in its input, and ``e_i`` is constant over the plane, so

    toalpha(IN(x) + e_i) = A_r + k_{r,i},   A_r = Σ_c v_c IN(x)_c,   k_{r,i} = Σ_c v_c e_{i,c} + b,

with ``v = W ⊙ s`` — one plane-independent map plus one scalar per plane — as long as the ±conv_clamp
clamp of ToRGB does not bind. Skip accumulation (FIR upsampling) is linear too, so the final logit is
``Σ_r Up^{R/r}(A_r) + Σ_r k_{r,i} U_r`` with ``U_r`` the accumulated upsampling of a constant-one
map (not constant at the borders: the FIR zero-pads). :class:`PlaneLogits` carries this factorised
form through the skip connections.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, TypeVar

import torch
from torch import Tensor, nn

from gmpi_core.networks.layers import FullyConnectedLayer, ToRGBLayer
from gmpi_core.ops.bias_act import bias_act
from gmpi_core.ops.upfirdn2d import upsample2d

__all__ = [
    "ALPHA_HEADS",
    "AlphaHead",
    "Depth2AlphaHead",
    "DepthEmbedding",
    "DepthEmbeddingAlphaHead",
    "LearnedTokenAlphaHead",
    "PlaneLogits",
    "VanillaAlphaHead",
    "border_background",
    "depth_to_alpha",
    "instance_normalize",
    "make_alpha_head",
    "to_unit_interval",
    "token_interpolation_weights",
]

ALPHA_HEADS = ("none", "normalize_add_z", "learnable_param", "depth2alpha")

_EPS = 1e-8  # FLOATING_EPS of the official code


# ---------------------------------------------------------------------------------------------------
# Pure functions


def to_unit_interval(x: Tensor) -> Tensor:
    """Final activation ``(tanh x + 1) / 2`` applied to every MPI channel (docs/method.md §4.3)."""
    return (torch.tanh(x) + 1) / 2


def instance_normalize(x: Tensor) -> Tensor:
    """``(x − μ) / (σ + 1e-8)`` per sample and channel, ``σ = sqrt(Var_unbiased + 1e-8)`` (§4.2 step 3).

    ``x`` [B, C, H, W] → [B, C, H, W]; statistics over the H·W pixels.
    """
    var, mean = torch.var_mean(x, dim=(2, 3), keepdim=True, correction=1)
    return (x - mean) / ((var + _EPS).sqrt() + _EPS)


def border_background(x: Tensor, ratio: float = 0.05) -> Tensor:
    """Background feature map built from the left/right border columns of ``x`` (docs/method.md §4.2 step 7).

    ``x`` [B, C, r, r] → [B, C, r, r], no gradient to ``x``. With ``p = max(1, floor(ratio·r))``, columns
    ``[0, p)`` and ``[r−p, r)`` are copied; interior column ``j ∈ [p, r−p)`` is
    ``(1 − t_j) x[..., p] + t_j x[..., r−p−1]`` with ``t_j = (j − p) / (r − 2p + 1e-8)``; all rows alike.
    """
    x = x.detach()
    width = x.shape[-1]
    pad = max(1, math.floor(ratio * width))
    out = x.clone()
    if pad < width - pad:
        cols = torch.arange(pad, width - pad, device=x.device, dtype=torch.float64)
        t = ((cols - pad) / (width - 2 * pad + _EPS)).to(x.dtype)
        left, right = x[..., pad : pad + 1], x[..., width - pad - 1 : width - pad]
        out[..., pad : width - pad] = (1 - t) * left + t * right
    return out


def depth_to_alpha(depth: Tensor, plane_depth_norm: Tensor, delta: float) -> Tensor:
    """``α_i = (clamp(z̃_i − D, −Δ, Δ) + Δ) / (2Δ + 1e-8)`` (docs/method.md §4.4, depth2alpha).

    ``depth`` D [B, 1, H, W] in [0, 1], ``plane_depth_norm`` z̃ [N] → α [B, N, H, W] in [0, 1].
    """
    z_diff = plane_depth_norm.to(depth.dtype).reshape(1, -1, 1, 1) - depth
    return (z_diff.clamp(-delta, delta) + delta) / (2 * delta + _EPS)


def token_interpolation_weights(source_depth_norm: Tensor, target_depth_norm: Tensor) -> Tensor:
    """Linear-interpolation weights from S source planes (padded) to N target planes (docs/method.md §4.4).

    ``source_depth_norm`` [S] ascending, ``target_depth_norm`` [N] → W [N, S+2] over the padded sources
    ``[−999999, z̃_0, …, z̃_{S−1}, 999999]`` (the tokens are padded with a zero token on the left and a
    copy of the last token on the right). For ``p_j ≤ t < p_{j+1}``: ``W[·, j] = (p_{j+1} − t)/(Δp + 1e-8)``,
    ``W[·, j+1] = (t − p_j)/(Δp + 1e-8)``. The official code interpolates metric depths; z̃ is an
    affine function of depth, so the weights agree up to the 1e-8 regulariser.
    """
    src = source_depth_norm.to(torch.float64)
    tgt = target_depth_norm.to(torch.float64).to(src.device)
    far = torch.tensor([999999.0], dtype=torch.float64, device=src.device)
    positions = torch.cat([-far, src, far])  # [S+2]
    if bool((src[1:] < src[:-1]).any()):
        raise ValueError("token_interpolation_weights: source depths must be ascending (nearest first)")
    j = torch.searchsorted(positions, tgt, right=True) - 1  # largest j with p_j <= t
    if bool(((j < 0) | (j >= positions.numel() - 1)).any()):
        raise ValueError("token_interpolation_weights: target depths must lie in (-999999, 999999)")
    lo, hi = positions[j], positions[j + 1]
    span = hi - lo + _EPS
    weights = torch.zeros(tgt.numel(), positions.numel(), dtype=torch.float64, device=src.device)
    rows = torch.arange(tgt.numel(), device=src.device)
    weights[rows, j] = (hi - tgt) / span
    weights[rows, j + 1] = (tgt - lo) / span
    return weights.to(torch.float32)


# ---------------------------------------------------------------------------------------------------
# Factorised plane logits


@dataclass
class PlaneLogits:
    """Alpha logits of N planes at one resolution r, kept factorised (see the module docstring):

        logit[b, i] = shared[b, 0 or i] + Σ_l offsets[b, i, l] · units[l] + per_plane[b, i]

    Every term is optional (None = 0). ``shared`` [B, S, r, r] with S = 1 (a plane-independent map) or
    S = N; ``offsets`` [B, N, L] per-plane scalars of L blocks; ``units`` [L, r, r] the accumulated
    upsampling of a constant-one map from each of those blocks; ``per_plane`` [B, N, r, r] exact maps
    of blocks whose factorisation was not exact. All float32.
    """

    shared: Tensor | None = None
    offsets: Tensor | None = None
    units: Tensor | None = None
    per_plane: Tensor | None = None

    def upsampled(self, resample_filter: Tensor) -> PlaneLogits:
        """Skip-connection upsampling ``Up₂`` (docs/method.md §4.1) applied to every spatial term."""

        def up(t: Tensor | None) -> Tensor | None:
            return None if t is None else upsample2d(t, resample_filter)

        units = None if self.units is None else upsample2d(self.units[None], resample_filter)[0]
        return PlaneLogits(up(self.shared), self.offsets, units, up(self.per_plane))

    def __add__(self, other: PlaneLogits) -> PlaneLogits:
        def add(a: Tensor | None, b: Tensor | None) -> Tensor | None:
            return b if a is None else a if b is None else a + b

        def cat(a: Tensor | None, b: Tensor | None, dim: int) -> Tensor | None:
            return b if a is None else a if b is None else torch.cat([a, b], dim=dim)

        return PlaneLogits(
            add(self.shared, other.shared),
            cat(self.offsets, other.offsets, dim=2),
            cat(self.units, other.units, dim=0),
            add(self.per_plane, other.per_plane),
        )

    def dense(self, n_planes: int) -> Tensor:
        """All terms summed: [B, N, r, r]."""
        terms = [t for t in (self.shared, self.per_plane) if t is not None]
        if self.offsets is not None and self.units is not None:
            batch, _, n_units = self.offsets.shape
            height, width = self.units.shape[1:]
            base = self.shared.flatten(2) if self.shared is not None else self.offsets.new_zeros(1, 1, 1)
            flat_units = self.units.flatten(1).expand(batch, n_units, height * width)
            out = torch.baddbmm(base, self.offsets, flat_units).reshape(batch, -1, height, width)
            return out if self.per_plane is None else out + self.per_plane
        if not terms:
            raise ValueError("PlaneLogits.dense: no alpha was generated at any resolution")
        out = terms[0] if len(terms) == 1 else terms[0] + terms[1]
        return out.expand(-1, n_planes, -1, -1) if out.shape[1] == 1 else out


# ---------------------------------------------------------------------------------------------------
# Depth embedding of the default variant


class DepthEmbedding(nn.Module):
    """``e(z̃; w)`` (docs/method.md §4.2 step 2): four modulated 1×1 convolutions without demodulation on the
    1×1 "image" ``z̃``, widths 1 → C/4 → C/2 → C → C, each
    ``h_ℓ = clamp(√2·lrelu_0.2(W_ℓ (s_ℓ ⊙ h_{ℓ−1}) + b_ℓ), ±conv_clamp)``, ``s_ℓ = affine_ℓ(w)/sqrt(in_ℓ)``.

    Names and registration order are the official ``ToRGBLayerDeeperModulatedConv``'s (``affine1``,
    ``weight1``, ``bias1``, ``affine2``, …), so the ``state_dict`` reads ``weight1, bias1, …, weight4,
    bias4, affine1.*, …, affine4.*`` (docs/method.md §4.5, §11.4).
    """

    def __init__(self, channels: int, w_dim: int, conv_clamp: float | None = 256) -> None:
        super().__init__()
        if channels % 4 != 0:
            raise ValueError(f"DepthEmbedding: channels must be divisible by 4, got {channels}")
        self.channels = channels
        self.w_dim = w_dim
        self.conv_clamp = conv_clamp
        self.widths = (1, channels // 4, channels // 2, channels, channels)
        for idx, (fan_in, fan_out) in enumerate(zip(self.widths[:-1], self.widths[1:]), start=1):
            setattr(self, f"affine{idx}", FullyConnectedLayer(w_dim, fan_in, bias_init=1))
            setattr(self, f"weight{idx}", nn.Parameter(torch.randn([fan_out, fan_in, 1, 1])))
            setattr(self, f"bias{idx}", nn.Parameter(torch.zeros([fan_out])))

    def forward(self, plane_depth_norm: Tensor, w: Tensor) -> Tensor:
        """``plane_depth_norm`` z̃ [N], ``w`` [B, w_dim] → e [B, N, C]."""
        h = plane_depth_norm.to(w.dtype).reshape(1, -1, 1).expand(w.shape[0], -1, 1)
        for idx, fan_in in enumerate(self.widths[:-1], start=1):
            affine = getattr(self, f"affine{idx}")
            weight, bias = getattr(self, f"weight{idx}"), getattr(self, f"bias{idx}")
            styles = affine(w) / math.sqrt(fan_in)  # [B, in]
            h = torch.matmul(h * styles[:, None, :], weight[:, :, 0, 0].t().to(h.dtype))  # [B, N, out]
            h = bias_act(h, bias, dim=2, act="lrelu", clamp=self.conv_clamp)
        return h

    def extra_repr(self) -> str:
        return f"widths={self.widths}, w_dim={self.w_dim}, conv_clamp={self.conv_clamp}"


# ---------------------------------------------------------------------------------------------------
# Heads

_M = TypeVar("_M", bound=nn.Module)


def _submodule(block: nn.Module, name: str, kind: type[_M]) -> _M:
    module = block.get_submodule(name)
    if not isinstance(module, kind):
        raise TypeError(f"{name} of {type(block).__name__} is a {type(module).__name__}, not {kind.__name__}")
    return module


def _fused_modconv(block: nn.Module, x: Tensor) -> bool:
    """SG2's rule: one grouped convolution iff not training and (fp32 or batch 1) (docs/method.md §4.1)."""
    return not block.training and (x.dtype == torch.float32 or x.shape[0] == 1)


class AlphaHead(ABC):
    """One variant's alpha mechanism (method §4.4). Stateless; its tensors live in the synthesis blocks.

    ``attach_embedding`` runs before a block creates ``const``/``conv0`` and ``attach_alpha_layer``
    after ``torgb``, reproducing the official registration (hence ``state_dict``) order.
    """

    name: ClassVar[str]
    # True: the farthest plane gets a generated alpha and ``background_alpha_full`` is ignored.
    generates_background_alpha: ClassVar[bool] = False
    # True: alpha comes from per-plane features IN(x) + e_i (the fast path factorises them).
    conditions_features: ClassVar[bool] = False

    def carries_alpha(self, resolution: int) -> bool:
        """Whether the block at ``resolution`` has alpha tensors (else it contributes alpha 0)."""
        return True

    def check_planes(self, plane_depth_norm: Tensor) -> None:
        """Raise if this head cannot generate planes at these normalised depths."""
        return None

    def attach_embedding(self, block: nn.Module, channels: int, w_dim: int, conv_clamp: float | None) -> None:
        """Register the depth-embedding tensors on ``block`` (default: none)."""
        return None

    @abstractmethod
    def attach_alpha_layer(
        self, block: nn.Module, channels: int, w_dim: int, conv_clamp: float | None
    ) -> None:
        """Register the alpha (or depth) ToRGB layer on ``block``."""

    @abstractmethod
    def block_logits(
        self,
        block: nn.Module,
        x: Tensor,
        w_embed: Tensor,
        w_rgb: Tensor,
        plane_depth_norm: Tensor,
        factorised: bool = True,
    ) -> PlaneLogits:
        """This block's alpha contribution ``y_r`` (before skip accumulation).

        ``x`` [B, C, r, r] conv1 output, ``w_embed`` [B, w_dim] conv1's latent, ``w_rgb`` [B, w_dim] the
        ToRGB latent, ``plane_depth_norm`` z̃ [N]. ``factorised=False`` runs the straightforward
        per-plane computation (the reference).
        """

    @abstractmethod
    def alpha(self, logits: PlaneLogits, plane_depth_norm: Tensor) -> Tensor:
        """Accumulated logits at resolution R → plane alphas [B, N, R, R] in [0, 1]."""


class VanillaAlphaHead(AlphaHead):
    """``none``: ``toalpha`` ToRGB(C → N_train) on the raw features of every block (docs/method.md §4.4)."""

    name = "none"
    generates_background_alpha = True

    def __init__(self, n_planes: int) -> None:
        self.n_planes = n_planes

    def check_planes(self, plane_depth_norm: Tensor) -> None:
        if plane_depth_norm.numel() != self.n_planes:
            raise ValueError(
                f"alpha head 'none' (vanilla) generates exactly n_train_planes={self.n_planes} planes, "
                f"got {plane_depth_norm.numel()} plane depths; pass {self.n_planes} depths"
            )

    def attach_alpha_layer(
        self, block: nn.Module, channels: int, w_dim: int, conv_clamp: float | None
    ) -> None:
        block.toalpha = ToRGBLayer(channels, self.n_planes, w_dim, conv_clamp=conv_clamp)

    def block_logits(
        self,
        block: nn.Module,
        x: Tensor,
        w_embed: Tensor,
        w_rgb: Tensor,
        plane_depth_norm: Tensor,
        factorised: bool = True,
    ) -> PlaneLogits:
        toalpha = _submodule(block, "toalpha", ToRGBLayer)
        return PlaneLogits(shared=toalpha(x, w_rgb, fused_modconv=_fused_modconv(block, x)).float())

    def alpha(self, logits: PlaneLogits, plane_depth_norm: Tensor) -> Tensor:
        return to_unit_interval(logits.dense(self.n_planes))


class Depth2AlphaHead(AlphaHead):
    """``depth2alpha``: one depth map D per pixel from ``todepth`` ToRGB(C → 1) in every block, alpha
    from the distance of each plane to D (docs/method.md §4.4), Δ = z_range / n_z_bins."""

    name = "depth2alpha"
    generates_background_alpha = True

    def __init__(self, n_z_bins: int = 256, z_range: float = 1.0) -> None:
        if n_z_bins < 1:
            raise ValueError(f"depth2alpha_n_z_bins must be >= 1, got {n_z_bins}")
        self.delta = z_range / n_z_bins

    def attach_alpha_layer(
        self, block: nn.Module, channels: int, w_dim: int, conv_clamp: float | None
    ) -> None:
        block.todepth = ToRGBLayer(channels, 1, w_dim, conv_clamp=conv_clamp)

    def block_logits(
        self,
        block: nn.Module,
        x: Tensor,
        w_embed: Tensor,
        w_rgb: Tensor,
        plane_depth_norm: Tensor,
        factorised: bool = True,
    ) -> PlaneLogits:
        todepth = _submodule(block, "todepth", ToRGBLayer)
        return PlaneLogits(shared=todepth(x, w_rgb, fused_modconv=_fused_modconv(block, x)).float())

    def alpha(self, logits: PlaneLogits, plane_depth_norm: Tensor) -> Tensor:
        if logits.shared is None:
            raise ValueError("depth2alpha: no depth map was generated")
        depth = to_unit_interval(logits.shared)  # [B, 1, R, R]
        return depth_to_alpha(depth, plane_depth_norm.to(depth.device), self.delta)


class _NormalizeAddHead(AlphaHead):
    """Shared part of ``normalize_add_z`` and ``learnable_param``: ``toalpha(IN(x) + e_i; w_rgb)`` for
    blocks r ≤ ``alpha_largest_res`` (docs/method.md §4.2 steps 3-5); subclasses define ``e``."""

    conditions_features = True

    def __init__(self, alpha_largest_res: int) -> None:
        self.alpha_largest_res = alpha_largest_res

    def carries_alpha(self, resolution: int) -> bool:
        return resolution <= self.alpha_largest_res

    def attach_alpha_layer(
        self, block: nn.Module, channels: int, w_dim: int, conv_clamp: float | None
    ) -> None:
        block.toalpha = ToRGBLayer(channels, 1, w_dim, conv_clamp=conv_clamp)

    @abstractmethod
    def embedding(self, block: nn.Module, plane_depth_norm: Tensor, w_embed: Tensor) -> Tensor:
        """Plane embeddings e [B or 1, N, C]."""

    def block_logits(
        self,
        block: nn.Module,
        x: Tensor,
        w_embed: Tensor,
        w_rgb: Tensor,
        plane_depth_norm: Tensor,
        factorised: bool = True,
    ) -> PlaneLogits:
        toalpha = _submodule(block, "toalpha", ToRGBLayer)
        x_hat = instance_normalize(x.float())  # fp32 statistics: clamped fp16 activations overflow x²
        e = self.embedding(block, plane_depth_norm, w_embed).float()  # [B|1, N, C]
        if not factorised:
            # method §4.2 steps 4-5 as written: [B·N, C, r, r] plane-fastest, styles repeated per plane.
            batch, channels, height, width = x.shape
            n_planes = e.shape[1]
            u = x_hat[:, None] + e.expand(batch, -1, -1)[..., None, None]  # [B, N, C, r, r]
            u = u.reshape(batch * n_planes, channels, height, width).to(x.dtype)
            w_planes = w_rgb.repeat_interleave(n_planes, dim=0)
            a = toalpha(u, w_planes, fused_modconv=_fused_modconv(block, x))
            return PlaneLogits(per_plane=a.float().reshape(batch, n_planes, height, width))

        v = toalpha.weight[0, :, 0, 0].float() * toalpha.styles(w_rgb).float()  # [B, C]
        shared = torch.einsum("bc,bchw->bhw", v, x_hat)[:, None]  # A_r [B, 1, r, r]
        offsets = (
            torch.einsum("bc,bnc->bn", v, e.expand(v.shape[0], -1, -1)) + toalpha.bias.float()
        )  # k [B, N]
        clamp = toalpha.conv_clamp
        if clamp is not None:
            with torch.no_grad():
                may_bind = float(shared.abs().amax() + offsets.abs().amax()) > clamp
            if may_bind:  # the factorisation is exact only where |A + k| <= clamp: go per plane
                return PlaneLogits(per_plane=(shared + offsets[..., None, None]).clamp(-clamp, clamp))
        ones = shared.new_ones(1, *shared.shape[2:])
        return PlaneLogits(shared=shared, offsets=offsets[..., None], units=ones)

    def alpha(self, logits: PlaneLogits, plane_depth_norm: Tensor) -> Tensor:
        return to_unit_interval(logits.dense(plane_depth_norm.numel()))


class DepthEmbeddingAlphaHead(_NormalizeAddHead):
    """``normalize_add_z`` + ``modulated_lrelu`` (the paper's variant): ``e = pos_enc_embed(z̃; w_conv1)``."""

    name = "normalize_add_z"

    def attach_embedding(self, block: nn.Module, channels: int, w_dim: int, conv_clamp: float | None) -> None:
        if self.carries_alpha(_resolution(block)):
            block.pos_enc_embed = DepthEmbedding(channels, w_dim, conv_clamp=conv_clamp)

    def embedding(self, block: nn.Module, plane_depth_norm: Tensor, w_embed: Tensor) -> Tensor:
        embed = _submodule(block, "pos_enc_embed", DepthEmbedding)
        return embed(plane_depth_norm.to(w_embed.device), w_embed.float())


class LearnedTokenAlphaHead(_NormalizeAddHead):
    """``learnable_param``: ``e`` = learned tokens ``[1, n_tokens, C, 1, 1]`` (U[0,1) init) per block,
    linearly interpolated in depth for other planes (docs/method.md §4.4).

    ``token_depth_norm`` are the z̃ of the training planes the tokens belong to; without them the
    tokens are used as they are, which needs exactly ``n_tokens`` planes.
    """

    name = "learnable_param"
    token_name = "pos_enc_embed_learnable_param"
    left_token_name = "pos_enc_embed_learnable_param_left_append"

    def __init__(
        self, alpha_largest_res: int, n_tokens: int = 32, token_depth_norm: Sequence[float] | None = None
    ) -> None:
        super().__init__(alpha_largest_res)
        if token_depth_norm is not None and len(token_depth_norm) != n_tokens:
            raise ValueError(
                f"learnable_param: train_plane_depth_norm has {len(token_depth_norm)} depths but there are "
                f"n_train_planes={n_tokens} tokens; give one normalised depth per training plane"
            )
        self.n_tokens = n_tokens
        self.token_depth_norm = None if token_depth_norm is None else torch.tensor(list(token_depth_norm))

    def check_planes(self, plane_depth_norm: Tensor) -> None:
        if self.token_depth_norm is None and plane_depth_norm.numel() != self.n_tokens:
            raise ValueError(
                f"alpha head 'learnable_param' has {self.n_tokens} tokens and no train_plane_depth_norm to "
                f"interpolate them; pass {self.n_tokens} plane depths or build the generator with "
                "train_plane_depth_norm=<normalised depths of the training planes>"
            )

    def attach_embedding(self, block: nn.Module, channels: int, w_dim: int, conv_clamp: float | None) -> None:
        if self.carries_alpha(_resolution(block)):
            block.register_parameter(
                self.token_name, nn.Parameter(torch.rand([1, self.n_tokens, channels, 1, 1]))
            )
            block.register_buffer(self.left_token_name, torch.zeros([1, 1, channels, 1, 1]))

    def embedding(self, block: nn.Module, plane_depth_norm: Tensor, w_embed: Tensor) -> Tensor:
        tokens = block.get_parameter(self.token_name)[0, :, :, 0, 0].float()  # [S, C]
        if self.token_depth_norm is None:
            return tokens[None]
        left = block.get_buffer(self.left_token_name)[0, :, :, 0, 0].float()
        padded = torch.cat([left, tokens, tokens[-1:]])  # [S+2, C]
        weights = token_interpolation_weights(self.token_depth_norm, plane_depth_norm.cpu())
        return (weights.to(padded.device) @ padded)[None]  # [1, N, C]


def _resolution(block: nn.Module) -> int:
    resolution = getattr(block, "resolution", None)
    if not isinstance(resolution, int):
        raise TypeError(f"{type(block).__name__} must set an int `resolution` before attaching an alpha head")
    return resolution


def make_alpha_head(
    name: str,
    alpha_largest_res: int = 256,
    n_train_planes: int = 32,
    depth2alpha_n_z_bins: int = 256,
    train_plane_depth_norm: Sequence[float] | None = None,
) -> AlphaHead:
    """The head of variant ``name`` (one of :data:`ALPHA_HEADS`, docs/method.md §4.4)."""
    if name == "none":
        return VanillaAlphaHead(n_train_planes)
    if name == "normalize_add_z":
        return DepthEmbeddingAlphaHead(alpha_largest_res)
    if name == "learnable_param":
        return LearnedTokenAlphaHead(alpha_largest_res, n_train_planes, train_plane_depth_norm)
    if name == "depth2alpha":
        return Depth2AlphaHead(depth2alpha_n_z_bins)
    raise ValueError(f"unknown alpha head '{name}'; choose one of {ALPHA_HEADS}")
