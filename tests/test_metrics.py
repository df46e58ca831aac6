"""minflow.metrics: PSNR / SSIM, LR consistency, diversity and the artifact criterion on hand-made images."""

from __future__ import annotations

import math
import re

import pytest
import torch

import minflow as mf
from minflow import metrics
from minflow.data import bicubic_down, bicubic_up
from minflow.metrics import artifact_mask, artifact_report, diversity, lr_psnr, psnr, ssim


def image(seed: int = 0, size: int = 32) -> torch.Tensor:
    return torch.rand(3, size, size, generator=torch.Generator().manual_seed(seed))


def test_psnr_known_values():
    x = torch.zeros(3, 8, 8)
    assert psnr(x, x) == math.inf
    assert psnr(x, x + 0.1) == pytest.approx(20.0)  # MSE 0.01
    assert psnr(x, x + 0.01) == pytest.approx(40.0)
    y = x.clone()
    y[:, 0, :] = 1.0  # the border row differs: shaving it leaves identical images
    assert psnr(x, y) < 20 and psnr(x, y, shave=1) == math.inf


def test_psnr_of_non_finite_is_nan_not_inf():
    x = image()
    y = x.clone()
    y[0, 3, 3] = math.nan
    assert math.isnan(psnr(x, y))
    y[0, 3, 3] = math.inf
    assert psnr(x, y) == -math.inf  # never a perfect score


def test_ssim_identical_is_one_and_noise_lowers_it():
    x = image(size=40)
    assert ssim(x, x) == pytest.approx(1.0, abs=1e-12)
    noisy = (x + 0.2 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1))).clamp(0, 1)
    assert ssim(x, noisy) < ssim(x, (x + noisy) / 2) < 1
    batch = torch.stack([x, x])
    assert ssim(batch, batch, shave=4) == pytest.approx(1.0, abs=1e-12)


def test_ssim_of_constant_shift_is_luminance_term():
    x = torch.full((1, 20, 20), 0.4)
    # flat images: only the luminance term (2 mu_x mu_y + C1) / (mu_x^2 + mu_y^2 + C1) is left
    c1 = 0.01**2
    expect = (2 * 0.4 * 0.6 + c1) / (0.4**2 + 0.6**2 + c1)
    assert ssim(x, x + 0.2) == pytest.approx(expect, rel=1e-5)


def skimage_pairs() -> dict[str, tuple]:
    """(reference, distorted, channel_axis) of real photos as float64 arrays in [0, 1]: a grey and
    a colour crop, each against a blurred and a noisy copy."""
    np, skdata, filters = (
        pytest.importorskip("numpy"),
        pytest.importorskip("skimage.data"),
        pytest.importorskip("skimage.filters"),
    )
    rng = np.random.default_rng(0)
    out = {}
    for name, img, axis in (
        ("camera", skdata.camera()[128:224, 160:272], None),
        ("astronaut", skdata.astronaut()[:96, 180:292], -1),
    ):
        img = img.astype(np.float64) / 255
        out[f"{name} blurred"] = (img, filters.gaussian(img, sigma=2, channel_axis=axis), axis)
        out[f"{name} noisy"] = (img, np.clip(img + rng.normal(0, 0.1, img.shape), 0, 1), axis)
    return out


@pytest.mark.parametrize("shave", [0, 4])
def test_ssim_matches_scikit_image(shave):
    """SSIM as scikit-image computes it with the same Gaussian window (sigma 1.5, truncate 3.5:
    radius 5), population covariances and data range 1; 'valid' positions on both sides."""
    structural_similarity = pytest.importorskip("skimage.metrics").structural_similarity
    crop = lambda v: v[shave:-shave, shave:-shave] if shave else v
    for name, (a, b, axis) in skimage_pairs().items():
        expect = structural_similarity(
            crop(a),
            crop(b),
            data_range=1.0,
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
            channel_axis=axis,
        )
        assert 0.3 < expect < 0.9, name  # structured images, neither trivial nor hopeless
        x, y = (torch.from_numpy((v if axis is None else v.transpose(2, 0, 1)).copy()) for v in (a, b))
        assert ssim(x, y, shave=shave) == pytest.approx(expect, abs=1e-10), name
        assert ssim(x.float(), y.float(), shave=shave) == pytest.approx(expect, abs=1e-6), name


