"""Audit a conditional flow before trusting its samples: slopes, an amplification bound, risk, artifact odds.

    report = minflow.audit(flow, conds, reference=train_conds)   # toy, SR, low-light or your own flow
    report.to_dict(); report.plot()

What the report holds, for the inputs `conds` at one temperature T:

- **Per layer, the smallest slope used.** Every coupling and injector records the smallest forward
  slope s of its element-wise map over all samples (`minflow.recording`); sampling divides by it.
- **An amplification bound.** The sampling map x = f^{-1}(z) is a chain of layers. Holding each
  coupling's parameters fixed, a layer's Jacobian is block-diagonal with norm at most

      ActNorm: max_c exp(-log s_c),   1x1 conv: ||W^{-1}||_2 = 1 / sigma_min(W),
      Injector: 1 / s_min,   Coupling: max(1, 1 / s_min),   Squeeze, prior mean, Offset: 1,

  so a perturbation of z is amplified by at most the product of these factors, in log10 as
  ``log10_bound``. It is a bound on the diagonal blocks only: the coupling's path through its
  conditioner (x_a changes theta) and a split's drawn half (its mean and scale read the kept half)
  add terms it does not cover; those layers are named in ``not_covered``. A product of 1 / s over
  dozens of layers is far larger than what a sample meets; it says how bad it *could* get.
- **The risk map.** The Mahalanobis distance of the conditioning features the chapters score
  (`apply.risk_features`; the condition itself for a flow without an encoder, such as the toy).
- **Predicted against measured artifact rate.** On `reference` inputs (not the audited ones) the
  artifact events of samples are set against the risk score, and a logistic curve
  P(artifact | d) = sigmoid(a + b log d) is fitted (`Calibration`, drawn with the binned rates in
  `plot`). The audited inputs' predicted rate is the mean of P over their pixels; the measured
  rate is the share of (sample, pixel) pairs with an artifact. An image pixel of the score grid
  has an artifact in a sample when any output pixel it covers does (`metrics.artifact_mask`);
  a vector sample (the toy) when `artifact(x, cond)` says so (default: non-finite or
  max |x| > `metrics.EXPLOSION`). ``auc``: the ROC-AUC of the risk score for those (sample,
  pixel) events over the audited inputs (None when all or none are artifacts).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import apply, diagnostics, metrics, ood
from .couplings import Coupling, ElementwiseLayer, Injector
from .transforms import ActNorm, Features, InvConv1x1, Offset, Split, Squeeze

__all__ = ["AuditReport", "Calibration", "audit", "layer_factor"]


@dataclass
class Calibration:
    """P(artifact | d) = sigmoid(a + b log d), fitted by Newton's method on reference (score, event) pairs;
    with the binned reference rates (`ood.binned_rate`) it was fitted beside."""

    a: float
    b: float
    edges: list[float] = field(default_factory=list)
    rates: list[float] = field(default_factory=list)
    pairs: int = 0
    events: int = 0

    def __call__(self, scores: Tensor | np.ndarray) -> np.ndarray:
        d = np.maximum(np.asarray(scores, np.float64), 1e-12)
        return 1 / (1 + np.exp(-(self.a + self.b * np.log(d))))

    @classmethod
    def fit(cls, scores: np.ndarray, events: np.ndarray, ridge: float = 1.0, bins: int = 10) -> Calibration:
        """Maximum likelihood on the standardised log score, with a ridge penalty ridge * b'^2 / 2 on its
        slope b' (the weight of one data point: negligible for many points, finite for separable data)."""
        s, e = np.asarray(scores, np.float64).ravel(), np.asarray(events, np.float64).ravel()
        if s.size != e.size or s.size < 2:
            raise ValueError(f"need as many events as scores (at least 2), got {s.size} and {e.size}")
        x = np.log(np.maximum(s, 1e-12))
        mu, sd = x.mean(), max(x.std(), 1e-12)
        u = (x - mu) / sd
        p0 = min(max(e.mean(), 1e-6), 1 - 1e-6)
        w = np.array([math.log(p0 / (1 - p0)), 0.0])
        design = np.stack([np.ones_like(u), u], 1)
        for _ in range(50):
            p = 1 / (1 + np.exp(-(design @ w)))
            grad = design.T @ (e - p) - np.array([0.0, ridge * w[1]])
            hess = (design * (p * (1 - p))[:, None]).T @ design + np.diag([1e-9, ridge])
            step = np.linalg.solve(hess, grad)
            w += step
            if np.abs(step).max() < 1e-10:
                break
        b = w[1] / sd
        binned = ood.binned_rate(s, e, bins)
        return cls(
            float(w[0] - b * mu), float(b), binned.edges.tolist(), binned.rate.tolist(), int(s.size), int(e.sum())
        )


