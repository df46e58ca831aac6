"""Smoke test of benchmarks/ll_ood.py on tiny crops: it runs, its counts add up, its self-check agrees."""

from __future__ import annotations

import json
import math

import pytest
from helpers import load_script


@pytest.fixture(scope="module")
def ll_ood():
    return load_script("ll_ood")


def test_tiny_run(ll_ood, tmp_path, capsys):
    path = tmp_path / "out.json"
    args = ["ll_affine_k3", "--size", "16", "--seeds", "1", "--samples", "1", "--fit-batches", "1", "--json", str(path)]
    out = ll_ood.main(args)
    assert "ll_affine_k3" in capsys.readouterr().out
    assert json.loads(path.read_text()).keys() == out.keys() == {"ll_affine_k3"}
    rows, s = out["ll_affine_k3"]["rows"], out["ll_affine_k3"]["summary"]
    assert len(rows) == s["inputs"] == 17 * (1 + len(ll_ood.KINDS))
    assert {r["half"] for r in rows} == {"A", "B"} and {r["kind"] for r in rows} == {"train", *ll_ood.KINDS}
    assert s["expl."] == sum(r["expl."] for r in rows) == len(s["expl_ranks_l1_mean"])
    assert all(r["art."] or not (r["expl."] or r["art. T"]) for r in rows)  # explosions and sample artifacts count
    assert sum(v["n"] for v in s["kinds"].values()) == len(rows)
    for r in rows:
        assert set(r["score"]) == set(s["auc"])
        assert r["score"]["-log s, T=0 injectors"] <= r["score"]["-log s, T=0 pass"]  # injectors: some of the layers
        if not r["expl."]:  # the forward pass on the T = 0 output meets the scales its inverse used
            assert math.isclose(r["min_scale_self_check"], r["min_scale_t0"], rel_tol=1e-3)
    lit = [r["dark_mean"] for r in rows if r["kind"] == "lit"]
    darker = [r["dark_mean"] for r in rows if r["kind"] == "darker"]
    assert min(lit) > max(darker)  # the kinds are what they say


def test_gain_to(ll_ood):
    import torch

    dark = torch.rand(2, 3, 8, 8) * torch.tensor([0.1, 0.02]).view(2, 1, 1, 1)
    out = ll_ood.gain_to(dark, 0.05)
    assert torch.allclose(out.mean((1, 2, 3)), torch.full((2,), 0.05), atol=1e-6)
