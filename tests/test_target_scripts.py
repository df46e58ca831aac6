"""The measuring scripts benchmarks/sr_target.py and benchmarks/ll_target.py on tiny untrained flows:
every figure they summarise is computed from the rows they measured (smoke tests, a few seconds)."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import load_script

from minflow.lowlight import LLFlow
from minflow.sr import SRFlow

TINY = dict(levels=2, flow_steps=1, hidden=8, nf=8, blocks=1, gc=4, cond_channels=8)


def test_sr_target_summary_follows_its_rows():
    sr_target = load_script("sr_target")
    torch.manual_seed(0)
    model = SRFlow(**TINY, target="residual").eval()
    g = torch.Generator().manual_seed(1)
    photos = {"a": torch.rand(3, 40, 48, generator=g), "b": torch.rand(3, 36, 36, generator=g)}
    rows = sr_target.in_distribution(model, photos, samples=2, temperature=0.7)
    assert set(rows) == {"a", "b"} and all(len(r["psnr_samples"]) == 2 for r in rows.values())
    s = sr_target.summarise(rows)
    gains = [r["psnr_t0"] - r["psnr_bicubic"] for r in rows.values()]
    assert s["t0_gain_mean"] == pytest.approx(sum(gains) / 2) and s["t0_gain_worst"] == min(gains)
    k = sum(sum(r["artifact"]) for r in rows.values())
    assert s["artifact_samples"] == [k, 4] and s["artifact_interval"][0] <= k / 4 <= s["artifact_interval"][1]
    assert s["explosions"][1] == 4 and s["explosions"][0] <= k and 0 <= s["artifact_pixel_share"] <= 1
    # an exploded sample counts as an artifact and leaves the clean-sample figures
    rows["a"]["artifact"] = [True, True]
    rows["b"]["artifact"] = [True, True]
    s = sr_target.summarise(rows)
    assert s["artifact_samples"] == [4, 4] and math.isnan(s["sample_gain_mean"]) and math.isnan(s["lr_psnr_worst"])


def test_ll_target_summary_follows_its_rows():
    ll_target = load_script("ll_target")
    torch.manual_seed(0)
    model = LLFlow(**TINY).eval()
    cases = ll_target.inputs(("coffee", "china"), 16, 2, model.lr_multiple)
    assert len(cases) == 4 and cases[0]["dark"].mean() < cases[0]["clean"].mean()
    rows = ll_target.measure(model, cases, samples=2, temperature=0.9)
    s = ll_target.summarise(rows, 2)
    assert set(s["psnr_mean"]) == set(ll_target.METHODS) and s["inputs"] == 4
    for k in ll_target.METHODS:
        assert s["psnr_worst"][k] == min(r["psnr"][k] for r in rows) <= s["psnr_mean"][k]
    assert s["sample_artifacts"][:2] == [sum(r["sample_artifacts"] for r in rows), 8]
