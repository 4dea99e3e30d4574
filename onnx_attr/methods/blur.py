"""A blurred copy of the input as the baseline, for models that are not defined at zero.

A constant baseline (zeros, a mean of one example) leaves some exports without an output: a
min-max normalisation divides 0 by 0, a log of the input meets 0. A Gaussian blur of each example
along its long axes keeps every value a weighted mean of the example's own values (so inside any
range, sign or interval the input is in) while removing the detail that the attribution explains,
and it stays non-constant unless the input is (the "blurred input" baseline of the IG literature).
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch
from torch.nn import functional as F

#: axes shorter than this (colour channels, a handful of features) are not blurred
MIN_BLURRED_SIZE = 8
#: the Gaussian's standard deviation as a fraction of the axis it runs along
SIGMA_FRACTION = 0.1
#: kernels up to this radius run as a direct convolution, longer ones by FFT (memory linear in the axis)
DIRECT_RADIUS = 64


def blurred(x, batch_axis: Optional[int] = 0, sigma_fraction: float = SIGMA_FRACTION):
    """x blurred along every axis of at least `MIN_BLURRED_SIZE` elements except `batch_axis`, each
    with a Gaussian of σ = `sigma_fraction` × that axis's length (edges replicated), in x's own
    type (numpy array or tensor). An integer x (token ids) is returned as it is: ids do not blur."""
    tensor = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(x))
    if not tensor.is_floating_point():
        return x
    if not 0 < sigma_fraction <= 1:
        raise ValueError(f"sigma_fraction must be in (0, 1], got {sigma_fraction}")
    out = tensor.detach().double()
    for axis in range(out.dim()):
        if axis != (None if batch_axis is None else batch_axis % max(out.dim(), 1)) \
                and out.shape[axis] >= MIN_BLURRED_SIZE:
            out = _along(out, axis, max(out.shape[axis] * sigma_fraction, 0.5))
    out = out.to(tensor.dtype)
    return out if isinstance(x, torch.Tensor) else out.numpy()


def _along(t: torch.Tensor, axis: int, sigma: float) -> torch.Tensor:
    """A 1-D Gaussian blur along `axis`, its edges replicated (the kernel's weights sum to 1)."""
    radius = min(int(math.ceil(3 * sigma)), t.shape[axis] - 1)
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = (kernel / kernel.sum()).view(1, 1, -1)
    moved = t.movedim(axis, -1)
    rows = moved.reshape(-1, 1, moved.shape[-1])
    padded = F.pad(rows, (radius, radius), mode="replicate")
    if radius <= DIRECT_RADIUS:
        return F.conv1d(padded, kernel).reshape(moved.shape).movedim(-1, axis)
    # a long axis (a CTC decoder's 18385 classes: σ 1838): conv1d's unfolded copy would hold
    # rows × kernel × length values (29 GB there); the same convolution by FFT holds rows × length
    size = padded.shape[-1] + kernel.shape[-1] - 1
    full = torch.fft.irfft(torch.fft.rfft(padded, size) * torch.fft.rfft(kernel.flip(-1), size), size)
    return full[..., kernel.shape[-1] - 1:padded.shape[-1]].reshape(moved.shape).movedim(-1, axis)
