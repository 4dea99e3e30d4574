"""Pictures of attributions, one example at a time, written atomically.

* images ([C, H, W] or [H, W]): the input, the signed map (red +, blue -), the absolute map, and
  the signed map laid over the input, each a framed panel with its own colour bar;
* tabular features ([F]): a bar chart of the largest |attributions|, signed colours, values;
* token ids ([T]): an HTML page of the tokens with a background shaded by their score.

`plot` picks the kind from the input's shape and dtype. Colours saturate at a clip value, the
`clip_percentile`-th largest percent of |values| (2 by default, like Captum's
`visualize_image_attr`): scaled to the single largest value, a 224x224 map is nearly white
because a few pixels dwarf the rest. 0 is always white, and each colour bar prints its range.

matplotlib draws the images and bars, imported inside the functions (`import onnx_attr` stays
fast) and through its object API on an Agg canvas, so no global backend is set.
"""

from __future__ import annotations

import html
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np

from onnx_attr.errors import InputError
from onnx_attr.fileio import atomic_write

RED, BLUE = np.array([214, 39, 40]), np.array([31, 119, 180])
#: The default share (in percent) of the largest |values| drawn at full colour.
CLIP_PERCENTILE = 2.0
#: Figure layouts kept for reuse (they differ in colour bar arrows, so a batch has a few).
FIGURES_KEPT = 6


@dataclass
class PictureOptions:
    """What `write_pictures` draws: `enabled` False draws nothing; `all_kinds` adds bars and token
    pages to the image heatmaps; names by index for classes (titles), tokens and features. `figures`
    keeps a drawn figure for the next picture of the same layout (see `image_png`), so a job over
    many input files builds it once."""

    enabled: bool = True
    all_kinds: bool = False
    clip_percentile: float = CLIP_PERCENTILE
    class_names: Optional[dict[int, str]] = None
    vocab: Optional[dict[int, str]] = None
    feature_names: Optional[Sequence[str]] = None
    figures: dict = field(default_factory=dict, repr=False, compare=False)


def is_image_like(shape: tuple[int, ...]) -> bool:
    """[N, C, H, W] with few channels, [N, H, W, C] (Keras, tf2onnx), or [N, H, W]: inputs a heatmap
    makes sense for."""
    return (len(shape) == 4 and shape[1] in PICTURE_CHANNELS and min(shape[2:]) >= 4) or channels_last(shape) or (
        len(shape) == 3 and min(shape[1:]) >= 4)


def is_waveform_like(shape: tuple[int, ...]) -> bool:
    """[N, T] or [N, C, T] with one or two channels and WAVEFORM_SAMPLES samples or more: a signal, drawn
    over time (a bar per sample of the top 20 says nothing of 16000); an [N, T] one only where the input
    is known to be audio (`picture_kind`'s `signal`)."""
    return (len(shape) == 2 or len(shape) == 3 and shape[1] in (1, 2)) and shape[-1] >= WAVEFORM_SAMPLES


#: the fewest samples drawn as a waveform (a quarter second at 16 kHz); fewer are features, drawn as bars
WAVEFORM_SAMPLES = 4000
#: time bins a waveform's attributions are summed into for its picture
WAVEFORM_BINS = 200


#: channel counts drawn as a picture: grey, two stains (Mesmer's nuclear and membrane: hunt 32), RGB, RGBA
PICTURE_CHANNELS = (1, 2, 3, 4)


def channels_last(shape: tuple[int, ...]) -> bool:
    """[N, H, W, C] with few channels last and none first (a 3 x 3 x 3 cube stays channels-first)."""
    return len(shape) == 4 and shape[3] in PICTURE_CHANNELS and shape[1] not in PICTURE_CHANNELS \
        and min(shape[1:3]) >= 4


