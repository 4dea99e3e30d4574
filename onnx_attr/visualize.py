"""Pictures of attributions, one example at a time, written atomically.

* images ([C, H, W] or [H, W]): the input, the signed map (red +, blue -), the absolute map, and
  the signed map laid over the input, side by side, with a colour scale;
* tabular features ([F]): a bar chart of the largest |attributions|, signed colours, values;
* token ids ([T]): an HTML page of the tokens with a background shaded by their score.

`plot` picks the kind from the input's shape and dtype. Colours are scaled to the largest
|value| of the picture, so 0 is always white and the scale is printed.
"""

from __future__ import annotations

import html
import os
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from .errors import InputError
from .fileio import atomic_write

RED, BLUE = np.array([214, 39, 40]), np.array([31, 119, 180])


def is_image_like(shape: tuple[int, ...]) -> bool:
    """[N, C, H, W] with few channels, or [N, H, W]: inputs a heatmap makes sense for."""
    return (len(shape) == 4 and shape[1] in (1, 3, 4) and min(shape[2:]) >= 4) or (
        len(shape) == 3 and min(shape[1:]) >= 4)


def picture_kind(shape: tuple[int, ...], integer: bool) -> Optional[str]:
    """'image', 'tokens' or 'bars' for a batch of this shape, or None when no picture fits."""
    if integer:
        return "tokens" if len(shape) == 2 else None
    if is_image_like(shape):
        return "image"
    if len(shape) == 2 or (len(shape) > 2 and int(np.prod(shape[1:])) <= 64):
        return "bars"
    return None


def signed_colors(values: np.ndarray, scale: Optional[float] = None) -> np.ndarray:
    """[...] -> [..., 3] uint8: red for positive, blue for negative, white for zero."""
    scale = float(np.abs(values).max()) if scale is None else scale
    v = values / scale if scale > 0 else np.zeros_like(values, dtype=np.float64)
    pos, neg = np.clip(v, 0, 1)[..., None], np.clip(-v, 0, 1)[..., None]
    rgb = 255 - pos * (255 - RED) - neg * (255 - BLUE)
    return np.clip(rgb, 0, 255).round().astype(np.uint8)


def _absolute_colors(values: np.ndarray) -> np.ndarray:
    """|values| from white to black."""
    scale = float(np.abs(values).max())
    v = np.abs(values) / scale if scale > 0 else np.zeros_like(values, dtype=np.float64)
    return np.repeat((255 * (1 - v)).round().astype(np.uint8)[..., None], 3, axis=-1)


def _input_colors(image: np.ndarray) -> np.ndarray:
    """[C, H, W] (C of 1, 3 or 4) or [H, W] -> [H, W, 3] uint8, min-max scaled; RGB kept."""
    img = np.asarray(image, dtype=np.float64)
    if img.ndim == 3:
        img = np.moveaxis(img[:3], 0, -1) if img.shape[0] >= 3 else img.mean(0)
    low, high = float(img.min()), float(img.max())
    img = (img - low) / (high - low) if high > low else np.zeros_like(img)
    img = (img * 255).round().astype(np.uint8)
    return img if img.ndim == 3 else np.repeat(img[..., None], 3, axis=-1)


def _overlay(attr: np.ndarray, image: np.ndarray) -> np.ndarray:
    """The input in grey, tinted by the signed colours where |attribution| is large."""
    grey = _input_colors(image).mean(-1, keepdims=True)
    scale = float(np.abs(attr).max())
    alpha = (np.abs(attr) / scale)[..., None] if scale > 0 else np.zeros((*attr.shape, 1))
    tinted = (1 - alpha) * (0.35 * grey + 0.65 * 255) + alpha * signed_colors(attr)
    return np.clip(tinted, 0, 255).round().astype(np.uint8)


def _font():
    from PIL import ImageFont

    return ImageFont.load_default()


def _save(path: str | os.PathLike, picture) -> Path:
    path = Path(path)
    atomic_write(path, lambda tmp: picture.save(tmp, format="PNG"))
    return path


