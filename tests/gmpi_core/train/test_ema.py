"""EMA follows torch_ema's warm-up rule d_t = min(d, (1+t)/(10+t)) (docs/method.md §6.8)."""

import pytest
import torch
from torch import nn

from gmpi_core.train.ema import ParameterEMA


def test_first_updates_use_the_warmup_decay_and_the_lerp_formula():
    p = nn.Parameter(torch.tensor([0.0]))
    ema = ParameterEMA([p], decay=0.999)
    expected = 0.0
    for t, value in enumerate([1.0, 2.0, 5.0], start=1):
        p.data.fill_(value)
        d = ema.update([p])
        assert d == pytest.approx((1 + t) / (10 + t))
        expected = expected - (1 - d) * (expected - value)
        assert ema.shadow_params[0].item() == pytest.approx(expected, rel=1e-6)


def test_two_emas_with_different_decays_are_identical_during_the_5000_step_warmup():
    # (1+t)/(10+t) < 0.999 <=> t < 8990 (docs/method.md §6.8 says 8991; equality holds at 8990), so ema
    # (0.999) and ema2 (0.9999) coincide for the whole 5000-step run
    assert (1 + 8989) / (10 + 8989) < 0.999 < (1 + 8991) / (10 + 8991)
    p = nn.Parameter(torch.zeros(3))
    a, b = ParameterEMA([p], 0.999), ParameterEMA([p], 0.9999)
    g = torch.Generator().manual_seed(0)
    for _ in range(50):
        p.data = torch.randn(3, generator=g)
        assert a.update([p]) == b.update([p])
    assert torch.equal(a.shadow_params[0], b.shadow_params[0])


def test_decay_saturates_at_the_configured_value():
    p = nn.Parameter(torch.zeros(1))
    ema = ParameterEMA([p], decay=0.5)
    ema.num_updates = 100
    assert ema.current_decay() == 0.5


def test_state_dict_has_torch_ema_layout_and_round_trips():
    lin = nn.Linear(2, 2)
    ema = ParameterEMA(lin.parameters(), 0.999)
    ema.update(lin.parameters())
    state = ema.state_dict()
    assert set(state) == {"decay", "num_updates", "shadow_params", "collected_params"}
    assert state["num_updates"] == 1 and len(state["shadow_params"]) == 2
    other = ParameterEMA(nn.Linear(2, 2).parameters(), 0.5)
    other.load_state_dict(state)
    assert other.decay == 0.999 and other.num_updates == 1
    assert all(torch.equal(x, y) for x, y in zip(other.shadow_params, ema.shadow_params))
    assert set(ema.named_shadow(lin)) == {"weight", "bias"}


def test_loading_a_state_with_wrong_shapes_names_the_tensor():
    ema = ParameterEMA(nn.Linear(2, 2).parameters(), 0.999)
    bad = ParameterEMA(nn.Linear(3, 2).parameters(), 0.999).state_dict()
    with pytest.raises(ValueError, match="EMA tensor 0: shape"):
        ema.load_state_dict(bad)
