"""p-norms: LpPool, GlobalLpPool and LpNormalization, decomposed into rescales and a product.

A p-norm is (Σ |x|^p)^(1/p): a rescale of |x|^p per element, a sum (linear), a rescale of the root.
LpNormalization divides by it: x · r with r = 1/‖x‖, a Shapley product of x and r. Where a norm is 0
at both points (an all-zero window, a padded region) nothing moved and its root's slope at 0 is
infinite, so the root is taken at 1 there instead and its output set back to 0: the multipliers stay
finite and the contributions, Δx = 0 throughout, are 0. LpNormalization writes 0 for a zero vector
(as onnxruntime does); when only one point is the zero vector, its 1/‖x‖ is taken from the other
point, which makes Δr = 0 and leaves Δy = Δx · r exactly (y goes from 0 to x/‖x‖, or back).
"""

from __future__ import annotations

import torch
from torch import Tensor

from onnx_attr.deeplift.rules.base import DecomposedRule, rule
from onnx_attr.deeplift.rules.paired import product, rescale


def _power(p: float):
    return lambda v: v.abs().pow(p)


def _root_or_zero(s: Tensor, s0: Tensor, p: float) -> tuple[Tensor, Tensor]:
    """(s^(1/p), s0^(1/p)) as a rescale, 0 where both are 0 (the root then taken at 1: finite)."""
    still = (s.detach() == 0) & (s0 == 0)
    y, y0 = rescale(lambda v: v.pow(1.0 / p), torch.where(still, 1.0, s), torch.where(still, 1.0, s0))
    return torch.where(still, 0.0, y), torch.where(still, 0.0, y0)


@rule("GlobalLpPool")
class GlobalLpPool(DecomposedRule):
    wide = True

    def decompose(self, info, call, args, refs):
        p = float(info.attrs.get("p", 2))
        x, x0 = args[0], refs[0]
        t, t0 = rescale(_power(p), x, x0)
        axes = tuple(range(2, x.dim()))
        return _root_or_zero(t.sum(axes, keepdim=True), t0.sum(axes, keepdim=True), p)


@rule("LpPool")
class LpPool(DecomposedRule):
    """The window sums are the converted module's own (`WindowSums`: pads, strides, dilations,
    ceil mode as verified against onnxruntime), applied to the rescaled powers."""

    wide = True

    def decompose(self, info, call, args, refs):
        p = float(info.attrs.get("p", 2))
        t, t0 = rescale(_power(p), args[0], refs[0])
        sums = call.module.sums
        return _root_or_zero(sums(t), sums(t0), p)


@rule("LpNormalization")
class LpNormalization(DecomposedRule):
    wide = True

    def decompose(self, info, call, args, refs):
        p = int(info.attrs.get("p", 2))
        axis = int(info.attrs.get("axis", -1))
        x, x0 = args[0], refs[0]
        t, t0 = rescale(_power(p), x, x0)
        s, s0 = t.sum(axis, keepdim=True), t0.sum(axis, keepdim=True)
        moved, moved0 = s.detach() != 0, s0 != 0
        both = moved & moved0
        n, n0 = _root_or_zero(torch.where(both, s, 1.0), torch.where(both, s0, 1.0), p)
        r, r0 = rescale(torch.reciprocal, n, n0)
        # one point at the zero vector: both take the other's 1/norm (Δr = 0); neither moved: 0
        norm, norm0 = s.detach().pow(1.0 / p), s0.pow(1.0 / p)
        other = torch.where(moved, 1 / torch.where(moved, norm, 1.0),
                            torch.where(moved0, 1 / torch.where(moved0, norm0, 1.0), 0.0))
        return product(torch.mul, x, x0, torch.where(both, r, other), torch.where(both, r0, other))
