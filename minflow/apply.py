"""The course's image flows on your own images: read any image, sample, measure, write a report.

    python -m minflow upscale photo.jpg --model sr_affine --temperature 0.8 --samples 8 --out result/
    python -m minflow enhance dark.png --model ll_affine --temperature 0.8 --samples 8 --out result/
    python -m minflow fit-ood --model sr_affine          # the shipped risk statistics (done for you)

What happens to an input (`read_image`):

- Any format Pillow opens (PNG, JPEG, TIFF, BMP, GIF, WebP, ...); a multi-frame file gives its first
  frame; the EXIF orientation is applied.
- Modes: RGB as is; greyscale (L, 1, I;16) repeated into three channels (16-bit scaled by 1/65535);
  palette (P) through its palette; with transparency (RGBA, LA, PA) composited onto white;
  CMYK, YCbCr, LAB, HSV converted by Pillow; 32-bit integer or float modes (I, F) are refused
  (no fixed white level to map to 1).
- Padding: the flow needs sizes that are multiples of ``model.lr_multiple``; the image is padded
  on the bottom and right by repeating its edge, and every output is cropped back.
- Tiling: large inputs are cut into ``tile`` x ``tile`` windows with ``margin`` pixels of context
  on every side (multiples of ``lr_multiple``); each window is sampled on its own and only its
  centre is kept, so memory depends on the tile, not the image (the tiles' latents are
  independent: a seam can show in a sample, never in the artifact or risk maps' definition).

What is measured (`ApplyResult`), always on the *raw* samples, before any clamping:

- the per-pixel artifact frequency: the share of samples in which a pixel is an artifact by the
  course's criterion (`metrics.artifact_mask`: a channel > 1.5, < -0.5 or non-finite);
- max |x| over the finite values, the number of non-finite values, the artifact rate (mean of the
  frequency), and per layer the smallest slope s its element-wise map used (sampling divides by s);
- the risk map: the Mahalanobis distance (`ood.Mahalanobis`) of the conditioning features of the
  level the chapters score (`feature_key`: SR, the LR grid; low light, half resolution), against
  the statistics shipped with the model (`load_ood_stats`), fitted on its training data.

PNG files hold samples clamped to [0, 1] (an image format cannot hold 7 or NaN; a NaN pixel is
written black) and their mean is the mean of the clamped samples.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import platform
import resource
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import checkpoints, diagnostics, metrics
from .transforms import Features
from .utils import check_temperature

__all__ = [
    "OOD_FOLDER",
    "TASKS",
    "ApplyResult",
    "ApplySettings",
    "RiskStats",
    "apply_image",
    "feature_key",
    "fit_ood_stats",
    "known_models",
    "load_ood_stats",
    "peak_memory_mb",
    "read_image",
    "risk_features",
    "sampling_pass",
    "smallest_slopes",
    "save_ood_stats",
    "write_outputs",
]

TASKS = {"upscale": "srflow", "enhance": "llflow"}
"""Command -> the checkpoint builder its models have."""

OOD_FOLDER = "ood"
"""The shipped risk statistics of checkpoint NAME: checkpoints/ood/NAME.pt and its manifest NAME.json."""

GREY_MODES = {"L", "1", "I;16", "I;16B", "I;16L", "I;16N"}
ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}
REFUSED_MODES = {"I", "F"}


# ----------------------------------------------------------------------------- reading images


def read_image(path: str | Path) -> Tensor:
    """The image at `path` as a (3, H, W) float32 tensor in [0, 1], by the rules of the module docstring.

    Clear errors: a missing file, an empty file, a file that is not an image, a refused mode.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such file: {path}")
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder, not an image file")
    if path.stat().st_size == 0:
        raise ValueError(f"{path} is an empty file (0 bytes), not an image")
    try:
        img = Image.open(path)
        img.seek(0)
        img.load()
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise ValueError(f"{path} is not an image Pillow can read ({err})") from None
    return image_to_tensor(ImageOps.exif_transpose(img) or img, str(path))


