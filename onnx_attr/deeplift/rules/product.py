"""Products of two varying operands (gates, attention): the Shapley product rule."""

from __future__ import annotations

import torch

from onnx_attr.deeplift.rules.base import DecomposedRule, NodeInfo, ProductRule, rule
from onnx_attr.deeplift.rules.paired import product, rescale


@rule("Mul", "MatMul", "Gemm", "Einsum", "Conv", "ConvTranspose")
class ShapleyProduct(ProductRule):
    """Δ(a∘b) = Δa∘(b+b0)/2 + (a+a0)/2∘Δb, exact for any op bilinear in a and b."""


@rule("Div")
class Quotient(DecomposedRule):
    """a / b = a · (1/b): rescale through the reciprocal, then the product rule when a varies too."""

    kind = "bilinear"

    def check(self, info: NodeInfo) -> None:
        if not info.variable[1]:
            raise NotImplementedError("Div by a constant is linear and needs no rule")

    def decompose(self, info, call, args, refs):
        r, r0 = rescale(torch.reciprocal, args[1], refs[1])
        if info.variable[0]:
            return product(torch.mul, args[0], refs[0], r, r0)
        return args[0] * r, refs[0] * r0


def _guarded_reciprocal(d):
    """1/d, and 0 where d is 0 (divide_no_nan's guard), with a finite gradient everywhere."""
    zero = d == 0
    return torch.where(zero, torch.zeros_like(d), torch.reciprocal(torch.where(zero, torch.ones_like(d), d)))


@rule("GuardedDiv")
class GuardedQuotient(DecomposedRule):
    """n / d with 0 where d = 0 (guard_fusion.py): n · r(d), r(d) = 1/d and r(0) = 0, so a zero
    divisor at the reference (0 / 0 of a min-max normalisation at a constant input) gives a finite
    secant 1/d² instead of the NaN an unguarded Div's reference carries."""

    kind = "bilinear"

    def check(self, info: NodeInfo) -> None:
        if not info.variable[1]:
            raise NotImplementedError("a guarded Div by a constant is linear and needs no rule")

    def decompose(self, info, call, args, refs):
        r, r0 = rescale(_guarded_reciprocal, args[1], refs[1])
        if info.variable[0]:
            return product(torch.mul, args[0], refs[0], r, r0)
        return args[0] * r, refs[0] * r0
