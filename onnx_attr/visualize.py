"""Pictures of attributions: a signed heatmap beside the input, written as PNG."""

from __future__ import annotations

import os
from typing import Optional

import numpy as np

from .fileio import atomic_write


def is_image_like(shape: tuple[int, ...]) -> bool:
    """[N, C, H, W] with few channels, or [N, H, W]: inputs a heatmap makes sense for."""
    return (len(shape) == 4 and shape[1] in (1, 3, 4) and min(shape[2:]) >= 4) or (
        len(shape) == 3 and min(shape[1:]) >= 4)


def signed_colors(values: np.ndarray) -> np.ndarray:
    """[H, W] -> [H, W, 3] uint8: red for positive, blue for negative, white for zero."""
    scale = np.abs(values).max()
    v = values / scale if scale > 0 else np.zeros_like(values)
    pos, neg = np.clip(v, 0, 1), np.clip(-v, 0, 1)
    rgb = np.stack([1 - neg, 1 - pos - neg, 1 - pos], axis=-1)
    return (np.clip(rgb, 0, 1) * 255).round().astype(np.uint8)


def _gray(image: np.ndarray) -> np.ndarray:
    """[C, H, W] or [H, W] input -> [H, W, 3] uint8, min-max scaled."""
    img = image.mean(0) if image.ndim == 3 else image
    low, high = float(img.min()), float(img.max())
    img = (img - low) / (high - low) if high > low else np.zeros_like(img)
    return np.repeat((img * 255).round().astype(np.uint8)[..., None], 3, axis=-1)


def heatmap_png(path: str | os.PathLike, attribution: np.ndarray, image: Optional[np.ndarray] = None,
                min_size: int = 256) -> None:
    """Write the input (grey) and the channel-summed signed attribution side by side."""
    from PIL import Image

    attr = attribution.sum(0) if attribution.ndim == 3 else attribution
    panels = [signed_colors(attr)]
    if image is not None:
        panels.insert(0, _gray(image))
    gap = np.full((attr.shape[0], max(1, attr.shape[1] // 16), 3), 255, np.uint8)
    strip = np.concatenate([p for panel in panels for p in (panel, gap)][:-1], axis=1)
    factor = max(1, -(-min_size // attr.shape[0]))
    picture = Image.fromarray(strip).resize((strip.shape[1] * factor, strip.shape[0] * factor), Image.NEAREST)
    atomic_write(path, lambda tmp: picture.save(tmp, format="PNG"))