def image_to_tensor(img, name: str = "the image") -> Tensor:
    """A PIL image -> (3, H, W) float32 in [0, 1] (the mode rules of the module docstring)."""
    mode = img.mode
    if mode in REFUSED_MODES:
        raise ValueError(
            f"{name} has mode {mode!r} (32-bit integer or float pixels): there is no fixed white level to map "
            "to 1; save it as an 8- or 16-bit image first"
        )
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        mode = img.mode
    if mode in GREY_MODES:
        a = np.asarray(img)
        scale = 65535.0 if a.dtype == np.uint16 or a.max(initial=0) > 255 else (1.0 if a.dtype == bool else 255.0)
        a = np.repeat((a.astype(np.float32) / scale)[..., None], 3, axis=2)
    elif mode in ALPHA_MODES:
        rgba = np.asarray(img.convert("RGBA")).astype(np.float32) / 255
        alpha = rgba[..., 3:]
        a = rgba[..., :3] * alpha + (1 - alpha)  # composited onto white
    else:
        try:
            a = np.asarray(img.convert("RGB")).astype(np.float32) / 255
        except (ValueError, OSError) as err:
            raise ValueError(f"{name} has mode {mode!r}, which cannot be converted to RGB ({err})") from None
    if a.ndim != 3 or a.shape[0] == 0 or a.shape[1] == 0:
        raise ValueError(f"{name} has no pixels (size {img.size})")
    return torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1).contiguous().clamp(0, 1)


# ----------------------------------------------------------------------------- models and features


def known_models(task: str | None = None, root: Path | None = None) -> list[str]:
    """Shipped checkpoints usable by `task` ("upscale": SR models, "enhance": low-light models; None: both)."""
    builders = set(TASKS.values()) if task is None else {TASKS[task]}
    out = []
    for name in checkpoints.available(root):
        try:
            if checkpoints.read_manifest(name, root)["builder"] in builders:
                out.append(name)
        except (ValueError, FileNotFoundError):
            continue
    return out


def feature_key(feats: Features, cond_size: tuple[int, int]) -> tuple[int, int]:
    """The level the chapters score: the largest feature map no larger than the condition (SR 4x: the
    LR grid, chapter 6; low light: half resolution, chapter 8)."""
    fits = [k for k in feats if k[0] <= cond_size[0] and k[1] <= cond_size[1]]
    if not fits:
        raise ValueError(f"no feature map is at most the condition's size {cond_size}; have {sorted(feats)}")
    return max(fits, key=lambda k: k[0] * k[1])


def risk_features(model: nn.Module, cond: Tensor) -> Tensor:
    """The scored conditioning features of a (B, C, h, w) condition, (B, D, h', w') (`feature_key`)."""
    feats = model.condition(cond)
    return feats[feature_key(feats, tuple(cond.shape[-2:]))]


@dataclass
class RiskStats:
    """Fitted Mahalanobis statistics of a model's scored features: d(g) = ||L^{-1}(g - mean)||, Sigma = L L^T,
    and quantiles of d over held-out training features (``quantiles``: {"0.5": ..., "0.99": ...})."""

    mean: Tensor  # (D,) float64
    covariance: Tensor  # (D, D) float64, shrunk
    quantiles: dict[str, float] = field(default_factory=dict)
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.mean, self.covariance = self.mean.double(), self.covariance.double()
        self._chol = torch.linalg.cholesky(self.covariance)

    @classmethod
    def from_scorer(cls, scorer, quantiles: dict[str, float] | None = None, meta: dict | None = None) -> RiskStats:
        """From a fitted `ood.Mahalanobis`."""
        return cls(scorer.mean_.cpu(), scorer.covariance_.cpu(), dict(quantiles or {}), dict(meta or {}))

    def score_maps(self, maps: Tensor) -> Tensor:
        """Per-pixel distances of (B, D, h, w) feature maps: (B, h, w) float64 on the maps' device."""
        if maps.dim() != 4 or maps.shape[1] != self.mean.numel():
            raise ValueError(f"need (B, {self.mean.numel()}, h, w) feature maps, got {tuple(maps.shape)}")
        b, d, h, w = maps.shape
        rows = maps.detach().permute(0, 2, 3, 1).reshape(-1, d).double()
        y = (rows - self.mean.to(rows.device)).T
        z = torch.linalg.solve_triangular(self._chol.to(rows.device), y, upper=False)
        return z.norm(dim=0).reshape(b, h, w)

    def to(self, device) -> RiskStats:
        self.mean, self.covariance, self._chol = (t.to(device) for t in (self.mean, self.covariance, self._chol))
        return self


def _ood_paths(name: str, root: Path | None) -> tuple[Path, Path]:
    checkpoints.check_name(name)
    base = (root or checkpoints.data_dir()) / "checkpoints" / OOD_FOLDER
    return base / f"{name}.pt", base / f"{name}.json"