def picture_kind(shape: tuple[int, ...], integer: bool, signal: bool = False) -> Optional[str]:
    """'image', 'waveform', 'tokens' or 'bars' for a batch of this shape, or None when no picture fits.
    `signal`: the input is known to be audio (read from an audio file), so one of [N, T] is a waveform,
    where a table of thousands of features ([N, 5000] gene expressions) stays bars."""
    if integer:
        return "tokens" if len(shape) == 2 else None
    if is_image_like(shape):
        return "image"
    if is_waveform_like(shape) and (signal or len(shape) == 3):
        return "waveform"
    if len(shape) == 2 or (len(shape) > 2 and int(np.prod(shape[1:])) <= 64):
        return "bars"
    return None


def check_clip_percentile(clip_percentile: float) -> float:
    """The share of values to saturate, in percent: 0 (scale to the largest) up to, not including, 100."""
    value = float(clip_percentile)
    if not 0.0 <= value < 100.0:
        raise InputError(f"clip percentile {clip_percentile!r} is not in [0, 100): it is the percent of the "
                         f"largest |attributions| drawn at full colour (default {CLIP_PERCENTILE:g})")
    return value


def clip_scale(values: np.ndarray, clip_percentile: float = CLIP_PERCENTILE) -> float:
    """The |value| at which colours saturate: the (100 - clip_percentile)-th percentile of |values|
    (linear interpolation between order statistics), or the largest |value| when that is 0 (sparse
    maps); 1.0 for an all-zero map, so it draws white rather than dividing by zero."""
    magnitude = np.abs(np.asarray(values, dtype=np.float64)).reshape(-1)
    magnitude = magnitude[np.isfinite(magnitude)]
    if magnitude.size == 0:
        return 1.0
    scale = float(np.percentile(magnitude, 100.0 - check_clip_percentile(clip_percentile)))
    if scale <= 0.0:
        scale = float(magnitude.max())
    return scale if scale > 0.0 else 1.0


def signed_colors(values: np.ndarray, scale: Optional[float] = None) -> np.ndarray:
    """[...] -> [..., 3] uint8: red for positive, blue for negative, white for zero, full colour
    from |value| = scale on (the largest |value| when no scale is given)."""
    values = np.asarray(values, dtype=np.float64)
    if scale is None:
        scale = float(np.abs(values).max()) if values.size else 0.0
    v = values / scale if scale > 0 else np.zeros_like(values, dtype=np.float64)
    pos, neg = np.clip(v, 0, 1)[..., None], np.clip(-v, 0, 1)[..., None]
    rgb = 255 - pos * (255 - RED) - neg * (255 - BLUE)
    return np.clip(rgb, 0, 255).round().astype(np.uint8)


def _signed_cmap():
    """Blue - white - red, linear in each half: the colours of `signed_colors`, for matplotlib."""
    from matplotlib.colors import LinearSegmentedColormap

    return LinearSegmentedColormap.from_list("onnx_attr_signed", [BLUE / 255, (1.0, 1.0, 1.0), RED / 255])


def _extend(values: np.ndarray, low: Optional[float], high: float) -> str:
    """Colour bar arrows for values beyond the clip, so a clipped scale says it is clipped."""
    above = bool(np.nanmax(values) > high)
    below = low is not None and bool(np.nanmin(values) < low)
    return {(True, True): "both", (True, False): "max", (False, True): "min"}.get((above, below), "neither")


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(figure)
    return figure


def _save_figure(path: str | os.PathLike, figure, title: str = "") -> Path:
    """PNG with the title also in its metadata (PIL: `Image.open(path).text["Title"]`), for search."""
    path = Path(path)
    metadata = {"Software": "onnx-attr", **({"Title": title} if title else {})}
    atomic_write(path, lambda tmp: figure.savefig(tmp, format="png", dpi=figure.dpi, facecolor="white",
                                                  metadata=metadata, pil_kwargs={"compress_level": 3}))
    return path


def _frame(ax) -> None:
    """A thin black frame and no ticks: the panel's edge is visible on white backgrounds."""
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(True)
        spine.set_color("black")
        spine.set_linewidth(0.8)


