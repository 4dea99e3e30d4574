"""Elementwise nonlinear ops: the rescale rule, through the op's own converted forward."""

from __future__ import annotations

import torch

from onnx_attr.deeplift.rules.base import DecomposedRule, UnaryRule, rule
from onnx_attr.deeplift.rules.paired import pair_max, pair_min

UNARY_OPS = (
    "LeakyRelu", "PRelu", "Elu", "Selu", "Celu", "ThresholdedRelu", "Sigmoid", "HardSigmoid", "Tanh",
    "Softplus", "Softsign", "Exp", "Log", "Erf", "Sqrt", "Reciprocal", "Pow", "Abs", "HardSwish", "Gelu",
    "Mish", "Shrink", "Sin", "Cos", "Tan", "Asin", "Acos", "Atan", "Sinh", "Cosh", "Asinh", "Acosh", "Atanh", "Swish",
    # steps of a float value (tf2onnx writes Atan2 with Sign; quantizers round): the secant is their
    # exact jump, so the rule is complete (they had been taken for structural ops, and their jumps lost)
    "Sign", "Floor", "Ceil", "Round",
)


@rule(*UNARY_OPS)
class Rescale(UnaryRule):
    """(f(x) - f(x0)) / (x - x0) with f the converted op itself, so its exact semantics carry over."""


@rule("Relu")
class ExactSecant(UnaryRule):
    """Slopes 0 and 1 only: the secant needs no tolerance (the hot nonlinearities of CNNs)."""

    exact_secant = True


class _ClipBounds(DecomposedRule):
    """clip(x, lo, hi) = min(max(x, lo), hi), each step a relu of a difference (`pair_max`,
    `pair_min`): exact whichever of x, lo and hi vary, and equal to Clip when lo > hi (all hi)."""

    def decompose(self, info, call, args, refs):
        y, y0 = args[0], refs[0]
        for position, pair in ((1, pair_max), (2, pair_min)):
            if position < len(args) and args[position] is not None:
                bound, bound0 = args[position], refs[position]
                y, bound = torch.broadcast_tensors(y, bound)
                y0, bound0 = torch.broadcast_tensors(y0, bound0)
                y, y0 = pair(y, y0, bound, bound0)
        return y, y0


_CLIP_BOUNDS = _ClipBounds()


@rule("Clip")
class Clip(ExactSecant):
    """Constant bounds (ReLU6, HardSigmoid written out): the exact secant. Bounds that vary with
    the input (a decibel floor at max - 80 after a log-spectrogram) take the decomposition."""

    def check(self, info):
        if not info.variable_positions():
            raise NotImplementedError("Clip with no input varying with the attributed inputs")

    def multiplier_in_forward(self, info):
        return info.variable_positions() == (0,)

    def backward(self, info, call, grad, args, out, refs, ref_out, memo=None):
        if info.variable_positions() == (0,):
            return super().backward(info, call, grad, args, out, refs, ref_out, memo=memo)
        return _CLIP_BOUNDS.backward(info, call, grad, args, out, refs, ref_out)


@rule("SelfGated")
class SelfGated(Rescale):
    """x·g(x) fused by the rewrite (unary_fusion.py): elementwise in x, one rescale over the whole."""


@rule("UnaryChain")
class UnaryChain(Rescale):
    """A chain of elementwise ops of one x with several nonlinearities, fused by the rewrite
    (unary_fusion.py): one rescale over the whole, finite where the chain's value is (an Imputer
    first in it takes NaN as a missing value: `reads_missing`)."""

    reads_missing = True


@rule("Imputer")
class Imputer(Rescale):
    """scikit-learn's SimpleImputer (converters/ml.py): the secant (fill − x0) / (x − x0) at an entry
    it fills, 1 where it keeps x. A NaN at the input is a missing value (`reads_missing`)."""

    reads_missing = True


@rule("Step")
class Step(UnaryRule):
    """A threshold comparison of one varying x with a constant, cast to a float (unary_fusion.py): a
    step function. The secant is its exact jump where it flips between input and reference, and 0
    elsewhere (flat; a bool has no gradient to take where x ≈ x0, and none is needed: Δy = 0 there)."""

    def multiplier(self, info, call, args, out, refs, ref_out, memo=None):
        (pos,) = info.variable_positions()
        dx = args[pos] - refs[pos]
        jump = out - ref_out
        return torch.where(jump == 0, torch.zeros_like(jump), jump / dx.masked_fill(dx == 0, 1.0))


@rule("FakeQuant")
class FakeQuant(UnaryRule):
    """A static quantizer's QuantizeLinear → DequantizeLinear pair (quant_fusion.py): a staircase,
    flat almost everywhere, so the secant alone; where x == x0 the step's straight-through slope 1
    (it meets Δx = 0, so completeness does not depend on it)."""

    def multiplier(self, info, call, args, out, refs, ref_out, memo=None):
        (pos,) = info.variable_positions()
        dx = args[pos] - refs[pos]
        same = dx == 0
        return torch.where(same, torch.ones_like(dx), (out - ref_out) / dx.masked_fill(same, 1.0))
