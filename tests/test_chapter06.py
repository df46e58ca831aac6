"""What chapter 6 (the Mahalanobis score) relies on, pinned on small untrained models.

The chapter scores level 1's conditioning features of the SR flow (one vector per LR pixel), pools
HR artifact masks to the LR grid with a 4x4 max-pool, reads the toy couplings' raw scale output as
row 1 of the conditioner's last layer, and derives |h - h_bar| <= sigma_h * d(phi) from
Cauchy-Schwarz. Each of those is checked here.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

import minflow as mf
from minflow import metrics, ood, toy


def test_level_one_features_are_one_vector_per_lr_pixel():
    torch.manual_seed(0)
    model = mf.sr.SRFlow(nf=8, blocks=2, gc=4, cond_channels=6, hidden=8, flow_steps=1).eval()
    assert model.encoder.scales[1] == 1.0  # 4x, 3 levels: level 1 works on the LR grid
    lr = torch.rand(2, 3, 8, 12)
    with torch.no_grad():
        feats = model.encoder(lr)
        direct = model.encoder.adapters[1](model.encoder.features(lr))
    torch.testing.assert_close(feats[(8, 12)], direct)  # no resizing at level 1
    # level 0 is the nearest 2x copy of its own projection (the chapter's exercise 1)
    level0 = model.encoder.adapters[0](model.encoder.features(lr))
    torch.testing.assert_close(feats[(16, 24)], F.interpolate(level0, scale_factor=2, mode="nearest"))


def test_max_pool_of_artifact_mask_is_any_artifact_in_the_block():
    x = torch.full((3, 3, 8, 12), 0.5)
    x[0, 1, 5, 2] = 2.0  # one HR pixel of sample 0, block (1, 0)
    x[2, 0, 0, 11] = float("nan")  # sample 2, block (0, 2)
    events = F.max_pool2d(metrics.artifact_mask(x).float(), 4).bool()
    expected = torch.zeros(3, 2, 3, dtype=torch.bool)
    expected[0, 1, 0] = True
    expected[2, 0, 2] = True
    assert torch.equal(events, expected)


def test_toy_scale_output_is_row_one_of_the_read_out():
    torch.manual_seed(0)
    flow = toy.toy_flow()
    layer = next(m for m in flow.layers if isinstance(m, mf.Coupling))
    with torch.no_grad():
        layer.net[-1].weight.normal_()  # the zero-initialised read-out made non-trivial
        layer.net[-1].bias.normal_()
        v, y = torch.randn(5, 2), torch.randn(5, 2)
        phi = layer.net[:-1](torch.cat([layer.halves(v)[0], y], 1))
        h = layer.conditioner_output(v, y)[..., 1].flatten()
        torch.testing.assert_close(h, phi @ layer.net[-1].weight[1] + layer.net[-1].bias[1])


def test_read_out_deviation_is_bounded_by_mahalanobis_distance():
    gen = torch.Generator().manual_seed(0)
    train = torch.relu(
        torch.randn(500, 16, generator=gen, dtype=torch.float64)
        @ torch.randn(16, 16, generator=gen, dtype=torch.float64)
    )
    train[:, 3] = 0.0  # a dead unit: only shrinkage keeps the covariance invertible
    test = 20 * torch.randn(300, 16, generator=gen, dtype=torch.float64)
    w, b = torch.randn(16, generator=gen, dtype=torch.float64), 0.3
    for shrinkage in ("auto", 0.1):
        scorer = ood.Mahalanobis(shrinkage).fit(train)
        h_bar, sigma_h = w @ scorer.mean_ + b, torch.sqrt(w @ scorer.covariance_ @ w)
        dev = (test @ w + b - h_bar).abs()
        assert (dev <= sigma_h * scorer.score(test) * (1 + 1e-9)).all()
        # and the bound is attained along Sigma w
        direction = scorer.covariance_ @ w
        tight = scorer.mean_ + 7.0 * direction / torch.sqrt(w @ direction)
        torch.testing.assert_close(((tight @ w + b - h_bar).abs() / sigma_h).item(), scorer.score(tight[None]).item())


def test_median_absolute_deviation_ignores_a_minority_of_infinite_samples():
    x = torch.tensor([[0.0], [0.1], [0.2], [math.inf], [0.3]])
    dev = (x - x.median(0).values).abs().nan_to_num(nan=math.inf)
    assert math.isfinite(dev.median(0).values.item())
    x = torch.tensor([[0.0], [math.inf], [math.inf], [math.inf], [0.3]])
    dev = (x - x.median(0).values).abs().nan_to_num(nan=math.inf)
    assert dev.median(0).values.item() == math.inf
