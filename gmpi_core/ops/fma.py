"""Fused multiply-add ``a * b + c`` with a broadcasting-aware backward (docs/method.md §11.5).

``torch.addcmul`` computes the forward in one kernel; the backward reduces each gradient back to the
shape of its (possibly broadcast) operand so that ``a``, ``b`` and ``c`` may have any mutually
broadcastable shapes. The backward is built from differentiable ops, so double backward works.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


def fma(a: Tensor, b: Tensor, c: Tensor) -> Tensor:
    """``a * b + c`` for broadcastable ``a``, ``b``, ``c``; result has the broadcast shape."""
    return _FusedMultiplyAdd.apply(a, b, c)


def _sum_to_shape(grad: Tensor, shape: torch.Size) -> Tensor:
    """Adjoint of broadcasting: sum ``grad`` over the dimensions that broadcasting expanded to ``shape``."""
    if grad.shape == shape:
        return grad
    extra = grad.ndim - len(shape)
    if extra > 0:
        grad = grad.sum(dim=tuple(range(extra)))
    expanded = tuple(i for i, n in enumerate(shape) if n == 1 and grad.shape[i] != 1)
    if expanded:
        grad = grad.sum(dim=expanded, keepdim=True)
    return grad


class _FusedMultiplyAdd(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, a: Tensor, b: Tensor, c: Tensor) -> Tensor:
        out = torch.addcmul(c, a, b)
        ctx.save_for_backward(a, b)
        ctx.c_shape = c.shape
        return out

    @staticmethod
    def backward(ctx: Any, dout: Tensor) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        a, b = ctx.saved_tensors
        da = _sum_to_shape(dout * b, a.shape) if ctx.needs_input_grad[0] else None
        db = _sum_to_shape(dout * a, b.shape) if ctx.needs_input_grad[1] else None
        dc = _sum_to_shape(dout, ctx.c_shape) if ctx.needs_input_grad[2] else None
        return da, db, dc