def image_png(path: str | os.PathLike, attribution: np.ndarray, image: Optional[np.ndarray] = None,
              title: str = "", min_size: int = 192) -> Path:
    """Input | signed | absolute | overlay (the input panels only when `image` is given)."""
    from PIL import Image, ImageDraw

    attr = np.asarray(attribution, dtype=np.float64)
    attr = attr.sum(0) if attr.ndim == 3 else attr
    panels = [("signed", signed_colors(attr)), ("|attribution|", _absolute_colors(attr))]
    if image is not None:
        panels = [("input", _input_colors(image)), *panels, ("overlay", _overlay(attr, image))]
    factor = max(1, -(-min_size // attr.shape[0]))
    h, w = attr.shape[0] * factor, attr.shape[1] * factor
    gap, top, bottom = 12, 22 if title else 6, 44
    canvas = Image.new("RGB", (len(panels) * (w + gap) + gap, top + 16 + h + bottom), "white")
    draw, font = ImageDraw.Draw(canvas), _font()
    if title:
        draw.text((gap, 5), title, fill="black", font=font)
    for i, (label, rgb) in enumerate(panels):
        x = gap + i * (w + gap)
        draw.text((x, top), label, fill="black", font=font)
        canvas.paste(Image.fromarray(rgb).resize((w, h), Image.NEAREST), (x, top + 16))
    scale = float(np.abs(attr).max())
    bar = signed_colors(np.linspace(-1, 1, 256)[None, :].repeat(10, 0))
    x = gap + (len(panels) - 3 if image is not None else 0) * (w + gap)
    y = top + 16 + h + 8
    canvas.paste(Image.fromarray(bar).resize((w, 10)), (x, y))
    draw.text((x, y + 13), f"{-scale:.3g}", fill="black", font=font)
    draw.text((x + w // 2 - 3, y + 13), "0", fill="black", font=font)
    draw.text((x + w - 40, y + 13), f"{scale:.3g}", fill="black", font=font)
    return _save(path, canvas)


def bars_png(path: str | os.PathLike, attribution: np.ndarray, names: Optional[Sequence[str]] = None,
             values: Optional[np.ndarray] = None, title: str = "", top: int = 20) -> Path:
    """A horizontal bar per feature, the `top` largest |attributions| first, with the input value."""
    from PIL import Image, ImageDraw

    attr = np.asarray(attribution, dtype=np.float64).reshape(-1)
    names = [str(n) for n in names] if names is not None else [f"feature {i}" for i in range(attr.size)]
    if len(names) != attr.size:
        raise InputError(f"{len(names)} feature names for {attr.size} features")
    order = np.argsort(-np.abs(attr), kind="stable")[:top]
    inputs = None if values is None else np.asarray(values, dtype=np.float64).reshape(-1)
    labels = [names[i] + ("" if inputs is None else f" = {inputs[i]:.3g}") for i in order]
    font = _font()
    label_w = max(60, max(int(font.getlength(t)) for t in labels) + 12)
    row, bar_w, head = 18, 320, 24 if title else 8
    width, height = label_w + 2 * bar_w + 90, head + row * len(order) + 30
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((8, 6), title, fill="black", font=font)
    zero = label_w + bar_w
    scale = float(np.abs(attr).max()) or 1.0
    for r, i in enumerate(order):
        y = head + r * row
        draw.text((8, y + 3), labels[r], fill="black", font=font)
        length = int(round(bar_w * abs(attr[i]) / scale))
        color = tuple(int(c) for c in (RED if attr[i] > 0 else BLUE))
        x0, x1 = (zero, zero + length) if attr[i] >= 0 else (zero - length, zero)
        draw.rectangle([x0, y + 3, max(x1, x0 + 1), y + row - 3], fill=color)
        text_x = x1 + 4 if attr[i] >= 0 else zero + 4
        draw.text((text_x, y + 3), f"{attr[i]:+.3g}", fill="black", font=font)
    draw.line([zero, head, zero, head + row * len(order)], fill="black")
    shown = f"top {len(order)} of {attr.size} features by |attribution|; sum {attr.sum():+.4g}"
    draw.text((8, height - 20), shown, fill="black", font=font)
    return _save(path, canvas)


def tokens_html(path: str | os.PathLike, scores: np.ndarray, tokens: Optional[Sequence[str]] = None,
                title: str = "") -> Path:
    """The tokens in order, each on a background shaded by its score (red +, blue -)."""
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    tokens = [str(t) for t in tokens] if tokens is not None else [f"#{i}" for i in range(scores.size)]
    if len(tokens) != scores.size:
        raise InputError(f"{len(tokens)} tokens for {scores.size} scores")
    colors = signed_colors(scores)
    spans = "".join(
        f'<span title="{s:+.4g}" style="background: rgb({c[0]},{c[1]},{c[2]}); padding: 2px 3px; margin: 1px; '
        f'border-radius: 3px; display: inline-block">{html.escape(t)}</span>'
        for t, s, c in zip(tokens, scores, colors))
    scale = float(np.abs(scores).max())
    page = (f"<!doctype html><meta charset='utf-8'><title>{html.escape(title or 'attributions')}</title>"
            f"<body style='font-family: sans-serif; max-width: 60em'><h3>{html.escape(title)}</h3>"
            f"<p style='line-height: 2'>{spans}</p><p style='color: #555'>red: toward the target, blue: against; "
            f"full colour at |score| = {scale:.4g}; sum {scores.sum():+.4g}. Hover a token for its score.</p>"
            "</body>\n")
    path = Path(path)
    atomic_write(path, lambda tmp: tmp.write_text(page, encoding="utf-8"))
    return path


def plot(path: str | os.PathLike, attribution: np.ndarray, inputs: Optional[np.ndarray] = None, *,
         kind: str = "auto", names: Optional[Sequence[str]] = None, title: str = "") -> Path:
    """One example's picture, its kind chosen from the input's shape and dtype when `auto`.

    `path` gets the suffix of the kind (.png, or .html for tokens); `names` are feature names
    (bars) or token strings (tokens). Returns the path written.
    """
    attribution = np.asarray(attribution)
    if kind == "auto":
        integer = inputs is not None and not np.issubdtype(np.asarray(inputs).dtype, np.floating)
        kind = picture_kind((1, *attribution.shape), integer) or ""
        if not kind:
            raise InputError(f"no picture for attributions of shape {list(attribution.shape)}; pass kind=")
    path = Path(path)
    if kind == "image":
        return image_png(path.with_suffix(".png"), attribution, inputs, title)
    if kind == "bars":
        return bars_png(path.with_suffix(".png"), attribution, names, inputs, title)
    if kind == "tokens":
        return tokens_html(path.with_suffix(".html"), attribution, names, title)
    raise InputError(f"unknown picture kind {kind!r}; use auto, image, bars or tokens")
