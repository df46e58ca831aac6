"""Mahalanobis out-of-distribution score (Lee et al., 2018), and the statistics set against it.

Fit a mean mu and covariance Sigma to in-distribution features; a feature vector x scores

    d(x) = sqrt((x - mu)^T Sigma^{-1} (x - mu)) = ||L^{-1} (x - mu)||,   Sigma = L L^T,

with L the Cholesky factor and one triangular solve, never an explicit inverse. Large d means far
from the training features. All statistics are kept in float64 on the device of the features.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch

from .utils import check_tensor

__all__ = [
    "PIVOT_RTOL",
    "BinnedRate",
    "Mahalanobis",
    "average_ranks",
    "binned_rate",
    "maps_to_rows",
    "roc_auc",
    "spearman",
]

ArrayLike = torch.Tensor | np.ndarray | Sequence[float]

PIVOT_RTOL = 1e-10
"""Singularity rule: the covariance counts as singular when, for some feature i, the variance left
after regressing it on features 0..i-1 (the squared Cholesky pivot L_ii^2) is at most PIVOT_RTOL
times its own variance Sigma_ii, i.e. feature i is (to float64 accuracy) constant or a linear
combination of others. Its distances would be noise amplified by > 1e5, so we raise instead."""
_NOT_FITTED = "Mahalanobis scorer is not fitted: call fit() or partial_fit() first"


def _check_finite(x: torch.Tensor, name: str) -> None:
    bad = int((~torch.isfinite(x)).sum())
    if bad:
        raise ValueError(f"{name} contain {bad} non-finite value(s) (NaN or inf) out of {x.numel()}")


def maps_to_rows(maps: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) feature maps -> (B*H*W, C) rows: every spatial location is one C-vector."""
    return maps.permute(0, 2, 3, 1).reshape(-1, maps.shape[1])