def training_stream(model: nn.Module, seed_offset: int = 0):
    """The model's training stream as its manifest records it (crop, batch, seed, and its
    ``train_photos``; manifests from before photo splits: the course's `data.TRAIN_PHOTOS`): conditions only."""
    from . import data

    manifest = model.manifest
    train, seed = manifest["training"], manifest["seed"] + seed_offset
    photos = data.load_photos(train.get("train_photos") or data.TRAIN_PHOTOS)
    if manifest["builder"] == "srflow":
        stream = data.CropDataset(photos, size=train["crop"], batch_size=train["batch"], factor=model.factor, seed=seed)
    else:
        stream = data.LowLightPairs(photos, train["crop"], train["batch"], seed=seed)
    return (cond for _, cond in stream)


QUANTILES = (0.5, 0.9, 0.99, 0.999)


@torch.no_grad()
def fit_ood_stats(model: nn.Module, batches: int = 32, held_out: int = 8, progress: bool = True) -> RiskStats:
    """Fit the risk statistics of a loaded checkpoint on `batches` batches of its own training stream
    (as chapters 6 and 8 do), and the score quantiles on `held_out` batches of a second stream (seed + 1)."""
    from tqdm.auto import tqdm

    from . import ood

    device = next(model.parameters()).device
    scorer = ood.Mahalanobis()
    for _, cond in zip(
        tqdm(range(batches), desc="fitting on training crops", disable=not progress), training_stream(model)
    ):
        scorer.partial_fit_maps(risk_features(model, cond.to(device)))
    stats = RiskStats.from_scorer(scorer.finalize())
    scores = [
        stats.score_maps(risk_features(model, cond.to(device))).flatten().cpu()
        for _, cond in zip(range(held_out), training_stream(model, seed_offset=1))
    ]
    s = torch.cat(scores).numpy()
    stats.quantiles = {str(q): float(np.quantile(s, q)) for q in QUANTILES}
    stats.meta = {"samples": scorer.n_, "shrinkage": scorer.shrinkage_, "held_out_pixels": int(s.size)}
    return stats


