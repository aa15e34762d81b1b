"""GAN objectives of GMPI (method §6.4, §6.5): non-saturating logistic loss, R1 on reals, worst-view choice::

L_D = E softplus(−D(x_real)) + E softplus(D(x_fake)) + γ/2 · E‖∇_x Σ D(x_real)‖²
L_G = E softplus(−D(x_fake at the worst of V views))
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "d_logistic_loss",
    "g_nonsaturating_loss",
    "r1_penalty",
    "select_worst_views",
    "worst_view_index",
]


def d_logistic_loss(real_logits: Tensor, fake_logits: Tensor) -> tuple[Tensor, Tensor]:
    """(E softplus(−r), E softplus(g)) for logits r [B, 1] of reals and g [B', 1] of fakes."""
    return F.softplus(-real_logits).mean(), F.softplus(fake_logits).mean()


def g_nonsaturating_loss(fake_logits: Tensor) -> Tensor:
    """E softplus(−D(G(z))) — the non-saturating generator loss."""
    return F.softplus(-fake_logits).mean()


def r1_penalty(real_logits: Tensor, real_images: Tensor, gamma: float) -> Tensor:
    """γ/2 · E_b ‖∇_{x_b} Σ_i r_i‖², differentiable (create_graph) so D is trained through it (method §6.4).

    ``real_images`` [B, C, H, W] must require grad and ``real_logits`` [B, 1] be computed from it.
    """
    (grad,) = torch.autograd.grad(real_logits.sum(), real_images, create_graph=True)
    return 0.5 * gamma * grad.square().sum(dim=[1, 2, 3]).mean()


def worst_view_index(logits: Tensor) -> Tensor:
    """Per latent, the index of the view with the lowest discriminator logit: logits [B, V] → [B]."""
    return logits.argmin(dim=1)


@torch.no_grad()
def select_worst_views(
    n_latents: int,
    n_views: int,
    minibatch: int,
    sample_poses: Callable[[int], tuple[Tensor, Tensor]],
    score: Callable[[slice, Tensor, Tensor], Tensor],
) -> tuple[Tensor, Tensor]:
    """The worst of ``n_views`` random views for each latent (docs/method.md §6.4 step 3, §13.12).

    Latents are processed ``minibatch`` at a time. For a group of m latents (``slice`` into the batch),
    ``sample_poses(m · V)`` draws poses ordered latent-major (view v of latent j at j·V + v) and
    ``score(latents, yaw [m·V], pitch [m·V])`` returns D's logits [m·V] or [m·V, 1]. Returns the chosen
    (yaw [B], pitch [B]) on the CPU.
    """
    if n_views < 1 or minibatch < 1:
        raise ValueError(f"need n_views >= 1 and minibatch >= 1, got {n_views}, {minibatch}")
    yaws, pitches = [], []
    for start in range(0, n_latents, minibatch):
        group = slice(start, min(start + minibatch, n_latents))
        m = group.stop - group.start
        yaw, pitch = sample_poses(m * n_views)
        logits = score(group, yaw, pitch).reshape(m, n_views)
        idx = worst_view_index(logits).cpu()
        rows = torch.arange(m)
        yaws.append(yaw.cpu().reshape(m, n_views)[rows, idx])
        pitches.append(pitch.cpu().reshape(m, n_views)[rows, idx])
    return torch.cat(yaws), torch.cat(pitches)
