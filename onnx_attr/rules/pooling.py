"""Max over windows (MaxPool, GlobalMaxPool, ReduceMax/Min): the cross-max rule.

For a window with y = max(x), y0 = max(x0) and m = max(y, y0), the rule credits m - y0 to the
element where x peaks and y - m to the element where x0 peaks; the two sum to y - y0, so it is
exact, and it is the rule Captum uses for max pooling. A multiplier is that credit divided by
the element's Δx; where Δx is ~0 the credit is ~0 too, and the plain gradient is used.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from ..converters.pooling import pool_geometry
from .base import Rule, rule
from .composite import _reduce_axes
from .paired import secant_tolerance


def unfold_windows(t: Tensor, extents, strides, dilations, begin, outs) -> Tensor:
    """[N, C, *spatial] -> [N, C, *outs, K]: every pooling window's elements on the last axis."""
    rank = len(extents)
    need = [(o - 1) * s + e for o, s, e in zip(outs, strides, extents)]
    end = [max(nd - n - b, 0) for nd, n, b in zip(need, t.shape[2:], begin)]
    pads = [p for axis in reversed(range(rank)) for p in (begin[axis], end[axis])]
    t = F.pad(t, pads)
    for axis in range(rank):
        t = t.unfold(2 + axis, extents[axis], strides[axis])[..., :: dilations[axis]]
        t = t.narrow(2 + axis, 0, outs[axis])
    return t.reshape(*t.shape[: 2 + rank], math.prod(t.shape[2 + rank:]))


class CrossExtremum(Rule):
    """Shared by every max/min over windows; subclasses say how to lay the windows out."""

    sign = 1.0  # -1 turns max into min

    def windows(self, info, x: Tensor, args) -> tuple[Callable[[Tensor], Tensor], Tensor | None]:
        """A linear map x -> [..., K] windows, and a validity mask (None when all are valid)."""
        raise NotImplementedError

    def backward(self, info, call, grad, args, out, refs, ref_out):
        x = args[0]
        x0 = refs[0].expand_as(x)
        windows, valid = self.windows(info, x, args)
        w, w0 = self.sign * windows(x), self.sign * windows(x0)
        if valid is not None:
            low = torch.finfo(w.dtype).min
            w, w0 = w.masked_fill(~valid, low), w0.masked_fill(~valid, low)
        y, peak = w.max(-1, keepdim=True)
        y0, peak0 = w0.max(-1, keepdim=True)
        m = torch.maximum(y, y0)
        g = self.sign * grad.reshape(y.shape)  # min(x) = -max(-x): the upstream gradient flips too
        credit = torch.zeros_like(w).scatter_add_(-1, peak, (m - y0) * g).scatter_add_(-1, peak0, (y - m) * g)
        with torch.enable_grad():
            z = x.detach().requires_grad_(True)
            (spread,) = torch.autograd.grad(windows(z), z, credit)  # the fold back onto x
        dx = x - x0
        close = dx.abs() <= secant_tolerance(x, x0)
        multiplier = spread / torch.where(close, torch.ones_like(dx), dx)
        if bool(close.any()):
            with torch.enable_grad():
                z = x.detach().requires_grad_(True)
                (plain,) = torch.autograd.grad(call(z, *args[1:]), z, grad)
            multiplier = torch.where(close, plain, multiplier)
        return [multiplier] + [None] * (len(args) - 1)


@rule("MaxPool")
class MaxPool(CrossExtremum):
    def windows(self, info, x, args):
        geometry = pool_geometry(info.attrs, tuple(x.shape[2:]))
        ones = torch.ones((1, 1, *x.shape[2:]), dtype=x.dtype, device=x.device)
        return (lambda t: unfold_windows(t, *geometry)), unfold_windows(ones, *geometry) > 0


def _axes_last(axes: list[int]) -> Callable[[Tensor], Tensor]:
    def windows(t: Tensor) -> Tensor:
        rest = [d for d in range(t.dim()) if d not in axes]
        moved = t.permute(*rest, *axes)
        return moved.reshape(*moved.shape[: len(rest)], 1, -1)
    return windows


@rule("GlobalMaxPool")
class GlobalMaxPool(CrossExtremum):
    def windows(self, info, x, args):
        return _axes_last(list(range(2, x.dim()))), None


@rule("ReduceMax")
class ReduceMax(CrossExtremum):
    def windows(self, info, x, args):
        axes = _reduce_axes(info, args, x.dim()) or list(range(x.dim()))
        return _axes_last(axes), None


@rule("ReduceMin")
class ReduceMin(ReduceMax):
    sign = -1.0