@dataclass
class AuditReport:
    """What `audit` found; `to_dict()` for JSON, `plot()` for a figure."""

    layers: list[dict]
    log10_bound: float
    not_covered: list[str]
    risk: list[np.ndarray]
    predicted_rate: float | None
    measured_rate: float
    pixel_artifact_rate: float
    per_input: list[dict]
    calibration: Calibration | None
    settings: dict
    auc: float | None = None

    @property
    def amplification_bound(self) -> float:
        """10 ** log10_bound (inf when that overflows a float)."""
        return 10**self.log10_bound if self.log10_bound < 308 else math.inf

    @property
    def smallest_slope(self) -> float | None:
        slopes = [r["min_slope"] for r in self.layers if r["min_slope"] is not None]
        return min(slopes) if slopes else None

    def to_dict(self) -> dict:
        """A JSON-ready dict (risk maps as nested lists)."""
        return {
            "layers": self.layers,
            "log10_bound": self.log10_bound,
            "amplification_bound": self.amplification_bound,
            "bound_note": "product of the diagonal-block norms of the sampling map's layers; "
            "not covered: the layers listed in not_covered",
            "not_covered": self.not_covered,
            "smallest_slope": self.smallest_slope,
            "risk": [r.tolist() for r in self.risk],
            "predicted_rate": self.predicted_rate,
            "measured_rate": self.measured_rate,
            "pixel_artifact_rate": self.pixel_artifact_rate,
            "auc": self.auc,
            "per_input": self.per_input,
            "calibration": None if self.calibration is None else asdict(self.calibration),
            "settings": self.settings,
        }

    def plot(self, index: int = 0):
        """Per-layer slopes and the running bound; the risk of input `index`; the calibration curve
        with the reference's binned rates; predicted against measured rate per audited input."""
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 4, figsize=(19, 4.2))
        ax = axes[0]
        pos = np.arange(len(self.layers))
        amp = [math.log10(max(r["factor"], 1e-300)) for r in self.layers]
        ax.bar(pos, amp, color="tab:red", alpha=0.7, label="log10 of the layer's factor")
        ax.plot(pos, np.cumsum(amp), "k-", lw=1.5, label=f"running log10 bound (total {self.log10_bound:.1f})")
        ax.set(title="amplification, layer by layer (sampling order)", xlabel="layer (sampling order)",
               ylabel="log10")  # fmt: skip
        ax.legend(fontsize=9)
        ax = axes[1]
        r = self.risk[index]
        if r.ndim == 2:
            im = ax.imshow(r, cmap="magma")
            fig.colorbar(im, ax=ax, fraction=0.046)
            ax.set(title=f"risk map of input {index}", xticks=[], yticks=[])
        else:
            all_r = np.concatenate([np.atleast_1d(v) for v in self.risk])
            ax.hist(np.log10(all_r), bins=30, color="tab:purple")
            ax.set(title="risk scores of the inputs", xlabel="log10 Mahalanobis score", ylabel="inputs")
        ax = axes[2]
        cal = self.calibration
        if cal is not None:
            e = np.asarray(cal.edges)
            centres = np.sqrt(np.maximum(e[:-1], 1e-12) * np.maximum(e[1:], 1e-12))
            ax.semilogx(centres, cal.rates, "o", color="tab:blue", label="reference, binned (deciles)")
            grid = np.geomspace(max(e[0], 1e-3), max(e[-1], e[0] * 10, 1e-2), 200)
            ax.semilogx(grid, cal(grid), "-", color="tab:orange", label=f"logistic fit (b = {cal.b:.2f})")
            ax.legend(fontsize=9)
        ax.set(title="calibration: P(artifact) against the risk score", xlabel="risk score", ylabel="P(artifact)")
        ax = axes[3]
        pred = [p["predicted_rate"] for p in self.per_input]
        meas = [p["measured_rate"] for p in self.per_input]
        if pred and pred[0] is not None:
            ax.plot(pred, meas, "o", color="tab:green")
            top = max(max(pred), max(meas), 1e-3) * 1.05
            ax.plot([0, top], [0, top], "k--", lw=1)
        ax.set(title=f"audited inputs: predicted {_fmt(self.predicted_rate)}, measured {self.measured_rate:.3f}",
               xlabel="predicted artifact rate", ylabel="measured artifact rate")  # fmt: skip
        fig.tight_layout()
        return fig


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def layer_factor(layer: nn.Module, min_slope: float | None) -> tuple[float, bool]:
    """(norm bound of the layer's sampling map with its parameters fixed, covered?) as in the module docstring."""
    with torch.no_grad():
        if isinstance(layer, InvConv1x1):
            w, _ = layer.weight_and_logdet()
            return 1 / float(torch.linalg.svdvals(w.double()).min()), True
        if isinstance(layer, ActNorm):
            return float((-layer.logs.double()).exp().max()), True
        if isinstance(layer, Injector):
            return (1 / min_slope if min_slope else 1.0), min_slope is not None
        if isinstance(layer, (Coupling, ElementwiseLayer)):  # x_b's block only: the path through x_a is not covered
            return (max(1.0, 1 / min_slope) if min_slope else 1.0), False
        if isinstance(layer, (Squeeze, Offset)) or type(layer).__name__ == "PriorMean":
            return 1.0, True
        if isinstance(layer, Split):
            return 1.0, False
    return 1.0, False


