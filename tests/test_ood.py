"""Tests of minflow.ood: the Mahalanobis scorer and the rank/rate statistics."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import spearmanr
from sklearn.covariance import LedoitWolf
from sklearn.metrics import roc_auc_score

from minflow.ood import PIVOT_RTOL, Mahalanobis, average_ranks, binned_rate, roc_auc, spearman

SETTINGS = settings(max_examples=25, deadline=None)
seeds = st.integers(0, 2**31 - 1)


def gaussian(n, d, seed, offset=0.0, dtype=torch.float64):
    """Correlated Gaussian features with unequal scales: x = offset + z A."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(d, d, generator=g, dtype=torch.float64) + 2 * torch.eye(d, dtype=torch.float64)
    return (offset + torch.randn(n, d, generator=g, dtype=torch.float64) @ a).to(dtype)


def direct_distance(x_fit, x_score, shrinkage=0.0):
    """Distances from an explicit inverse of the (shrunk) MLE covariance, in numpy."""
    x, y = x_fit.numpy(), x_score.numpy()
    mean = x.mean(0)
    s = (x - mean).T @ (x - mean) / len(x)
    d = s.shape[0]
    cov = (1 - shrinkage) * s + shrinkage * np.trace(s) / d * np.eye(d)
    diff = y - mean
    return np.sqrt(np.einsum("ni,ij,nj->n", diff, np.linalg.inv(cov), diff)), cov


# ---------------------------------------------------------------- the scorer, against direct math


def test_one_dimensional_hand_example():
    # data -1, 1: mean 0, MLE variance 1, so the distance of x is |x| (not x^2)
    m = Mahalanobis(shrinkage=0).fit(torch.tensor([[-1.0], [1.0]], dtype=torch.float64))
    assert torch.allclose(
        m.score(torch.tensor([[3.0], [-0.5], [0.0]], dtype=torch.float64)),
        torch.tensor([3.0, 0.5, 0.0], dtype=torch.float64),
    )


