"""Exponential moving average of parameters with torch_ema's warm-up rule (docs/method.md §6.8).

The effective decay at update t (counted from 1) is ``min(decay, (1 + t) / (10 + t))`` and the shadow moves
as ``θ_ema ← θ_ema − (1 − d_t)(θ_ema − θ)``. Only parameters are averaged, never buffers. ``state_dict``
has the torch_ema layout (``decay``, ``num_updates``, ``shadow_params`` in parameter order,
``collected_params``), so official ``ema.pth`` files and ours are interchangeable.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn


class ParameterEMA:
    """Shadow copies of a module's parameters, updated after every optimiser step."""

    def __init__(
        self, parameters: Iterable[nn.Parameter], decay: float, use_num_updates: bool = True
    ) -> None:
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"EMA decay must be in [0, 1], got {decay}")
        self.decay = decay
        self.num_updates: int | None = 0 if use_num_updates else None
        self.shadow_params: list[Tensor] = [p.detach().clone() for p in parameters]

    def current_decay(self) -> float:
        """The decay the *next* update will use."""
        if self.num_updates is None:
            return self.decay
        t = self.num_updates + 1
        return min(self.decay, (1.0 + t) / (10.0 + t))

    @torch.no_grad()
    def update(self, parameters: Iterable[nn.Parameter]) -> float:
        """One EMA step; returns the decay that was used."""
        decay = self.current_decay()
        if self.num_updates is not None:
            self.num_updates += 1
        params = list(parameters)
        if len(params) != len(self.shadow_params):
            raise ValueError(f"EMA tracks {len(self.shadow_params)} parameters but got {len(params)}")
        shadow = self.shadow_params
        torch._foreach_lerp_(shadow, [p.detach() for p in params], 1.0 - decay)
        return decay

    @torch.no_grad()
    def copy_to(self, parameters: Iterable[nn.Parameter]) -> None:
        for s, p in zip(self.shadow_params, parameters, strict=True):
            p.copy_(s)

    def named_shadow(self, module: nn.Module) -> dict[str, Tensor]:
        """Shadow tensors keyed by the module's parameter names (for safetensors)."""
        names = [n for n, _ in module.named_parameters()]
        if len(names) != len(self.shadow_params):
            raise ValueError(f"module has {len(names)} parameters, EMA tracks {len(self.shadow_params)}")
        return dict(zip(names, self.shadow_params, strict=True))

    def to(self, device: torch.device | str) -> ParameterEMA:
        self.shadow_params = [s.to(device) for s in self.shadow_params]
        return self

    def state_dict(self) -> dict:
        return {
            "decay": self.decay,
            "num_updates": self.num_updates,
            "shadow_params": self.shadow_params,
            "collected_params": None,
        }

    def load_state_dict(self, state: dict) -> None:
        shadow = state["shadow_params"]
        if len(shadow) != len(self.shadow_params):
            raise ValueError(f"EMA state has {len(shadow)} tensors, expected {len(self.shadow_params)}")
        for i, (mine, theirs) in enumerate(zip(self.shadow_params, shadow, strict=True)):
            if mine.shape != theirs.shape:
                raise ValueError(
                    f"EMA tensor {i}: shape {tuple(theirs.shape)} != expected {tuple(mine.shape)}"
                )
        self.decay = float(state["decay"])
        self.num_updates = state["num_updates"]
        self.shadow_params = [
            t.detach().clone().to(m.device) for t, m in zip(shadow, self.shadow_params, strict=True)
        ]
