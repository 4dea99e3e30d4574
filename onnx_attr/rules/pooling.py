"""MaxPool, any rank, with padding, dilation, ceil mode and auto_pad, as a tree of exact pairwise maxima."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..converters.pooling import pool_geometry
from .base import DecomposedRule, rule
from .composite import tree_reduce
from .paired import pair_max


def unfold_windows(t: torch.Tensor, extents, strides, dilations, begin, outs) -> torch.Tensor:
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


@rule("MaxPool")
class MaxPool(DecomposedRule):
    """Pad with zeros that a validity mask keeps from winning, unfold the windows, reduce them pairwise."""

    def decompose(self, info, call, args, refs):
        x, x0 = args[0], refs[0]
        geometry = pool_geometry(info.attrs, tuple(x.shape[2:]))
        valid = unfold_windows(torch.ones((1, 1, *x.shape[2:]), dtype=x.dtype, device=x.device), *geometry) > 0
        w, w0 = unfold_windows(x, *geometry), unfold_windows(x0, *geometry)
        return tree_reduce(pair_max, w, w0, valid)
