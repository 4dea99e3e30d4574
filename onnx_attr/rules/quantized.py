"""Dynamically quantized blocks: quantize the input over its own range, an integer op with
integer weights, dequantize. DeepLift treats the block as the float op it approximates (the
dequantized weights give the multipliers) and credits the rounding residual back exactly:
for each example, r = Δy − W·Δx (what quantization changed of the block's difference) is spread
over that example's inputs in proportion to Δx, m = Wᵀg + Δx·(g·r)/‖Δx‖², so
Σ m·Δx = g·W·Δx + g·r = g·Δy, as exact as the secant of a unary op.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor


def credited(exact: Callable[[Tensor], Tensor], linear: Callable[[Tensor], Tensor], x: Tensor, x0: Tensor,
             batch_axis: int) -> tuple[Tensor, Tensor]:
    """(y, y0) = (exact(x), exact(x0)) carrying the multipliers of `linear` plus the residual's share.

    The value is the quantized block's own; only the backward differs. An example whose Δx is 0 gets
    no share (its residual is then 0 unless the block's range is shared with other examples)."""
    y, y0 = exact(x.detach()), exact(x0)
    z = linear(x)
    residual = ((y - y0) - (z.detach() - linear(x0))).detach()
    axes = tuple(a for a in range(x.dim()) if a != batch_axis % x.dim())
    dx = (x - x0).detach()
    norm2 = (dx * dx).sum(axes, keepdim=True)
    share = ((x - x0) * dx).sum(axes, keepdim=True) / torch.where(norm2 > 0, norm2, torch.ones_like(norm2))
    # x and y have the same rank and batch axis (the map acts on the last axis): share broadcasts
    return y.detach() + (z - z.detach()) + residual * (share - share.detach()), y0