class Mahalanobis:
    """Single-Gaussian Mahalanobis scorer with shrinkage and a streaming fit.

    The covariance is shrunk toward a multiple of the identity, which keeps it invertible when
    there are about as many (or fewer) samples N as features D:

        Sigma = (1 - a) S + a (tr(S) / D) I,   S = (1/N) sum_k (x_k - mean)(x_k - mean)^T.

    `shrinkage` is a in [0, 1] or "auto", the Ledoit-Wolf (2004) estimate. With y_k = x_k - mean
    and m = tr(S)/D it is a = min(b2, d2) / d2 (a = 0 when d2 = 0), where

        d2 = ||S - m I||_F^2 / D                                  (spread of S around m I)
        b2 = (1 / (N^2 D)) sum_k ||y_k y_k^T - S||_F^2
           = ((1/N) sum_k ||y_k||^4 - ||S||_F^2) / (N D)          (noise in S itself),

    the same estimate as sklearn.covariance.LedoitWolf. `fit(x)` equals `partial_fit` over any
    split of x into chunks, then `finalize()`; `score` finalizes by itself when data is pending.
    The streaming sums are taken around the first chunk's mean (the shifted-data algorithm), so
    a large common offset does not cancel catastrophically. Fitted (finalized on first access):
    mean_ (D,), covariance_ (D, D) shrunk, shrinkage_ (the a used); n_ counts samples seen.
    """

    def __init__(self, shrinkage: float | str = "auto") -> None:
        number = isinstance(shrinkage, (int, float)) and not isinstance(shrinkage, bool)
        if not (shrinkage == "auto" or (number and 0 <= shrinkage <= 1)):
            raise ValueError(f"shrinkage must be a number in [0, 1] or 'auto', got {shrinkage!r}")
        self.shrinkage = shrinkage
        self.reset()

    def reset(self) -> Mahalanobis:
        """Forget everything fitted or accumulated."""
        self.n_ = 0
        self._ref = self._s1 = self._s2 = self._s3 = self._s4 = None
        self._mean = self._cov = self._chol = self._a = None
        return self

    def _fitted(self) -> Mahalanobis:
        if self._ref is None:
            raise RuntimeError(_NOT_FITTED)
        return self if self._chol is not None else self.finalize()

    mean_ = property(lambda self: self._fitted()._mean, doc="(D,) float64 mean of the features")
    covariance_ = property(lambda self: self._fitted()._cov, doc="(D, D) float64 shrunk covariance")
    shrinkage_ = property(lambda self: self._fitted()._a, doc="the shrinkage coefficient a used")

    def fit(self, features: torch.Tensor) -> Mahalanobis:
        """Fit mean and shrunk covariance to (N, D) features; returns self."""
        return self.reset().partial_fit(features).finalize()

    def partial_fit(self, features: torch.Tensor) -> Mahalanobis:
        """Add an (n, D) chunk to the running float64 sums of z, z z^T, ||z||^2 z and ||z||^4,
        z = x - (first chunk's mean). Returns self; the fit is finalized lazily."""
        check_tensor(features, "features", (2,), floating=True, shape="(N, D)")
        if self._ref is not None:
            self._check_like_fit(features, "features")
        _check_finite(features, "features")
        x = features.detach().to(torch.float64)
        if x.shape[0] == 0:
            return self
        if self._ref is None:
            if x.shape[1] == 0:
                raise ValueError("features must have at least one column (D >= 1)")
            d = x.shape[1]
            self._ref = x.mean(0)
            self._s1, self._s3 = torch.zeros_like(self._ref), torch.zeros_like(self._ref)
            self._s2, self._s4 = x.new_zeros(d, d), x.new_zeros(())
        z = x - self._ref
        sq = (z * z).sum(1)
        self.n_ += z.shape[0]
        self._s1 += z.sum(0)
        self._s2 += z.T @ z
        self._s3 += sq @ z
        self._s4 += (sq * sq).sum()
        self._chol = None  # pending data: refit on next finalize/score
        return self

    def finalize(self) -> Mahalanobis:
        """Turn the running sums into mean_, covariance_ and its Cholesky factor; returns self."""
        if self._ref is None:
            raise RuntimeError(_NOT_FITTED)
        n, d = self.n_, self._s1.numel()
        if n < 2:
            raise ValueError(f"need at least 2 samples to estimate a covariance, got {n}")
        m = self._s1 / n
        cov = (self._s2 - n * torch.outer(m, m)) / n
        cov = (cov + cov.T) / 2
        mu = float(torch.trace(cov)) / d
        if mu <= 0:
            raise ValueError(f"all {d} features are constant over the {n} samples: no covariance to fit")
        a = self._ledoit_wolf(cov, m, mu) if self.shrinkage == "auto" else float(self.shrinkage)
        cov = (1 - a) * cov + a * mu * torch.eye(d, dtype=cov.dtype, device=cov.device)
        chol, info = torch.linalg.cholesky_ex(cov)
        small = (chol.diagonal() ** 2 <= PIVOT_RTOL * cov.diagonal()).nonzero()
        if int(info) > 0 or len(small):
            i = int(info) - 1 if int(info) > 0 else int(small[0])
            hint = "Ledoit-Wolf's choice is too small here; pass" if self.shrinkage == "auto" else "use"
            raise ValueError(
                f"covariance is singular (shrinkage {a:.3g}, N={n} samples, D={d} features): feature {i} "
                f"is constant or a linear combination of others; {hint} a larger shrinkage, e.g. 0.1"
            )
        self._mean, self._cov, self._a, self._chol = self._ref + m, cov, a, chol
        return self

    def _ledoit_wolf(self, cov: torch.Tensor, m: torch.Tensor, mu: float) -> float:
        # sum_k ||y_k||^4 from the shifted sums, y = z - m:
        # ||y||^2 = ||z||^2 - 2 m.z + ||m||^2, squared and summed over k.
        n, d, c = self.n_, m.numel(), float(m @ m)
        sum4 = self._s4 - 4 * (m @ self._s3) + 4 * (m @ self._s2 @ m) + 2 * c * torch.trace(self._s2) - 3 * n * c**2
        fro2 = float((cov * cov).sum())
        d2 = (fro2 - d * mu**2) / d
        b2 = min(max((float(sum4) / n - fro2) / (n * d), 0.0), d2)
        return 0.0 if d2 <= 0 else b2 / d2

    def _check_like_fit(self, x: torch.Tensor, name: str) -> None:
        d = self._ref.numel()
        if x.shape[-1] != d:
            raise ValueError(f"{name} have D={x.shape[-1]} features per row but the scorer was fitted on D={d}")
        if x.device != self._ref.device:
            raise ValueError(f"{name} are on {x.device} but the scorer was fitted on {self._ref.device}; move one")

    def score(self, features: torch.Tensor) -> torch.Tensor:
        """Mahalanobis distance (not squared) of each row of (N, D) features: shape (N,), in the
        input's dtype, on its device (which must be the fit's device)."""
        check_tensor(features, "features", (2,), floating=True, shape="(N, D)")
        self._fitted()
        self._check_like_fit(features, "features")
        _check_finite(features, "features")
        y = features.to(torch.float64) - self._mean
        z = torch.linalg.solve_triangular(self._chol, y.T, upper=False)  # L z = y, column per row
        return z.norm(dim=0).to(features.dtype)

    def fit_maps(self, maps: torch.Tensor) -> Mahalanobis:
        """Fit on (B, C, H, W) feature maps, each spatial location a C-vector."""
        check_tensor(maps, "maps", (4,), floating=True, shape="(B, C, H, W)")
        return self.fit(maps_to_rows(maps))

    def partial_fit_maps(self, maps: torch.Tensor) -> Mahalanobis:
        """Streaming counterpart of fit_maps."""
        check_tensor(maps, "maps", (4,), floating=True, shape="(B, C, H, W)")
        return self.partial_fit(maps_to_rows(maps))

    def score_maps(self, maps: torch.Tensor) -> torch.Tensor:
        """Per-pixel distances of (B, C, H, W) feature maps: shape (B, H, W)."""
        check_tensor(maps, "maps", (4,), floating=True, shape="(B, C, H, W)")
        b, _, h, w = maps.shape
        return self.score(maps_to_rows(maps)).reshape(b, h, w)