def _input_display(image: np.ndarray) -> tuple[np.ndarray, float, float]:
    """[C, H, W] (C of 1 to 4) or [H, W] -> ([H, W] or [H, W, 3] in [0, 1], low, high): the input
    min-max scaled, RGB kept, other channel counts averaged."""
    img = np.asarray(image, dtype=np.float64)
    if img.ndim == 3:
        img = np.moveaxis(img[:3], 0, -1) if img.shape[0] >= 3 else img.mean(0)
    finite = img[np.isfinite(img)]
    low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    scaled = (img - low) / (high - low) if high > low else np.zeros_like(img)
    return np.clip(np.nan_to_num(scaled), 0.0, 1.0), low, high


def image_png(path: str | os.PathLike, attribution: np.ndarray, image: Optional[np.ndarray] = None,
              title: str = "", clip_percentile: float = CLIP_PERCENTILE, figures: Optional[dict] = None) -> Path:
    """Input | signed | absolute | overlay (the input panels only when `image` is given), as a PNG.

    `figures`, a dict kept between calls, lets a batch's pictures share one figure: building the
    axes and colour bars costs more than drawing them."""
    return _save_figure(path, image_figure(attribution, image, title, clip_percentile, figures), title)


def image_figure(attribution: np.ndarray, image: Optional[np.ndarray] = None, title: str = "",
                 clip_percentile: float = CLIP_PERCENTILE, figures: Optional[dict] = None):
    """The matplotlib Figure of `image_png`: channels of the attribution summed, every panel framed
    with a colour bar under it (a grid of 2 rows: panels, then their bars)."""
    attr = np.asarray(attribution, dtype=np.float64)
    attr = attr.sum(0) if attr.ndim == 3 else attr
    scale = clip_scale(attr, clip_percentile)
    shown = None if image is None else _input_display(image)
    extends = (_extend(attr, -scale, scale), _extend(np.abs(attr), None, scale))
    key = (attr.shape, None if shown is None else shown[0].shape, extends, title.count("\n") if title else -1)
    panels = (figures or {}).get(key)
    if panels is None:
        panels = _ImagePanels(attr.shape, None if shown is None else shown[0].ndim == 3, extends,
                              title.count("\n") + 1 if title else 0)
        if figures is not None:
            while len(figures) >= FIGURES_KEPT:  # memory stays bounded: the oldest layout goes
                figures.pop(next(iter(figures)))
            figures[key] = panels
    return panels.draw(attr, shown, title, scale)


