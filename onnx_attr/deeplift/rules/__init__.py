"""DeepLift rules by op kind: rescale (unary), Shapley product (bilinear), decompositions (composite).

`RULES` maps an ONNX op type to its rule; importing this package registers every family.
"""

from onnx_attr.deeplift.rules import branch, composite, distance, lp, pooling, product, recurrent, sampling, scatter, selection, trees, unary  # noqa: F401  (register the rules)
from onnx_attr.deeplift.rules.base import RULES, DecomposedRule, NodeInfo, ProductRule, Rule, UnaryRule

__all__ = ["RULES", "DecomposedRule", "NodeInfo", "ProductRule", "Rule", "UnaryRule"]