@SETTINGS
@given(seed=seeds, n=st.integers(30, 80), d=st.integers(1, 6), a=st.sampled_from([0.0, 0.3, 1.0]))
def test_matches_explicit_inverse(seed, n, d, a):
    x = gaussian(n, d, seed, offset=3.0)
    y = gaussian(7, d, seed + 1) * 2
    want, cov = direct_distance(x, y, shrinkage=a)
    m = Mahalanobis(shrinkage=a).fit(x)
    got = m.score(y)
    assert got.shape == (7,) and got.dtype == torch.float64
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-9)
    np.testing.assert_allclose(m.covariance_.numpy(), cov, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(m.mean_.numpy(), x.numpy().mean(0), rtol=1e-12, atol=1e-12)
    assert m.shrinkage_ == a and m.n_ == n


@SETTINGS
@given(seed=seeds, n=st.integers(3, 40), d=st.integers(2, 25))
def test_auto_shrinkage_is_ledoit_wolf(seed, n, d):
    x = gaussian(n, d, seed, offset=-2.0)
    lw = LedoitWolf().fit(x.numpy())
    m = Mahalanobis().fit(x)
    assert m.shrinkage_ == pytest.approx(lw.shrinkage_, rel=1e-9, abs=1e-12)
    np.testing.assert_allclose(m.covariance_.numpy(), lw.covariance_, rtol=1e-9, atol=1e-12)
    want, _ = direct_distance(x, x, shrinkage=lw.shrinkage_)
    np.testing.assert_allclose(m.score(x).numpy(), want, rtol=1e-8)


@SETTINGS
@given(seed=seeds, d=st.integers(1, 5))
def test_invariant_to_shift_and_invertible_linear_map(seed, d):
    x, y = gaussian(300, d, seed), gaussian(20, d, seed + 1) * 3
    g = torch.Generator().manual_seed(seed + 2)
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    a = q * torch.linspace(0.3, 3.0, d, dtype=torch.float64)  # singular values 0.3..3
    b = 10 * torch.randn(d, generator=g, dtype=torch.float64)
    before = Mahalanobis(shrinkage=0).fit(x).score(y)
    after = Mahalanobis(shrinkage=0).fit(x @ a + b).score(y @ a + b)
    torch.testing.assert_close(after, before, rtol=1e-9, atol=1e-9)


def test_score_is_larger_far_from_the_data():
    m = Mahalanobis().fit(gaussian(500, 4, 0))
    near, far = m.score(torch.zeros(1, 4, dtype=torch.float64)), m.score(torch.full((1, 4), 50.0, dtype=torch.float64))
    assert far.item() > 10 * near.item()


# ---------------------------------------------------------------- streaming and feature maps


@SETTINGS
@given(seed=seeds, cuts=st.lists(st.integers(0, 60), max_size=5), shrinkage=st.sampled_from(["auto", 0.0, 0.2]))
def test_streaming_equals_one_shot(seed, cuts, shrinkage):
    x = gaussian(60, 5, seed, offset=4.0)
    one = Mahalanobis(shrinkage).fit(x)
    edges = [0, *sorted(cuts), 60]
    stream = Mahalanobis(shrinkage)
    for lo, hi in zip(edges[:-1], edges[1:]):  # includes empty chunks when cuts repeat
        stream.partial_fit(x[lo:hi])
    y = gaussian(10, 5, seed + 1)
    got = stream.score(y)  # finalizes lazily
    assert stream.n_ == 60
    torch.testing.assert_close(stream.mean_, one.mean_, rtol=0, atol=1e-10)
    torch.testing.assert_close(stream.covariance_, one.covariance_, rtol=0, atol=1e-10)
    assert abs(stream.shrinkage_ - one.shrinkage_) < 1e-10
    # distances reach ~1e3 here: compare to 1e-10 relative (float64 round-off), as the fit above
    torch.testing.assert_close(got, one.score(y), rtol=1e-10, atol=1e-10)


def test_streaming_is_stable_under_a_huge_offset():
    # raw sums of x x^T would lose every significant digit of a unit variance at offset 1e8
    x = gaussian(300, 3, 5)
    m = Mahalanobis(shrinkage="auto")
    for chunk in (x + 1e8).split(50):
        m.partial_fit(chunk)
    ref = Mahalanobis(shrinkage="auto").fit(x)
    torch.testing.assert_close(m.covariance_, ref.covariance_, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(m.score(x + 1e8), ref.score(x), rtol=1e-6, atol=1e-6)


def test_partial_fit_after_finalize_refits_on_all_data():
    x = gaussian(40, 3, 1)
    m = Mahalanobis(shrinkage=0).partial_fit(x[:20]).finalize()
    first = m.covariance_.clone()
    m.partial_fit(x[20:])
    m.score(x[:1])
    torch.testing.assert_close(m.covariance_, Mahalanobis(shrinkage=0).fit(x).covariance_)
    assert not torch.allclose(first, m.covariance_)
    m.fit(x[:20])  # fit starts over
    torch.testing.assert_close(m.covariance_, first)


def test_maps_equal_flattening_by_hand():
    g = torch.Generator().manual_seed(0)
    maps = torch.randn(3, 4, 5, 6, generator=g, dtype=torch.float64) + torch.arange(4.0).view(1, 4, 1, 1)
    rows = torch.stack([maps[b, :, i, j] for b in range(3) for i in range(5) for j in range(6)])
    by_hand = Mahalanobis(0.1).fit(rows)
    m = Mahalanobis(0.1).fit_maps(maps)
    torch.testing.assert_close(m.covariance_, by_hand.covariance_, rtol=0, atol=1e-12)
    test = torch.randn(2, 4, 5, 6, generator=g, dtype=torch.float64) * 2
    got = m.score_maps(test)
    assert got.shape == (2, 5, 6)
    for b, i, j in [(0, 0, 0), (1, 4, 5), (0, 2, 3), (1, 0, 5)]:
        torch.testing.assert_close(got[b, i, j], by_hand.score(test[b, :, i, j][None])[0])
    stream = Mahalanobis(0.1).partial_fit_maps(maps[:1]).partial_fit_maps(maps[1:])
    torch.testing.assert_close(stream.score_maps(test), got, rtol=0, atol=1e-10)


def test_float32_in_float32_out_computed_in_float64():
    x64 = gaussian(200, 6, 3, offset=1000.0)
    x32 = x64.float()
    m = Mahalanobis().fit(x32)
    assert m.covariance_.dtype == torch.float64
    got = m.score(x32[:20])
    assert got.dtype == torch.float32
    want = Mahalanobis().fit(x32.double()).score(x32[:20].double())
    torch.testing.assert_close(got, want.float(), rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------- degenerate inputs


def test_fewer_samples_than_features():
    x = gaussian(5, 20, 0)
    with pytest.raises(ValueError, match="singular.*shrinkage"):
        Mahalanobis(shrinkage=0).fit(x)
    m = Mahalanobis().fit(x)
    assert 0 < m.shrinkage_ <= 1
    s = m.score(gaussian(8, 20, 1))
    assert torch.isfinite(s).all() and (s > 0).all()
    torch.testing.assert_close(torch.linalg.cholesky(m.covariance_), m._chol)


def test_constant_feature():
    x = gaussian(100, 3, 0)
    x = torch.cat([x, torch.full((100, 1), 7.0, dtype=torch.float64)], 1)
    with pytest.raises(ValueError, match="feature 3 is constant"):
        Mahalanobis(shrinkage=0).fit(x)
    m = Mahalanobis(shrinkage=0.05).fit(x)
    y = x[:5].clone()
    base = m.score(y)
    y[:, 3] += 1.0  # leaving the constant value is out of distribution
    assert torch.isfinite(base).all() and (m.score(y) > base).all()
    with pytest.raises(ValueError, match="all 2 features are constant"):
        Mahalanobis(shrinkage=0.5).fit(torch.ones(10, 2))


def test_duplicated_columns():
    x = gaussian(100, 3, 2)
    x = torch.cat([x, x[:, 1:2]], 1)
    with pytest.raises(ValueError, match="linear combination"):
        Mahalanobis(shrinkage=0).fit(x)
    s = Mahalanobis().fit(x).score(x)
    assert torch.isfinite(s).all()


@pytest.mark.parametrize("noise, rejected", [(1e-7, True), (1e-3, False)])
def test_nearly_singular_is_rejected_not_garbage(noise, rejected):
    x = gaussian(100, 3, 3)
    g = torch.Generator().manual_seed(4)
    # feature 3 = feature 0 + small independent noise: unexplained variance ~ noise^2 of its own
    x = torch.cat([x, x[:, :1] + noise * torch.randn(100, 1, generator=g, dtype=torch.float64)], 1)
    assert (noise**2 < PIVOT_RTOL) == rejected
    if rejected:
        with pytest.raises(ValueError, match="feature 3 is constant or a linear combination"):
            Mahalanobis(shrinkage=0).fit(x)
    else:
        want, _ = direct_distance(x, x[:10])
        np.testing.assert_allclose(Mahalanobis(shrinkage=0).fit(x).score(x[:10]).numpy(), want, rtol=1e-6)


def test_tiny_n():
    with pytest.raises(ValueError, match="at least 2 samples.*got 1"):
        Mahalanobis().fit(torch.randn(1, 3))
    x = torch.tensor([[0.0, 1.0, 2.0], [1.0, 3.0, 2.5]], dtype=torch.float64)
    # two points: every centered sample is +-v, Ledoit-Wolf sees no noise and picks 0 -> singular
    with pytest.raises(ValueError, match="too small here; pass a larger shrinkage"):
        Mahalanobis().fit(x)
    m = Mahalanobis(0.5).fit(x)
    want, _ = direct_distance(x, x, 0.5)
    np.testing.assert_allclose(m.score(x).numpy(), want, rtol=1e-12)


# ---------------------------------------------------------------- clear errors


def test_errors():
    x = torch.randn(20, 3)
    with pytest.raises(RuntimeError, match="not fitted"):
        Mahalanobis().score(x)
    with pytest.raises(RuntimeError, match="not fitted"):
        Mahalanobis().finalize()
    for bad in (torch.randn(5), torch.randn(2, 3, 4)):
        with pytest.raises(ValueError, match=r"\(N, D\)"):
            Mahalanobis().fit(bad)
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        Mahalanobis().fit_maps(x)
    m = Mahalanobis().fit(x)
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        m.score(torch.randn(3))
    with pytest.raises(ValueError, match="D=4 features per row but the scorer was fitted on D=3"):
        m.score(torch.randn(2, 4))
    with pytest.raises(ValueError, match="D=2"):
        m.partial_fit(torch.randn(2, 2))
    with pytest.raises(ValueError, match="D=5"):
        m.score_maps(torch.randn(1, 5, 2, 2))
    bad = x.clone()
    bad[0, 0], bad[3, 1], bad[4, 2] = float("nan"), float("inf"), -float("inf")
    with pytest.raises(ValueError, match="3 non-finite"):
        Mahalanobis().fit(bad)
    with pytest.raises(ValueError, match="3 non-finite"):
        m.score(bad)
    with pytest.raises(TypeError, match="floating-point"):
        Mahalanobis().fit(torch.ones(5, 2, dtype=torch.int64))
    with pytest.raises(TypeError, match="torch.Tensor"):
        Mahalanobis().fit(np.ones((5, 2)))
    for s in (-0.1, 1.5, "lw", True, None):
        with pytest.raises(ValueError, match="shrinkage"):
            Mahalanobis(s)
    with pytest.raises(ValueError, match="D >= 1"):
        Mahalanobis().fit(torch.zeros(4, 0))


def test_device_mismatch_is_an_error():
    m = Mahalanobis().fit(torch.randn(20, 3))
    with pytest.raises(ValueError, match="on meta but the scorer was fitted on cpu"):
        m.score(torch.randn(4, 3, device="meta"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_cuda_matches_cpu():
    x, y = gaussian(300, 8, 0, dtype=torch.float32), gaussian(50, 8, 1, dtype=torch.float32) * 2
    cpu = Mahalanobis().fit(x).score(y)
    m = Mahalanobis().fit(x.cuda())
    assert m.mean_.device.type == "cuda"
    got = m.score(y.cuda())
    assert got.device.type == "cuda" and got.dtype == torch.float32
    torch.testing.assert_close(got.cpu(), cpu, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="fitted on cuda"):
        m.score(y)


# ---------------------------------------------------------------- spearman, roc_auc, binned_rate

small_ints = st.lists(st.integers(-3, 3), min_size=2, max_size=40)


@SETTINGS
@given(data=st.data())
def test_spearman_matches_scipy(data):
    a = data.draw(small_ints)
    b = data.draw(st.lists(st.integers(-3, 3), min_size=len(a), max_size=len(a)))
    if len(set(a)) < 2 or len(set(b)) < 2:
        assert np.isnan(spearman(a, b))
    else:
        assert spearman(a, b) == pytest.approx(spearmanr(a, b).statistic, abs=1e-12)


def test_spearman_ties_and_types():
    np.testing.assert_array_equal(average_ranks(np.array([10.0, 20.0, 10.0, 30.0, 10.0])), [2, 4, 2, 5, 2])
    a = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    assert spearman(a, -a) == pytest.approx(-1.0)
    assert spearman(np.arange(5), np.arange(5) ** 3) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="same number"):
        spearman([1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match="1 non-finite"):
        spearman([1, 2, float("nan")], [1, 2, 3])


@SETTINGS
@given(data=st.data())
def test_roc_auc_matches_sklearn(data):
    labels = data.draw(st.lists(st.booleans(), min_size=2, max_size=40).filter(lambda b: 0 < sum(b) < len(b)))
    scores = data.draw(st.lists(st.integers(0, 4), min_size=len(labels), max_size=len(labels)))
    assert roc_auc(scores, labels) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)


def test_roc_auc_hand_examples_and_errors():
    assert roc_auc([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1]) == 1.0
    assert roc_auc(torch.tensor([0.9, 0.8, 0.2]), torch.tensor([False, False, True])) == 0.0
    assert roc_auc([1.0, 1.0, 1.0, 1.0], [0, 1, 0, 1]) == 0.5  # all ties count one half
    with pytest.raises(ValueError, match="both classes"):
        roc_auc([0.1, 0.2], [1, 1])
    with pytest.raises(ValueError, match="0/1"):
        roc_auc([0.1, 0.2], [0, 2])


def test_binned_rate_hand_example():
    scores = np.arange(10.0)  # quartile edges 0, 2.25, 4.5, 6.75, 9
    events = np.array([0, 0, 1, 0, 1, 1, 1, 1, 1, 1])
    edges, rate, count = binned_rate(scores, events, bins=4)
    np.testing.assert_allclose(edges, [0, 2.25, 4.5, 6.75, 9])
    np.testing.assert_array_equal(count, [3, 2, 2, 3])  # {0,1,2} {3,4} {5,6} {7,8,9}: max in last bin
    np.testing.assert_allclose(rate, [1 / 3, 1 / 2, 1, 1])
    edges, rate, count = binned_rate(np.arange(9.0), events[:9], bins=4)  # scores on the edges
    np.testing.assert_allclose(edges, [0, 2, 4, 6, 8])
    np.testing.assert_array_equal(count, [2, 2, 2, 3])  # [0, 2) [2, 4) [4, 6) [6, 8]
    np.testing.assert_allclose(rate, [0, 1 / 2, 1, 1])


def test_binned_rate_deciles_ties_and_tensors():
    g = torch.Generator().manual_seed(0)
    s = torch.rand(4, 25, 10, generator=g)
    ev = s > 0.5
    out = binned_rate(s, ev)  # deciles by default, any shape flattened
    assert out.edges.shape == (11,) and out.count.sum() == 1000 and (out.count == 100).all()
    assert np.all(np.diff(out.rate) >= 0) and out.rate[0] == 0 and out.rate[-1] == 1
    edges, rate, count = binned_rate([0, 0, 0, 0, 0, 0, 1, 2], [1, 0, 1, 0, 1, 0, 1, 1], bins=4)
    np.testing.assert_allclose(edges, [0, 0.25, 2])  # tied quantiles merged
    np.testing.assert_array_equal(count, [6, 2])
    np.testing.assert_allclose(rate, [0.5, 1.0])
    one = binned_rate([3.0, 3.0, 3.0], [1, 0, 0])
    np.testing.assert_array_equal(one.count, [3])
    with pytest.raises(ValueError, match="bins"):
        binned_rate([1.0, 2.0], [0, 1], bins=0)
