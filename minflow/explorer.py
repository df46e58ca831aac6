"""The artifact explorer: pick an input, a model and a temperature; see samples, artifacts, risk, and
one pixel's path through the sampling chain. Needs ipywidgets (the course extra installs it).

    ex = minflow.explorer.explore()      # in a notebook: display(ex.widget)

Inputs (64 x 64 conditions by default): the bundled photos (for an SR model the photo's centre,
downscaled 4x by the training degradation; for a low-light model its centre at native scale,
darkened by the training darkening with a fixed seed), the SR test inputs of chapter 5
(`data.ood_sets`), the low-light test inputs of chapter 8 (`data.lowlight_ood_sets`, their dark
image), or a file uploaded with the FileUpload button (its centre square resized to the input
size, read by `apply.image_to_tensor`). Any input goes to any model as the condition it is: a
bright test image given to a low-light model is itself an unusual input.

For every choice the explorer draws `samples` samples (`apply.sampling_pass`, fixed seed) and
shows the input, a sample, their artifact frequency (the course's criterion, on the raw values)
and the risk map (`apply.load_ood_stats`). The pixel sliders pick a pixel of the condition; the
second figure follows it through the sampling pass of the first sample, layer by layer: the
largest |value| at that position over the layer's channels, and for couplings and injectors the
smallest forward slope s their element-wise map used there (sampling divides by s).
"""

from __future__ import annotations

import io
import math
import time

import numpy as np
import torch
from torch import Tensor

from . import apply, checkpoints, metrics
from .couplings import ElementwiseLayer

__all__ = ["Explorer", "explore", "pixel_trace"]

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _location(shape: tuple[int, ...], py: int, px: int, size: tuple[int, int]) -> tuple[int, int]:
    """The position in a (.., h, w) map that covers condition pixel (py, px) of a condition of `size`."""
    h, w = shape[-2:]
    return min(py * h // size[0], h - 1), min(px * w // size[1], w - 1)


@torch.no_grad()
def slope_maps(model, feats, kept: list[tuple[int, Tensor]], sample: int = 0) -> dict[int, Tensor]:
    """Per coupling and injector (by layer index): the smallest forward slope over channels at every
    position of its map, (h, w), for one sample of a kept sampling pass (`apply.sampling_pass(keep=True)`)."""
    out = {}
    feats_1 = apply.expand_features(_first(feats), 1)
    for (_, before), (i, _) in zip(kept[:-1], kept[1:]):
        layer = model.layers[i]
        if not isinstance(layer, ElementwiseLayer):
            continue
        z = before[sample : sample + 1]
        params = layer.conditioner_output(z, feats_1)
        _, b = layer.halves(z)
        _, ladj = layer.bijection.inverse(b, params)  # log |dx/dz| per element; forward slope exp(-ladj)
        ladj = torch.nan_to_num(ladj, nan=math.inf)
        out[i] = (-ladj).exp().amin(1)[0].cpu() if ladj.dim() == 4 else (-ladj).exp().amin().reshape(1, 1).cpu()
    return out


def _first(feats):
    """Features (or a tensor) of a batch, cut to its first row."""
    from .transforms import Features

    if isinstance(feats, Features):
        return feats.map(lambda v: v[:1])
    return feats[:1]


def pixel_trace(
    model, kept: list[tuple[int, Tensor]], slopes: dict[int, Tensor], py: int, px: int, size: tuple[int, int]
) -> list[dict]:
    """One condition pixel through the sampling pass of sample 0, in sampling order: per layer
    ``index``, ``name``, ``max_abs`` (largest |value| over channels at the pixel's position, inf when
    non-finite) and ``slope`` (smallest forward slope there, None for layers without one)."""
    rows = []
    for i, out in kept:
        y, x = _location(out.shape, py, px, size)
        v = out[0, :, y, x].abs() if out.dim() == 4 else out[0].abs()
        mag = float(torch.nan_to_num(v, nan=math.inf).max())
        s = None
        if i in slopes:
            sm = slopes[i]
            sy, sx = _location(sm.shape, py, px, size)
            s = float(sm[sy, sx])
        name = "latent" if i == len(model.layers) else type(model.layers[i]).__name__
        rows.append({"index": i, "name": name, "max_abs": mag, "slope": s})
    return rows


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=72)
    return buf.getvalue()


