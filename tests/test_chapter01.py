"""Chapter 1's from-scratch affine coupling equals `mf.Coupling` with the same weights.

The chapter writes SRFlow's coupling by hand (split, an MLP whose output is read as interleaved
(t, h) pairs, s = sigmoid(h + 2) + eps) and copies the MLP's weights into `mf.Coupling` with
`load_state_dict`. These tests pin what that relies on: the conditioner's layer names, the
parameter layout, the formulas and the zero-initialised start, for even and odd sizes.
"""

from __future__ import annotations

import math

import pytest
import torch
from helpers import jacobian_logdet
from torch import nn

import minflow as mf

EPS = 1e-4


def hand_mlp(n_in: int, n_out: int, hidden: int, depth: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    width = n_in
    for _ in range(depth):
        layers += [nn.Linear(width, hidden), nn.ReLU()]
        width = hidden
    return nn.Sequential(*layers, nn.Linear(width, n_out))


def hand_coupling(net: nn.Module, x: torch.Tensor, n_a: int, inverse: bool = False):
    """The chapter's coupling: z_b = (x_b + t) * s forward, x_b = z_b / s - t inverse."""
    a, b = x[:, :n_a], x[:, n_a:]
    out = net(a).view(x.shape[0], -1, 2)  # (B, n_b, 2): [..., 0] = t, [..., 1] = h
    t, s = out[..., 0], torch.sigmoid(out[..., 1] + 2) + EPS
    logdet = torch.log(s).sum(1)
    if inverse:
        return torch.cat([a, b / s - t], 1), -logdet
    return torch.cat([a, (b + t) * s], 1), logdet


@pytest.mark.parametrize("channels,hidden,depth", [(2, 16, 1), (3, 8, 2), (4, 32, 2), (5, 16, 3)])
def test_hand_coupling_equals_minflow(channels, hidden, depth):
    torch.manual_seed(channels)
    n_a = channels // 2
    n_b = channels - n_a
    net = hand_mlp(n_a, 2 * n_b, hidden, depth).double()
    with torch.no_grad():
        net[-1].weight.normal_(0.0, 0.5)
        net[-1].bias.normal_(0.0, 0.5)
    layer = mf.Coupling(channels, 0, mf.Affine("sigmoid"), kind="mlp", hidden=hidden, depth=depth).double()
    layer.net.load_state_dict(net.state_dict())  # strict: the layer names must match

    x = 2 * torch.randn(8, channels, dtype=torch.float64)
    z_hand, ld_hand = hand_coupling(net, x, n_a)
    z_mf, ld_mf = layer(x)
    s = torch.exp(ld_hand)
    assert not torch.allclose(s, s[0].expand_as(s))  # a non-trivial (non-constant) scale
    torch.testing.assert_close(z_mf, z_hand, rtol=0, atol=1e-12)
    torch.testing.assert_close(ld_mf, ld_hand, rtol=0, atol=1e-12)
    torch.testing.assert_close(ld_mf, jacobian_logdet(lambda v, c: layer(v)[0], x), rtol=0, atol=1e-10)

    x_hand, ild_hand = hand_coupling(net, z_hand, n_a, inverse=True)
    x_mf, ild_mf = layer.inverse(z_mf)
    torch.testing.assert_close(x_mf, x_hand, rtol=0, atol=1e-12)
    torch.testing.assert_close(ild_mf, ild_hand, rtol=0, atol=1e-12)
    torch.testing.assert_close(ild_mf, -ld_mf, rtol=0, atol=1e-12)
    torch.testing.assert_close(x_mf, x, rtol=0, atol=1e-10)


@pytest.mark.parametrize("channels", [2, 5])
def test_untrained_coupling_is_identity_times_constant_scale(channels):
    torch.manual_seed(0)
    layer = mf.Coupling(channels, 0, mf.Affine("sigmoid"), kind="mlp", hidden=8, depth=2).double()
    n_a = channels // 2
    x = torch.randn(6, channels, dtype=torch.float64)
    z, logdet = layer(x)
    s0 = 1 / (1 + math.exp(-2.0)) + EPS
    torch.testing.assert_close(z[:, :n_a], x[:, :n_a], rtol=0, atol=0)
    torch.testing.assert_close(z[:, n_a:], s0 * x[:, n_a:], rtol=0, atol=1e-12)
    torch.testing.assert_close(logdet, torch.full_like(logdet, (channels - n_a) * math.log(s0)), rtol=0, atol=1e-12)
