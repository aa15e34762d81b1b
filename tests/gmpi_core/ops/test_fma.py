"""fma(a, b, c) = a*b + c with gradients reduced to each operand's broadcast shape (docs/method.md §11.5)."""

import pytest
import torch

from gmpi_core.ops.fma import fma

SHAPES = [
    ((2, 3, 4), (2, 3, 4), (2, 3, 4)),
    ((3, 1), (1, 4), (4,)),
    ((2, 1, 4), (3, 1), (1,)),
    ((), (5,), (2, 1)),
]


@pytest.mark.parametrize("shapes", SHAPES)
def test_fma_value_and_gradients_equal_those_of_a_times_b_plus_c(shapes: tuple) -> None:
    gen = torch.Generator().manual_seed(0)
    a, b, c = (torch.randn(s, generator=gen, dtype=torch.float64, requires_grad=True) for s in shapes)
    out = fma(a, b, c)
    want = a.detach() * b.detach() + c.detach()
    torch.testing.assert_close(out, want)
    weight = torch.randn(want.shape, generator=gen, dtype=torch.float64)
    grads = torch.autograd.grad((out * weight).sum(), [a, b, c])
    # d/da sum(w (a b + c)) = sum over broadcast dims of w b, etc.
    a2, b2, c2 = (t.detach().requires_grad_(True) for t in (a, b, c))
    wants = torch.autograd.grad((weight * (a2 * b2 + c2)).sum(), [a2, b2, c2])
    for g, w, t in zip(grads, wants, (a, b, c)):
        assert g.shape == t.shape
        torch.testing.assert_close(g, w)


@pytest.mark.parametrize("shapes", SHAPES[:3])
def test_fma_supports_double_backward(shapes: tuple) -> None:
    gen = torch.Generator().manual_seed(1)
    inputs = tuple(torch.randn(s, generator=gen, dtype=torch.float64, requires_grad=True) for s in shapes)
    assert torch.autograd.gradcheck(fma, inputs)
    assert torch.autograd.gradgradcheck(fma, inputs)
