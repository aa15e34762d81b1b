"""MappingNetwork: the equation of method §4.1, w_avg bookkeeping, truncation, SG2 names (method §11.4)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from gmpi_core.networks.mapping import MappingNetwork


def lrelu_sqrt2(z: Tensor) -> Tensor:
    return torch.where(z > 0, z, 0.2 * z) * math.sqrt(2.0)


def fc64(net: MappingNetwork, name: str, x: Tensor, lr: float, act: bool) -> Tensor:
    layer = getattr(net, name)
    w, b = layer.weight.detach().double(), layer.bias.detach().double()
    z = x @ (w * lr / math.sqrt(w.shape[1])).T + b * lr
    return lrelu_sqrt2(z) if act else z


def norm2(x: Tensor) -> Tensor:
    return x / torch.sqrt(x.square().mean(dim=1, keepdim=True) + 1e-8)


def _net(**kwargs: object) -> MappingNetwork:
    torch.manual_seed(0)
    net = MappingNetwork(**{"z_dim": 6, "c_dim": 0, "w_dim": 5, "num_ws": 3, "num_layers": 3, **kwargs})  # type: ignore[arg-type]
    with torch.no_grad():  # biases init to 0; make them matter
        for idx in range(net.num_layers):
            getattr(net, f"fc{idx}").bias.copy_(torch.randn(getattr(net, f"fc{idx}").bias.shape) * 30)
    return net.eval()


def test_mapping_equals_normalised_z_through_lrelu_layers_with_lr_multiplier() -> None:
    net = _net()
    z = torch.randn(4, 6)
    x = norm2(z.double())
    for idx in range(3):
        x = fc64(net, f"fc{idx}", x, lr=0.01, act=True)
    ws = net(z)
    assert ws.shape == (4, 3, 5)
    torch.testing.assert_close(ws.double(), x.unsqueeze(1).expand(4, 3, 5), rtol=1e-5, atol=1e-5)


def test_mapping_with_condition_concatenates_normalised_embedding() -> None:
    net = _net(c_dim=2, embed_features=4)
    with torch.no_grad():
        net.embed.bias.copy_(torch.tensor([0.5, -1.0, 2.0, 0.1]))
    z, c = torch.randn(3, 6), torch.randn(3, 2)
    e = fc64(net, "embed", c.double(), lr=1.0, act=False)  # embed: linear, lr multiplier 1
    x = torch.cat([norm2(z.double()), norm2(e)], dim=1)
    for idx in range(3):
        x = fc64(net, f"fc{idx}", x, lr=0.01, act=True)
    torch.testing.assert_close(net(z, c)[:, 0].double(), x, rtol=1e-5, atol=1e-5)
    assert net.fc0.weight.shape == (5, 10)


def test_w_avg_moves_toward_batch_mean_by_0_005_in_training_mode_only() -> None:
    net = _net()
    w_avg0 = torch.tensor([1.0, -2.0, 3.0, 0.5, 0.0])
    net.w_avg.copy_(w_avg0)
    z = torch.randn(8, 6)

    net.eval()
    w = net(z)[:, 0]
    assert torch.equal(net.w_avg, w_avg0), "eval-mode forward must not touch w_avg"

    net.train()
    net(z)
    want = 0.995 * w_avg0.double() + 0.005 * w.double().mean(dim=0)
    torch.testing.assert_close(net.w_avg.double(), want, rtol=1e-6, atol=1e-6)

    before = net.w_avg.clone()
    net(z, update_w_avg=False)
    assert torch.equal(net.w_avg, before)
    net.eval()
    net(z, update_w_avg=True)
    assert not torch.equal(net.w_avg, before)


def test_truncation_interpolates_toward_w_avg_on_the_first_cutoff_layers() -> None:
    net = _net()
    net.w_avg.copy_(torch.tensor([1.0, -2.0, 3.0, 0.5, 0.0]))
    z = torch.randn(2, 6)
    ws = net(z)
    avg = net.w_avg.reshape(1, 1, 5)
    torch.testing.assert_close(net(z, truncation_psi=0.7), avg + 0.7 * (ws - avg), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(net(z, truncation_psi=0.0), avg.expand(2, 3, 5))
    cut = net(z, truncation_psi=0.5, truncation_cutoff=2)
    torch.testing.assert_close(cut[:, :2], (avg + 0.5 * (ws - avg))[:, :2], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(cut[:, 2:], ws[:, 2:])


def test_mapping_names_shapes_and_init_match_sg2() -> None:
    net = MappingNetwork(z_dim=512, c_dim=0, w_dim=512, num_ws=14)
    shapes = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    want = {"w_avg": (512,)}
    for idx in range(8):
        want |= {f"fc{idx}.weight": (512, 512), f"fc{idx}.bias": (512,)}
    assert shapes == want
    assert [n for n, _ in net.named_parameters()] == [
        f"fc{i}.{p}" for i in range(8) for p in ("weight", "bias")
    ]
    assert torch.equal(net.w_avg, torch.zeros(512))
    assert abs((net.fc0.weight.detach() * 0.01).std().item() - 1.0) < 0.01  # N(0,1)/lr init
    conditional = MappingNetwork(z_dim=4, c_dim=3, w_dim=8, num_ws=2, num_layers=2)
    assert [n for n, _ in conditional.named_parameters()][:2] == ["embed.weight", "embed.bias"]
    assert conditional.embed.weight.shape == (8, 3)


def test_mapping_without_num_ws_returns_a_single_w_and_rejects_bad_inputs() -> None:
    net = MappingNetwork(z_dim=4, c_dim=0, w_dim=8, num_ws=None, num_layers=2)
    assert net(torch.randn(3, 4)).shape == (3, 8)
    with pytest.raises(ValueError, match=r"z \[B, 4\]"):
        net(torch.randn(3, 5))
    with pytest.raises(ValueError, match="w_avg_beta=None"):
        MappingNetwork(z_dim=4, c_dim=0, w_dim=8, num_ws=2, w_avg_beta=None)(
            torch.randn(1, 4), truncation_psi=0.5
        )