def _vector_artifact(x: Tensor, cond: Tensor) -> Tensor:
    """A vector sample's artifact: `metrics.artifact_report`'s explosion flag, each sample a 1x1 image."""
    return metrics.artifact_report(x.reshape(x.shape[0], -1, 1, 1))["explosion"]


@torch.no_grad()
def _measure(flow, conds, temperature, samples, scorer, artifact, gen) -> tuple[list, list, dict, float]:
    """Per input: (scores on the score grid, events (samples, grid)); the smallest slope per layer; pixel rate."""
    scores, events, slopes, pixel = [], [], {}, []
    for k in range(conds.shape[0]):
        cond = conds[k : k + 1]
        if cond.dim() == 4:
            feats = flow.condition(cond)
            maps = feats[apply.feature_key(feats, tuple(cond.shape[-2:]))] if isinstance(feats, Features) else feats
            score = scorer.score_maps(maps)[0]
            x, used, _ = apply.sampling_pass(flow, feats, samples, temperature, gen)
            mask = metrics.artifact_mask(x)
            block = mask.shape[-1] // score.shape[-1]
            ev = F.max_pool2d(mask.float(), block).bool() if block > 1 else mask
            pixel.append(mask.double().mean().item())
        else:
            score = scorer.score_maps(cond.double()[..., None, None])[0, 0, 0].reshape(1)
            rep = cond.expand(samples, *cond.shape[1:]).contiguous()
            with diagnostics.recording() as rec:
                x = flow.sample(rep, temperature=temperature, generator=gen)
            used = apply.smallest_slopes(flow, rec)
            ev = artifact(x, rep).reshape(samples, 1)
            pixel.append(ev.double().mean().item())
        for i, s in used.items():
            slopes[i] = min(slopes.get(i, math.inf), s)
        scores.append(score.double().cpu())
        events.append(ev.cpu())
    return scores, events, slopes, float(np.mean(pixel))


class _VectorScorer:
    """`ood.Mahalanobis` on condition vectors, shaped like `RiskStats.score_maps` for (B, D, 1, 1) maps."""

    def __init__(self, fitted: ood.Mahalanobis):
        self.fitted = fitted

    def score_maps(self, maps: Tensor) -> Tensor:
        return self.fitted.score_maps(maps.to(self.fitted.mean_.device, torch.float64))


def _default_scorer(flow, reference):
    manifest = getattr(flow, "manifest", None)
    if manifest is not None and reference is None:
        return apply.load_ood_stats(manifest["name"]).to(next(flow.parameters()).device)
    if reference is None:
        raise ValueError("audit needs risk statistics: pass stats=, or reference= conditions to fit them on")
    with torch.no_grad():
        if reference.dim() == 4:
            feats = flow.condition(reference)
            maps = (
                feats[apply.feature_key(feats, tuple(reference.shape[-2:]))] if isinstance(feats, Features) else feats
            )
            return apply.RiskStats.from_scorer(ood.Mahalanobis().fit_maps(maps))
        return _VectorScorer(ood.Mahalanobis().fit(reference.double()))


