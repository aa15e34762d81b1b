"""StyleGAN2 mapping network z (+ c) → w with the running mean ``w_avg`` and truncation (docs/method.md §4.1).

Parameter names follow SG2-ADA (``embed``, ``fc0`` … ``fc{L-1}``, buffer ``w_avg``) so pretrained
``G_ema.mapping`` weights load by name (docs/method.md §11.4).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from gmpi_core.networks.layers import FullyConnectedLayer, normalize_2nd_moment

__all__ = ["MappingNetwork"]


class MappingNetwork(nn.Module):
    """``w = FC_L ∘ … ∘ FC_1(norm2(z) ‖ norm2(embed(c)))`` broadcast to ``num_ws`` copies (method §4.1).

    In every forward with ``update_w_avg`` (default: ``self.training``) the running mean is updated as
    ``w̄ ← β w̄ + (1-β) mean_B(w)`` with β = ``w_avg_beta``. Truncation: ``w ← w̄ + ψ (w - w̄)`` on the
    first ``truncation_cutoff`` of the ``num_ws`` copies (all when None). ``num_ws=None`` returns
    [B, w_dim] instead of [B, num_ws, w_dim]; ``w_avg_beta=None`` disables ``w_avg`` and truncation.
    """

    w_avg: Tensor

    def __init__(
        self,
        z_dim: int,
        c_dim: int,
        w_dim: int,
        num_ws: int | None,
        num_layers: int = 8,
        embed_features: int | None = None,
        layer_features: int | None = None,
        activation: str = "lrelu",
        lr_multiplier: float = 0.01,
        w_avg_beta: float | None = 0.995,
    ) -> None:
        super().__init__()
        if z_dim + c_dim == 0:
            raise ValueError("MappingNetwork needs an input: z_dim and c_dim are both 0")
        if num_layers < 1:
            raise ValueError(f"MappingNetwork: num_layers must be >= 1, got {num_layers}")
        self.z_dim = z_dim
        self.c_dim = c_dim
        self.w_dim = w_dim
        self.num_ws = num_ws
        self.num_layers = num_layers
        self.w_avg_beta = w_avg_beta

        embed = 0 if c_dim == 0 else (w_dim if embed_features is None else embed_features)
        hidden = w_dim if layer_features is None else layer_features
        features = [z_dim + embed] + [hidden] * (num_layers - 1) + [w_dim]

        if c_dim > 0:  # registered before fc0, as in SG2 (parameter order matters for EMA lists)
            self.embed = FullyConnectedLayer(c_dim, embed)
        for idx in range(num_layers):
            layer = FullyConnectedLayer(
                features[idx], features[idx + 1], activation=activation, lr_multiplier=lr_multiplier
            )
            setattr(self, f"fc{idx}", layer)
        if w_avg_beta is not None:
            self.register_buffer("w_avg", torch.zeros([w_dim]))

    def forward(
        self,
        z: Tensor | None,
        c: Tensor | None = None,
        truncation_psi: float = 1.0,
        truncation_cutoff: int | None = None,
        update_w_avg: bool | None = None,
    ) -> Tensor:
        """``z`` [B, z_dim], ``c`` [B, c_dim] → ws [B, num_ws, w_dim] (or [B, w_dim] if num_ws is None)."""
        parts = []
        if self.z_dim > 0:
            if z is None or z.ndim != 2 or z.shape[1] != self.z_dim:
                got = None if z is None else tuple(z.shape)
                raise ValueError(f"MappingNetwork expects z [B, {self.z_dim}], got {got}")
            parts.append(normalize_2nd_moment(z.to(torch.float32)))
        if self.c_dim > 0:
            if c is None or c.ndim != 2 or c.shape[1] != self.c_dim:
                got = None if c is None else tuple(c.shape)
                raise ValueError(f"MappingNetwork expects c [B, {self.c_dim}], got {got}")
            parts.append(normalize_2nd_moment(self.embed(c.to(torch.float32))))
        x = torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]
        for idx in range(self.num_layers):
            x = getattr(self, f"fc{idx}")(x)

        if update_w_avg is None:
            update_w_avg = self.training
        if update_w_avg and self.w_avg_beta is not None:
            # w̄ ← β w̄ + (1-β) mean_B(w)  (docs/method.md §4.1); lerp(a, b, t) = a + t (b - a)
            self.w_avg.copy_(torch.lerp(x.detach().mean(dim=0), self.w_avg, self.w_avg_beta))

        if self.num_ws is not None:
            x = x.unsqueeze(1).repeat(1, self.num_ws, 1)
        if truncation_psi != 1:
            if self.w_avg_beta is None:
                raise ValueError("truncation needs w_avg; this MappingNetwork was built with w_avg_beta=None")
            if self.num_ws is None or truncation_cutoff is None:
                x = torch.lerp(self.w_avg, x, truncation_psi)  # w̄ + ψ (w - w̄)
            else:
                head = torch.lerp(self.w_avg, x[:, :truncation_cutoff], truncation_psi)
                x = torch.cat([head, x[:, truncation_cutoff:]], dim=1)
        return x

    def extra_repr(self) -> str:
        return (
            f"z_dim={self.z_dim}, c_dim={self.c_dim}, w_dim={self.w_dim}, num_ws={self.num_ws}, "
            f"num_layers={self.num_layers}, w_avg_beta={self.w_avg_beta}"
        )
