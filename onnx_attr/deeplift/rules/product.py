"""Products of two varying operands (gates, attention): the Shapley product rule."""

from __future__ import annotations

import torch

from onnx_attr.deeplift.rules.base import DecomposedRule, NodeInfo, ProductRule, rule
from onnx_attr.deeplift.rules.paired import product, rescale


@rule("Mul", "MatMul", "Gemm", "Einsum", "Conv", "ConvTranspose")
class ShapleyProduct(ProductRule):
    """Δ(a∘b) = Δa∘(b+b0)/2 + (a+a0)/2∘Δb, exact for any op bilinear in a and b."""


#: A quotient's reciprocal that changes scale by more than this factor between the reference and the
#: input takes the ordered split (`scaled_product`), not Shapley's: x / max(‖x‖, 1e-12) at the zeros
#: baseline has 1/d0 = 1e12, and the midpoint split's two terms, ~1e11 each, cancelled into a change
#: of 0.25 (insightface's cosine head: attributions of 1e11 summing to -55,808). Within it, Shapley's
#: split loses at most a digit to the cancellation.
QUOTIENT_SCALE_RATIO = 16.0


@rule("Div")
class Quotient(DecomposedRule):
    """a / b = a · (1/b): rescale through the reciprocal, then the product rule when a varies too
    (in the order that cannot cancel where 1/b changes by orders of magnitude)."""

    kind = "bilinear"

    def check(self, info: NodeInfo) -> None:
        if not info.variable[1]:
            raise NotImplementedError("Div by a constant is linear and needs no rule")

    def decompose(self, info, call, args, refs):
        r, r0 = rescale(torch.reciprocal, args[1], refs[1])
        if info.variable[0]:
            return product(torch.mul, args[0], refs[0], r, r0, ordered=QUOTIENT_SCALE_RATIO)
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
            return product(torch.mul, args[0], refs[0], r, r0, ordered=QUOTIENT_SCALE_RATIO)
        return args[0] * r, refs[0] * r0