def _png_array(a: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _resize_nearest(a: np.ndarray, h: int, w: int) -> np.ndarray:
    ys = np.minimum(np.arange(h) * a.shape[0] // h, a.shape[0] - 1)
    xs = np.minimum(np.arange(w) * a.shape[1] // w, a.shape[1] - 1)
    return a[ys][:, xs]


PANELS = ("input", "sample 1", "artifact frequency (0 white .. 1 red)", "risk (log colour scale)")


class Explorer:
    """The widget and its state (see the module docstring); ``widget`` is what a notebook displays,
    ``seconds`` how long the last update took, ``rows`` the current pixel's trace."""

    def __init__(self, models: list[str] | None = None, samples: int = 3, size: int = 64, device: str = "cpu"):
        import ipywidgets as w

        from . import data

        self.size, self.samples, self.device = size, samples, torch.device(device)
        self.models = models or [
            m for m in ("sr_affine", "sr_spline", "ll_affine", "ll_spline") if m in checkpoints.available()
        ]
        if not self.models:
            raise ValueError("no shipped SR or low-light model found")
        self._loaded: dict[str, tuple] = {}
        self._inputs: dict[str, Tensor] = {}
        options = []
        for name in data.photo_names():
            options.append((f"photo: {name}", f"photo:{name}"))
        self._sr_sets = {n: it.lr for g in data.ood_sets(size=size).values() for n, it in g.items()}
        self._ll_sets = {n: it.dark for g in data.lowlight_ood_sets(size=size).values() for n, it in g.items()}
        options += [(f"SR test: {n}", f"sr:{n}") for n in self._sr_sets]
        options += [(f"low-light test: {n}", f"ll:{n}") for n in self._ll_sets]
        options.append(("uploaded file", "upload"))
        first = "sr:" + next(iter(self._sr_sets))
        self.source = w.Dropdown(options=options, value=first, description="input")
        self.upload = w.FileUpload(accept="image/*", multiple=False, description="upload")
        self.model = w.Dropdown(options=self.models, value=self.models[0], description="model")
        self.temperature = w.FloatSlider(
            value=0.8, min=0.0, max=1.2, step=0.05, description="T", continuous_update=False
        )
        self.px = w.IntSlider(value=size // 2, min=0, max=size - 1, description="pixel x", continuous_update=False)
        self.py = w.IntSlider(value=size // 2, min=0, max=size - 1, description="pixel y", continuous_update=False)
        self.image = w.Image(format="png")
        self.trace_image = w.Image(format="png")
        self.status = w.HTML()
        controls = w.HBox(
            [w.VBox([self.source, self.upload, self.model]), w.VBox([self.temperature, self.px, self.py])]
        )
        self.widget = w.VBox([controls, self.status, self.image, self.trace_image])
        for control in (self.source, self.model, self.temperature):
            control.observe(lambda _: self.refresh(), names="value")
        self.upload.observe(self._on_upload, names="value")
        for control in (self.px, self.py):
            control.observe(lambda _: self.redraw(), names="value")
        self.refresh()

    # ------------------------------------------------------------------ state
    def _model(self, name: str):
        if name not in self._loaded:
            model = checkpoints.load_pretrained(name, device=self.device)
            try:
                stats = apply.load_ood_stats(name).to(self.device)
            except (FileNotFoundError, RuntimeError):
                stats = None
            self._loaded[name] = (model, stats)
        return self._loaded[name]

    def condition(self) -> Tensor:
        """The (3, size, size) condition for the current input and model."""
        from . import data

        model, _ = self._model(self.model.value)
        src = self.source.value
        if src == "upload":
            if "upload" not in self._inputs:
                raise ValueError("no file uploaded yet: use the upload button")
            return self._inputs["upload"]
        kind, _, name = src.partition(":")
        if kind == "sr":
            return self._sr_sets[name]
        if kind == "ll":
            return self._ll_sets[name]
        photo = data.load_photo(name)
        if model.factor > 1:
            return data.bicubic_down(data.fit_square(photo, self.size * model.factor), model.factor).clamp(0, 1)
        return data.darken(data.fit_square(photo, self.size), torch.Generator().manual_seed(0))[0]

    def _on_upload(self, change) -> None:
        from PIL import Image

        from . import data

        value = change["new"]
        items = list(value.values()) if isinstance(value, dict) else list(value)
        if not items:
            return
        content = bytes(items[0]["content"])
        try:
            x = apply.image_to_tensor(Image.open(io.BytesIO(content)), "the uploaded file")
        except Exception as err:  # a file that is not an image: say so in the widget
            self.status.value = f"<b>cannot read the uploaded file:</b> {err}"
            return
        self._inputs["upload"] = data.fit_square(x, self.size, whole=True)
        if self.source.value == "upload":
            self.refresh()
        else:
            self.source.value = "upload"

    # ------------------------------------------------------------------ work
    @torch.no_grad()
    def refresh(self) -> None:
        """Sample for the current input, model and temperature; then `redraw`."""
        start = time.perf_counter()
        try:
            cond = self.condition()
        except ValueError as err:
            self.status.value = f"<b>{err}</b>"
            return
        model, stats = self._model(self.model.value)
        param = next(model.parameters())
        c = cond[None].to(param.device, param.dtype)
        feats = model.condition(c)
        gen = torch.Generator().manual_seed(0)
        x, used, kept = apply.sampling_pass(model, feats, self.samples, self.temperature.value, gen, keep=True)
        self.kept = kept
        self.slopes = slope_maps(model, feats, kept)
        self.x = x.cpu()
        self.freq = metrics.artifact_mask(self.x).double().mean(0).numpy()
        self.risk = None
        if stats is not None:
            key = apply.feature_key(feats, tuple(c.shape[-2:]))
            self.risk = stats.score_maps(feats[key])[0].cpu().numpy()
        self.cond = cond
        self.report = metrics.artifact_report(self.x)["summary"]
        self.min_slope = min(used.values()) if used else None
        self.sample_seconds = time.perf_counter() - start
        self.redraw(start)

    def panels(self, model, py: int, px: int, size: tuple[int, int]) -> bytes:
        """One PNG, side by side at the output's size: the input, sample 1, the artifact frequency and
        the risk map (`PANELS`), the picked pixel marked by a cyan cross in each."""
        h, w = self.x.shape[-2:]
        shown = torch.nan_to_num(self.x[0], nan=0.0).clamp(0, 1).permute(1, 2, 0).numpy()
        parts = [
            _resize_nearest(self.cond.permute(1, 2, 0).clamp(0, 1).numpy(), h, w),
            shown,
            apply._colour(self.freq, "Reds", 0, 1) / 255.0,
        ]
        if self.risk is not None:
            r = self.risk
            parts.append(
                _resize_nearest(apply._colour(r, "magma", float(r.min()), float(r.max()), log=True), h, w) / 255
            )
        cy, cx = int((py + 0.5) * h / size[0]), int((px + 0.5) * w / size[1])
        arm, gap = max(h // 16, 4), 3
        out = []
        for p in parts:
            p = (np.asarray(p, np.float64) * 255).round().astype(np.uint8).copy()
            p[max(cy - arm, 0) : cy + arm + 1, max(cx - 1, 0) : cx + 2] = (0, 255, 255)
            p[max(cy - 1, 0) : cy + 2, max(cx - arm, 0) : cx + arm + 1] = (0, 255, 255)
            out += [p, np.full((h, gap, 3), 255, np.uint8)]
        return _png_array(np.concatenate(out[:-1], 1))

    def redraw(self, start: float | None = None) -> None:
        """Draw both figures for the current pixel."""
        from matplotlib.figure import Figure

        start = time.perf_counter() if start is None else start
        model, _ = self._model(self.model.value)
        py, px = self.py.value, self.px.value
        size = tuple(self.cond.shape[-2:])
        self.rows = pixel_trace(model, self.kept, self.slopes, py, px, size)
        self.image.value = self.panels(model, py, px, size)
        fig = Figure(figsize=(12, 2.8))
        ax1 = fig.subplots()
        pos = np.arange(len(self.rows))
        mags = np.array([min(r["max_abs"], 1e38) for r in self.rows])
        ax1.semilogy(pos, np.maximum(mags, 1e-6), "o-", color="tab:blue", label="max |value| at the pixel")
        ax1.set(xlabel="layer, in sampling order (latent first)", ylabel="max |value|",
                title=f"pixel (x={px}, y={py}) through the sampling chain of sample 1")  # fmt: skip
        ax2 = ax1.twinx()
        sp = [(k, r["slope"]) for k, r in enumerate(self.rows) if r["slope"] is not None]
        if sp:
            ax2.semilogy(
                [k for k, _ in sp], [max(s, 1e-12) for _, s in sp], "s", color="tab:red", label="smallest slope s"
            )
            ax2.axhline(1e-4, color="tab:red", ls=":", lw=1)
        ax2.set_ylabel("smallest slope s (red)")
        ax1.legend(loc="upper left", fontsize=10)
        fig.subplots_adjust(left=0.06, right=0.93, bottom=0.17, top=0.88)
        self.trace_image.value = _png(fig)
        self.seconds = time.perf_counter() - start
        slope = "n/a" if self.min_slope is None else f"{self.min_slope:.2g}"
        self.status.value = (
            f"{self.model.value}, T = {self.temperature.value:.2f}: artifact rate {self.freq.mean():.3f}, "
            f"non-finite values {self.report['nonfinite']}, smallest slope {slope}; updated in {self.seconds:.2f} s"
            f"<br>{' | '.join(PANELS[: 4 if self.risk is not None else 3])}"
        )


def explore(models: list[str] | None = None, samples: int = 3, size: int = 64, device: str = "cpu") -> Explorer:
    """Build the artifact explorer (see the module docstring); display ``.widget`` in a notebook."""
    return Explorer(models, samples, size, device)