def _vector(x: ArrayLike, name: str) -> np.ndarray:
    """Any tensor/array/sequence -> flat float64 numpy array, finite."""
    a = x.detach().cpu().double().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, dtype=np.float64)
    a = a.ravel()
    bad = int((~np.isfinite(a)).sum())
    if bad:
        raise ValueError(f"{name} contain {bad} non-finite value(s) (NaN or inf) out of {a.size}")
    return a


def _pair(a: ArrayLike, b: ArrayLike, na: str, nb: str) -> tuple[np.ndarray, np.ndarray]:
    x, y = _vector(a, na), _vector(b, nb)
    if x.size != y.size:
        raise ValueError(f"{na} and {nb} must have the same number of elements, got {x.size} and {y.size}")
    if x.size < 2:
        raise ValueError(f"need at least 2 values, got {x.size}")
    return x, y


def average_ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n of a 1-D array; a group of ties shares the mean of the ranks it spans."""
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    last = np.cumsum(counts)  # rank of the last member of each group of equal values
    return (last - (counts - 1) / 2)[inverse.ravel()]


def spearman(a: ArrayLike, b: ArrayLike) -> float:
    """Spearman rank correlation: the Pearson correlation of average ranks. Inputs of any shape
    are flattened. NaN when either input is constant (no ranking to correlate)."""
    x, y = _pair(a, b, "a", "b")
    rx, ry = average_ranks(x), average_ranks(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denom = np.sqrt((rx @ rx) * (ry @ ry))
    return float("nan") if denom == 0 else float(rx @ ry / denom)


def roc_auc(scores: ArrayLike, labels: ArrayLike) -> float:
    """Area under the ROC curve for `labels` (0/1 or bool, 1 = positive) ranked by `scores`, in
    the Mann-Whitney form P(score_pos > score_neg) + P(tie) / 2:

        AUC = (sum of the positives' average ranks - n1 (n1 + 1) / 2) / (n1 n0).
    """
    s, y = _pair(scores, labels, "scores", "labels")
    if not np.isin(y, (0.0, 1.0)).all():
        raise ValueError("labels must be 0/1 or boolean")
    n1 = int(y.sum())
    n0 = y.size - n1
    if n1 == 0 or n0 == 0:
        raise ValueError(f"roc_auc needs both classes, got {n1} positive and {n0} negative labels")
    return float((average_ranks(s)[y == 1].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


class BinnedRate(NamedTuple):
    edges: np.ndarray  # (K + 1,) increasing bin edges
    rate: np.ndarray  # (K,) mean of `events` per bin (NaN for an empty bin)
    count: np.ndarray  # (K,) number of values per bin


def binned_rate(scores: ArrayLike, events: ArrayLike, bins: int = 10) -> BinnedRate:
    """Event rate against score in quantile bins (deciles by default).

    Edges are the quantiles of `scores` at 0, 1/bins, ..., 1; bin k holds edges[k] <= s <
    edges[k+1], the last one also s == edges[-1]. Equal edges (many tied scores) are merged, so
    fewer than `bins` bins may come back. `events` are 0/1 (or any per-item value to average),
    flattened alongside `scores`, e.g. per-pixel scores and artifact masks.
    """
    if not isinstance(bins, (int, np.integer)) or bins < 1:
        raise ValueError(f"bins must be a positive integer, got {bins!r}")
    s, e = _pair(scores, events, "scores", "events")
    edges = np.unique(np.quantile(s, np.linspace(0, 1, bins + 1)))
    k = max(edges.size - 1, 1)
    idx = np.clip(np.searchsorted(edges, s, side="right") - 1, 0, k - 1)
    count = np.bincount(idx, minlength=k)
    total = np.bincount(idx, weights=e, minlength=k)
    rate = np.where(count > 0, total / np.maximum(count, 1), np.nan)
    if edges.size == 1:  # every score equal: one bin [s, s]
        edges = np.repeat(edges, 2)
    return BinnedRate(edges, rate, count)