class _ImagePanels:
    """The figure of `image_figure` for one layout (map shape, input or not, RGB or not, colour bar
    arrows, title lines), drawn again with each example's data, scales and labels."""

    def __init__(self, shape: tuple[int, ...], rgb: Optional[bool], extends: tuple[str, str], title_lines: int):
        from matplotlib.cm import ScalarMappable
        from matplotlib.colors import Normalize

        with_image = rgb is not None
        self.cmap, self.with_image = _signed_cmap(), with_image
        n_panels = 4 if with_image else 2
        height = 3.25 + 0.17 * title_lines
        self.figure = figure = _figure(2.75 * n_panels, height)
        grid = figure.add_gridspec(2, n_panels, height_ratios=[18, 1], left=0.025, right=0.975, wspace=0.22,
                                   hspace=0.12, bottom=0.5 / height, top=1 - (0.38 + 0.17 * title_lines) / height)
        self.title = figure.suptitle("", fontsize=9.5, y=1 - 0.06 / height, va="top") if title_lines else None
        blank, signed, magnitude = np.zeros(shape), extends[0], extends[1]
        layout = [("signed attribution", "signed", signed), ("|attribution|", "magnitude", magnitude)]
        if with_image:
            layout = [("input", "input", "neither"), *layout, ("signed, over the input", "overlay", signed)]
        self.images, self.bars = {}, {}
        for column, (label, role, extend) in enumerate(layout):
            ax = figure.add_subplot(grid[0, column])
            cmap = {"input": "gray", "magnitude": "Greys"}.get(role, self.cmap)
            if role == "input":
                self.images[role] = ax.imshow(np.zeros((*shape, 3)) if rgb else blank, cmap="gray", vmin=0, vmax=1,
                                              interpolation="nearest")
            elif role == "overlay":
                self.images["base"] = ax.imshow(blank, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
                self.images[role] = ax.imshow(np.zeros((*shape, 4)), interpolation="nearest")
            else:
                self.images[role] = ax.imshow(blank, cmap=cmap, vmin=-1 if role == "signed" else 0, vmax=1,
                                              interpolation="nearest")
            ax.set_title(label, fontsize=9)
            _frame(ax)
            bar = figure.colorbar(ScalarMappable(Normalize(-1, 1), cmap), cax=figure.add_subplot(grid[1, column]),
                                  orientation="horizontal", extend=extend)
            bar.ax.tick_params(labelsize=7.5)
            self.bars[role] = (bar, cmap, "input value" + (" (each channel)" if rgb else ""))

    def draw(self, attr: np.ndarray, shown: Optional[tuple[np.ndarray, float, float]], title: str, scale: float):
        from matplotlib.cm import ScalarMappable
        from matplotlib.colors import Normalize

        largest = float(np.nanmax(np.abs(attr))) if attr.size else 0.0
        clipped = f"colours clipped at ±{scale:.3g}" if scale < largest else f"full scale ±{scale:.3g}"
        if self.title is not None:
            self.title.set_text(title)
        self.images["signed"].set_data(attr)
        self.images["signed"].set_clim(-scale, scale)
        self.images["magnitude"].set_data(np.abs(attr))
        self.images["magnitude"].set_clim(0, scale)
        ranges = {"signed": (-scale, scale, clipped), "magnitude": (0.0, scale, clipped.replace("±", ""))}
        if self.with_image and shown is not None:
            ranges["overlay"] = (-scale, scale, clipped)
            picture, low, high = shown
            grey = picture.mean(-1) if picture.ndim == 3 else picture
            tint = self.cmap(np.clip(attr / scale, -1, 1) / 2 + 0.5)
            tint[..., 3] = 0.9 * np.clip(np.abs(attr) / scale, 0.0, 1.0)
            self.images["input"].set_data(picture)
            self.images["base"].set_data(0.3 + 0.55 * grey)
            self.images["overlay"].set_data(tint)
            ranges["input"] = (low, high, None)
        for role, (low, high, caption) in ranges.items():
            bar, cmap, default = self.bars[role]
            bar.update_normal(ScalarMappable(Normalize(low, high), cmap))
            if caption is not None:  # three ticks: the labels of small scales stay apart
                ticks = [low, (low + high) / 2, high]
                bar.set_ticks(ticks, labels=[f"{t:.3g}" for t in ticks])
            bar.set_label(caption or default, fontsize=7.5)
        return self.figure


def bars_png(path: str | os.PathLike, attribution: np.ndarray, names: Optional[Sequence[str]] = None,
             values: Optional[np.ndarray] = None, title: str = "", top: int = 20) -> Path:
    """A horizontal bar per feature, the `top` largest |attributions| first, with the input value.
    Bar lengths are the values themselves (nothing to clip), on one shared axis through 0."""
    attr = np.asarray(attribution, dtype=np.float64).reshape(-1)
    names = [str(n) for n in names] if names is not None else [f"feature {i}" for i in range(attr.size)]
    if len(names) != attr.size:
        raise InputError(f"{len(names)} feature names for {attr.size} features")
    order = np.argsort(-np.abs(attr), kind="stable")[:top]
    inputs = None if values is None else np.asarray(values, dtype=np.float64).reshape(-1)
    labels = [names[i] + ("" if inputs is None else " missing" if np.isnan(inputs[i]) else f" = {inputs[i]:.3g}")
              for i in order]
    title_lines = title.count("\n") + 1 if title else 0
    height = 0.9 + 0.27 * len(order) + 0.18 * title_lines
    figure = _figure(8.5, height)
    ax = figure.add_axes((0.36, 0.55 / height, 0.6, 1 - (0.55 + 0.18 * title_lines + 0.12) / height))
    shown = attr[order]
    colors = [RED / 255 if v > 0 else BLUE / 255 for v in shown]
    rows = np.arange(len(order))
    ax.barh(rows, shown, color=colors, height=0.7)
    ax.set_yticks(rows, labels, fontsize=8)
    ax.invert_yaxis()
    ax.axvline(0, color="black", linewidth=0.8)
    reach = float(np.abs(shown).max()) if shown.size else 1.0
    ax.set_xlim(-1.25 * (reach or 1.0), 1.25 * (reach or 1.0))
    for r, v in zip(rows, shown):
        ax.text(v, r, f" {v:+.3g} ", va="center", ha="left" if v >= 0 else "right", fontsize=7.5)
    ax.tick_params(axis="x", labelsize=7.5)
    ax.set_xlabel(f"attribution (top {len(order)} of {attr.size} features by |attribution|; "
                  f"sum {attr.sum():+.4g})", fontsize=8)
    if title:
        figure.suptitle(title, fontsize=9, y=1 - 0.05 / height, va="top")
    return _save_figure(path, figure, title)


def waveform_png(path: str | os.PathLike, attribution: np.ndarray, signal: Optional[np.ndarray] = None,
                 title: str = "", bins: int = WAVEFORM_BINS) -> Path:
    """The signal over time (channels averaged), and under it its attributions summed over `bins`
    equal stretches of samples, red toward the target, blue against: where in time the evidence is.
    The bins' sum is the attributions' sum."""
    attr = np.asarray(attribution, dtype=np.float64)
    attr = attr.reshape(-1, attr.shape[-1]).sum(0)  # channels together: one value per sample
    samples = attr.size
    edges = np.linspace(0, samples, min(bins, samples) + 1).astype(np.int64)
    summed = np.add.reduceat(attr, edges[:-1])
    middles = (edges[:-1] + edges[1:]) / 2
    title_lines = title.count("\n") + 1 if title else 0
    height = 4.2 + 0.18 * title_lines
    figure = _figure(10.0, height)
    top = 1 - (0.18 * title_lines + 0.15) / height
    wave_ax = figure.add_axes((0.08, top - 1.35 / height, 0.9, 1.25 / height))
    attr_ax = figure.add_axes((0.08, 0.55 / height, 0.9, top - 1.35 / height - 0.85 / height), sharex=wave_ax)
    if signal is not None:
        shown = np.asarray(signal, dtype=np.float64)
        shown = shown.reshape(-1, shown.shape[-1]).mean(0)
        wave_ax.plot(np.arange(shown.size), shown, color="0.35", linewidth=0.5)
    wave_ax.set_ylabel("input", fontsize=8)
    wave_ax.tick_params(labelsize=7.5, labelbottom=False)
    colors = [RED / 255 if v > 0 else BLUE / 255 for v in summed]
    attr_ax.bar(middles, summed, width=np.diff(edges), color=colors, linewidth=0)
    attr_ax.axhline(0, color="black", linewidth=0.6)
    attr_ax.set_xlim(0, samples)
    attr_ax.tick_params(labelsize=7.5)
    attr_ax.set_ylabel("attribution", fontsize=8)
    attr_ax.set_xlabel(f"sample (attributions summed over {len(summed)} stretches of ~{samples / len(summed):.0f} "
                       f"samples; sum {attr.sum():+.4g})", fontsize=8)
    if title:
        figure.suptitle(title, fontsize=9, y=1 - 0.05 / height, va="top")
    return _save_figure(path, figure, title)


def tokens_html(path: str | os.PathLike, scores: np.ndarray, tokens: Optional[Sequence[str]] = None,
                title: str = "", clip_percentile: float = CLIP_PERCENTILE,
                ids: Optional[Sequence[int]] = None) -> Path:
    """The tokens in order, each on a background shaded by its score (red +, blue -); hovering shows
    the token id (when given) and its score."""
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    tokens = [str(t) for t in tokens] if tokens is not None else [f"#{i}" for i in range(scores.size)]
    if len(tokens) != scores.size:
        raise InputError(f"{len(tokens)} tokens for {scores.size} scores")
    scale = clip_scale(scores, clip_percentile)
    colors = signed_colors(scores, scale)
    ids = [None] * scores.size if ids is None else [int(i) for i in ids]
    spans = "".join(
        f'<span title="{"" if i is None else f"id {i}: "}{s:+.4g}" style="background: rgb({c[0]},{c[1]},{c[2]}); '
        f'padding: 2px 3px; margin: 1px; border-radius: 3px; display: inline-block; white-space: pre">'
        f'{html.escape(t)}</span>'
        for t, s, c, i in zip(tokens, scores, colors, ids))
    largest = float(np.abs(scores).max()) if scores.size else 0.0
    page = (f"<!doctype html><meta charset='utf-8'><title>{html.escape(title.splitlines()[0] if title else 'attributions')}"
            f"</title><body style='font-family: sans-serif; max-width: 60em'>"
            f"<h3>{'<br>'.join(html.escape(line) for line in title.splitlines())}</h3>"
            f"<p style='line-height: 2'>{spans}</p><p style='color: #555'>red: toward the target, blue: against; "
            f"full colour at |score| &ge; {scale:.4g} (largest {largest:.4g}); sum {scores.sum():+.4g}. "
            "Hover a token for its id and score.</p></body>\n")
    path = Path(path)
    atomic_write(path, lambda tmp: tmp.write_text(page, encoding="utf-8"))
    return path


def plot(path: str | os.PathLike, attribution: np.ndarray, inputs: Optional[np.ndarray] = None, *,
         kind: str = "auto", names: Optional[Sequence[str]] = None, title: str = "",
         clip_percentile: float = CLIP_PERCENTILE, figures: Optional[dict] = None) -> Path:
    """One example's picture, its kind chosen from the input's shape and dtype when `auto`.

    `path` gets the suffix of the kind (.png, or .html for tokens); `names` are feature names
    (bars) or token strings (tokens); `figures` as in `image_png`. Returns the path written.
    """
    check_clip_percentile(clip_percentile)
    attribution = np.asarray(attribution)
    if kind == "auto":
        integer = inputs is not None and not np.issubdtype(np.asarray(inputs).dtype, np.floating)
        kind = picture_kind((1, *attribution.shape), integer) or ""
        if not kind:
            raise InputError(f"no picture for attributions of shape {list(attribution.shape)}; pass kind=")
    path = Path(path)
    if kind == "image" and channels_last((1, *attribution.shape)):  # [H, W, C]: drawn channels-first
        attribution = np.moveaxis(attribution, -1, 0)
        inputs = None if inputs is None else np.moveaxis(np.asarray(inputs), -1, 0)
    if kind == "image":
        return image_png(path.with_suffix(".png"), attribution, inputs, title, clip_percentile, figures)
    if kind == "bars":
        return bars_png(path.with_suffix(".png"), attribution, names, inputs, title)
    if kind == "waveform":
        return waveform_png(path.with_suffix(".png"), attribution, inputs, title)
    if kind == "tokens":
        ids = None if inputs is None else np.asarray(inputs).reshape(-1)
        return tokens_html(path.with_suffix(".html"), attribution, names, title, clip_percentile, ids)
    raise InputError(f"unknown picture kind {kind!r}; use auto, image, waveform, bars or tokens")


def describe_target(row: Optional[np.ndarray], target: Any, final_activation: Optional[dict],
                    class_names: Optional[dict[int, str]] = None) -> str:
    """'target 3 "three": logit 9.76, p = 0.998 (softmax of the logits)' for one example.

    `row` is the example's explained output (None when unknown); the probability is given when
    the model's final activation was stripped (softmax, or the sigmoid of a binary logit), the
    value as the model gives it otherwise."""
    if isinstance(target, str):  # already described (a region, a path), with its summed score
        return target
    if row is not None:
        row = np.asarray(row, dtype=np.float64)
    if target is None:  # a one-value output ([N, 1] or [N]) needs no target
        if row is None or row.size != 1:
            return "the output"
        text, index, value = "the output", 0, float(row.reshape(-1)[0])
        row = row.reshape(-1)
    else:
        index = tuple(target) if isinstance(target, (list, tuple)) else int(target)
        text = f"target {index}"
        name = class_names.get(index) if class_names is not None and isinstance(index, int) else None
        if name is not None:
            text += f" {name!r}"
        if row is None:
            return text
        try:
            value = float(row[index])
        except (IndexError, TypeError):
            return text
    op = (final_activation or {}).get("op_type")
    if final_activation is None or op is None:
        return f"{text}: output {value:.4g}"
    if not final_activation.get("stripped"):
        return f"{text}: {'log p' if op == 'LogSoftmax' else 'p'} = {value:.4g} (the model's {op})"
    if op == "Sigmoid":
        return f"{text}: logit {value:.4g}, p = {_probability(1.0 / (1.0 + np.exp(-value)))} (sigmoid of the logit)"
    if row.ndim == 1:
        shifted = np.exp(row - row.max())
        return f"{text}: logit {value:.4g}, p = {_probability(shifted[index] / shifted.sum())} (softmax of the logits)"
    return f"{text}: logit {value:.4g}"


def _probability(p: float) -> str:
    """Three decimals, or the distance from 1 when it rounds to 1 (0.99998 reads as "1 - 2e-05")."""
    if p > 0.9995:
        return f"1 - {1.0 - p:.1e}"
    return f"{p:.3f}" if p >= 0.001 else f"{p:.1e}"


def write_pictures(folder: Path, attributions: dict, inputs: dict, *, options: PictureOptions, target: Any,
                   delta: Any, method: str, baseline: str, final_activation: Optional[dict],
                   outputs: Callable[[], Any], stem: Callable[[str], str] = lambda s: s,
                   signals: Sequence[str] = ()) -> list[str]:
    """The pictures of an attribution job, named `<kind>_<input>_<example>`: image and waveform inputs always
    (unless `options.enabled` is False); tabular bars and token pages with `options.all_kinds`.
    `outputs()` gives the explained output, computed only when a picture is drawn."""
    if not options.enabled:
        return []
    check_clip_percentile(options.clip_percentile)
    written: list[str] = []
    explained = None
    deltas = np.asarray(delta.detach().cpu() if hasattr(delta, "detach") else delta, dtype=np.float64).reshape(-1)
    for name, values in attributions.items():
        values = np.asarray(values)
        x = np.asarray(inputs[name])
        kind = picture_kind(values.shape, not np.issubdtype(x.dtype, np.floating), name in signals)
        if kind is None or (kind not in ("image", "waveform") and not options.all_kinds):
            continue
        if kind == "image" and channels_last(values.shape) and x.shape == values.shape:  # drawn channels-first
            values, x = np.moveaxis(values, -1, 1), np.moveaxis(x, -1, 1)
        if explained is None:
            out = outputs()
            out = None if out is None else np.asarray(out.detach().cpu() if hasattr(out, "detach") else out)
            explained = out if out is not None and out.shape[:1] == values.shape[:1] else np.empty(0)
        # rows pooled into one example (ICLabel's four copies of one component): one target for them all
        whole = isinstance(target, list) and len(target) == 1 != values.shape[0]
        for i in range(values.shape[0]):
            t = target[0] if whole else target[i] if isinstance(target, list) else target
            row = explained[i] if explained.size else None
            # a sum is only read against a completeness identity: a perturbation method's block values repeat on
            # every element of their block (FeatureAblation's "+3915" for an output of 0.89, hunt 33), its delta NaN
            complete = deltas.size == values.shape[0] and bool(np.isfinite(deltas[i]))
            title = "\n".join([
                f"{method}, input {name!r}, " + (f"row {i} of one example" if whole else f"example {i}"),
                describe_target(row, t, final_activation, options.class_names),
                f"baseline {baseline}" + (f"; sum of attributions {values[i].sum():+.4g}; convergence delta "
                                          f"{deltas[i]:+.2e}" if complete else ""),
            ])
            names: Optional[Sequence[str]] = options.feature_names
            if kind == "tokens":
                vocab = options.vocab or {}
                names = [vocab.get(int(v), f"#{int(v)}") for v in x[i].reshape(-1)]
            prefix = {"image": "heatmap", "waveform": "waveform", "bars": "bars", "tokens": "tokens"}[kind]
            path = plot(folder / f"{prefix}_{stem(name)}_{i}", values[i], x[i], kind=kind, names=names, title=title,
                        clip_percentile=options.clip_percentile, figures=options.figures)
            written.append(path.name)
    return written