def test_psnr_and_ssim_refuse_mismatched_shapes():
    x = image(size=16)
    for fn in (psnr, ssim):
        for other in (x[:1], x[None], x[:, :15], x.expand(2, 3, 16, 16)):
            with pytest.raises(
                ValueError,
                match=re.escape(f"x and y must have the same shape, got {tuple(x.shape)} and {tuple(other.shape)}"),
            ):
                fn(x, other)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int32, torch.int64, torch.bool])
def test_psnr_and_ssim_refuse_integer_images(dtype):
    x = (image(size=16) * 255).round().to(dtype)
    for fn in (psnr, ssim):
        with pytest.raises(
            TypeError, match=re.escape(f"{fn.__name__}: x must be a float image (data range 1), got dtype {dtype}")
        ):
            fn(x, x)
        with pytest.raises(TypeError, match=f"y must be a float image.*{dtype}.*x.float\\(\\) / 255"):
            fn(x.float() / 255, x)
    with pytest.raises(TypeError, match="lr must be a float image"):
        lr_psnr(image(size=16), x[:, :4, :4], 4)


def test_psnr_and_ssim_refuse_images_too_small_once_shaved():
    with pytest.raises(
        ValueError,
        match=re.escape(
            "ssim: images of shape (3, 10, 12) with shave=0 leave 10x12 px; its 11x11 window needs at least 11x11"
        ),
    ):
        ssim(torch.zeros(3, 10, 12), torch.zeros(3, 10, 12))
    with pytest.raises(ValueError, match=re.escape("with shave=3 leave 10x10 px; its 11x11 window")):
        ssim(torch.zeros(3, 16, 16), torch.zeros(3, 16, 16), shave=3)
    assert ssim(torch.zeros(3, 17, 17), torch.zeros(3, 17, 17), shave=3) == pytest.approx(1.0)
    assert ssim(torch.zeros(1, 5, 5), torch.zeros(1, 5, 5), radius=2) == pytest.approx(1.0)
    with pytest.raises(
        ValueError, match=re.escape("psnr: images of shape (3, 8, 8) with shave=4 leave 0x0 px; it needs at least 1x1")
    ):
        psnr(torch.zeros(3, 8, 8), torch.ones(3, 8, 8), shave=4)
    for bad in ({"shave": -1}, {"shave": 1.5}):
        with pytest.raises(ValueError, match="shave must be an int >= 0"):
            psnr(torch.zeros(3, 8, 8), torch.ones(3, 8, 8), **bad)
    with pytest.raises(ValueError, match="empty"):
        psnr(torch.zeros(0, 3, 8, 8), torch.zeros(0, 3, 8, 8))
    with pytest.raises(ValueError, match=r"needs images \(\.\.\., H, W\)"):
        psnr(torch.zeros(8), torch.zeros(8))


def test_lr_psnr_consistent_sample_scores_high():
    hr = image(size=64)
    lr = bicubic_down(hr, 4)
    assert lr_psnr(hr, lr, 4) == math.inf  # the ground truth explains its LR exactly
    assert lr_psnr(torch.stack([hr, hr]), lr, 4) == math.inf  # samples share one LR
    up = bicubic_up(lr, 4)
    assert 10 < lr_psnr(up, lr, 4) < math.inf
    assert lr_psnr(torch.zeros_like(hr), lr, 4) < lr_psnr(up, lr, 4)
    with pytest.raises(ValueError, match="2x the size"):
        lr_psnr(hr, lr, 2)


def test_lr_psnr_clamps_the_sample():
    hr = image(size=32)
    lr = bicubic_down(hr, 4)
    wild = hr.clone()
    wild[wild > 0.99] = 1e6  # out-of-range values are clamped before downscaling
    assert lr_psnr(wild, lr, 4) > 30