def audit(
    flow: nn.Module,
    conds: Tensor,
    temperature: float = 0.8,
    samples: int = 8,
    stats=None,
    reference: Tensor | None = None,
    calibration_conds: Tensor | None = None,
    calibration: Calibration | None = None,
    artifact: Callable[[Tensor, Tensor], Tensor] | None = None,
    seed: int = 0,
) -> AuditReport:
    """Audit `flow` (a `ConditionalFlow`: toy, SR, low-light or one of your own) on conditions `conds`
    ((B, D) vectors or (B, C, h, w) images) at `temperature`, `samples` samples each.

    Risk statistics: `stats` (an `apply.RiskStats`, or anything with ``score_maps``), else fitted on
    the `reference` conditions (training conditions), else the statistics shipped with a loaded
    checkpoint. Calibration: `calibration`, else fitted on samples for `calibration_conds` (inputs
    that are not among `conds`), else none (``predicted_rate`` None). `artifact(x, cond)` -> bool
    per sample, for vector flows (default: non-finite or max |x| > 1e3).
    """
    if not isinstance(conds, Tensor) or conds.dim() not in (2, 4) or conds.shape[0] < 1:
        raise ValueError(
            f"conds must be a (B, D) or (B, C, h, w) tensor with B >= 1, got {getattr(conds, 'shape', conds)}"
        )
    param = next(flow.parameters())
    conds = conds.to(param.device, param.dtype)
    scorer = stats if stats is not None else _default_scorer(flow, None if reference is None else reference.to(conds))
    artifact = artifact or _vector_artifact
    gen = torch.Generator().manual_seed(seed)
    scores, events, slopes, pixel_rate = _measure(flow, conds, temperature, samples, scorer, artifact, gen)
    if calibration is None and calibration_conds is not None:
        cgen = torch.Generator().manual_seed(seed + 1)
        cs, ce, _, _ = _measure(flow, calibration_conds.to(conds), temperature, samples, scorer, artifact, cgen)
        s_rep = np.concatenate([s.flatten().repeat(e.shape[0]).numpy() for s, e in zip(cs, ce)])
        e_all = np.concatenate([e.flatten().numpy() for e in ce])
        calibration = Calibration.fit(s_rep, e_all)
    layers, log10_bound, not_covered = [], 0.0, []
    for i in reversed(range(len(flow.layers))):
        layer = flow.layers[i]
        s = slopes.get(i)
        factor, covered = layer_factor(layer, s)
        log10_bound += math.log10(factor)
        if not covered:
            not_covered.append(f"{i}:{type(layer).__name__}")
        layers.append({"index": i, "name": type(layer).__name__, "min_slope": s, "factor": factor})
    per_input = []
    for s, e in zip(scores, events):
        pred = float(calibration(s.numpy()).mean()) if calibration is not None else None
        per_input.append({"risk_mean": float(s.mean()), "risk_max": float(s.max()), "predicted_rate": pred,
                          "measured_rate": float(e.double().mean())})  # fmt: skip
    predicted = float(np.mean([p["predicted_rate"] for p in per_input])) if calibration is not None else None
    measured = float(np.mean([p["measured_rate"] for p in per_input]))
    risk = [s.numpy() if s.dim() == 2 else s.numpy().reshape(()) for s in scores]
    s_rep = np.concatenate([s.flatten().repeat(e.shape[0]).numpy() for s, e in zip(scores, events)])
    e_all = np.concatenate([e.flatten().numpy() for e in events])
    auc = ood.roc_auc(s_rep, e_all) if 0 < e_all.sum() < e_all.size else None
    settings = {"temperature": temperature, "samples": samples, "seed": seed, "inputs": int(conds.shape[0]),
                "calibration_inputs": 0 if calibration_conds is None else int(calibration_conds.shape[0])}  # fmt: skip
    return AuditReport(layers, log10_bound, not_covered, risk, predicted, measured, pixel_rate, per_input,
                       calibration, settings, auc)  # fmt: skip
