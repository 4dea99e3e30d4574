"""Elementwise nonlinear ops: the rescale rule, through the op's own converted forward."""

from __future__ import annotations

from onnx_attr.deeplift.rules.base import UnaryRule, rule

UNARY_OPS = (
    "LeakyRelu", "PRelu", "Elu", "Selu", "Celu", "ThresholdedRelu", "Sigmoid", "HardSigmoid", "Tanh",
    "Softplus", "Softsign", "Exp", "Log", "Erf", "Sqrt", "Reciprocal", "Pow", "Abs", "HardSwish", "Gelu",
    "Mish", "Shrink", "Sin", "Cos", "Tan", "Asin", "Acos", "Atan", "Sinh", "Cosh", "Asinh", "Acosh", "Atanh", "Swish",
)


@rule(*UNARY_OPS)
class Rescale(UnaryRule):
    """(f(x) - f(x0)) / (x - x0) with f the converted op itself, so its exact semantics carry over."""


@rule("Relu", "Clip")
class ExactSecant(UnaryRule):
    """Slopes 0 and 1 only: the secant needs no tolerance (the hot nonlinearities of CNNs)."""

    exact_secant = True


@rule("SelfGated")
class SelfGated(Rescale):
    """x·g(x) fused by the rewrite (unary_fusion.py): elementwise in x, one rescale over the whole."""