def test_diversity():
    x = image()
    assert diversity(torch.stack([x, x, x])) == 0.0
    a, b = torch.zeros(3, 4, 4), torch.ones(3, 4, 4)
    assert diversity(torch.stack([a, b])) == pytest.approx(1 / math.sqrt(2))  # unbiased std of {0, 1}
    g = torch.Generator().manual_seed(0)
    many = 0.3 * torch.randn(200, 3, 16, 16, generator=g)
    assert diversity(many) == pytest.approx(0.3, rel=0.02)
    batched = torch.stack([many[:10], 2 * many[10:20]])
    d = diversity(batched)
    assert d.shape == (2,) and d[1] == pytest.approx(2 * diversity(many[10:20]))
    with pytest.raises(ValueError):
        diversity(x[None])  # one sample has no diversity


def test_artifact_mask_edges():
    x = torch.full((3, 1, 8), 0.5)
    x[0, 0, 0] = 1.5  # exactly on the bound: not an artifact
    x[1, 0, 1] = -0.5  # exactly on the bound: not an artifact
    x[2, 0, 2] = 1.5 + 1e-6
    x[0, 0, 3] = -0.5 - 1e-6
    x[1, 0, 4] = math.nan
    x[2, 0, 5] = math.inf
    x[0, 0, 6] = -math.inf
    mask = artifact_mask(x)
    assert mask.shape == (1, 8) and mask.dtype == torch.bool
    assert mask[0].tolist() == [False, False, True, True, True, True, True, False]


def test_artifact_mask_any_channel_and_shapes():
    x = torch.zeros(2, 5, 3, 4, 6)  # (B, N, C, H, W)
    x[1, 2, 1, 3, 5] = 2.0  # one channel of one pixel
    mask = artifact_mask(x)
    assert mask.shape == (2, 5, 4, 6) and mask.sum() == 1 and mask[1, 2, 3, 5]
    assert artifact_mask(x[0, 0]).shape == (4, 6)
    with pytest.raises(ValueError):
        artifact_mask(torch.zeros(4, 6))


def test_artifact_report_per_sample_and_summary():
    x = torch.full((4, 3, 10, 10), 0.5)
    x[1, 0, 0, 0] = 1.9  # an ordinary tail: artifact pixel, no explosion
    x[2, :, 5, 5] = 5e3  # too large: explosion
    x[3, 1, 2, 2] = math.nan  # non-finite: explosion, max_abs over the finite values
    x[3, 1, 2, 3] = -math.inf
    rep = artifact_report(x, min_scale=2e-4)
    assert rep["fraction"].tolist() == pytest.approx([0, 0.01, 0.01, 0.02])
    assert rep["max_abs"].tolist() == pytest.approx([0.5, 1.9, 5e3, 0.5])
    assert rep["nonfinite"].tolist() == [0, 0, 0, 2]
    assert rep["explosion"].tolist() == [False, False, True, True]
    s = rep["summary"]
    assert s["samples"] == 4 and s["nonfinite"] == 2 and s["max_abs"] == pytest.approx(5e3)
    assert s["with_artifacts"] == 0.75 and s["explosions"] == 0.5 and s["min_scale"] == 2e-4
    assert s["artifact_fraction"] == pytest.approx(0.01)


def test_artifact_report_threshold_and_all_nan():
    x = torch.zeros(3, 3, 2, 2)
    x[0, 0, 0, 0] = metrics.EXPLOSION  # exactly 1e3: not an explosion (the flag is max |x| > 1e3)
    x[1, 0, 0, 0] = -1001.0
    x[2] = math.nan
    rep = artifact_report(x)
    assert rep["explosion"].tolist() == [False, True, True]
    assert math.isnan(rep["max_abs"][2]) and rep["nonfinite"][2] == 12 and rep["fraction"][2] == 1.0
    assert rep["summary"]["max_abs"] == pytest.approx(1001.0) and rep["summary"]["min_scale"] is None
    one = artifact_report(torch.zeros(3, 4, 4))  # a single image: per-sample values are scalars
    assert one["fraction"].shape == () and one["summary"]["samples"] == 1