def save_ood_stats(stats: RiskStats, name: str, command: str, root: Path | None = None) -> Path:
    """Write checkpoints/ood/NAME.pt (mean, covariance) and its manifest NAME.json: the file's SHA-256
    and the SHA-256 of the checkpoint it was fitted for, so either file edited or retrained is caught."""
    pt, js = _ood_paths(name, root)
    manifest = checkpoints.read_manifest(name, root)
    pt.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"mean": stats.mean.cpu(), "covariance": stats.covariance.cpu()}, pt)
    record = {
        "name": name,
        "checkpoint_sha256": manifest["sha256"],
        "features": "Mahalanobis statistics of the scored conditioning features (minflow.apply.feature_key)",
        "dim": stats.mean.numel(),
        "quantiles": stats.quantiles,
        **stats.meta,
        "command": command,
        "sha256": checkpoints.sha256(pt),
        "torch": torch.__version__,
        "machine": f"{platform.machine()}, {os.cpu_count()} cpus",
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    js.write_text(json.dumps(record, indent=2) + "\n")
    return pt


def load_ood_stats(name: str, root: Path | None = None) -> RiskStats:
    """The shipped risk statistics of checkpoint `name`, after checking the SHA-256 of the file and
    that they were fitted for the checkpoint file present now."""
    pt, js = _ood_paths(name, root)
    how = f"Recreate them with: python -m minflow fit-ood --model {name}"
    if not js.exists() or not pt.exists():
        raise FileNotFoundError(f"checkpoint {name!r} has no risk statistics ({js}). {how}")
    record = json.loads(js.read_text(encoding="utf-8"))
    if checkpoints.sha256(pt) != record.get("sha256"):
        raise RuntimeError(f"risk statistics {pt} are corrupt (SHA-256 differs from {js.name}). {how}")
    if checkpoints.read_manifest(name, root)["sha256"] != record.get("checkpoint_sha256"):
        raise RuntimeError(f"risk statistics {pt} were fitted for another version of checkpoint {name!r}. {how}")
    tensors = torch.load(pt, map_location="cpu", weights_only=True)
    meta = {k: v for k, v in record.items() if k not in ("quantiles",)}
    return RiskStats(tensors["mean"], tensors["covariance"], record.get("quantiles", {}), meta)


# ----------------------------------------------------------------------------- the sampling pass


def expand_features(feats, n: int):
    """Features (or a tensor) of batch 1 repeated to batch n without copying."""
    if isinstance(feats, Features):
        return feats.map(lambda v: v.expand(n, *v.shape[1:]))
    return feats.expand(n, *feats.shape[1:]) if isinstance(feats, Tensor) else feats


@torch.no_grad()
def sampling_pass(
    model: nn.Module,
    feats,
    n: int,
    temperature: float,
    generator: torch.Generator | None = None,
    keep: bool = False,
) -> tuple[Tensor, dict[int, float], list[tuple[int, Tensor]]]:
    """Draw n samples given encoded features of one condition, layer by layer (public `Transform.inverse`).

    Returns (raw samples, {layer index: smallest forward slope it used}, and with `keep` the
    (layer index, output) of every layer in sampling order, the latent first with index len(layers)).
    The condition is encoded once, not once per sample.
    """
    check_temperature(temperature)
    param = next(model.parameters())
    feats_n = expand_features(feats, n)
    z = model.base.sample(
        model.latent_shape(feats_n, n), temperature, device=param.device, dtype=param.dtype, generator=generator
    )
    kept = [(len(model.layers), z)] if keep else []
    with diagnostics.recording() as rec:
        for i in reversed(range(len(model.layers))):
            z, _ = model.layers[i].inverse(z, feats_n, temperature=temperature, generator=generator)
            if keep:
                kept.append((i, z))
    return z, smallest_slopes(model, rec), kept


def smallest_slopes(model: nn.Module, rec: diagnostics.Recorder) -> dict[int, float]:
    """{index in model.layers: the smallest forward slope that layer used} from a recording of its
    sampling pass (a non-finite slope counts as inf, so it never hides a finite small one)."""
    index = {id(m): i for i, layer in enumerate(model.layers) for m in layer.modules()}
    slopes: dict[int, float] = {}
    for layer, s in rec.scales:
        i = index[id(layer)]
        value = float(torch.nan_to_num(s, nan=math.inf).min()) if s.numel() else math.inf
        slopes[i] = min(slopes.get(i, math.inf), value)
    return slopes


# ----------------------------------------------------------------------------- applying a model


@dataclass
class ApplySettings:
    """How `apply_image` runs: `samples` at `temperature`, drawn `chunk` at a time, `seed` of the draws,
    tiles of `tile` condition pixels with `margin` pixels of context, on `device`."""

    temperature: float = 0.8
    samples: int = 8
    seed: int = 0
    tile: int = 128
    margin: int = 16
    chunk: int = 4
    device: str = "cpu"


@dataclass
class ApplyResult:
    """What `apply_image` measured (see the module docstring); images are numpy arrays."""

    condition: np.ndarray  # (h, w, 3) float32, the input as the model saw it (before padding)
    samples: np.ndarray  # (N, H, W, 3) uint8, clamped to [0, 1] for display
    mean: np.ndarray  # (H, W, 3) float32, mean of the clamped samples
    artifact_frequency: np.ndarray  # (H, W) float32 in [0, 1], measured on the raw samples
    risk: np.ndarray  # (h', w') float64 Mahalanobis distances of the scored features
    report: dict


def _round_up(v: int, m: int) -> int:
    return -(-v // m) * m


def _tiles(size: int, tile: int) -> list[tuple[int, int]]:
    return [(a, min(a + tile, size)) for a in range(0, size, tile)]


def peak_memory_mb() -> float:
    """This process's peak resident memory so far, in MiB (``ru_maxrss``)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 1024 / 1024 if platform.system() == "Darwin" else rss / 1024


def apply_image(
    model: nn.Module,
    image: Tensor,
    settings: ApplySettings | None = None,
    stats: RiskStats | None = None,
    progress: bool = True,
    on_tile: Callable[[int, int], None] | None = None,
) -> ApplyResult:
    """Sample `model` (an SR or low-light `ImageFlow`) on a (3, h, w) condition image in [0, 1], tile by tile.

    Per tile: encode the context window once, draw the samples `chunk` at a time (`sampling_pass`),
    keep the centre; accumulate the artifact counts on the raw samples, max |x|, non-finite
    values and the smallest slope per layer; score the features against `stats`.
    """
    from tqdm.auto import tqdm

    st = settings or ApplySettings()
    check_temperature(st.temperature)
    if image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(f"the image must be (3, h, w), got {tuple(image.shape)}")
    param = next(model.parameters())
    device = param.device
    f, m = model.factor, model.lr_multiple
    tile, margin = _round_up(max(st.tile, m), m), _round_up(st.margin, m)
    h, w = image.shape[1:]
    hp, wp = _round_up(h, m), _round_up(w, m)
    padded = F.pad(image[None], (0, wp - w, 0, hp - h), mode="replicate")[0] if (hp, wp) != (h, w) else image
    n = st.samples
    out_u8 = np.zeros((n, hp * f, wp * f, 3), np.uint8)
    mean = np.zeros((hp * f, wp * f, 3), np.float32)
    counts = np.zeros((hp * f, wp * f), np.uint16)
    risk = None
    max_abs, nonfinite, slopes = 0.0, 0, {}
    sample_any = np.zeros(n, bool)
    gen = torch.Generator().manual_seed(st.seed)
    spots = [(a, b) for a in _tiles(hp, tile) for b in _tiles(wp, tile)]
    bar = tqdm(total=len(spots) * n, desc=f"sampling {len(spots)} tile(s)", unit="sample", disable=not progress)
    start = time.perf_counter()
    for k, ((y0, y1), (x0, x1)) in enumerate(spots):
        cy0, cy1, cx0, cx1 = max(y0 - margin, 0), min(y1 + margin, hp), max(x0 - margin, 0), min(x1 + margin, wp)
        ctx = padded[:, cy0:cy1, cx0:cx1][None].to(device, param.dtype)
        with torch.no_grad():
            feats = model.condition(ctx)
            key = feature_key(feats, tuple(ctx.shape[-2:]))
            g = ctx.shape[-1] // key[1]  # condition pixels per scored pixel
            if stats is not None:
                score = stats.score_maps(feats[key].to(stats.mean.device))[0].cpu().numpy()
                if risk is None:
                    risk = np.zeros((hp // g, wp // g), np.float64)
                oy, ox = (y0 - cy0) // g, (x0 - cx0) // g
                risk[y0 // g : y1 // g, x0 // g : x1 // g] = score[oy : oy + (y1 - y0) // g, ox : ox + (x1 - x0) // g]
        sy, sx = (y0 - cy0) * f, (x0 - cx0) * f
        th, tw = (y1 - y0) * f, (x1 - x0) * f
        for c0 in range(0, n, st.chunk):
            c = min(st.chunk, n - c0)
            x, used, _ = sampling_pass(model, feats, c, st.temperature, gen)
            for i, s in used.items():
                slopes[i] = min(slopes.get(i, math.inf), s)
            x = x[..., sy : sy + th, sx : sx + tw].float()
            finite = torch.isfinite(x)
            nonfinite += int((~finite).sum())
            if finite.any():
                max_abs = max(max_abs, float(x[finite].abs().max()))
            mask = metrics.artifact_mask(x)
            sample_any[c0 : c0 + c] |= mask.flatten(1).any(1).cpu().numpy()
            counts[y0 * f : y1 * f, x0 * f : x1 * f] += mask.sum(0).cpu().numpy().astype(np.uint16)
            shown = torch.nan_to_num(x, nan=0.0).clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy()
            out_u8[c0 : c0 + c, y0 * f : y1 * f, x0 * f : x1 * f] = np.round(shown * 255).astype(np.uint8)
            mean[y0 * f : y1 * f, x0 * f : x1 * f] += shown.sum(0) / n
            bar.update(c)
        if on_tile:
            on_tile(k + 1, len(spots))
    bar.close()
    seconds = time.perf_counter() - start
    H, W = h * f, w * f
    freq = counts[:H, :W].astype(np.float32) / n
    g_out = None
    if risk is not None:
        g_out = hp // risk.shape[0]
        risk = risk[: -(-h // g_out), : -(-w // g_out)]
    names = {i: type(model.layers[i]).__name__ for i in slopes}
    report = {
        "max_abs": max_abs,
        "nonfinite": nonfinite,
        "artifact_rate": float(freq.mean()),
        "samples_with_artifacts": float(sample_any.mean()),
        "smallest_scale": min(slopes.values()) if slopes else None,
        "smallest_scale_per_layer": [
            {"index": i, "name": names[i], "min_scale": slopes[i]} for i in sorted(slopes, reverse=True)
        ],
        "risk": risk_summary(risk, stats) if risk is not None else None,
        "input_size": [int(h), int(w)],
        "output_size": [int(H), int(W)],
        "padded_to": [int(hp), int(wp)],
        "tiles": len(spots),
        "seconds": seconds,
        "peak_memory_mb": peak_memory_mb(),
        "settings": {**asdict(st), "tile": tile, "margin": margin},
    }
    if device.type == "cuda":
        report["peak_cuda_memory_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return ApplyResult(
        condition=image.permute(1, 2, 0).cpu().numpy(),
        samples=out_u8[:, :H, :W],
        mean=mean[:H, :W],
        artifact_frequency=freq,
        risk=risk if risk is not None else np.zeros((0, 0)),
        report=report,
    )


def risk_summary(risk: np.ndarray, stats: RiskStats) -> dict:
    """Mean, median, max of the risk map, and the share of its pixels above the held-out training
    quantiles of the score (about 1 % and 0.1 % for an in-distribution input)."""
    out = {
        "mean": float(risk.mean()),
        "median": float(np.median(risk)),
        "max": float(risk.max()),
        "training_quantiles": stats.quantiles,
        "grid": list(risk.shape),
    }
    for q in ("0.99", "0.999"):
        if q in stats.quantiles:
            out[f"share_above_training_q{q}"] = float((risk > stats.quantiles[q]).mean())
    return out


# ----------------------------------------------------------------------------- writing the results


def _png(array: np.ndarray, path: Path) -> None:
    from PIL import Image

    Image.fromarray(array).save(path)


def _colour(values: np.ndarray, cmap: str, vmin: float, vmax: float, log: bool = False) -> np.ndarray:
    """A 2-D array through a matplotlib colour map as (h, w, 3) uint8."""
    import matplotlib

    v = np.asarray(values, np.float64)
    if log:
        v, vmin, vmax = np.log(np.maximum(v, 1e-12)), math.log(max(vmin, 1e-12)), math.log(max(vmax, 1e-12))
    t = np.clip((v - vmin) / max(vmax - vmin, 1e-12), 0, 1)
    return (matplotlib.colormaps[cmap](t)[..., :3] * 255).round().astype(np.uint8)


def side_by_side(result: ApplyResult, path: Path | None = None):
    """One figure: the input, the mean, the first sample, the artifact frequency, the risk map."""
    import matplotlib.pyplot as plt

    panels = 5 if result.risk.size else 4
    fig, axes = plt.subplots(1, panels, figsize=(3.6 * panels, 4))
    axes[0].imshow(result.condition.clip(0, 1), interpolation="nearest")
    axes[0].set_title("input")
    axes[1].imshow(result.mean)
    axes[1].set_title(f"mean of {len(result.samples)} samples")
    axes[2].imshow(result.samples[0])
    axes[2].set_title("sample 1")
    im = axes[3].imshow(result.artifact_frequency, vmin=0, vmax=1, cmap="Reds")
    axes[3].set_title(f"artifact frequency ({result.report['artifact_rate']:.3f})")
    fig.colorbar(im, ax=axes[3], fraction=0.046)
    if panels == 5:
        im = axes[4].imshow(result.risk, cmap="magma")
        axes[4].set_title("risk (Mahalanobis)")
        fig.colorbar(im, ax=axes[4], fraction=0.046)
    for ax in axes:
        ax.set(xticks=[], yticks=[])
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=100)
        plt.close(fig)
    return fig


def write_outputs(result: ApplyResult, out: Path, extra: dict | None = None) -> Path:
    """Write the samples, their mean, the artifact-frequency and risk maps (PNG, and .npy with the
    raw values), one side-by-side PNG and report.json into the folder `out`; returns report.json."""
    out.mkdir(parents=True, exist_ok=True)
    for i, s in enumerate(result.samples):
        _png(s, out / f"sample_{i:02d}.png")
    _png((result.mean.clip(0, 1) * 255).round().astype(np.uint8), out / "mean.png")
    _png(_colour(result.artifact_frequency, "Reds", 0, 1), out / "artifact_frequency.png")
    np.save(out / "artifact_frequency.npy", result.artifact_frequency)
    if result.risk.size:
        top = max(float(result.risk.max()), float(result.report["risk"]["training_quantiles"].get("0.999", 1.0)))
        _png(_colour(result.risk, "magma", float(result.risk.min()), top, log=True), out / "risk.png")
        np.save(out / "risk.npy", result.risk)
    side_by_side(result, out / "side_by_side.png")
    report = {**(extra or {}), **result.report}
    path = out / "report.json"
    path.write_text(json.dumps(report, indent=2, allow_nan=True) + "\n")
    return path
