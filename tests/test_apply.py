"""Your own images: `python -m minflow upscale | enhance | fit-ood` and `minflow.apply`, as a user runs
them, on small images made here (nothing is written into the repository's data/)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import randomize
from PIL import Image

from minflow import apply, checkpoints, cli, metrics
from minflow.checkpoints import load_pretrained

REPO = Path(__file__).resolve().parent.parent
SHIPPED = checkpoints.data_dir()


def photo(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A smooth (h, w, 3) uint8 test picture: gradients plus a little noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x / max(w - 1, 1), y / max(h - 1, 1), 0.5 + 0.3 * np.sin(x / 3)], 2)
    return (np.clip(base + 0.05 * rng.standard_normal((h, w, 3)), 0, 1) * 255).astype(np.uint8)


def run_cli(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "minflow", *args], capture_output=True, text=True, cwd=REPO, timeout=600
    )


def test_upscale_end_to_end(tmp_path):
    src = tmp_path / "small.jpg"
    Image.fromarray(photo(18, 22)).save(src, quality=90)
    out = tmp_path / "result"
    args = ["upscale", str(src), "--model", "sr_affine", "--temperature", "0.8", "--samples", "3", "--out", str(out)]
    done = run_cli([*args, "--device", "cpu", "--no-progress", "--threads", "1"], tmp_path)
    assert done.returncode == 0, done.stderr
    names = {p.name for p in out.iterdir()}
    expected = {f"sample_{i:02d}.png" for i in range(3)} | {"mean.png", "artifact_frequency.png", "risk.png"}
    assert expected | {"side_by_side.png", "report.json", "artifact_frequency.npy", "risk.npy"} <= names
    report = json.loads((out / "report.json").read_text())
    assert report["model"] == "sr_affine"
    assert report["checkpoint_sha256"] == checkpoints.read_manifest("sr_affine")["sha256"]
    assert report["output_size"] == [72, 88] and report["input_size"] == [18, 22]
    assert report["settings"]["temperature"] == 0.8 and report["settings"]["samples"] == 3
    for i in range(3):
        assert Image.open(out / f"sample_{i:02d}.png").size == (88, 72)
    freq = np.load(out / "artifact_frequency.npy")
    assert freq.shape == (72, 88) and abs(float(freq.mean()) - report["artifact_rate"]) < 1e-6
    assert np.load(out / "risk.npy").shape == (18, 22)  # the LR grid: one score per input pixel
    risk = report["risk"]
    assert risk["max"] >= risk["mean"] > 0 and set(risk["training_quantiles"]) >= {"0.99", "0.999"}
    layers = report["smallest_scale_per_layer"]
    assert layers and min(r["min_scale"] for r in layers) == report["smallest_scale"]
    assert report["nonfinite"] >= 0 and report["max_abs"] > 0 and report["peak_memory_mb"] > 0


def test_enhance_pads_an_odd_size_and_crops_back(tmp_path, capsys):
    src = tmp_path / "dark.png"
    Image.fromarray((photo(21, 27) * 0.1).astype(np.uint8)).save(src)
    out = tmp_path / "ll"
    cli.main(["enhance", str(src), "--model", "ll_affine", "--samples", "2", "--out", str(out), "--device", "cpu",
              "--no-progress", "--temperature", "0"])  # fmt: skip
    report = json.loads((out / "report.json").read_text())
    assert report["output_size"] == [21, 27] and report["padded_to"] == [24, 32]  # multiples of 2^levels
    assert np.load(out / "risk.npy").shape == (11, 14)  # half resolution, as chapter 8 scores
    assert "wrote" in capsys.readouterr().out


def tiny_exploding_sr():
    """A small SRFlow with random conditioner weights: its samples leave [-0.5, 1.5] often."""
    from minflow.sr import SRFlow

    torch.manual_seed(0)
    model = SRFlow(levels=2, flow_steps=1, hidden=8, nf=8, blocks=1, gc=4, cond_channels=8)
    return randomize(model, std=0.6, generator=torch.Generator().manual_seed(1)).eval()


def test_artifact_frequency_is_measured_on_the_raw_samples():
    model = tiny_exploding_sr()
    image = torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(2))
    settings = apply.ApplySettings(temperature=1.0, samples=4, chunk=4, tile=64, seed=3)
    result = apply.apply_image(model, image, settings, progress=False)
    with torch.no_grad():
        x, _, _ = apply.sampling_pass(model, model.condition(image[None]), 4, 1.0, torch.Generator().manual_seed(3))
    expected = metrics.artifact_mask(x).float().mean(0).numpy()
    assert expected.max() > 0, "the random model should make artifacts, or this test proves nothing"
    np.testing.assert_array_equal(result.artifact_frequency, expected)
    assert result.samples.dtype == np.uint8  # the written images are clamped; the frequency is not
    assert result.report["max_abs"] == pytest.approx(float(x[torch.isfinite(x)].abs().max()))


def test_tiles_give_the_same_risk_map_and_shapes():
    model = load_pretrained("sr_affine")
    stats = apply.load_ood_stats("sr_affine")
    image = torch.rand(3, 40, 36, generator=torch.Generator().manual_seed(0))
    whole = apply.apply_image(model, image, apply.ApplySettings(samples=1, tile=64, margin=0), stats, progress=False)
    tiled = apply.apply_image(model, image, apply.ApplySettings(samples=1, tile=16, margin=16), stats, progress=False)
    assert tiled.report["tiles"] == 9 and whole.report["tiles"] == 1
    # the encoder sees 13 px around a pixel; a 16 px margin gives every tile the whole context
    np.testing.assert_allclose(tiled.risk, whole.risk, rtol=1e-4, atol=1e-4)
    assert tiled.samples.shape == whole.samples.shape == (1, 160, 144, 3)


def save_mode(path: Path, mode: str) -> Path:
    rgb = Image.fromarray(photo(6, 5))
    if mode == "RGBA":
        a = np.asarray(rgb.convert("RGBA")).copy()
        a[0, 0, 3] = 0  # one transparent pixel
        Image.fromarray(a, "RGBA").save(path)
    elif mode == "I;16":
        Image.fromarray(np.full((6, 5), 65535, np.uint16)).save(path)
    elif mode == "F":
        Image.fromarray(np.ones((6, 5), np.float32)).save(path)
    else:
        rgb.convert(mode).save(path)
    return path


@pytest.mark.parametrize(("mode", "suffix"), [("RGBA", "png"), ("L", "png"), ("I;16", "png"), ("P", "png"),
                                              ("CMYK", "tiff"), ("RGB", "bmp"), ("RGB", "gif")])  # fmt: skip
def test_every_common_mode_becomes_rgb_in_0_1(tmp_path, mode, suffix):
    x = apply.read_image(save_mode(tmp_path / f"im.{suffix}", mode))
    assert x.shape == (3, 6, 5) and x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
    if mode == "RGBA":
        assert torch.equal(x[:, 0, 0], torch.ones(3))  # transparent: composited onto white
    if mode in ("L", "I;16"):
        assert torch.equal(x[0], x[1]) and torch.equal(x[1], x[2])
    if mode == "I;16":
        assert torch.equal(x, torch.ones_like(x))  # 65535 is white


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p.write_bytes(b""), "empty file"),
        (lambda p: p.write_text("not a picture"), "not an image"),
        (lambda p: save_mode(p, "F"), "mode 'F'"),
    ],
    ids=["empty", "text", "float-mode"],
)
def test_bad_inputs_are_clear_errors(tmp_path, capsys, make, message):
    src = tmp_path / "input.tif"
    make(src)
    with pytest.raises(SystemExit) as err:
        cli.main(["upscale", str(src), "--model", "sr_affine", "--out", str(tmp_path / "o")])
    assert err.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_unknown_model_lists_the_known_ones_and_a_full_folder_needs_force(tmp_path, capsys):
    src = tmp_path / "a.png"
    Image.fromarray(photo(8, 8)).save(src)
    with pytest.raises(SystemExit):
        cli.main(["enhance", str(src), "--model", "sr_affine", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert "unknown model 'sr_affine' for enhance" in err and "ll_affine" in err
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("mine")
    with pytest.raises(SystemExit):
        cli.main(["upscale", str(src), "--model", "sr_affine", "--out", str(full)])
    assert "--force" in capsys.readouterr().err and (full / "keep.txt").read_text() == "mine"
    with pytest.raises(SystemExit):
        cli.main(["upscale", str(tmp_path / "missing.png"), "--model", "sr_affine", "--out", str(tmp_path / "o")])
    assert "no such file" in capsys.readouterr().err


@pytest.mark.parametrize("name", apply.known_models())
def test_every_shipped_image_model_ships_checked_risk_statistics(name):
    stats = apply.load_ood_stats(name)  # checks both checksums
    assert stats.mean.shape == (stats.covariance.shape[0],)
    q = stats.quantiles
    assert 0 < q["0.5"] < q["0.9"] < q["0.99"] < q["0.999"]
    record = json.loads((SHIPPED / "checkpoints" / "ood" / f"{name}.json").read_text())
    assert record["command"].startswith(f"python -m minflow fit-ood --model {name}")


def test_edited_or_stale_statistics_are_refused(tmp_path):
    root = tmp_path / "data"
    (root / "checkpoints" / "ood").mkdir(parents=True)
    for suffix in ("pt", "json"):
        shutil.copy(SHIPPED / "checkpoints" / f"ll_affine.{suffix}", root / "checkpoints")
        shutil.copy(SHIPPED / "checkpoints" / "ood" / f"ll_affine.{suffix}", root / "checkpoints" / "ood")
    apply.load_ood_stats("ll_affine", root)
    record_path = root / "checkpoints" / "ood" / "ll_affine.json"
    record = json.loads(record_path.read_text())
    record_path.write_text(json.dumps({**record, "checkpoint_sha256": "0" * 64}))
    with pytest.raises(RuntimeError, match="another version"):
        apply.load_ood_stats("ll_affine", root)
    record_path.write_text(json.dumps(record))
    with open(root / "checkpoints" / "ood" / "ll_affine.pt", "ab") as f:
        f.write(b"x")
    with pytest.raises(RuntimeError, match="corrupt"):
        apply.load_ood_stats("ll_affine", root)


def test_fit_ood_reproduces_the_shipped_statistics():
    model = load_pretrained("ll_affine")
    shipped = apply.load_ood_stats("ll_affine")
    fitted = apply.fit_ood_stats(model, progress=False)  # the command's defaults
    torch.testing.assert_close(fitted.mean, shipped.mean, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(fitted.covariance, shipped.covariance, rtol=1e-5, atol=1e-6)