def test_min_scale_from_trace_rows():
    rows = [{"min_scale": None}, {"min_scale": 0.3}, {"min_scale": 2e-3}]
    assert metrics.min_scale(rows) == 2e-3
    with pytest.raises(ValueError):
        metrics.min_scale([{"min_scale": None}])


def test_psnr_and_ssim_match_train_module():
    from minflow import train

    x, y = image(1, 24), image(2, 24)
    assert metrics.psnr(x, y, 2) == train.psnr(x, y, 2)
    assert metrics.ssim(x, y, 2) == train.ssim(x, y, 2)


def test_artifact_report_per_sample_scale():
    x = torch.zeros(3, 3, 4, 4)
    rep = artifact_report(x, min_scale=torch.tensor([0.5, 1e-4, 0.2]))
    assert rep["min_scale"].tolist() == pytest.approx([0.5, 1e-4, 0.2]) and rep["summary"][
        "min_scale"
    ] == pytest.approx(1e-4)


def test_recorded_min_scale_matches_the_trace():
    from minflow.sr import SRFlow

    torch.manual_seed(0)
    model = SRFlow(levels=2, flow_steps=1, hidden=8, nf=8, blocks=1, gc=4, cond_channels=8).eval()
    lr = torch.rand(3, 3, 8, 8)
    with torch.no_grad(), mf.recording() as rec:
        x, rows = model.trace(lr, temperature=0.5, generator=torch.Generator().manual_seed(0))
    per_sample = rec.min_scale()
    assert per_sample.shape == (3,) and per_sample.min().item() == pytest.approx(metrics.min_scale(rows))


def test_scales_ignore_nan():
    assert metrics.min_scale([{"min_scale": math.nan}, {"min_scale": 0.3}, {"min_scale": math.nan}]) == 0.3

    rec = mf.Recorder()
    for v in ([1e-4, 0.5, math.nan], [math.nan, 0.2, math.nan]):
        rec.scale(torch.nn.Identity(), torch.tensor(v).log()[:, None])
    got = rec.min_scale()
    assert got[:2].tolist() == pytest.approx([1e-4, 0.2]) and math.isnan(got[2])
    rep = artifact_report(torch.zeros(3, 3, 2, 2), min_scale=got)
    assert rep["summary"]["min_scale"] == pytest.approx(1e-4)


def test_min_scale_is_one_behaviour_for_the_toy_and_the_images():
    from minflow import toy

    assert toy.min_scale is metrics.min_scale
    assert math.isnan(metrics.min_scale([{"min_scale": math.nan}, {"name": "ActNorm", "min_scale": None}]))
    with pytest.raises(ValueError, match="no layer"):
        metrics.min_scale([{"name": "ActNorm"}])


def test_rate_interval_closed_forms_and_coverage():
    from math import comb

    from minflow.metrics import rate_interval

    lo, hi = rate_interval(0, 60)  # k = 0: (0, z^2 / (n + z^2))
    assert lo == 0.0 and hi == pytest.approx(1.96**2 / (60 + 1.96**2))
    lo, hi = rate_interval(5, 10)  # symmetric about p = 1/2
    assert lo + hi == pytest.approx(1.0) and lo < 0.5 < hi
    # the 95 % interval covers the true rate with probability close to 95 % (exact binomial sum)
    for p, n in [(0.1, 50), (0.3, 20), (0.02, 200)]:
        cover = sum(
            comb(n, k) * p**k * (1 - p) ** (n - k)
            for k in range(n + 1)
            if rate_interval(k, n)[0] <= p <= rate_interval(k, n)[1]
        )
        assert 0.92 < cover < 0.99, (p, n, cover)


@pytest.mark.parametrize("k, n", [(-1, 5), (6, 5), (0, 0), (1.5, 4), (True, 3)])
def test_rate_interval_refuses_bad_counts(k, n):
    from minflow.metrics import rate_interval

    with pytest.raises(ValueError, match="counts"):
        rate_interval(k, n)
